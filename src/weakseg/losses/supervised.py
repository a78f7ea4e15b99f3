"""Full-supervision baseline: cross-entropy plus soft Dice.

.. math::

    \\mathcal{L} = w_{ce}\\, \\mathrm{CE}(S, y)
      + w_{dice} \\Big(1 - \\frac{1}{|K|}\\sum_{c \\in K}
        \\frac{2 \\sum_p s_p^c y_p^c + \\epsilon}{\\sum_p s_p^c + \\sum_p y_p^c + \\epsilon}\\Big)

with sums over all (non-ignored) pixels of the batch and :math:`K` the classes
(background excluded by default), as in the WSL4MIS full-supervision baseline.

References:
    Milletari et al., "V-Net", 3DV 2016 (soft Dice); Luo et al., MICCAI 2022 (WSL4MIS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.data.base import IGNORE_INDEX
from weakseg.losses._utils import check_logits_target
from weakseg.losses.base import LOSSES

__all__ = ["CEDiceLoss", "ce_dice_loss", "soft_dice_loss"]


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool = False,
    smooth: float = 1e-5,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Batch soft Dice loss ``1 − mean_c Dice_c`` over non-ignored pixels.

    Shape: logits ``(B, C, *spatial)``, target ``(B, *spatial)``; output scalar.
    """
    check_logits_target(logits, target)
    probs = logits.softmax(dim=1)
    valid = (target != ignore_index).unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(target.clamp_min(0).long(), logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = [0, *range(2, logits.ndim)]
    inter = (probs * onehot * valid).sum(dims)
    denom = (probs * valid).sum(dims) + (onehot * valid).sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    if not include_background:
        dice = dice[1:]
    return 1 - dice.mean()


def ce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    include_background: bool = False,
    smooth: float = 1e-5,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``ce_weight · CE + dice_weight · soft Dice`` (see module docstring).

    Example:
        >>> logits = torch.randn(2, 4, 8, 8); target = torch.randint(0, 4, (2, 8, 8))
        >>> float(ce_dice_loss(logits, target)) > 0
        True
    """
    check_logits_target(logits, target)
    ce = F.cross_entropy(logits, target.long(), ignore_index=ignore_index)
    if not (target != ignore_index).any():
        ce = logits.sum() * 0
    dice = soft_dice_loss(
        logits, target, include_background=include_background, smooth=smooth,
        ignore_index=ignore_index,
    )
    return ce_weight * ce + dice_weight * dice


@LOSSES.register("ce_dice", help="cross-entropy + soft Dice, the full-supervision baseline")
class CEDiceLoss(nn.Module):
    """Module form of :func:`ce_dice_loss`."""

    inputs = ("target",)
    #: learns from labelled pixels: refused on a data set without any (annotation none)
    needs_labels = True

    def __init__(
        self,
        *,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        include_background: bool = False,
        smooth: float = 1e-5,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.include_background = include_background
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ce_dice_loss(
            logits, target, ce_weight=self.ce_weight, dice_weight=self.dice_weight,
            include_background=self.include_background, smooth=self.smooth,
            ignore_index=self.ignore_index,
        )
