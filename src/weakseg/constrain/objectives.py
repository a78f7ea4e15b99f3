r"""How a constraint is optimised: objectives as a registry (METHODS.md C3, C4, C5).

A :class:`~weakseg.constrain.families.ConstraintFamily` says *what* is constrained (named
constraint values ``g <= 0``); an :class:`Objective` says *how* the network is pushed to
satisfy them. Each objective owns its settings and its checkpointed state:

=================  ==========================================================================
method             objective of the named constraints, and its state
=================  ==========================================================================
``penalty``        :math:`\max(0, g)^2` (Kervadec et al., MedIA 2019); no state
``log_barrier``    extended log-barrier :math:`\tilde\psi_t(g)` (MedIA 2022); state: the
                   :class:`~weakseg.constrain.penalties.LogBarrierSchedule` of ``t``, grown
                   by :meth:`Objective.epoch_step`
``lagrangian``     :math:`\sum \lambda g` with a stochastic dual ascent step per training
                   forward; state: the multipliers of every constraint, one per class (when
                   the number of classes is known) and bound side, shared by the images or
                   one set per training image (``per_image``, reads the batch's ``index``)
``proposal``       Pathak's constrained proposal :math:`P \propto s\,e^{-\beta^\top f}` as a
                   soft cross-entropy target (ICCV 2015); needs affine constraints; no state
=================  ==========================================================================

Adding a method is one class registered in :data:`OBJECTIVES`: ``__init__(*, parts,
**settings)`` (``parts``: constraint name → multiplier slots, filled by the loss) and
``forward(constraints, *, logits, again, index)``.

Example:
    >>> import torch
    >>> from weakseg.constrain.families import size_constraints
    >>> objective = OBJECTIVES.get("log_barrier")(parts={"size": (4, 2)}, t0=5.0)
    >>> logits = torch.zeros(2, 4, 8, 8)
    >>> c = size_constraints(logits, torch.tensor([[0.0, 64.0], [4.0, 20.0]] * 2))
    >>> round(float(objective({"size": c}, logits=logits)), 4)   # both bounds hold
    0.4447
    >>> objective.epoch_step()                                 # once per epoch
    >>> objective.schedule.t
    5.5
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from weakseg.constrain.families import Constraint
from weakseg.constrain.lagrangian import pathak_proposal
from weakseg.constrain.methods import ConstraintObjective, apply
from weakseg.constrain.penalties import REDUCTIONS, LogBarrierSchedule
from weakseg.registry import Registry

__all__ = [
    "OBJECTIVES",
    "UNITS",
    "LagrangianObjective",
    "LogBarrierObjective",
    "Objective",
    "PenaltyObjective",
    "ProposalObjective",
]

#: Scales of the constraint values fed to the gradient objectives.
UNITS = ("fraction", "pixels")

#: ``(logits) -> named constraints``: re-evaluates a family for other log-probabilities
#: (without re-checking the inputs), for the proposal.
Again = Callable[[torch.Tensor], dict[str, Constraint]]

#: Objectives by method name; ``objective: {method: <name>, ...}`` in a constraint loss.
OBJECTIVES: Registry[type[Objective]] = Registry("objective method")


class Objective(nn.Module):
    """Base class: how named constraints become a loss. Subclasses set :attr:`inputs` (batch
    entries they read beyond the family's, e.g. ``index``) and :attr:`needs_affine`."""

    inputs: tuple[str, ...] = ()
    needs_affine: bool = False
    reduction: str = "mean"

    def __init__(self, *, parts: Mapping[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.parts = dict(parts)

    def forward(
        self, constraints: dict[str, Constraint], *, logits: torch.Tensor,
        again: Again | None = None, index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def epoch_step(self) -> None:
        """End of an epoch (schedules advance here)."""


class _GradientObjective(Objective):
    """Objectives applied elementwise to ``g`` (scaled by ``units``), reduced per
    constraint name and summed over the names.

    ``units`` is the scale of ``g`` the objective sees: ``"fraction"`` (image fractions, the
    default) or ``"pixels"`` (``g·|Ω|``, the units of Kervadec et al.'s log-barrier papers).
    It matters for the log-barrier, whose branch switch sits at ``g = -1/t²``: in fractions
    with ``t = 5`` that is 4 % of the image, so most constraints lie on the linear extension
    (a constant push, even when satisfied); in pixels the switch is at 0.04 pixel.
    ``reduction``: ``"mean"`` over the active entries of each name, ``"sum"``, or ``"none"``
    (elementwise; one constraint name only).
    """

    def __init__(self, *, parts: Mapping[str, tuple[int, ...]], reduction: str = "mean",
                 units: str = "fraction") -> None:
        super().__init__(parts=parts)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got '{reduction}'")
        if reduction == "none" and len(self.parts) > 1:
            raise ValueError(f"reduction 'none' needs a single constraint, but this one sums "
                             f"{len(self.parts)} ({', '.join(self.parts)}); use 'mean' or 'sum'")
        if units not in UNITS:
            raise ValueError(f"units must be one of {UNITS}, got '{units}'")
        self.reduction = reduction
        self.units = units

    def forward(
        self, constraints: dict[str, Constraint], *, logits: torch.Tensor,
        again: Again | None = None, index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        scale = float(math.prod(logits.shape[2:])) if self.units == "pixels" else 1.0
        values = [self.term(name, c.g * scale, c.active, index)
                  for name, c in constraints.items()]
        return torch.stack(values).sum(0) if values[0].ndim == 0 else values[0]

    def term(self, name: str, g: torch.Tensor, active: torch.Tensor,
             index: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"reduction='{self.reduction}', units='{self.units}'"


@OBJECTIVES.register("penalty", help="quadratic penalty max(0, g)^2 (C3)")
class PenaltyObjective(_GradientObjective):
    """Quadratic penalty :math:`\\max(0, g)^2`; stateless."""

    def term(self, name: str, g: torch.Tensor, active: torch.Tensor,
             index: torch.Tensor | None) -> torch.Tensor:
        return apply("penalty", g, mask=active, reduction=self.reduction)


@OBJECTIVES.register("log_barrier", help="extended log-barrier with a growing t (C4)")
class LogBarrierObjective(_GradientObjective):
    """Extended log-barrier; ``t`` starts at ``t0`` and is multiplied by ``t_mult`` at every
    :meth:`epoch_step` (capped at ``t_max``). The schedule is this module's extra state in
    ``state_dict()``."""

    def __init__(self, *, parts: Mapping[str, tuple[int, ...]], t0: float = 5.0,
                 t_mult: float = 1.1, t_max: float | None = None, reduction: str = "mean",
                 units: str = "fraction") -> None:
        super().__init__(parts=parts, reduction=reduction, units=units)
        self.schedule = LogBarrierSchedule(t0, t_mult, t_max)

    def term(self, name: str, g: torch.Tensor, active: torch.Tensor,
             index: torch.Tensor | None) -> torch.Tensor:
        return apply("log_barrier", g, t=self.schedule, mask=active, reduction=self.reduction)

    def epoch_step(self) -> None:
        self.schedule.step()

    def get_extra_state(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.schedule.load_state_dict(state["schedule"])

    def extra_repr(self) -> str:
        return f"t={self.schedule.t:g}, {super().extra_repr()}"


@OBJECTIVES.register("lagrangian", help="stochastic primal-dual: lambda g with dual ascent "
                     "(C5), multipliers per class, shared or per image")
class LagrangianObjective(_GradientObjective):
    """Lagrangian :math:`\\sum \\lambda g` with a dual step ``λ ← max(0, λ + dual_lr·ḡ)`` after
    every training forward. One :class:`~weakseg.constrain.ConstraintObjective` per constraint
    name holds the multipliers (``terms[name].multipliers.lam``), shaped by ``parts``:
    one per class and bound side when the loss knows the number of classes, else one for
    all. ``per_image=True`` keeps one set per training image (rows grow to the largest batch
    ``index`` seen; a checkpoint restores them); the loss then reads ``index``."""

    def __init__(self, *, parts: Mapping[str, tuple[int, ...]], dual_lr: float = 1.0,
                 per_image: bool = False, reduction: str = "mean",
                 units: str = "fraction") -> None:
        super().__init__(parts=parts, reduction=reduction, units=units)
        self.per_image = bool(per_image)
        if self.per_image:
            self.inputs = ("index",)
        self.terms = nn.ModuleDict({
            name: ConstraintObjective("lagrangian", slots=slots, dual_lr=dual_lr,
                                      reduction=reduction, per_image=self.per_image)
            for name, slots in self.parts.items()
        })

    def term(self, name: str, g: torch.Tensor, active: torch.Tensor,
             index: torch.Tensor | None) -> torch.Tensor:
        return self.terms[name](g, active, index)

    def extra_repr(self) -> str:
        return f"per_image={self.per_image}, {super().extra_repr()}"


@OBJECTIVES.register("proposal", help="Pathak's constrained proposal as a soft CE target (C5)")
class ProposalObjective(Objective):
    """Cross-entropy ``mean_p −Σ_c P_p^c log s_p^c`` to Pathak's proposal ``P``, the
    distribution closest to the prediction in KL that meets the constraints
    (:func:`~weakseg.constrain.pathak_proposal`, ``iterations`` dual steps of size ``lr``);
    the constraints must be affine in the probabilities. Stateless."""

    needs_affine = True

    def __init__(self, *, parts: Mapping[str, tuple[int, ...]], iterations: int = 30,
                 lr: float = 4.0) -> None:
        super().__init__(parts=parts)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        self.iterations = iterations
        self.lr = float(lr)

    def forward(
        self, constraints: dict[str, Constraint], *, logits: torch.Tensor,
        again: Again | None = None, index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if again is None:
            raise ValueError("the proposal objective needs again=... to re-evaluate the "
                             "constraints")
        return -(self.target(logits, again) * logits.log_softmax(1)).sum(1).mean()

    def target(self, logits: torch.Tensor, again: Again) -> torch.Tensor:
        """The proposal ``P`` ``(B, C, *spatial)`` (detached) for the constraints that
        ``again`` evaluates."""

        def flat_g(z: torch.Tensor) -> torch.Tensor:
            return torch.cat([c.g.flatten(1) for c in again(z).values()], dim=1)

        return pathak_proposal(logits, flat_g, iterations=self.iterations, lr=self.lr).probs

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, lr={self.lr:g}"
