"""Elementary constraint methods by name (METHODS.md C3, C4, C5): :func:`apply` and
:class:`ConstraintObjective`, the building blocks of the registered objectives of
:mod:`weakseg.constrain.objectives`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from weakseg.constrain.lagrangian import LagrangianMultipliers
from weakseg.constrain.penalties import (
    REDUCTIONS,
    LogBarrierSchedule,
    active_entries,
    log_barrier_extension,
    quadratic_penalty,
    reduce_objective,
)

__all__ = ["METHODS", "ConstraintObjective", "apply"]

#: The ways a constraint becomes an objective, by name.
METHODS = ("penalty", "log_barrier", "lagrangian")


def apply(
    name: str,
    g: torch.Tensor,
    *,
    t: float | LogBarrierSchedule | None = None,
    lagrangian: LagrangianMultipliers | None = None,
    mask: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
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
        index: ``(B,)`` rows of per-image multipliers (``lagrangian`` only, see
            :meth:`LagrangianMultipliers.objective`).
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
        values = lagrangian.objective(g, mask=mask, index=index, reduction="none")
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
      With ``per_image=True`` there is one set of multipliers per training image,
      ``(N, *slots)``: ``forward(g, index=...)`` takes the data-set indices of the batch's
      images, and λ grows to the largest index seen (new rows start at 0; a checkpoint
      restores its size). Each image's λ then moves only when the image is in a batch. In
      eval mode the per-image objective is 0 (the multipliers belong to the training images).

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
        per_image: bool = False,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"constraint method must be one of {METHODS}, got '{method}'")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got '{reduction}'")
        if per_image and method != "lagrangian":
            raise ValueError(f"per_image multipliers need method 'lagrangian', got '{method}'")
        self.method = method
        self.reduction = reduction
        self.per_image = bool(per_image)
        self.schedule = LogBarrierSchedule(t0, t_mult, t_max)
        slots = (slots,) if isinstance(slots, int) else tuple(slots)
        self.multipliers = LagrangianMultipliers((0, *slots) if per_image else slots,
                                                 lr=dual_lr)

    def forward(
        self, g: torch.Tensor, mask: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.per_image:
            value = apply(self.method, g, t=self.schedule, lagrangian=self.multipliers,
                          mask=mask, reduction=self.reduction)
            if self.method == "lagrangian" and self.training:
                self.multipliers.dual_step(g.detach(), mask=mask)
            return value
        if not self.training:
            return reduce_objective(torch.zeros_like(g), active_entries(g, mask),
                                    self.reduction)
        if index is None:
            raise ValueError("per-image Lagrange multipliers need the data-set indices of the "
                             "batch's images (index=...) in training mode")
        index = index.to(device=self.multipliers.lam.device, dtype=torch.long)
        self._grow(int(index.max()) + 1 if index.numel() else 0)
        value = apply(self.method, g, lagrangian=self.multipliers, mask=mask, index=index,
                      reduction=self.reduction)
        self.multipliers.dual_step(g.detach(), mask=mask, index=index)
        return value

    def _grow(self, rows: int) -> None:
        lam = self.multipliers.lam
        if rows > lam.shape[0]:
            extra = lam.new_zeros((rows - lam.shape[0], *lam.shape[1:]))
            self.multipliers.lam = torch.cat([lam, extra])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "multipliers.lam")
        if self.per_image and saved is not None and saved.ndim == self.multipliers.lam.ndim:
            self._grow(saved.shape[0])  # a checkpoint's multipliers for its images
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        per_image = ", per_image=True" if self.per_image else ""
        return (f"method='{self.method}', t={self.schedule.t:g}, "
                f"reduction='{self.reduction}'{per_image}")
