r"""Training toward a proposal (METHODS.md R5, C5, C10): ADM's second route.

Instead of descending a relaxed loss, alternate (a) a **proposal** — a target computed from
the network's current (detached) prediction, the image and the weak labels, discrete or
closed-form — and (b) cross-entropy toward it:

.. math::

    \mathcal{L} = -\frac{1}{|K|} \sum_{p \in K} \log s_p(\hat y_p)
    \quad\text{(hard proposal, } K \text{ = pixels it labels)},
    \qquad
    \mathcal{L} = -\frac{1}{|\Omega|} \sum_{p} \sum_c P_p^c \log s_p^c
    \quad\text{(soft proposal } P\text{)}.

The proposals are the registry :data:`~weakseg.losses.proposals.PROPOSALS`: ``graphcut``
(ADM, α-expansion; needs PyMaxflow), ``meanfield`` (dense CRF), ``pathak`` (constrained
KL projection) and ``cbst`` (class-balanced self-training)::

    loss:
      - {name: partial_ce}
      - name: proposal
        weight: 0.5
        params:
          proposal: {name: graphcut, lam: 2.0, sigma: 0.1}
          every: 1            # recompute at every step (k > 1: a per-image cache)
          start_epoch: 0      # > 0: the term is 0 (not computed) for the first epochs

**Starting late.** ADM starts its alternation from a network already trained on the weak
labels (Marin et al. CVPR 2019): a young network's proposal confirms its own mistakes (a
structure it does not predict yet is never proposed). ``start_epoch: n`` keeps the term at 0
with zero gradient, and the proposal uncomputed, for the first ``n`` epochs of the run (the
epoch counter advances with :meth:`ProposalLoss.epoch_step` and is checkpointed), so one run
is "gradient descent on the other terms, then ADM" within the same epoch budget.

**Refreshing.** ``every: 1`` recomputes the proposal of every batch. ``every: k > 1`` keeps
one proposal per training image (keyed by the batch's ``index``) and recomputes it when it is
``k`` or more training steps old — or when the image in the batch is not the one it was
computed for (a fingerprint of the pixels detects augmentation and crops, which change the
geometry: with random augmentation the cache rarely hits, so use it with ``augment: false``).
The cache, the step counter and the proposal's own state (CBST's round) are in
``state_dict()``, so a resumed run equals an uninterrupted one. In eval mode the proposal is
computed afresh and no state changes.

**Diagnostics** (:attr:`ProposalLoss.last_stats`, logged as ``<label>_<stat>``): ``kept``, the
fraction of pixels the proposal labels; ``empty``, the fraction of the batch's images where
it abstains everywhere (a batch with no kept pixel contributes 0 with zero gradient, not an
error); ``refreshed``, the fraction of images whose proposal was recomputed this step.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.losses.base import LOSSES
from weakseg.losses.proposals import PROPOSALS, ProposalMethod
from weakseg.losses.proposals.base import IGNORE_INDEX
from weakseg.registry import check_kwargs

__all__ = ["ProposalLoss", "proposal_cross_entropy"]


class _Cached(NamedTuple):
    target: torch.Tensor  # hard labels as int16 or soft labels as float32, on the CPU
    fingerprint: torch.Tensor  # (2,) float64, see _fingerprint
    step: int  # the training step it was computed at


def proposal_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy toward a proposal: partial CE (mean over labelled pixels, 0 with zero
    gradient when none) for hard ``(B, *spatial)`` targets with :data:`IGNORE_INDEX`, soft CE
    (mean over all pixels) for ``(B, C, *spatial)`` distributions.

    Example:
        >>> logits = torch.zeros(1, 2, 2, 2)
        >>> round(float(proposal_cross_entropy(logits, torch.tensor([[[0, 1], [-100, 1]]]))), 4)
        0.6931
    """
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"a soft proposal must have the logits' shape {tuple(logits.shape)}"
                             f", got {tuple(target.shape)}")
        return -(target.to(logits.dtype) * logits.log_softmax(1)).sum(1).mean()
    per_pixel = F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX,
                                reduction="none")
    return per_pixel.sum() / (target != IGNORE_INDEX).sum().clamp_min(1)


def _fingerprint(image: torch.Tensor) -> torch.Tensor:
    """Two position-weighted sums per image ``(B, 2)`` float64: they change when the image is
    flipped, rotated, cropped or shifted (used to validate cached proposals)."""
    flat = image.detach().double().flatten(1)
    n = flat.shape[1]
    position = torch.arange(n, dtype=torch.float64, device=flat.device)
    weights = torch.stack([(position + 1) / n, torch.frac(position * 0.6180339887498949)])
    return torch.stack([(flat * w).sum(1) for w in weights], 1).cpu()


@LOSSES.register("proposal", help="cross-entropy toward a proposal (proposal: {name: graphcut | "
                 "meanfield | pathak | cbst}) computed from the detached prediction (ADM, R5)")
