r"""How a constraint becomes a training objective (METHODS.md C3, C4, C5).

Constraint values ``g`` (``g <= 0`` satisfied, ``-inf`` inactive) come from
:mod:`weakseg.losses.constraints`; this package turns them into something to minimise:

* :func:`quadratic_penalty` — :math:`\max(0, g)^2` (Kervadec et al., MedIA 2019);
* :func:`log_barrier_extension` with a :class:`LogBarrierSchedule` for ``t``
  (Kervadec et al., MedIA 2022);
* :class:`LagrangianMultipliers` — stochastic primal-dual with dual state, and
  :func:`pathak_proposal` — Pathak's constrained proposals (ICCV 2015);
* :func:`apply` — the method picked by name; :class:`ConstraintObjective` — a method with
  its state (``t`` schedule or multipliers) as an ``nn.Module`` whose ``state_dict`` goes into
  checkpoints.

Example:
    >>> from weakseg.losses.constraints import size_constraints
    >>> logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    >>> bounds = torch.tensor([[0.0, 256.0], [20.0, 60.0], [0.0, 0.0]]).expand(2, 3, 2)
    >>> g = size_constraints(logits, bounds).g                  # (B, C, 2)
    >>> objective = ConstraintObjective("log_barrier", t0=5.0, t_mult=1.1)
    >>> objective(g).backward()
    >>> _ = objective.epoch_step()                              # once per epoch
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from weakseg.constrain.lagrangian import LagrangianMultipliers, Proposal, pathak_proposal
from weakseg.constrain.penalties import (
    REDUCTIONS,
    LogBarrierSchedule,
    active_entries,
    log_barrier_extension,
    quadratic_penalty,
    reduce_objective,
)

__all__ = [
    "METHODS",
    "REDUCTIONS",
    "ConstraintObjective",
    "LagrangianMultipliers",
    "LogBarrierSchedule",
    "Proposal",
    "active_entries",
    "apply",
    "log_barrier_extension",
    "pathak_proposal",
    "quadratic_penalty",
    "reduce_objective",
]

#: The ways a constraint becomes an objective, by name.
METHODS = ("penalty", "log_barrier", "lagrangian")


def apply(
    name: str,
    g: torch.Tensor,
    *,
    t: float | LogBarrierSchedule | None = None,
    lagrangian: LagrangianMultipliers | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Turn constraint values ``g`` (``g <= 0`` satisfied) into an objective.

    Args:
        name: ``"penalty"`` (:func:`quadratic_penalty`), ``"log_barrier"``
            (:func:`log_barrier_extension`, needs ``t``) or ``"lagrangian"`` (``λ·g`` with
            ``lagrangian``'s detached multipliers; dual updates are the caller's, see
            :meth:`LagrangianMultipliers.dual_step`).
        g: constraint values, any shape; ``-inf`` entries are inactive.
        t: the barrier parameter, or a :class:`LogBarrierSchedule` (its current ``t``).
        lagrangian: the dual variables, broadcastable to ``g``.
        mask: optional bool, broadcastable to ``g``; ``False`` entries are inactive.
        reduction: ``"mean"`` over active entries, ``"sum"``, or ``"none"`` (elementwise,
            the broadcast shape of ``g`` and ``mask``, 0 on inactive entries).

    Shape:
        ``g`` any shape; output scalar, or ``g``'s shape for ``"none"``.

    Example:
        >>> g = torch.tensor([[-0.2, 0.1], [float("-inf"), 0.3]])
        >>> apply("penalty", g, reduction="sum")
        tensor(0.1000)
    """
    if name not in METHODS:
        raise ValueError(f"constraint method must be one of {METHODS}, got '{name}'")
    active = active_entries(g, mask)
    if name == "penalty":
        values = quadratic_penalty(g, mask=mask)
    elif name == "log_barrier":
        if t is None:
            raise ValueError("the 'log_barrier' method needs t (a float or a LogBarrierSchedule)")
        values = log_barrier_extension(g, t.t if isinstance(t, LogBarrierSchedule) else t,
                                       mask=mask)
    else:
        if lagrangian is None:
            raise ValueError("the 'lagrangian' method needs lagrangian=LagrangianMultipliers(...)")
        values = lagrangian.objective(g, mask=mask, reduction="none")
    return reduce_objective(values, active, reduction)


class ConstraintObjective(nn.Module):
    """A constraint method with its state: ``forward(g)`` is the objective of ``g``.

    * ``"penalty"``: stateless.
    * ``"log_barrier"``: holds a :class:`LogBarrierSchedule`; call :meth:`epoch_step` once per
      epoch. The schedule is saved in ``state_dict()`` (as the module's extra state).
    * ``"lagrangian"``: holds :class:`LagrangianMultipliers` of shape ``slots`` (broadcast
      against ``g``; the default ``()`` is one λ shared by all constraints, ``(C, 2)`` one per
      class and bound side shared across images). In training mode every ``forward``
      also takes one stochastic dual ascent step ``λ ← max(0, λ + dual_lr·mean(g))`` *after*
      computing the objective with the current λ (like BatchNorm's running statistics).

    Example:
        >>> objective = ConstraintObjective("log_barrier", t0=5.0, t_mult=1.1)
        >>> value = objective(torch.tensor([[0.1, -0.3]]))
        >>> objective.epoch_step()
        5.5
    """

    def __init__(
        self,
        method: str = "log_barrier",
        *,
        t0: float = 5.0,
        t_mult: float = 1.1,
        t_max: float | None = None,
        slots: int | Sequence[int] = (),
        dual_lr: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"constraint method must be one of {METHODS}, got '{method}'")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got '{reduction}'")
        self.method = method
        self.reduction = reduction
        self.schedule = LogBarrierSchedule(t0, t_mult, t_max)
        self.multipliers = LagrangianMultipliers(slots, lr=dual_lr)

    def forward(self, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        value = apply(self.method, g, t=self.schedule, lagrangian=self.multipliers, mask=mask,
                      reduction=self.reduction)
        if self.method == "lagrangian" and self.training:
            self.multipliers.dual_step(g.detach(), mask=mask)
        return value

    def epoch_step(self) -> float:
        """End of an epoch: grow the log-barrier ``t``; returns the current ``t``."""
        if self.method == "log_barrier":
            return self.schedule.step()
        return self.schedule.t

    def get_extra_state(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.schedule.load_state_dict(state["schedule"])

    def extra_repr(self) -> str:
        return f"method='{self.method}', t={self.schedule.t:g}, reduction='{self.reduction}'"
