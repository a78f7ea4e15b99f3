r"""Pathak's constrained proposal (METHODS.md C5) in the proposal registry.

The soft target :math:`P_p \propto s_p \exp(-\beta^\top f_p)`, the KL projection of the
prediction onto the (affine) constraints of a family of :data:`weakseg.constrain.CONSTRAINTS`,
exactly as the ``proposal`` objective of the ``constraint`` loss computes it (the same
code: :meth:`weakseg.losses.constraints.ConstraintLoss.proposal_target`). Trained toward with
soft cross-entropy ``mean_p −Σ_c P_p^c log s_p^c``, it gives the same loss as
``{name: constraint, params: {constraint: ..., objective: proposal}}``.

Reference:
    Pathak, Krähenbühl & Darrell, "Constrained convolutional neural networks for weakly
    supervised segmentation", ICCV 2015.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from weakseg.losses.constraints import ConstraintLoss
from weakseg.losses.proposals.base import PROPOSALS, ProposalMethod

__all__ = ["PathakProposal"]


@PROPOSALS.register("pathak", help="Pathak's constrained proposal P ∝ s·exp(-βᵀf) for an "
                    "affine constraint family (C5), a soft target")
class PathakProposal(ProposalMethod):
    """Pathak's proposal for ``constraint`` (a family name or ``{family: ..., **params}`` as in
    the ``constraint`` loss), ``iterations`` dual steps of size ``lr``. Reads the family's
    batch entries (e.g. ``bounds``); returns soft labels.

    Example:
        >>> prop = PathakProposal(constraint={"family": "size"}, num_classes=2)
        >>> logits = torch.zeros(1, 2, 4, 4)
        >>> p = prop(logits, {"bounds": torch.tensor([[[0.0, 16.0], [8.0, 12.0]]])})
        >>> p.shape, bool(p[:, 1].sum() >= 7.5)
        (torch.Size([1, 2, 4, 4]), True)
    """

    soft = True

    def __init__(self, *, constraint: str | Mapping[str, Any] = "size",
                 iterations: int = 30, lr: float = 4.0,
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.loss = ConstraintLoss(constraint, {"method": "proposal", "iterations": iterations,
                                                "lr": lr}, num_classes=num_classes)
        self.inputs = self.loss.inputs

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self.inputs if k not in batch]
        if missing:
            raise ValueError(f"the proposal 'pathak' needs the batch entries {missing}")
        return self.loss.proposal_target(logits.detach(), **{k: batch[k] for k in self.inputs})
