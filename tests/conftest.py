"""Shared fixtures: the real data folder (skipped where absent) and tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WEAKSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids waiting on busy cores at every parallel region."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def disc_phantom(
    shape: tuple[int, ...], gen: torch.Generator, classes: int = 3, channels: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discs/balls: a noisy image in [0, 1] and logits that roughly follow them."""
    b, *spatial = shape
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in spatial],
                          indexing="ij")
    labels = torch.zeros(shape, dtype=torch.long)
    for i in range(b):
        for k in range(1, classes):
            centre = [float(torch.rand((), generator=gen)) * n for n in spatial]
            radius = (0.15 + 0.2 * float(torch.rand((), generator=gen))) * max(spatial)
            dist = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True)).sqrt()
            labels[i][dist < radius] = k
    means = torch.rand(channels, classes, generator=gen)
    image = means[:, labels].movedim(0, 1)
    image = (image + 0.05 * torch.randn(image.shape, generator=gen)).clamp(0, 1)
    logits = 4 * F.one_hot(labels, classes).movedim(-1, 1).float()
    return image, logits + torch.randn(logits.shape, generator=gen)


def shared_data(name: str) -> Path:
    """``../shared/data/<name>``: skip where it is absent (a user's machine), fail in CI."""
    root = SHARED_DATA / name
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real data at {root}")
        pytest.skip(f"real {name} data not found at {root} (set WEAKSEG_SHARED_DATA)")
    return root


@pytest.fixture
def acdc_root() -> Path:
    return shared_data("acdc")


@pytest.fixture
def monuseg_root() -> Path:
    return shared_data("monuseg")


def write_h5_folder(folder: Path, vset) -> Path:
    """Write ``vset``'s volumes in the WSL4MIS h5 layout (scribble 4 = unlabelled) as
    ``patient001_frame01.h5``, ...; returns ``folder``."""
    import h5py
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for i, vol in enumerate(vset.volumes):
        scr = vol.annotations["scribble"].copy()
        scr[scr < 0] = 4
        with h5py.File(folder / f"patient{i + 1:03d}_frame01.h5", "w") as f:
            f["image"] = vol.image
            f["label"] = vol.label.astype(np.uint8)
            f["scribble"] = scr.astype(np.uint16)
    return folder


def tiny_config(**overrides: object) -> dict:
    """A phantom config that trains in about a second."""
    cfg: dict = {
        "model": {"name": "unet2d", "params": {"base_channels": 4, "depth": 2}},
        "data": {
            "name": "phantom",
            "params": {"num_volumes": 4, "size": 32, "slices": 4, "seed": 0},
            "annotation": "scribble",
            "size": 32,
            "train": "0-2",
            "val": "3",
        },
        "loss": [{"name": "partial_ce", "weight": 1.0}],
        "train": {"epochs": 3, "batch_size": 4, "lr": 0.01, "seed": 0, "threads": 1},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg
