"""Label distributions: KL between estimated and predicted class fractions, per image and per
region (curriculum domain adaptation, METHODS.md D3).

With :math:`s_p = \\mathrm{softmax}(z_p)` and a region :math:`R` of an image (the whole image,
or one cell of a regular grid), the predicted label distribution of :math:`R` is
:math:`\\hat S_R = \\frac{1}{|R|} \\sum_{p \\in R} s_p`. Given an estimate :math:`q_R` of the
true class fractions of :math:`R` (e.g. from a model trained on the source domain:
:mod:`weakseg.adapt.curriculum`), the loss is

.. math:: \\mathcal{L} = \\mathrm{KL}(q_R \\,\\|\\, \\hat S_R)
          = \\sum_c q_R^c \\log q_R^c - \\sum_c q_R^c \\log \\hat S_R^c,

averaged over regions and images. Zhang et al. minimise the cross-entropy
:math:`-\\sum_c q_R^c \\log \\hat S_R^c` between the inferred and the predicted label
distributions; the KL differs from it by the entropy of :math:`q_R`, a constant, so the
gradients are the same and the value is 0 when the prediction matches the estimate. This
direction (estimate first, as the paper's cross-entropy; the other way round from
``marginal_prior``'s :math:`\\mathrm{KL}(\\hat S \\| q)`) is finite when :math:`q_R^c = 0`
(absent classes, common in small grid cells). :math:`\\log \\hat S_R` is a ``logsumexp`` of
one ``log_softmax`` (no ``+ eps``).

Regions: ``fractions`` of shape ``(B, C)`` describe whole images; ``(B, C, *grid)`` with one
grid size per spatial dimension describe the cells of a regular grid (each spatial size
divisible by its grid size): ``(B, C, 4, 4)`` for 4 × 4 cells of a 2D image. Cell
``(i, j)`` covers rows ``i·H/g … (i+1)·H/g`` and columns ``j·W/g … (j+1)·W/g``, so a cell
grid rotates and flips with its image (:mod:`weakseg.data.priors`).

Reference:
    Zhang, David & Gong, "Curriculum domain adaptation for semantic segmentation of urban
    scenes", ICCV 2017 (global and local label distributions of target images, inferred
    without target labels, as constraints on the target predictions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from weakseg.losses._utils import check_reduction, reduce
from weakseg.losses.base import LOSSES

__all__ = [
    "FRACTION_TOLERANCE",
    "LabelDistributionLoss",
    "check_fractions",
    "label_distribution_loss",
    "region_fractions",
    "region_log_fractions",
]

#: How far the fractions of one region may sum from 1.
FRACTION_TOLERANCE = 1e-3


def _blocks(x: torch.Tensor, grid: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...], int]:
    """``x`` ``(B, C, *spatial)`` viewed as ``(B, C, g1, n1/g1, g2, n2/g2, ...)``, the
    within-cell dimensions, and the number of pixels per cell."""
    b, c, *spatial = x.shape
    if len(grid) != len(spatial):
        raise ValueError(f"a grid of {len(grid)} sizes {tuple(grid)} for logits "
                         f"{tuple(x.shape)} with {len(spatial)} spatial dims")
    view = [b, c]
    for n, g in zip(spatial, grid, strict=True):
        if g < 1 or n % g:
            raise ValueError(f"grid {tuple(grid)} does not divide the spatial size "
                             f"{tuple(spatial)} of logits {tuple(x.shape)} into equal cells")
        view += [g, n // g]
    inner = tuple(3 + 2 * i for i in range(len(spatial)))
    return x.reshape(view), inner, math.prod(n // g for n, g in zip(spatial, grid, strict=True))


def region_log_fractions(log_probs: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``log Ŝ`` of every grid cell from ``log_softmax`` output ``(B, C, *spatial)``:
    ``(B, C, *grid)``, a stable ``logsumexp`` over each cell minus ``log |cell|``."""
    blocks, inner, count = _blocks(log_probs, grid)
    return torch.logsumexp(blocks, dim=inner) - math.log(count)


