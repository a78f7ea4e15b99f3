r"""Constraints and how they are optimised (METHODS.md C3-C7, C11, C14).

Two registries keep *what is constrained* apart from *how it is optimised*:

* :data:`CONSTRAINTS` (:mod:`weakseg.constrain.families`): constraint families as pure
  functions of the logits returning named constraint values ``g <= 0`` — ``size``,
  ``tags``, ``box``, ``centroid``, the knowledge priors of
  :mod:`weakseg.constrain.knowledge` (C14): ``relative_size``, ``one_component``, and the
  prior-aware average class fractions of partially labelled data
  (:mod:`weakseg.constrain.fractions`, C8): ``class_fraction``;
* :data:`OBJECTIVES` (:mod:`weakseg.constrain.objectives`): ``penalty``, ``log_barrier``
  (with its ``t`` schedule), ``lagrangian`` (multipliers shared or per image) and
  ``proposal`` (Pathak), each owning its settings and its checkpointed state.

One registered loss, :class:`weakseg.losses.constraints.ConstraintLoss` (``name:
constraint``), joins them: ``constraint: {family: size, ...}`` plus ``objective: {method:
log_barrier, ...}``. The elementwise maths is here too: :func:`quadratic_penalty`,
:func:`log_barrier_extension` with :class:`LogBarrierSchedule`,
:class:`LagrangianMultipliers`, :func:`pathak_proposal`, :func:`apply` (a method by name) and
:class:`ConstraintObjective` (one method with its state).

Example:
    >>> import torch
    >>> logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    >>> bounds = torch.tensor([[0.0, 256.0], [20.0, 60.0], [0.0, 0.0]]).expand(2, 3, 2)
    >>> g = size_constraints(logits, bounds).g                  # (B, C, 2)
    >>> objective = ConstraintObjective("log_barrier", t0=5.0, t_mult=1.1)
    >>> objective(g).backward()
    >>> _ = objective.epoch_step()                              # once per epoch
"""

from __future__ import annotations

from weakseg.constrain.families import (
    CONSTRAINTS,
    Constraint,
    ConstraintFamily,
    box_constraints,
    box_emptiness_ce,
    centroid_constraints,
    register_constraint,
    size_constraints,
    soft_size,
    tag_constraints,
    violation_stats,
)
from weakseg.constrain.fractions import class_fraction_constraints
from weakseg.constrain.knowledge import (
    largest_components,
    one_component_constraints,
    relative_size_constraints,
)
from weakseg.constrain.lagrangian import LagrangianMultipliers, Proposal, pathak_proposal
from weakseg.constrain.methods import METHODS, ConstraintObjective, apply
from weakseg.constrain.objectives import OBJECTIVES, Objective
from weakseg.constrain.penalties import (
    REDUCTIONS,
    LogBarrierSchedule,
    active_entries,
    log_barrier_extension,
    quadratic_penalty,
    reduce_objective,
)

__all__ = [
    "CONSTRAINTS",
    "METHODS",
    "OBJECTIVES",
    "REDUCTIONS",
    "Constraint",
    "ConstraintFamily",
    "ConstraintObjective",
    "LagrangianMultipliers",
    "LogBarrierSchedule",
    "Objective",
    "Proposal",
    "active_entries",
    "apply",
    "box_constraints",
    "box_emptiness_ce",
    "centroid_constraints",
    "class_fraction_constraints",
    "largest_components",
    "log_barrier_extension",
    "one_component_constraints",
    "pathak_proposal",
    "quadratic_penalty",
    "reduce_objective",
    "register_constraint",
    "relative_size_constraints",
    "size_constraints",
    "soft_size",
    "tag_constraints",
    "violation_stats",
]
