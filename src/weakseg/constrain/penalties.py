r"""How an inequality constraint :math:`g \le 0` becomes an objective (METHODS.md C3, C4, C5).

A constraint value ``g`` is any tensor, one entry per constraint (e.g. ``(B, C, 2)`` for the
lower and upper size bounds of every class of every image); ``g <= 0`` means satisfied.
Entries equal to ``-inf`` are *inactive* (e.g. a size bound ``(0, inf)``): they contribute
exactly 0 to every objective and receive no gradient. An optional boolean ``mask``
(broadcastable to ``g``) switches off more entries the same way.

* **Quadratic penalty** (C3):  :math:`\psi(z) = \max(0, z)^2`.
* **Extended log-barrier** (C4), with :math:`t > 0`:

  .. math::

      \tilde\psi_t(z) = \begin{cases}
          -\frac{1}{t}\log(-z) & z \le -\frac{1}{t^2} \\
          t z - \frac{1}{t}\log\frac{1}{t^2} + \frac{1}{t} & \text{otherwise}
      \end{cases}

  It is finite everywhere (also for violated constraints, unlike the standard barrier),
  continuous with a continuous derivative at :math:`z = -1/t^2` (value
  :math:`\frac{2\log t}{t}`, slope :math:`t`), convex (strictly on the barrier branch,
  linear on the extension) and approaches the hard indicator of :math:`z \le 0` as ``t``
  grows; :class:`LogBarrierSchedule` grows ``t`` once per epoch.
* **Lagrangian** (C5): :math:`\sum_k \lambda_k g_k` with dual variables held by
  :class:`~weakseg.constrain.lagrangian.LagrangianMultipliers`.

Everything is elementwise on ``g`` (one tensor op for all constraints, no Python loop).
:func:`weakseg.constrain.apply` picks the method by name and reduces.

References:
    Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation",
    Medical Image Analysis 2019.
    Kervadec et al., "Constrained deep networks: Lagrangian optimization via log-barrier
    extensions", Medical Image Analysis 2022 (arXiv:1904.04205).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "REDUCTIONS",
    "LogBarrierSchedule",
    "active_entries",
    "log_barrier_extension",
    "quadratic_penalty",
    "reduce_objective",
]

REDUCTIONS = ("mean", "sum", "none")


def _check_t(t: float) -> float:
    t = float(t)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"log-barrier t must be a finite number > 0, got {t}")
    return t


def active_entries(g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool tensor of the active constraints: ``g != -inf`` and ``mask`` (if given).

    NaN entries count as active so that they propagate instead of being hidden.
    """
    active = g != float("-inf")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"constraint mask must be a bool tensor, got {mask.dtype}")
        active = active & mask
    return active


