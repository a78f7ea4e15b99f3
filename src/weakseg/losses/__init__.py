"""Losses: each a function plus an ``nn.Module`` taking logits ``(B, C, *spatial)``.

Registered modules declare the batch entries they consume in ``inputs``
(``"target"`` = the training annotation, ``"image"`` = the input image), so a
:class:`~weakseg.losses.recipe.LossRecipe` can combine any of them.
"""

from __future__ import annotations

from torch import nn

from weakseg.losses.partial import PartialCrossEntropyLoss, partial_cross_entropy
from weakseg.losses.supervised import CEDiceLoss, ce_dice_loss, soft_dice_loss
from weakseg.registry import Registry

__all__ = [
    "LOSSES",
    "CEDiceLoss",
    "PartialCrossEntropyLoss",
    "ce_dice_loss",
    "partial_cross_entropy",
    "soft_dice_loss",
]

LOSSES: Registry[type[nn.Module]] = Registry("loss")
LOSSES.register("partial_ce", help="partial cross-entropy on labelled pixels (R1)")(
    PartialCrossEntropyLoss
)
LOSSES.register("ce_dice", help="cross-entropy + soft Dice, the full-supervision baseline")(
    CEDiceLoss
)