class ProposalLoss(nn.Module):
    """(Partial) cross-entropy toward a registered proposal of the detached prediction.

    Args:
        proposal: a name of :data:`~weakseg.losses.proposals.PROPOSALS`, or ``{name: <name>,
            **params}`` with its keyword parameters (e.g. ``lam``, ``sigma``).
        every: recompute a training image's proposal every ``every`` steps (1: every step;
            > 1 keeps a per-image cache keyed by the batch ``index``).
        start_epoch: the epoch (0-based) from which the term is active; before it the loss is 0
            with zero gradient and no proposal is computed.
        num_classes: injected from the data (CBST's spatial priors, Pathak's multipliers).

    :attr:`inputs` are the proposal's batch entries (plus ``index`` and ``image`` with a
    cache); :attr:`label` (the proposal's name) names the term in the logs.

    Example:
        >>> loss = ProposalLoss({"name": "cbst", "p0": 0.5})
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> value = loss(logits, target=torch.full((2, 8, 8), -100))
        >>> sorted(loss.last_stats)
        ['empty', 'kept', 'refreshed']
    """

    inputs: tuple[str, ...]

    def __init__(self, proposal: str | Mapping[str, Any] = "graphcut", *, every: int = 1,
                 start_epoch: int = 0, num_classes: int | None = None) -> None:
        super().__init__()
        if isinstance(proposal, str):
            name, params = proposal, {}
        elif isinstance(proposal, Mapping) and isinstance(proposal.get("name"), str):
            params = dict(proposal)
            name = params.pop("name")
        else:
            raise ValueError(f"proposal must be a name or a mapping with 'name: <proposal>', "
                             f"got {proposal!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer ≥ 1 (steps between refreshes), "
                             f"got {every!r}")
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"start_epoch must be an integer ≥ 0 (the first epoch with the "
                             f"proposal), got {start_epoch!r}")
        factory = PROPOSALS.get(name)
        check_kwargs(factory, params, f"proposal '{name}'", injected=("num_classes",))
        if num_classes is not None and "num_classes" in _parameters(factory):
            params["num_classes"] = num_classes
        self.proposal: ProposalMethod = PROPOSALS.build(name, **params)
        self.name = name
        self.label = name
        self.every = every
        self.start_epoch = start_epoch
        self.epoch = 0
        cache_inputs = ("index", "image") if every > 1 else ()
        self.inputs = tuple(dict.fromkeys((*self.proposal.inputs, *cache_inputs)))
        self.step = 0
        self.cache: dict[int, _Cached] = {}
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, **batch: torch.Tensor) -> torch.Tensor:
        """``batch``: the entries of :attr:`inputs` by key."""
        if logits.ndim < 3 or logits.ndim > 5:
            raise ValueError(f"logits must be (B, C, *spatial) with 1-3 spatial dims, got "
                             f"{tuple(logits.shape)}")
        detached = logits.detach()
        b = logits.shape[0]
        if self.epoch < self.start_epoch:
            zero = torch.zeros((), device=logits.device)
            self.last_stats = {"kept": zero, "empty": zero, "refreshed": zero}
            return logits.sum() * 0.0
        if self.every == 1 or not self.training:
            target = self.proposal(detached, batch)
            refreshed = b
        else:
            target, refreshed = self._cached(detached, batch)
        if self.training:
            self.step += 1
        loss = proposal_cross_entropy(logits, target)
        if target.is_floating_point():
            kept = torch.ones(b, device=logits.device)
        else:
            kept = (target != IGNORE_INDEX).flatten(1).float().mean(1)
        self.last_stats = {
            "kept": kept.mean().detach(),
            "empty": (kept == 0).float().mean().detach(),
            "refreshed": torch.tensor(refreshed / b),
        }
        return loss

    def _cached(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, int]:
        if "index" not in batch or "image" not in batch:
            raise ValueError("a cached proposal (every > 1) needs the batch entries 'index' "
                             "and 'image'")
        index = [int(i) for i in batch["index"].reshape(-1).tolist()]
        prints = _fingerprint(batch["image"])
        stale = []
        for row, key in enumerate(index):
            entry = self.cache.get(key)
            if (entry is None or self.step - entry.step >= self.every
                    or not torch.allclose(entry.fingerprint, prints[row], rtol=1e-12, atol=0.0)
                    or tuple(entry.target.shape[-(logits.ndim - 2):]) != tuple(logits.shape[2:])):
                stale.append(row)
        if stale:
            rows = torch.tensor(stale, device=logits.device)
            sub = {k: v.index_select(0, rows.to(v.device)) if v.ndim > 0
                   and v.shape[0] == logits.shape[0] else v for k, v in batch.items()}
            fresh = self.proposal(logits.index_select(0, rows), sub)
            for j, row in enumerate(stale):
                value = fresh[j]
                stored = value.float() if value.is_floating_point() else value.to(torch.int16)
                self.cache[index[row]] = _Cached(stored.cpu(), prints[row], self.step)
        target = torch.stack([self.cache[k].target for k in index])
        dtype = torch.float32 if target.is_floating_point() else torch.long
        return target.to(device=logits.device, dtype=dtype), len(stale)

    def epoch_step(self) -> None:
        """End of an epoch: the epoch counter and, once the term is active, the proposal's
        schedule (CBST's round) advance."""
        if self.epoch >= self.start_epoch:
            self.proposal.epoch_step()
        self.epoch += 1

    def get_extra_state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch,
                "cache": {k: {"target": v.target, "fingerprint": v.fingerprint, "step": v.step}
                          for k, v in self.cache.items()}}

    def set_extra_state(self, state: Any) -> None:
        self.step = int(state["step"])
        self.epoch = int(state.get("epoch", 0))  # checkpoints before start_epoch: 0
        self.cache = {int(k): _Cached(v["target"], v["fingerprint"], int(v["step"]))
                      for k, v in state["cache"].items()}

    def extra_repr(self) -> str:
        return (f"proposal='{self.name}', every={self.every}, start_epoch={self.start_epoch}, "
                f"cached={len(self.cache)}")


def _parameters(factory: Any) -> list[str]:
    return list(inspect.signature(factory).parameters)
