"""Curriculum size estimation (METHODS.md C12; Kervadec, Dolz, Granger & Ben Ayed, MICCAI 2019
"Curriculum semi-supervised segmentation").

A small regression network learns, from the few **fully labelled** slices, to predict the
class sizes of a slice from its image; its predictions on the weakly annotated (or
unlabelled) slices then bound the size constraint of the segmentation network
(``bounds_from_estimates``: prediction ``× (1 ∓ margin)``, the paper's 10 %).

The regressor (:class:`SizeRegressor`) is a plain CNN — ``depth`` blocks of two 3 × 3
convolutions with batch norm and ReLU, each followed by 2 × 2 max pooling, then global
average pooling and a linear layer — whose softmax over the ``C`` classes is the vector of
class **fractions** of the slice (sizes / ``S²``; they sum to 1, background included). It is
trained with the L1 loss on the fractions of the fully labelled slices, with random 90°
rotations and flips (sizes are invariant to them). Why a separate small network and not a
head on the segmentation U-Net: the paper trains a separate regressor first (the
"curriculum": easy task, then the hard one), and a separate model keeps the segmentation run
unchanged (its estimates file is its only input). Its own error — the mean absolute error of
each class fraction on fully labelled slices of **held-out patients** — is reported and
stored with the estimates.

The slices are built as the trainer builds them (``data.size``, ``data.spacing``, the
run's intensity normalisation), so the estimates are sizes on the training grid, keyed by
slice identity like every estimates file (:mod:`weakseg.data.estimates`). The fully labelled
slices keep their own masks' fractions (their labels are given); the others get the
regressor's prediction (none of their labels is read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from weakseg.config import Config
from weakseg.data.base import IGNORE_INDEX, Volume
from weakseg.data.estimates import Estimates
from weakseg.data.intensity import fit_normalization
from weakseg.data.semi import full_label_keys
from weakseg.data.slices import SliceData, augment_batch, build_slices, median_spacing
from weakseg.errors import WeaksegError

__all__ = [
    "SizeRegressor",
    "SizeRegression",
    "fit_size_regressor",
    "label_fractions",
    "predict_fractions",
    "size_mae",
    "train_size_regressor",
]


class SizeRegressor(nn.Module):
    """CNN ``(B, K, S, S)`` → class-fraction logits ``(B, C)`` (softmax: the fractions).

    Args:
        in_channels: ``K``; num_classes: ``C`` (background included).
        width: channels of the first block (doubled by each further block).
        depth: blocks (each halves the resolution; ``S`` must be divisible by ``2**depth``).

    Example:
        >>> net = SizeRegressor(1, 3, width=4, depth=2)
        >>> net(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 16,
                 depth: int = 4) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise WeaksegError(f"size regressor width and depth must be ≥ 1, got {width}, "
                               f"{depth}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            c_out = width * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.head(self.features(x).mean(dim=(2, 3))))


def label_fractions(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class fractions ``(N, C)`` float32 of full label maps ``(N, S, S)``; canvas padding
    (``IGNORE_INDEX``, outside the image) counts as background."""
    labels = targets.masked_fill(targets == IGNORE_INDEX, 0).long()
    onehot = F.one_hot(labels, num_classes).float()                            # (N, S, S, C)
    return onehot.mean(dim=(1, 2))


def size_mae(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean absolute error ``(C,)`` float64 of the class fractions ``(N, C)`` over the
    ``N`` slices."""
    if predicted.shape != true.shape or predicted.ndim != 2:
        raise WeaksegError(f"size errors need two (N, C) tensors, got {tuple(predicted.shape)}"
                           f" and {tuple(true.shape)}")
    return (predicted.double() - true.double()).abs().mean(dim=0)


def fit_size_regressor(
    images: torch.Tensor,
    fractions: torch.Tensor,
    *,
    steps: int = 1000,
    batch_size: int = 16,
    lr: float = 1e-3,
    width: int = 16,
    depth: int = 4,
    seed: int = 0,
    augment: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> SizeRegressor:
    """Train a :class:`SizeRegressor` on slices ``images`` ``(N, K, S, S)`` and their class
    fractions ``(N, C)`` (L1 loss on the softmax, Adam, random 90° rotations and flips);
    seeded by ``seed``. Returns the network in eval mode on ``device``. Inputs are not
    modified."""
    if images.ndim != 4 or fractions.ndim != 2 or len(images) != len(fractions):
        raise WeaksegError(f"size regression needs images (N, K, S, S) and fractions (N, C), "
                           f"got {tuple(images.shape)} and {tuple(fractions.shape)}")
    if len(images) == 0:
        raise WeaksegError("a size regressor needs fully labelled slices; none given")
    if steps < 1 or batch_size < 1:
        raise WeaksegError(f"steps and batch_size must be ≥ 1, got {steps}, {batch_size}")
    torch.manual_seed(seed)  # initialisation
    model = SizeRegressor(images.shape[1], fractions.shape[1], width=width, depth=depth)
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    dummy = torch.zeros(min(batch_size, len(images)), *images.shape[-2:], dtype=torch.long)
    for _ in tqdm(range(steps), desc="size regressor", disable=not progress, leave=False):
        pick = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
        x = images[pick]
        if augment:
            x, _ = augment_batch(x, dummy[:len(x)], gen)
        pred = model(x.to(device)).softmax(dim=1)
        loss = (pred - fractions[pick].to(device)).abs().sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


@torch.no_grad()
def predict_fractions(model: nn.Module, images: torch.Tensor, *, batch_size: int = 32,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The class fractions ``(N, C)`` float32 (CPU) that ``model`` predicts for ``images``."""
    was_training = model.training
    model.eval()
    try:
        out = [model(images[i:i + batch_size].to(device)).float().softmax(dim=1).cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


@dataclass(frozen=True)
class SizeRegression:
    """What :func:`train_size_regressor` gives: the estimates of every training slice and
    the regressor; ``fit_groups`` / ``heldout_groups`` name the patients it was fitted on /
    measured on."""

    estimates: Estimates
    model: SizeRegressor
    fit_groups: list[str]
    heldout_groups: list[str]
    weak_slices: int


def _spacing(cfg: Config, train: Sequence[Volume]) -> tuple[float, float] | None:
    """``data.spacing`` resolved as the trainer does (``median``: of the training volumes)."""
    spacing = cfg.data.spacing
    if spacing is None:
        return None
    if spacing == "median":
        return median_spacing(train)
    y, x = cast(list[float], spacing)
    return float(y), float(x)


def train_size_regressor(
    cfg: Config,
    *,
    holdout: int = 1,
    steps: int = 1000,
    batch_size: int = 16,
    lr: float = 1e-3,
    width: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> SizeRegression:
    """Fit a size regressor on the fully labelled patients of ``cfg`` (``data.full_labels``
    within ``data.train``, the fold's training part with ``data.fold``), measure its error
    on the last ``holdout`` of them (held out of the fit), and estimate the class fractions
    of every other training slice. Seeded by ``train.seed``.

    Raises:
        WeaksegError: no ``data.full_labels`` (no fully labelled image), a ``data.target``
            block, a 3D model, ``holdout`` not leaving a patient to fit on, and the data
            errors of training (selections, missing masks).
    """
    from weakseg.engine.trainer import load_data, model_spatial_dims

    if not cfg.data.full_labels:
        raise WeaksegError("a size regressor learns from fully labelled images, but "
                           "data.full_labels is unset; select a few training patients with "
                           "full masks, e.g. data.full_labels=21-23")
    if cfg.data.target is not None:
        raise WeaksegError("the size regressor estimates the data.train slices; this config "
                           "has a data.target block, remove it")
    if model_spatial_dims(cfg) != 2:
        raise WeaksegError("size bounds are per 2D slice; use a 2D model config")
    if holdout < 0:
        raise WeaksegError(f"--holdout must be ≥ 0, got {holdout}")
    splits = load_data(cfg)
    ds = splits.dataset
    full = full_label_keys(splits.train, ds.volumes, cfg.data.full_labels)
    groups = sorted({v.group for v in splits.train if v.key in full})
    if holdout >= len(groups):
        raise WeaksegError(
            f"--holdout {holdout} leaves no fully labelled patient to fit on (data.full_labels "
            f"gives {len(groups)}: {', '.join(groups[:5])}); use a smaller --holdout (0 fits "
            "on all of them and measures no error)")
    held = groups[len(groups) - holdout:]
    spacing = _spacing(cfg, splits.train)
    norm = fit_normalization(cfg.data.normalization, splits.train, ds.channel_names,
                             seed=cfg.train.seed)
    num_classes = ds.num_classes

    def slices(volumes: list[Volume], annotation: str) -> SliceData:
        return build_slices(volumes, annotation=annotation, num_classes=num_classes,
                            size=cfg.data.size, spacing=spacing, norm=norm,
                            allow_unlabelled=True)

    fit_vols = [v for v in splits.train if v.key in full and v.group not in held]
    held_vols = [v for v in splits.train if v.key in full and v.group in held]
    weak_vols = [v for v in splits.train if v.key not in full]
    fit = slices(fit_vols, "full")
    fit_fractions = label_fractions(fit.targets, num_classes)
    model = fit_size_regressor(fit.images, fit_fractions, steps=steps, batch_size=batch_size,
                               lr=lr, width=width, seed=cfg.train.seed, device=device,
                               progress=progress)
    keys, index, fractions = list(fit.keys), list(fit.index), [fit_fractions]
    mae, mae_slices = None, 0
    if held_vols:
        held_data = slices(held_vols, "full")
        true = label_fractions(held_data.targets, num_classes)
        mae = size_mae(predict_fractions(model, held_data.images, device=device), true).numpy()
        mae_slices = len(held_data)
        keys, index = keys + held_data.keys, index + held_data.index
        fractions.append(true)
    weak = 0
    if weak_vols:
        weak_data = slices(weak_vols, "none")  # no label of these slices is read
        keys, index = keys + weak_data.keys, index + weak_data.index
        fractions.append(predict_fractions(model, weak_data.images, device=device))
        weak = len(weak_data)
    all_fractions = torch.cat(fractions).numpy().astype(np.float32)
    method = (f"size regressor (CNN, L1 on class fractions, {steps} steps) fitted on the "
              f"{len(fit)} fully labelled slices of {len(groups) - holdout} patients; its "
              f"predictions for the {weak} other slices; the fully labelled slices keep their "
              "own masks' fractions (1 x 1 grid)")
    est = Estimates(keys=keys, index=index, fractions=all_fractions,
                    cell_fractions=all_fractions[:, :, None, None].copy(),
                    class_names=list(ds.class_names), size=cfg.data.size, spacing=spacing,
                    method=method, source=f"data.full_labels={cfg.data.full_labels}",
                    mae=mae, mae_slices=mae_slices)
    return SizeRegression(est, model, [g for g in groups if g not in held], held, weak)