def quadratic_penalty(g: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Quadratic penalty :math:`\max(0, g)^2`, elementwise (C3).

    Zero (with zero gradient) wherever the constraint holds; :math:`g^2` where it is violated.

    Args:
        g: constraint values, any shape; ``g <= 0`` is satisfied, ``-inf`` is inactive.
        mask: optional bool, broadcastable to ``g``; ``False`` entries give 0.

    Shape:
        ``g`` any shape; output the broadcast shape of ``g`` and ``mask``.

    Reference:
        Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation",
        MedIA 2019.

    Example:
        >>> quadratic_penalty(torch.tensor([-1.0, 0.0, 0.5]))
        tensor([0.0000, 0.0000, 0.2500])
    """
    active = active_entries(g, mask)
    safe = torch.where(active, g, torch.zeros((), dtype=g.dtype, device=g.device))
    return torch.where(active, torch.relu(safe).square(), torch.zeros_like(safe))


def log_barrier_extension(
    g: torch.Tensor, t: float, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Extended log-barrier :math:`\tilde\psi_t(g)`, elementwise (C4).

    .. math::

        \tilde\psi_t(z) = -\tfrac{1}{t}\log(-z) \text{ if } z \le -\tfrac{1}{t^2},
        \quad t z - \tfrac{1}{t}\log\tfrac{1}{t^2} + \tfrac{1}{t} \text{ otherwise.}

    Values are negative deep inside the feasible set (a barrier rewards slack), finite for
    violated constraints (slope ``t``), and 0 for inactive entries (``-inf`` or masked).

    Args:
        g: constraint values, any shape; ``g <= 0`` is satisfied, ``-inf`` is inactive.
        t: barrier parameter ``> 0`` (larger = closer to the hard constraint); usually
            :attr:`LogBarrierSchedule.t`.
        mask: optional bool, broadcastable to ``g``; ``False`` entries give 0.

    Shape:
        ``g`` any shape; output the broadcast shape of ``g`` and ``mask``.

    Reference:
        Kervadec et al., "Constrained deep networks: Lagrangian optimization via log-barrier
        extensions", MedIA 2022 (arXiv:1904.04205), eq. (5).

    Example:
        >>> log_barrier_extension(torch.tensor([-1.0, 0.0]), t=5.0)
        tensor([-0.0000, 0.8438])
    """
    t = _check_t(t)
    active = active_entries(g, mask)
    safe = torch.where(active, g, torch.full((), -1.0, dtype=g.dtype, device=g.device))
    switch = -1.0 / t**2
    # the clamp keeps log() finite on the branch that ``where`` discards (no NaN gradients)
    barrier = -torch.log(-safe.clamp(max=switch)) / t
    extension = t * safe + (2.0 * math.log(t) + 1.0) / t
    value = torch.where(safe <= switch, barrier, extension)
    return torch.where(active, value, torch.zeros_like(value))


def reduce_objective(
    values: torch.Tensor, active: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Reduce elementwise objective ``values``: ``"mean"`` over the *active* entries (0 with
    zero gradient when none is active), ``"sum"``, or ``"none"`` (unchanged)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got '{reduction}'")
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    count = active.expand(values.shape).sum()
    return total / count.clamp_min(1)


class LogBarrierSchedule:
    """The log-barrier parameter ``t``: ``t0``, multiplied by ``mult`` at every :meth:`step`
    (call it once per epoch), capped at ``t_max``; its state goes into checkpoints.

    Example:
        >>> schedule = LogBarrierSchedule(t0=5.0, mult=1.1)
        >>> schedule.step()
        5.5
        >>> schedule.state_dict()["epoch"]
        1
    """

    def __init__(self, t0: float = 5.0, mult: float = 1.1, t_max: float | None = None) -> None:
        t0 = _check_t(t0)
        if not math.isfinite(mult) or mult < 1.0:
            raise ValueError(f"log-barrier t multiplier must be >= 1, got {mult}")
        if t_max is not None and not t_max >= t0:
            raise ValueError(f"log-barrier t_max must be >= t0={t0}, got {t_max}")
        self.t0 = t0
        self.mult = float(mult)
        self.t_max = None if t_max is None else float(t_max)
        self.epoch = 0
        self._t = t0

    @property
    def t(self) -> float:
        """The current barrier parameter."""
        return self._t

    def step(self) -> float:
        """Advance one epoch; returns the new ``t``."""
        self.epoch += 1
        t = self._t * self.mult
        self._t = t if self.t_max is None else min(t, self.t_max)
        return self._t

    def state_dict(self) -> dict[str, Any]:
        return {"t": self._t, "epoch": self.epoch, "t0": self.t0, "mult": self.mult,
                "t_max": self.t_max}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"t", "epoch"} - set(state)
        if missing:
            raise ValueError(f"log-barrier schedule state lacks {sorted(missing)}: {dict(state)}")
        self._t = _check_t(state["t"])
        self.epoch = int(state["epoch"])
        self.t0 = float(state.get("t0", self.t0))
        self.mult = float(state.get("mult", self.mult))
        t_max = state.get("t_max", self.t_max)
        self.t_max = None if t_max is None else float(t_max)

    def __repr__(self) -> str:
        return (f"LogBarrierSchedule(t={self._t:g}, epoch={self.epoch}, t0={self.t0:g}, "
                f"mult={self.mult:g}, t_max={self.t_max})")
