"""Partial cross-entropy: cross-entropy on the labelled pixels only (METHODS.md R1).

.. math::

    \\mathcal{L}_{pCE}(S, y) =
        -\\frac{1}{|\\mathcal{L}|} \\sum_{p \\in \\mathcal{L}} \\log s_p^{y_p}

where :math:`\\mathcal{L}` are the pixels whose label is not ``ignore_index``
(scribbles, points) and :math:`s_p = \\mathrm{softmax}(z_p)`.

References:
    Tang et al., "On regularized losses for weakly-supervised CNN segmentation", ECCV 2018.
    Lin et al., "ScribbleSup", CVPR 2016.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.data.base import IGNORE_INDEX
from weakseg.losses._utils import check_logits_target, check_reduction
from weakseg.losses.base import LOSSES

__all__ = ["PartialCrossEntropyLoss", "PseudoMaskCrossEntropyLoss", "partial_cross_entropy"]


def partial_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy over labelled pixels; unlabelled pixels carry ``ignore_index``.

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (2D or 3D).
        target: ``(B, *spatial)`` int64 class indices or ``ignore_index``.
        ignore_index: value marking unlabelled pixels.
        reduction: ``"mean"`` (over labelled pixels of the batch), ``"sum"``, or
            ``"none"`` (per-pixel ``(B, *spatial)``, zero on unlabelled pixels).

    Returns:
        The loss. With no labelled pixel, ``"mean"`` returns 0 with a zero
        gradient (not NaN).

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``; output scalar or
        ``(B, *spatial)`` for ``"none"``.

    Example:
        >>> logits = torch.randn(2, 4, 8, 8)
        >>> target = torch.full((2, 8, 8), -100); target[:, 2, 3] = 1
        >>> partial_cross_entropy(logits, target).shape
        torch.Size([])
    """
    check_reduction(reduction)
    check_logits_target(logits, target)
    per_pixel = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none")
    if reduction == "none":
        return per_pixel
    total = per_pixel.sum()
    if reduction == "sum":
        return total
    count = (target != ignore_index).sum()
    return total / count.clamp_min(1)


@LOSSES.register("partial_ce", help="partial cross-entropy on labelled pixels (R1)")
class PartialCrossEntropyLoss(nn.Module):
    """Module form of :func:`partial_cross_entropy` (stores hyper-parameters only)."""

    inputs = ("target",)
    #: learns from labelled pixels: refused on a data set without any (annotation none)
    needs_labels = True

    def __init__(self, *, ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return partial_cross_entropy(
            logits, target, ignore_index=self.ignore_index, reduction=self.reduction
        )


@LOSSES.register("pseudo_ce", help="partial cross-entropy on pseudo-masks read from a file "
                 "(data.priors: [estimated_masks], e.g. CAM masks of 'weakseg cam', C13)")
class PseudoMaskCrossEntropyLoss(nn.Module):
    """:func:`partial_cross_entropy` against the batch entry ``pseudo_masks`` ``(B, *spatial)``
    (class indices, ``ignore_index`` where the pseudo-mask abstains; a float map of such
    values, as the estimates file gives, is rounded) instead of the annotation ``target``.

    Example:
        >>> masks = torch.zeros(2, 8, 8)
        >>> PseudoMaskCrossEntropyLoss()(torch.zeros(2, 3, 8, 8), masks).item()  # log 3
        1.0986...
    """

    inputs = ("pseudo_masks",)

    def __init__(self, *, ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, pseudo_masks: torch.Tensor) -> torch.Tensor:
        masks = pseudo_masks.round().long() if pseudo_masks.is_floating_point() else pseudo_masks
        return partial_cross_entropy(
            logits, masks, ignore_index=self.ignore_index, reduction=self.reduction
        )