def region_fractions(probs: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Mean of ``probs`` ``(B, C, *spatial)`` (probabilities or a one-hot map) over every
    grid cell: ``(B, C, *grid)``; with ``grid`` all ones, the fractions of whole images.

    Example:
        >>> onehot = torch.tensor([[[[1., 1.], [0., 0.]], [[0., 0.], [1., 1.]]]])
        >>> region_fractions(onehot, (2, 1))[0, :, :, 0].tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    blocks, inner, _ = _blocks(probs, grid)
    return blocks.mean(dim=inner)


def check_fractions(fractions: torch.Tensor, *, what: str = "fractions") -> None:
    """Class fractions ``(B, C, ...)``: finite, non-negative, summing to 1 over ``C``
    (within :data:`FRACTION_TOLERANCE`) in every region."""
    if not torch.isfinite(fractions).all() or (fractions < 0).any():
        bad = fractions[~torch.isfinite(fractions) | (fractions < 0)]
        raise ValueError(f"{what} must be finite and ≥ 0, got {bad[:4].tolist()}")
    sums = fractions.sum(dim=1)
    err = (sums - 1).abs()
    if bool((err > FRACTION_TOLERANCE).any()):
        worst = float(sums.flatten()[err.flatten().argmax()])
        raise ValueError(f"{what} must sum to 1 over the classes (dim 1) in every region, got "
                         f"a sum of {worst:.6g} (shape {tuple(fractions.shape)})")


def label_distribution_loss(
    logits: torch.Tensor,
    fractions: torch.Tensor,
    *,
    reduction: str = "mean",
    check: bool = True,
) -> torch.Tensor:
    """KL between estimated class fractions and those of the predictions, per region.

    ``Σ_c q_c (log q_c − log Ŝ_c)`` for every region (terms with ``q_c = 0`` are 0), where
    ``Ŝ`` is the mean softmax over the region (module docstring).

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (2D or 3D), ``C ≥ 2``.
        fractions: the estimated fractions ``q``: ``(B, C)`` for whole images, or
            ``(B, C, *grid)`` for the cells of a regular grid (one size per spatial
            dimension, each dividing the spatial size); each region sums to 1 over ``C``.
        reduction: ``"mean"`` (over images and cells), ``"sum"``, or ``"none"``: ``(B,)``
            for whole images, ``(B, *grid)`` for cells.
        check: validate ``fractions`` (finite, ≥ 0, summing to 1; a host sync).

    Shape:
        logits ``(B, C, *spatial)``, fractions ``(B, C)`` or ``(B, C, *grid)``; output a
        scalar, or ``(B,)`` / ``(B, *grid)`` for ``"none"``.

    Example:
        >>> logits = torch.zeros(1, 2, 4, 4)               # Ŝ = (0.5, 0.5) everywhere
        >>> round(float(label_distribution_loss(logits, torch.tensor([[1.0, 0.0]]))), 4)
        0.6931
        >>> float(label_distribution_loss(logits, torch.full((1, 2, 2, 2), 0.5)))
        0.0
    """
    check_reduction(reduction)
    if logits.ndim < 3 or logits.ndim > 5 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, C, *spatial) with C ≥ 2 and 1-3 spatial dims, "
                         f"got {tuple(logits.shape)}")
    b, c, *spatial = logits.shape
    if fractions.ndim not in (2, logits.ndim) or tuple(fractions.shape[:2]) != (b, c):
        raise ValueError(
            f"fractions {tuple(fractions.shape)} do not fit logits {tuple(logits.shape)}; "
            f"expected ({b}, {c}) per image or ({b}, {c}, *grid) per grid cell")
    if not fractions.dtype.is_floating_point:
        raise ValueError(f"fractions must be floating point, got {fractions.dtype}")
    if check:
        check_fractions(fractions)
    grid = tuple(fractions.shape[2:]) or (1,) * len(spatial)
    log_s = region_log_fractions(logits.log_softmax(dim=1), grid)          # (B, C, *grid)
    q = fractions.to(dtype=logits.dtype, device=logits.device).reshape(log_s.shape)
    per_region = (torch.xlogy(q, q) - q * log_s).sum(dim=1)                # (B, *grid)
    if fractions.ndim == 2:
        per_region = per_region.reshape(b)
    return reduce(per_region, reduction)


