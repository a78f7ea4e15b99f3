r"""Lagrangian treatment of constraints :math:`g \le 0` (METHODS.md C5).

**Stochastic primal-dual.** The network minimises :math:`\sum_k \lambda_k g_k(\theta)` (plus its
other losses) with the multipliers held fixed, and after each step the multipliers take one
projected dual ascent step :math:`\lambda \leftarrow \max(0, \lambda + \eta\, \bar g)` with the
batch's mean violation :math:`\bar g`. :class:`LagrangianMultipliers` holds λ as a buffer, so it
is saved with ``state_dict()`` and follows ``.to(device)``. Which constraints share a
multiplier is set by λ's shape: λ broadcasts against ``g`` and a dual step averages ``g``
over the broadcast dimensions (e.g. λ of shape ``(C, 2)`` against ``g`` of shape
``(B, C, 2)``: one λ per class and bound side, shared by all images). For one λ per training
image, give λ the shape ``(N, ...)`` and pass the images' data-set indices as ``index``.

**Pathak's proposals.** For constraints that are *linear* in the probabilities, the KL
projection of the network's prediction :math:`S` onto the constraint set,
:math:`\min_{P} \mathrm{KL}(P \,\|\, S)` s.t. :math:`g(P) \le 0`, has the closed form
:math:`P_p \propto s_p \exp(-\beta^\top f_p)` with :math:`f_p = \partial g / \partial P_p` and
:math:`\beta \ge 0` maximising the concave dual; :func:`pathak_proposal` finds β by projected
gradient ascent and returns :math:`P`, a soft target for cross-entropy.

References:
    Pathak, Krähenbühl & Darrell, "Constrained convolutional neural networks for weakly
    supervised segmentation", ICCV 2015.
    Zhou et al., "Prior-aware neural network for partially-supervised multi-organ
    segmentation", ICCV 2019.
    Nandwani et al., "A primal dual formulation for deep learning with constraints",
    NeurIPS 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.constrain.penalties import active_entries, reduce_objective

__all__ = ["LagrangianMultipliers", "Proposal", "pathak_proposal"]


def _zero_inactive(g: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    return torch.where(active, g, torch.zeros((), dtype=g.dtype, device=g.device))


class LagrangianMultipliers(nn.Module):
    r"""Dual variables :math:`\lambda \ge 0` of a set of constraints, with their dual update.

    Args:
        shape: λ's shape; it must broadcast against the ``g`` passed to :meth:`objective`
            (or, with ``index``, be ``(N, *slots)`` for ``N`` training images).
        init: initial value (``>= 0``).
        lr: default dual step size η.

    Example:
        >>> lam = LagrangianMultipliers((3, 2), lr=0.5)
        >>> g = torch.randn(4, 3, 2)            # (B, C, 2): lower / upper size bounds
        >>> loss = lam.objective(g)            # 0 at first: λ starts at 0
        >>> lam.dual_step(g)                   # λ ← max(0, λ + 0.5 · mean over the batch)
        >>> bool((lam.lam >= 0).all())
        True
    """

    lam: torch.Tensor

    def __init__(
        self, shape: int | Sequence[int] = (), *, init: float = 0.0, lr: float = 1.0
    ) -> None:
        super().__init__()
        if not init >= 0 or not math.isfinite(init):
            raise ValueError(f"Lagrange multipliers must start >= 0, got init={init}")
        self.lr = self._check_lr(lr)
        size = (shape,) if isinstance(shape, int) else tuple(shape)
        self.register_buffer("lam", torch.full(size, float(init)))

    @staticmethod
    def _check_lr(lr: float) -> float:
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"dual step size must be a finite number >= 0, got {lr}")
        return float(lr)

    def values(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """λ (detached), or the rows ``λ[index]`` for the images of a batch."""
        lam = self.lam.detach()
        return lam if index is None else lam[index]

    def objective(
        self,
        g: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        reduction: str = "sum",
    ) -> torch.Tensor:
        r"""The Lagrangian term :math:`\sum_k \lambda_k g_k` with λ held fixed (detached).

        Args:
            g: constraint values broadcastable with λ (``-inf`` = inactive).
            mask: optional bool, broadcastable to ``g``.
            index: optional ``(B,)`` int64 rows of λ to use (per-image multipliers).
            reduction: ``"sum"`` (the Lagrangian), ``"mean"`` over active entries, ``"none"``.

        Shape:
            ``g`` any shape; output scalar, or the broadcast shape for ``"none"``.
        """
        active = active_entries(g, mask)
        lam = self.values(index).to(g.dtype)
        try:
            values = lam * _zero_inactive(g, active)
        except RuntimeError as err:
            raise ValueError(
                f"constraint values of shape {tuple(g.shape)} do not broadcast with the "
                f"Lagrange multipliers of shape {tuple(lam.shape)}"
            ) from err
        return reduce_objective(values, active, reduction)

    def forward(self, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.objective(g, mask=mask)

    @torch.no_grad()
    def dual_step(
        self,
        g: torch.Tensor,
        lr: float | None = None,
        *,
        mask: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> None:
        r"""Projected dual ascent :math:`\lambda \leftarrow \max(0, \lambda + \eta\,\bar g)`.

        ``g`` is averaged over its active entries down to λ's shape (the dimensions λ is
        broadcast along, e.g. the batch); multipliers with no active entry are unchanged.
        With ``index``, row ``index[i]`` of λ is updated with ``g[i]`` (repeated indices
        add up). λ is replaced, not modified in place, so a graph built by
        :meth:`objective` before the step can still be back-propagated.

        Shape:
            ``g``: any shape that λ (or ``λ[index]``) broadcasts to.
        """
        step = self.lr if lr is None else self._check_lr(lr)
        active = active_entries(g.detach(), mask)
        g0 = _zero_inactive(g.detach(), active).to(self.lam.dtype)
        target = self.lam.shape if index is None else (len(index), *self.lam.shape[1:])
        try:
            total = g0.sum_to_size(target)
            count = active.expand(g0.shape).to(self.lam.dtype).sum_to_size(target)
        except RuntimeError as err:
            raise ValueError(
                f"constraint values of shape {tuple(g.shape)} cannot be averaged to the "
                f"Lagrange multipliers' shape {tuple(target)}"
            ) from err
        update = step * total / count.clamp_min(1)
        if index is None:
            new = self.lam + update
        else:
            new = self.lam.index_add(0, index.to(self.lam.device), update)
        self.lam = new.clamp_min(0)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.lam.shape)}, lr={self.lr:g}"


class Proposal(NamedTuple):
    """Result of :func:`pathak_proposal`."""

    probs: torch.Tensor
    """``(B, C, *spatial)`` the proposal distribution (a soft target, detached)."""
    beta: torch.Tensor
    """The dual variables (shape of ``g``), multipliers of the constraints in pixel units."""
    g: torch.Tensor
    """The constraint values of the proposal (``<= 0`` where it satisfies them)."""


def pathak_proposal(
    logits: torch.Tensor,
    constraint_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    iterations: int = 50,
    lr: float = 4.0,
    mask: torch.Tensor | None = None,
) -> Proposal:
    r"""Pathak's constrained proposal :math:`P_p \propto s_p \exp(-\beta^\top f_p)` (C5).

    Solves :math:`\min_P \sum_p \mathrm{KL}(P_p \,\|\, s_p)` subject to :math:`g(P) \le 0`
    for a ``constraint_fn`` that is **linear (affine) in the probabilities**, e.g.
    :func:`~weakseg.constrain.families.size_constraints`,
    :func:`~weakseg.constrain.families.tag_constraints` or the parts of
    :func:`~weakseg.constrain.families.box_constraints` (not the centroid, which is a
    ratio). The features :math:`f_p = \partial g / \partial P_p` come from autograd (one
    vector-Jacobian product per iteration, all constraints at once), and β takes
    ``iterations`` steps of projected gradient ascent on the dual,
    :math:`\beta \leftarrow \max(0, \beta + \mathrm{lr}\; g(P_\beta))`.

    Because the constraints of :mod:`weakseg.constrain.families` are divided by
    :math:`|\Omega|`, the exponent is :math:`|\Omega|\,\beta^\top f_p`: β are the
    multipliers of the constraints in pixel units, the step is ``lr / |Ω|`` in those units,
    and a violation of a fraction ``v`` of the image shifts the logits of the pixels
    concerned by ``lr · v`` per iteration (``lr`` of a few units converges in tens of
    iterations for size constraints; constraints on small regions need more).

    Train the network towards the proposal with soft-target cross-entropy,
    ``F.cross_entropy(logits, proposal.probs)``.

    Args:
        logits: ``(B, C, *spatial)`` network outputs (detached internally).
        constraint_fn: logits ``(B, C, *spatial)`` → constraint values ``g`` (any shape,
            ``-inf`` = inactive), e.g. ``lambda z: size_constraints(z, bounds).g``.
        iterations: dual ascent steps.
        lr: dual step size (see above).
        mask: optional bool broadcastable to ``g``: constraints to use.

    Returns:
        :class:`Proposal` ``(probs, beta, g)``.

    Shape:
        ``probs`` like ``logits``; ``beta`` and ``g`` like ``constraint_fn``'s output.

    Reference:
        Pathak, Krähenbühl & Darrell, "Constrained convolutional neural networks for weakly
        supervised segmentation", ICCV 2015, sec. 3–4.

    Example:
        >>> from weakseg.constrain.families import size_constraints
        >>> logits = torch.zeros(1, 2, 8, 8); logits[:, 0] = 3.0   # predicts background
        >>> bounds = torch.tensor([[[0.0, 64.0], [20.0, 40.0]]])     # foreground in [20, 40]
        >>> prop = pathak_proposal(logits, lambda z: size_constraints(z, bounds).g)
        >>> bool(prop.probs[:, 1].sum() >= 19.5)
        True
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, C, *spatial), got {tuple(logits.shape)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"dual step size lr must be a finite number > 0, got {lr}")
    log_s = F.log_softmax(logits.detach(), dim=1)
    num_pixels = math.prod(logits.shape[2:])
    with torch.enable_grad():
        # g is affine in P, so its Jacobian is the same at every P: take it at the uniform
        # distribution, where log P is finite everywhere.
        uniform = torch.full_like(log_s, 1.0 / logits.shape[1]).requires_grad_()
        g_uniform = constraint_fn(uniform.log())
        active = active_entries(g_uniform.detach(), mask)
        g_linear = _zero_inactive(g_uniform, active)

    def propose(beta: torch.Tensor) -> torch.Tensor:
        if not g_linear.requires_grad:  # no constraint depends on the prediction
            return log_s
        (features,) = torch.autograd.grad(g_linear, uniform, grad_outputs=beta,
                                          retain_graph=True)
        return F.log_softmax(log_s - num_pixels * features, dim=1)

    beta = torch.zeros_like(g_linear.detach())
    with torch.no_grad():
        log_p = log_s
        g = constraint_fn(log_p)
        for _ in range(iterations):
            beta = (beta + lr * _zero_inactive(g, active)).clamp_min(0)
            log_p = propose(beta)
            g = constraint_fn(log_p)
    return Proposal(log_p.exp(), beta, g)
