"""Multi-label classification from image tags (METHODS.md C13: the classifier behind CAMs).

.. math::

    \\mathcal{L}_{tag}(M, t) = -\\frac{1}{B |\\mathcal{C}|} \\sum_{b} \\sum_{c \\in \\mathcal{C}}
        t_{bc} \\log \\sigma(\\bar M_{bc}) + (1 - t_{bc}) \\log (1 - \\sigma(\\bar M_{bc})),
    \\qquad \\bar M_{bc} = \\operatorname{mean}_{p} M_{bc}(p)

the binary cross-entropy of every class's image-level logit — the global average of the
network's map ``M`` (for :class:`~weakseg.models.cam.UNetCAM` exactly the classifier's
logit) — against the tags ``t`` (present / absent); :math:`\\mathcal{C}` the foreground
classes (``include_background=False``, the default: every slice contains background).

References:
    Zhou et al., "Learning deep features for discriminative localization", CVPR 2016.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.losses._utils import check_reduction
from weakseg.losses.base import LOSSES

__all__ = ["TagBCELoss", "tag_bce_loss"]


def tag_bce_loss(
    logits: torch.Tensor,
    tags: torch.Tensor,
    *,
    include_background: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-label BCE of the spatially pooled logits against image tags.

    Args:
        logits: ``(B, C, *spatial)`` class maps (pooled by their spatial mean).
        tags: ``(B, C)`` bool (or 0/1), classes present in each image.
        include_background: also classify class 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B, C')`` per image and class,
            ``C' = C - 1`` without the background).

    Shape:
        logits ``(B, C, *spatial)``, tags ``(B, C)``; a scalar, or ``(B, C')`` for ``"none"``.

    Example:
        >>> tags = torch.tensor([[True, True, False]])
        >>> float(tag_bce_loss(torch.zeros(1, 3, 4, 4), tags))  # log 2
        0.6931...
    """
    check_reduction(reduction)
    if logits.ndim < 3 or logits.ndim > 5:
        raise ValueError(f"logits must be (B, C, *spatial) with 1-3 spatial dims, got "
                         f"{tuple(logits.shape)}")
    if tags.shape != logits.shape[:2]:
        raise ValueError(f"tags shape {tuple(tags.shape)} does not match logits "
                         f"{tuple(logits.shape)}; expected (B, C)")
    start = 0 if include_background else 1
    if logits.shape[1] <= start:
        raise ValueError(f"tag_bce needs at least one foreground class, got logits "
                         f"{tuple(logits.shape)}")
    pooled = logits.mean(dim=tuple(range(2, logits.ndim)))[:, start:]
    target = tags[:, start:].to(pooled.dtype)
    per = F.binary_cross_entropy_with_logits(pooled, target, reduction="none")
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    return per


@LOSSES.register("tag_bce", help="multi-label BCE of globally pooled class maps vs image "
                 "tags (trains the CAM classifier, C13)")
class TagBCELoss(nn.Module):
    """Module form of :func:`tag_bce_loss`; reads the batch entry ``tags``
    (``data.priors: [tags]``)."""

    inputs = ("tags",)

    def __init__(self, *, include_background: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.include_background = bool(include_background)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        return tag_bce_loss(logits, tags, include_background=self.include_background,
                            reduction=self.reduction)
