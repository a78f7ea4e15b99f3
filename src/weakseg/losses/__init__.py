"""Losses: each a function plus an ``nn.Module`` taking logits ``(B, C, *spatial)``.

Registered modules declare the batch entries they consume in ``inputs``
(``"target"`` = the training annotation, ``"image"`` = the input image), so a
:class:`~weakseg.losses.recipe.LossRecipe` can combine any of them.
"""

from __future__ import annotations

from weakseg.losses.base import LOSSES
from weakseg.losses.partial import PartialCrossEntropyLoss, partial_cross_entropy
from weakseg.losses.supervised import CEDiceLoss, ce_dice_loss, soft_dice_loss

__all__ = [
    "LOSSES",
    "CEDiceLoss",
    "PartialCrossEntropyLoss",
    "ce_dice_loss",
    "partial_cross_entropy",
    "soft_dice_loss",
]
