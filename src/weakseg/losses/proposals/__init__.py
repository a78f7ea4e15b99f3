"""Proposals (METHODS.md R5, C5, C10): targets computed from the detached prediction.

A proposal maps ``(logits, batch)`` to hard labels ``(B, *spatial)`` with
:data:`~weakseg.labels.IGNORE_INDEX` where it abstains, or soft labels ``(B, C, *spatial)``;
the loss ``proposal`` (:class:`weakseg.losses.proposal.ProposalLoss`) trains toward it.
Registered in :data:`PROPOSALS`:

=============  ================================================================================
``graphcut``   Potts MAP by graph cut / α-expansion, weak labels as hard constraints (ADM, R5)
``meanfield``  dense CRF mean-field inference with the filtering backends (ADM, R5)
``pathak``     Pathak's constrained KL projection for an affine constraint family (C5)
``cbst``       class-balanced self-training with a rounds schedule (C10)
=============  ================================================================================
"""

from __future__ import annotations

from weakseg.losses.proposals.base import PROPOSALS, ProposalMethod, check_proposal_inputs
from weakseg.losses.proposals.graphcut import (
    GraphCutProposal,
    alpha_expansion,
    graphcut_labels,
    grid_edges,
    potts_energy,
)
from weakseg.losses.proposals.meanfield import MeanFieldProposal, mean_field
from weakseg.losses.proposals.pathak import PathakProposal
from weakseg.losses.proposals.selftraining import (
    CBSTProposal,
    RoundSchedule,
    class_balanced_labels,
)

__all__ = [
    "PROPOSALS",
    "CBSTProposal",
    "GraphCutProposal",
    "MeanFieldProposal",
    "PathakProposal",
    "ProposalMethod",
    "RoundSchedule",
    "alpha_expansion",
    "check_proposal_inputs",
    "class_balanced_labels",
    "graphcut_labels",
    "grid_edges",
    "mean_field",
    "potts_energy",
]
