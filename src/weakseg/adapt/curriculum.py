"""Curriculum domain adaptation (METHODS.md D3; Zhang, David & Gong, ICCV 2017): estimate
the label distributions of the target's training slices with a model trained on the source,
then train with the target predictions constrained to them (``label_distribution`` loss).

Zhang et al. infer the label distributions of a target image — the class fractions of the
whole image, and of its regions — with a regressor trained on the *source* (image features →
label distribution), on the argument that these global properties are less sensitive to the
domain shift than pixel labels. The estimator here is the simpler variant: the class
fractions of the **source model's own soft predictions** on the target slices (the mean of its
softmax, optionally averaged over the four flips). Why: it needs no second model, no
pretrained feature extractor (the paper's Inception features are not available offline) and
no extra hyper-parameter, and the source segmentation network already is the best source-
trained image model we have. What it costs: the estimates inherit the source model's errors
on the target (a structure it misses is estimated absent), so the constraint anchors the
adapted network to the source model's *aggregate* view — fractions are smoother and more
robust than the pixel labels they come from, but not corrected by a separate model. A
regressor trained on the source labels would be the paper's version.

The fractions are measured on the training grid of the adaptation config (the slices
resampled and centred on its canvas, as the trainer builds them), per slice and per cell of a
square ``g × g`` grid, and written keyed by slice identity (:mod:`weakseg.data.estimates`).
Nothing here reads a target label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from weakseg.config import Config, DataConfig, TargetConfig
from weakseg.data import DATASETS
from weakseg.data.estimates import Estimates
from weakseg.data.intensity import Normalization
from weakseg.data.slices import build_slices
from weakseg.data.splits import select_groups
from weakseg.engine.inference import FLIPS
from weakseg.errors import WeaksegError
from weakseg.losses.distribution import region_fractions

__all__ = ["DEFAULT_GRID", "estimate_fractions", "estimate_priors", "estimated_block"]

#: Default grid: 4 × 4 cells (on a 192² canvas at 2 mm, 96 mm squares).
DEFAULT_GRID = 4


@torch.no_grad()
def estimate_fractions(
    model: nn.Module,
    images: torch.Tensor,
    *,
    grid: int = DEFAULT_GRID,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    tta: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class fractions of ``model``'s soft predictions on every slice of ``images``.

    Args:
        model: a 2D segmentation network (logits ``(B, C, H, W)``), run in eval mode.
        images: ``(N, K, S, S)`` slices on the training grid.
        grid: ``g``: the cells are a ``g × g`` grid over each slice (``g`` divides ``S``).
        tta: average the softmax over the four flips (each flipped back).

    Returns:
        ``(fractions, cell_fractions)``: ``(N, C)`` and ``(N, C, g, g)`` float32 on the CPU,
        the mean softmax over each slice and each cell (each sums to 1 over ``C``).
    """
    if images.ndim != 4:
        raise WeaksegError(f"estimates need 2D slices (N, K, S, S), got {tuple(images.shape)}")
    if grid < 1 or images.shape[-1] % grid or images.shape[-2] % grid:
        raise WeaksegError(f"grid {grid} does not divide slices of "
                           f"{images.shape[-2]}x{images.shape[-1]} into equal cells")
    was_training = model.training
    model.eval()
    fractions, cells = [], []
    try:
        for i in tqdm(range(0, len(images), batch_size), desc="estimate", disable=not progress,
                      leave=False):
            x = images[i:i + batch_size].to(device)
            probs = torch.zeros(())
            for dims in (FLIPS if tta else ((),)):
                p = model(x.flip(dims) if dims else x).float().softmax(dim=1)
                probs = probs + (p.flip(dims) if dims else p)
            probs = probs / (len(FLIPS) if tta else 1)
            fractions.append(probs.mean(dim=(2, 3)).cpu())
            cells.append(region_fractions(probs, (grid, grid)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(fractions), torch.cat(cells)


def estimated_block(cfg: Config) -> tuple[str, DataConfig | TargetConfig]:
    """The data whose training slices are estimated: ``data.target`` (the domain adapted to)
    when the config has one, else ``data`` (source-free: the target is ``data:``)."""
    if cfg.data.target is not None:
        return "data.target", cfg.data.target
    return "data", cfg.data


def _spacing(cfg: Config, ckpt_spacing: Sequence[float] | None,
             checkpoint: str | Path) -> tuple[float, float] | None:
    """The training grid's spacing: ``data.spacing``, with ``median`` taken from the
    checkpoint (the source run's resolved median); it must be the checkpoint's own."""
    stored = None if ckpt_spacing is None else (float(ckpt_spacing[0]), float(ckpt_spacing[1]))
    spacing = cfg.data.spacing
    if spacing == "median":
        if stored is None:
            raise WeaksegError(f"data.spacing is median, but checkpoint {checkpoint} was trained "
                               "without a spacing (square resize); give data.spacing as [y, x] "
                               "mm or unset it")
        return stored
    wanted = None if spacing is None else (float(spacing[0]), float(spacing[1]))

    def say(sp: tuple[float, float] | None) -> str:
        return "square resize (no spacing)" if sp is None else f"{sp[0]:g} × {sp[1]:g} mm"

    if (wanted is None) != (stored is None) or (
            wanted is not None and stored is not None
            and not np.allclose(wanted, stored, rtol=0, atol=1e-6)):
        raise WeaksegError(f"checkpoint {checkpoint} was trained on {say(stored)} but the "
                           f"config's data.spacing is {say(wanted)}; estimate with a source run "
                           "on the adaptation config's grid")
    return wanted


def estimate_priors(
    checkpoint: str | Path,
    cfg: Config,
    *,
    grid: int = DEFAULT_GRID,
    tta: bool = False,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Estimates:
    """Estimate the class fractions of every training slice of the adaptation config
    ``cfg`` (its ``data.target.train`` selection, or ``data.train`` without a target
    block) with the source run ``checkpoint``: :func:`estimate_fractions` on the slices
    built as the trainer builds them (``data.size``, ``data.spacing``, the checkpoint's
    intensity normalisation). No label of those slices is read.

    Raises:
        WeaksegError: the checkpoint is unreadable or of a 3D model; its classes or channels
            differ from the data's; its spacing is not the config's; ``grid`` does not
            divide ``data.size``; the selection is unset or selects nothing.
    """
    from weakseg.engine.trainer import load_model_from_checkpoint

    size = cfg.data.size
    if grid < 1 or size % grid:
        raise WeaksegError(f"--grid {grid} must divide data.size {size} into equal cells "
                           f"(e.g. {', '.join(str(g) for g in (2, 4, 8) if size % g == 0)})")
    where, block = estimated_block(cfg)
    if where == "data.target" and not block.train:
        raise WeaksegError("data.target.train is unset; select the target's training volumes "
                           "whose label distributions are estimated")
    model, ckpt = load_model_from_checkpoint(checkpoint)
    if int(ckpt.get("spatial_dims", 2)) != 2:
        raise WeaksegError(f"checkpoint {checkpoint} is a 3D model; label distributions are "
                           "estimated per 2D slice with a 2D source model")
    spacing = _spacing(cfg, ckpt.get("spacing"), checkpoint)
    params = dict(block.params)
    if block.root is not None:
        params["root"] = block.root
    dataset = DATASETS.build(cast(str, block.name), **params)
    names = list(ckpt["class_names"])
    if list(dataset.class_names) != names or dataset.in_channels != int(ckpt["in_channels"]):
        raise WeaksegError(
            f"checkpoint {checkpoint} predicts classes {names} from {ckpt['in_channels']} "
            f"channel(s), but {where} ({block.name}) has {list(dataset.class_names)} and "
            f"{dataset.in_channels}; estimate with a source run on the same classes")
    volumes = select_groups(dataset.volumes, block.train)
    if not volumes:
        raise WeaksegError(f"{where}.train={block.train!r} selects no volume of {block.name}")
    slices = build_slices(volumes, annotation="none", num_classes=len(names), size=size,
                          spacing=spacing, norm=Normalization.from_dict(ckpt.get("normalization")),
                          allow_unlabelled=True)
    model.to(device)
    fractions, cells = estimate_fractions(model, slices.images, grid=grid, tta=tta,
                                          batch_size=batch_size, device=device,
                                          progress=progress)
    method = ("mean softmax of the source model over each slice and each cell"
              + (", averaged over 4 flips" if tta else ""))
    return Estimates(keys=list(slices.keys), index=list(slices.index),
                     fractions=fractions.numpy(), cell_fractions=cells.numpy(),
                     class_names=names, size=size, spacing=spacing, method=method,
                     source=str(checkpoint))