def _check_weight(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and ≥ 0, got {value}")


@LOSSES.register("label_distribution",
                 help="KL(estimated || predicted) class fractions per image and per grid cell "
                      "(curriculum DA, D3)")
class LabelDistributionLoss(nn.Module):
    """``global_weight ·`` :func:`label_distribution_loss` of the whole-image fractions
    ``+ cell_weight ·`` the mean of the loss over the grid cells (Zhang et al., ICCV 2017).

    Reads the batch entries ``fractions`` ``(B, C)`` and ``cell_fractions``
    ``(B, C, g, g)`` (only those of the positive weights: :attr:`inputs`), which the priors
    ``estimated_fractions`` and ``estimated_cell_fractions`` give every slice from the file
    of ``weakseg estimate-priors`` (:mod:`weakseg.data.estimates`). ``reduction="none"``:
    ``(B,)``, the weighted sum per image. After each call :attr:`last_stats` holds the two
    terms (means over the batch, detached) as ``global`` and ``cells``.

    Example:
        >>> loss = LabelDistributionLoss(cell_weight=0.5)
        >>> loss.inputs
        ('fractions', 'cell_fractions')
        >>> logits = torch.zeros(2, 3, 8, 8)
        >>> q = torch.full((2, 3), 1 / 3); cells = torch.full((2, 3, 4, 4), 1 / 3)
        >>> float(loss(logits, fractions=q, cell_fractions=cells))
        0.0
    """

    inputs: tuple[str, ...]

    def __init__(
        self,
        *,
        global_weight: float = 1.0,
        cell_weight: float = 1.0,
        reduction: str = "mean",
        check: bool = True,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        _check_weight("global_weight", global_weight)
        _check_weight("cell_weight", cell_weight)
        if global_weight == 0 and cell_weight == 0:
            raise ValueError("global_weight and cell_weight are both 0: nothing to constrain")
        self.global_weight = float(global_weight)
        self.cell_weight = float(cell_weight)
        self.reduction = reduction
        self.check = check
        self.inputs = tuple(key for key, w in (("fractions", global_weight),
                                               ("cell_fractions", cell_weight)) if w > 0)
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, fractions: torch.Tensor | None = None,
                cell_fractions: torch.Tensor | None = None) -> torch.Tensor:
        per_image = logits.new_zeros(logits.shape[0])
        stats: dict[str, torch.Tensor] = {}
        for name, key, value, weight in (("global", "fractions", fractions, self.global_weight),
                                         ("cells", "cell_fractions", cell_fractions,
                                          self.cell_weight)):
            if weight == 0:
                continue
            if value is None:
                raise ValueError(f"label_distribution with {name} weight {weight} needs the "
                                 f"batch entry '{key}'")
            if key == "cell_fractions" and value.ndim != logits.ndim:
                raise ValueError(f"cell_fractions {tuple(value.shape)} must be (B, C, *grid) "
                                 f"with one grid size per spatial dim of logits "
                                 f"{tuple(logits.shape)}")
            term = label_distribution_loss(logits, value, reduction="none", check=self.check)
            term = term.reshape(term.shape[0], -1).mean(dim=1)                   # (B,)
            stats[name] = term.detach().mean()
            per_image = per_image + weight * term
        self.last_stats = stats
        return reduce(per_image, self.reduction)

    def extra_repr(self) -> str:
        return (f"global_weight={self.global_weight}, cell_weight={self.cell_weight}, "
                f"reduction='{self.reduction}'")
