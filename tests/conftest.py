"""Shared fixtures: the real data folder (skipped where absent) and tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WEAKSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def acdc_root() -> Path:
    root = SHARED_DATA / "acdc"
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real data at {root}")
        pytest.skip(f"real ACDC data not found at {root} (set WEAKSEG_SHARED_DATA)")
    return root


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
