"""Losses: each a function plus an ``nn.Module`` taking logits ``(B, C, *spatial)``.

Registered modules declare the batch entries they consume in ``inputs``
(``"target"`` = the training annotation, ``"image"`` = the input image; the constraint loss
``constraint`` — and its aliases ``size``, ``tags``, ``box`` — reads the entries of its family,
``"bounds"``, ``"tags"``, ``"boxes"``, which the trainer fills from ``data.priors``; the
proposal loss ``proposal`` reads its proposal's entries, see
:mod:`weakseg.losses.proposals`), so a
:class:`~weakseg.losses.recipe.LossRecipe` can combine any of them. Entries a loss reads only
when the batch has them are its ``optional_inputs`` (e.g. ``labelled_classes`` of
``marginal_ce`` and ``prior_aware``, which ``sim:partial_sites`` gives every slice).
"""

from __future__ import annotations

from weakseg.losses.base import LOSSES
from weakseg.losses.constraints import (
    BoxConstraintLoss,
    ConstraintLoss,
    SizeConstraintLoss,
    TagConstraintLoss,
)
from weakseg.losses.crf import (
    DenseCRFLoss,
    NormalizedCutLoss,
    dense_crf_loss,
    normalized_cut_loss,
)
from weakseg.losses.crf_local import (
    GridCRFLoss,
    LocalWindowCRFLoss,
    grid_crf_loss,
    local_window_crf_loss,
)
from weakseg.losses.distribution import LabelDistributionLoss, label_distribution_loss
from weakseg.losses.entropy import (
    EntropyLoss,
    MarginalPriorLoss,
    MutualInformationLoss,
    entropy_loss,
    marginal_prior_loss,
    mutual_information_loss,
)
from weakseg.losses.partial import (
    PartialCrossEntropyLoss,
    PseudoMaskCrossEntropyLoss,
    partial_cross_entropy,
)
from weakseg.losses.partial_labels import (
    MarginalCrossEntropyLoss,
    PriorAwareLoss,
    marginal_cross_entropy,
    prior_aware_loss,
)
from weakseg.losses.proposal import ProposalLoss, proposal_cross_entropy
from weakseg.losses.supervised import CEDiceLoss, ce_dice_loss, soft_dice_loss
from weakseg.losses.tags import TagBCELoss, tag_bce_loss

__all__ = [
    "LOSSES",
    "BoxConstraintLoss",
    "CEDiceLoss",
    "ConstraintLoss",
    "DenseCRFLoss",
    "EntropyLoss",
    "GridCRFLoss",
    "LabelDistributionLoss",
    "LocalWindowCRFLoss",
    "MarginalCrossEntropyLoss",
    "MarginalPriorLoss",
    "MutualInformationLoss",
    "NormalizedCutLoss",
    "PartialCrossEntropyLoss",
    "PriorAwareLoss",
    "ProposalLoss",
    "PseudoMaskCrossEntropyLoss",
    "SizeConstraintLoss",
    "TagBCELoss",
    "TagConstraintLoss",
    "ce_dice_loss",
    "dense_crf_loss",
    "entropy_loss",
    "grid_crf_loss",
    "label_distribution_loss",
    "local_window_crf_loss",
    "marginal_cross_entropy",
    "marginal_prior_loss",
    "mutual_information_loss",
    "normalized_cut_loss",
    "partial_cross_entropy",
    "prior_aware_loss",
    "proposal_cross_entropy",
    "soft_dice_loss",
    "tag_bce_loss",
]
