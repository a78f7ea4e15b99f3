"""The proposal registry and the base class of a proposal (kept apart so modules can register).

A *proposal* maps the network's current prediction and the batch to a training target:

* hard labels ``(B, *spatial)`` int64 with :data:`~weakseg.labels.IGNORE_INDEX` where it
  abstains (:attr:`ProposalMethod.soft` is ``False``), or
* soft labels ``(B, C, *spatial)``, a distribution per pixel (``soft`` is ``True``).

The loss :class:`~weakseg.losses.proposal.ProposalLoss` (``name: proposal``) trains the
network toward it with (partial) cross-entropy.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from weakseg.labels import IGNORE_INDEX
from weakseg.registry import Registry

__all__ = ["IGNORE_INDEX", "PROPOSALS", "ProposalMethod", "check_proposal_inputs"]


class ProposalMethod(nn.Module):
    """Base class: ``forward(logits, batch) -> target`` (no gradient; ``logits`` detached).

    Subclasses set :attr:`inputs` (the batch entries they read, e.g. ``("target",
    "image")``) and :attr:`soft`; state that changes over training (a rounds schedule) lives
    in the module's ``state_dict`` and advances in :meth:`epoch_step`.
    """

    inputs: tuple[str, ...] = ("target",)
    soft: bool = False

    def forward(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def epoch_step(self) -> None:
        """End of an epoch (a rounds schedule advances here)."""


def check_proposal_inputs(logits: torch.Tensor, batch: Mapping[str, torch.Tensor],
                          keys: tuple[str, ...]) -> None:
    """Logits ``(B, C, *spatial)`` (1–3 spatial dims) and the ``keys`` of ``batch`` present
    with the logits' batch size (and, for ``target`` / ``image``, spatial size)."""
    if logits.ndim < 3 or logits.ndim > 5:
        raise ValueError(
            f"logits must be (B, C, *spatial) with 1-3 spatial dims, got {tuple(logits.shape)}")
    for key in keys:
        if key not in batch:
            raise ValueError(f"the proposal needs the batch entry '{key}'")
    if "target" in keys:
        target = batch["target"]
        if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits "
                             f"{tuple(logits.shape)}; expected (B, *spatial)")
    if "image" in keys:
        image = batch["image"]
        if image.ndim != logits.ndim or image.shape[0] != logits.shape[0] \
                or image.shape[2:] != logits.shape[2:]:
            raise ValueError(f"image shape {tuple(image.shape)} does not match logits "
                             f"{tuple(logits.shape)}; expected (B, K, *spatial)")


#: Proposals by name: ``proposal: {name: graphcut, ...}`` in a ``proposal`` loss term.
PROPOSALS: Registry[type[ProposalMethod]] = Registry("proposal")
