r"""Constraint losses (METHODS.md C1-C7, C9, C11): one registered loss for every inequality
constraint, and the objectives that are not inequalities.

**One constraint loss.** :class:`ConstraintLoss` (``name: constraint``) joins *what* is
constrained — a family of :data:`weakseg.constrain.CONSTRAINTS` (``size``, ``tags``,
``box``, ``centroid``: pure functions returning named values ``g(S) <= 0``, in
:mod:`weakseg.constrain.families`) — with *how* it is optimised — an objective of
:data:`weakseg.constrain.OBJECTIVES` (``penalty``, ``log_barrier``, ``lagrangian``,
``proposal``, in :mod:`weakseg.constrain.objectives`), which owns its settings and its
checkpointed state::

    loss:
      - {name: partial_ce}
      - name: constraint
        params:
          constraint: {family: size}                     # reads data.priors' bounds
          objective: {method: lagrangian, dual_lr: 160.0, per_image: true}

Values the data knows (the number of classes) are injected when the recipe is built
(:class:`~weakseg.losses.recipe.LossRecipe`), never repeated in the config. The old loss
names ``size``, ``tags``, ``box`` and ``centroid`` (flat parameters: ``method``, ``t0``,
``dual_lr``, ...) remain as thin aliases (:class:`SizeConstraintLoss` and co.).

**Objectives that are not inequalities** return a loss directly: :func:`size_equality_l2`
(C1), :func:`size_equality_kl` (C2) and :func:`area_by_sorting` (C9).

The constraint functions themselves (:func:`size_constraints`, :func:`tag_constraints`,
:func:`box_constraints`, :func:`box_emptiness_ce`, :func:`centroid_constraints`,
:func:`soft_size`) live in :mod:`weakseg.constrain.families` and are re-exported here.

References:
    Pathak, Krähenbühl & Darrell, "Constrained convolutional neural networks for weakly
    supervised segmentation", ICCV 2015.
    Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation", MedIA 2019.
    Zhang, David & Gong, "Curriculum domain adaptation for semantic segmentation of urban
    scenes", ICCV 2017. Zhou et al., "Prior-aware neural network for partially-supervised
    multi-organ segmentation", ICCV 2019.
    Fong, Patrick & Vedaldi, "Understanding deep networks via extremal perturbations and
    smooth masks", ICCV 2019.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from weakseg.constrain.families import (
    CONSTRAINTS,
    EMPTINESS,
    Constraint,
    ConstraintFamily,
    _as_tensor,
    _check_logits,
    _num_pixels,
    box_constraints,
    box_emptiness_ce,
    centroid_constraints,
    check_size_bounds,
    size_constraints,
    soft_size,
    tag_constraints,
    violation_stats,
)
from weakseg.constrain.objectives import OBJECTIVES, UNITS, Objective, ProposalObjective
from weakseg.errors import WeaksegError
from weakseg.losses._utils import check_reduction
from weakseg.losses.base import LOSSES
from weakseg.registry import check_kwargs

__all__ = [
    "AREA_ACTIVATIONS",
    "EMPTINESS",
    "UNITS",
    "AreaBySortingLoss",
    "BoxConstraintLoss",
    "CentroidConstraintLoss",
    "Constraint",
    "ConstraintLoss",
    "SizeConstraintLoss",
    "SizeEqualityLoss",
    "TagConstraintLoss",
    "area_by_sorting",
    "box_constraints",
    "box_emptiness_ce",
    "centroid_constraints",
    "check_size_bounds",
    "size_constraints",
    "size_equality_kl",
    "size_equality_l2",
    "soft_size",
    "tag_constraints",
]

AREA_ACTIVATIONS = ("softmax", "sigmoid", "none")
EQUALITY_KINDS = ("l2", "kl")


def _reduce_classes(per_class: torch.Tensor, reduction: str) -> torch.Tensor:
    """``(B, C)`` terms: ``"mean"`` over images of the sum over classes, ``"sum"``, ``"none"``."""
    if reduction == "none":
        return per_class
    if reduction == "sum":
        return per_class.sum()
    return per_class.sum(1).mean()


# ------------------------------------------------------------ equality objectives (C1, C2)


def size_equality_l2(
    logits: torch.Tensor,
    target_sizes: torch.Tensor | Sequence[float],
    *,
    fraction: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Known sizes as an L2 objective (C1), normalised by the image size.

    .. math:: \mathcal{L} = \sum_c \bigl((V_c - v_c) / |\Omega|\bigr)^2

    Args:
        logits: ``(B, C, *spatial)``.
        target_sizes: ``(B, C)`` known sizes :math:`v_c` (or broadcastable, e.g. ``(C,)``),
            in pixels or, with ``fraction``, fractions of the image.
        fraction: ``target_sizes`` are fractions.
        reduction: ``"mean"`` over images of the sum over classes, ``"sum"``, or ``"none"``
            (per-image, per-class terms ``(B, C)``).

    Shape:
        logits ``(B, C, *spatial)``, target_sizes ``(B, C)``; output scalar or ``(B, C)``.

    Reference:
        Pathak et al., ICCV 2015; lecture "Weakly supervised CNN segmentation" (C1).

    Example:
        >>> size_equality_l2(torch.zeros(1, 2, 4, 4), torch.tensor([[4.0, 12.0]]))
        tensor(0.1250)
    """
    _check_logits(logits)
    check_reduction(reduction)
    target = _as_tensor(target_sizes, logits, tuple(logits.shape[:2]), "target sizes", "(B, C)")
    total = 1.0 if fraction else float(_num_pixels(logits))
    per_class = ((soft_size(logits, fraction=fraction) - target) / total).square()
    return _reduce_classes(per_class, reduction)


def size_equality_kl(
    logits: torch.Tensor,
    q: torch.Tensor | Sequence[float],
    *,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Known class proportions as a binary cross-entropy / KL objective (C2).

    .. math::

        \mathcal{L} = -\sum_c \bigl[q_c \log \hat V_c + (1 - q_c) \log (1 - \hat V_c)\bigr],
        \qquad \hat V_c = \mathrm{clamp}(V_c / |\Omega|, \epsilon, 1 - \epsilon)

    This equals :math:`\sum_c \mathrm{KL}(\mathrm{Bern}(q_c) \,\|\, \mathrm{Bern}(\hat V_c))`
    plus the constant entropy of ``q``: same gradients, minimum :math:`\sum_c H(q_c)` at
    :math:`\hat V = q` (0 only for ``q`` in ``{0, 1}``).

    Args:
        logits: ``(B, C, *spatial)``.
        q: ``(B, C)`` target proportions in ``[0, 1]`` (or broadcastable, e.g. ``(C,)``).
        eps: clamp of :math:`\hat V` away from 0 and 1.
        reduction: ``"mean"`` over images of the sum over classes, ``"sum"``, or ``"none"``
            (per-image, per-class terms ``(B, C)``).

    Shape:
        logits ``(B, C, *spatial)``, q ``(B, C)``; output scalar or ``(B, C)``.

    Reference:
        Zhang et al., "Curriculum domain adaptation", ICCV 2017; Zhou et al., "Prior-aware
        neural network", ICCV 2019.

    Example:
        >>> size_equality_kl(torch.zeros(1, 2, 4, 4), torch.tensor([0.5, 0.5]))  # 2 log 2
        tensor(1.3863)
    """
    _check_logits(logits)
    check_reduction(reduction)
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    q = _as_tensor(q, logits, tuple(logits.shape[:2]), "class proportions q", "(B, C)")
    v = soft_size(logits, fraction=True).clamp(eps, 1 - eps)
    per_class = -(q * v.log() + (1 - q) * torch.log1p(-v))
    return _reduce_classes(per_class, reduction)


# ----------------------------------------------------------------- area by sorting (C9)


def area_by_sorting(
    logits: torch.Tensor,
    area_fraction: torch.Tensor | float | Sequence[float],
    *,
    activation: str = "softmax",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Exact-area prior by sorting (C9, extremal perturbations).

    .. math::

        R_a(m) = \lVert \mathrm{vecsort}(m) - r_a \rVert^2 / |\Omega|

    where :math:`\mathrm{vecsort}` sorts the mask values of one image and class in
    ascending order and :math:`r_a` is :math:`(1-a)|\Omega|` zeros followed by
    :math:`a|\Omega|` ones (rounded to whole pixels). It is 0 exactly when the mask is
    binary with the requested area; the gradient flows through the sorted values.

    Args:
        logits: ``(B, C, *spatial)`` logits, or masks in ``[0, 1]`` with
            ``activation="none"``.
        area_fraction: :math:`a` in ``[0, 1]``, a float or a tensor broadcastable to
            ``(B, C)``.
        activation: ``"softmax"`` over classes, ``"sigmoid"`` per channel (one-channel
            masks), or ``"none"``.
        reduction: ``"mean"`` over images of the sum over classes, ``"sum"``, or ``"none"``
            ``(B, C)``.

    Shape:
        logits ``(B, C, *spatial)``; output scalar or ``(B, C)``.

    Reference:
        Fong, Patrick & Vedaldi, "Understanding deep networks via extremal perturbations and
        smooth masks", ICCV 2019, eq. (5).

    Example:
        >>> mask = torch.zeros(1, 1, 4, 4); mask[..., :2, :] = 1.0
        >>> area_by_sorting(mask, 0.5, activation="none")
        tensor(0.)
    """
    _check_logits(logits)
    check_reduction(reduction)
    if activation not in AREA_ACTIVATIONS:
        raise ValueError(f"activation must be one of {AREA_ACTIVATIONS}, got '{activation}'")
    area = _as_tensor(area_fraction, logits, tuple(logits.shape[:2]), "area_fraction", "(B, C)")
    if activation == "softmax":
        mask = logits.softmax(1)
    elif activation == "sigmoid":
        mask = logits.sigmoid()
    else:
        mask = logits
    n = _num_pixels(logits)
    ordered = mask.flatten(2).sort(dim=-1).values                              # (B, C, N)
    ones = torch.round(area.clamp(0, 1) * n)                                   # (B, C)
    position = torch.arange(n, device=logits.device, dtype=logits.dtype)
    reference = (position >= n - ones.unsqueeze(-1)).to(logits.dtype)
    per_class = (ordered - reference).square().sum(-1) / n
    return _reduce_classes(per_class, reduction)


# ------------------------------------------------------------------ the constraint loss


def _spec(value: str | Mapping[str, Any], key: str, what: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``{key: name, **params}`` → ``(name, params)``."""
    if isinstance(value, str):
        return value, {}
    if not isinstance(value, Mapping) or not isinstance(value.get(key), str):
        raise WeaksegError(f"{what} must be a name or a mapping with '{key}: <name>', "
                           f"got {value!r}")
    params = dict(value)
    return params.pop(key), params


@LOSSES.register("constraint", help="a constraint family (constraint: {family: size | tags | "
                 "box | centroid | relative_size | one_component}) optimised by an objective "
                 "(objective: {method: penalty | log_barrier | lagrangian | proposal})")
class ConstraintLoss(nn.Module):
    """A constraint family optimised by an objective, as one loss term.

    Args:
        constraint: a family name of :data:`~weakseg.constrain.CONSTRAINTS`, or
            ``{family: <name>, **params}`` with the keyword parameters of its function (e.g.
            ``fraction``, ``size_fraction``); an input given here (e.g. ``bounds`` of
            ``size`` or ``centroid``) is fixed for every image instead of read from the batch.
        objective: a method of :data:`~weakseg.constrain.OBJECTIVES`, or
            ``{method: <name>, **settings}`` (e.g. ``t0``, ``t_mult``, ``units``,
            ``dual_lr``, ``per_image``, ``iterations``).
        num_classes: injected by the recipe from the data: one Lagrange multiplier per class
            (without it, one shared by the classes).
        class_names: injected by the recipe from the data, for the families that name
            classes (``relative_size``, ``one_component``): a class named in their
            parameters must be one of them.

    :attr:`inputs` are the batch entries read (the family's, unless fixed, and the
    objective's, e.g. ``index`` for per-image multipliers), :attr:`optional_inputs` those
    read only when the batch has them (``tags`` for ``relative_size``); :attr:`label` (the
    family name)
    names the term in the logs. After every forward :attr:`last_stats` holds (detached, no
    host sync) ``"violated"``, the fraction of the active optimised constraints violated by
    more than the family's tolerance (half a pixel), with ``"<name>_violated"`` per
    constraint name when there are several (constraints replaced by a per-pixel surrogate
    are reported, not counted in ``violated``).

    Example:
        >>> loss = ConstraintLoss({"family": "size"}, {"method": "log_barrier", "t0": 5.0},
        ...                       num_classes=2)
        >>> logits = torch.zeros(1, 2, 4, 4)
        >>> value = loss(logits, bounds=torch.tensor([[[0.0, 16.0], [10.0, 12.0]]]))
        >>> loss.inputs, sorted(loss.last_stats)
        (('bounds',), ['violated'])
    """

    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...] = ()

    def __init__(
        self,
        constraint: str | Mapping[str, Any],
        objective: str | Mapping[str, Any] = "log_barrier",
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        name, params = _spec(constraint, "family", "constraint")
        method, settings = _spec(objective, "method", "objective")
        family = CONSTRAINTS.get(name)
        objective_cls = OBJECTIVES.get(method)
        self.family: ConstraintFamily = family
        self.label = family.name
        fn_params, self.surrogate_params = family.split(params)
        fixed: dict[str, torch.Tensor] = {}
        for arg in list(fn_params):
            if arg in family.fixed:  # an input given in the config: not read from the batch
                fixed[arg] = family.fixed[arg].convert(fn_params.pop(arg), fn_params)
        names = None if class_names is None else [str(n) for n in class_names]
        if names is not None and num_classes is not None and len(names) != num_classes:
            raise ValueError(f"{len(names)} class names {names} for {num_classes} classes")
        data: dict[str, Any] = {"class_names": names, "num_classes": num_classes}
        injected = {arg: data.get(arg) for arg in family.injected}
        if family.validate is not None:
            family.validate({**params, **injected})
        fn_params.update(injected)
        self.params = fn_params
        if objective_cls.needs_affine and not family.affine:
            raise ValueError(f"objective '{method}' needs constraints affine in the "
                             f"probabilities; '{name}' is not: use penalty, log_barrier "
                             "or lagrangian")
        if "parts" in settings:
            raise WeaksegError(f"objective '{method}': 'parts' is set by the constraint")
        if family.per_batch and settings.get("per_image"):
            raise ValueError(f"constraint '{name}' holds for the batch as a whole (the images "
                             "pooled), so per-image multipliers do not apply; drop per_image")
        check_kwargs(objective_cls, settings, f"objective '{method}'")
        if family.multipliers is not None:
            parts = dict(family.multipliers(fn_params))
        else:
            parts = {part: () if num_classes is None else (num_classes, *tail)
                     for part, tail in family.parts.items()}
        self.objective: Objective = objective_cls(parts=parts, **settings)
        self.method = method
        self.num_classes = num_classes
        self._fixed_names = tuple(fixed)
        for arg, tensor in fixed.items():
            self.register_buffer(f"fixed_{arg}", tensor, persistent=False)
        self.inputs = (*(key for arg, key in family.inputs.items() if arg not in fixed),
                       *self.objective.inputs)
        self.optional_inputs = tuple(family.optional.values())
        self.last_stats: dict[str, torch.Tensor] = {}

    def _evaluate(
        self, logits: torch.Tensor, values: tuple[torch.Tensor, ...],
        entries: dict[str, torch.Tensor],
    ) -> tuple[dict[str, Constraint], dict[str, Constraint], dict[str, torch.Tensor],
               Callable[[torch.Tensor], dict[str, Constraint]], torch.Tensor | None]:
        """``(optimised constraints, reported-only constraints, surrogate losses, again,
        index)`` for ``values`` (in the order of :attr:`inputs`) or ``entries`` by key."""
        if len(values) > len(self.inputs):
            raise ValueError(f"constraint '{self.label}' takes {len(self.inputs)} inputs "
                             f"{self.inputs}, got {len(values)}")
        entries = {**dict(zip(self.inputs, values, strict=False)), **entries}
        family = self.family
        inputs: dict[str, Any] = {}
        for arg, key in family.inputs.items():
            if arg in self._fixed_names:
                tensor = getattr(self, f"fixed_{arg}")
                expected = family.fixed[arg].shape(logits)
                if tuple(tensor.shape) != expected:
                    raise ValueError(f"constraint '{self.label}': fixed {arg} have shape "
                                     f"{tuple(tensor.shape)} but the logits need {expected}")
                inputs[arg] = tensor.to(logits.dtype)
            elif entries.get(key) is None:
                raise ValueError(f"constraint '{self.label}' needs the batch entry '{key}' "
                                 f"(or fixed {arg} in its parameters)")
            else:
                inputs[arg] = entries[key]
        for arg, key in family.optional.items():
            if entries.get(key) is not None:
                inputs[arg] = entries[key]
        index = entries.get("index")
        constraints = family.evaluate(logits, inputs, self.params)
        extra: dict[str, torch.Tensor] = {}
        if family.surrogate is not None:
            extra = family.surrogate(logits, **inputs, **self.surrogate_params)
        reported = {name: constraints.pop(name) for name in extra}

        quiet = {**self.params, "check": False} if "check" in family.parameters() \
            else self.params

        def again(z: torch.Tensor) -> dict[str, Constraint]:
            out = family.evaluate(z, inputs, quiet)
            return {name: c for name, c in out.items() if name not in extra}

        return constraints, reported, extra, again, index

    def forward(self, logits: torch.Tensor, *values: torch.Tensor,
                **entries: torch.Tensor) -> torch.Tensor:
        """``values`` (in the order of :attr:`inputs`) or ``entries`` by batch key."""
        constraints, reported, extra, again, index = self._evaluate(logits, values, entries)
        tol = self.family.tolerance(logits)
        loss = self.objective(constraints, logits=logits, again=again, index=index)
        self.last_stats = violation_stats(constraints, tol)
        for name, constraint in reported.items():  # replaced by the surrogate: logs only
            self.last_stats[f"{name}_violated"] = violation_stats({name: constraint},
                                                                  tol)["violated"]
        for value in extra.values():
            loss = loss + value
        return loss

    def proposal_target(self, logits: torch.Tensor, *values: torch.Tensor,
                        **entries: torch.Tensor) -> torch.Tensor:
        """Pathak's proposal ``P`` ``(B, C, *spatial)`` of the ``proposal`` objective, the
        soft target its forward trains toward (same inputs as :meth:`forward`)."""
        if not isinstance(self.objective, ProposalObjective):
            raise ValueError(f"proposal_target needs objective 'proposal', not "
                             f"'{self.method}'")
        _, _, _, again, _ = self._evaluate(logits, values, entries)
        return self.objective.target(logits, again)

    def epoch_step(self) -> None:
        """End of an epoch: the objective's schedules advance (the log-barrier ``t``)."""
        self.objective.epoch_step()

    def extra_repr(self) -> str:
        fixed = f", fixed={list(self._fixed_names)}" if self._fixed_names else ""
        return f"constraint='{self.label}', method='{self.method}'{fixed}"


# --------------------------------------------------- the old loss names, as thin aliases


def _legacy_objective(method: str, *, reduction: str = "mean", units: str = "fraction",
                      t0: float = 5.0, t_mult: float = 1.1, t_max: float | None = None,
                      dual_lr: float = 1.0, per_image: bool = False,
                      proposal_iterations: int = 30, proposal_lr: float = 4.0,
                      ) -> dict[str, Any]:
    """The flat options of the old constraint losses → ``{method: ..., settings}`` (only the
    settings of that method; the others were ignored before too)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got '{reduction}'")
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got '{units}'")
    if isinstance(proposal_iterations, bool) or not isinstance(proposal_iterations, int) \
            or proposal_iterations < 1:
        raise ValueError(f"proposal_iterations must be an integer >= 1, got "
                         f"{proposal_iterations!r}")
    if not math.isfinite(proposal_lr) or proposal_lr <= 0:
        raise ValueError(f"proposal_lr must be a finite number > 0, got {proposal_lr}")
    if per_image and method != "lagrangian":
        raise ValueError(f"per_image multipliers need method 'lagrangian', got '{method}'")
    settings: dict[str, dict[str, Any]] = {
        "penalty": {"reduction": reduction, "units": units},
        "log_barrier": {"t0": t0, "t_mult": t_mult, "t_max": t_max, "reduction": reduction,
                        "units": units},
        "lagrangian": {"dual_lr": dual_lr, "per_image": per_image, "reduction": reduction,
                       "units": units},
        "proposal": {"iterations": proposal_iterations, "lr": proposal_lr},
    }
    return {"method": method, **settings.get(method, {})}


def _flat_objective_options(cls: type[ConstraintLoss]) -> type[ConstraintLoss]:
    """Declare an alias's signature as its own (family) parameters plus the flat objective
    options of :func:`_legacy_objective`, which its ``**flat`` forwards: config checks
    (names with "did you mean", types) see every option without the list being copied."""
    own = [p for n, p in inspect.signature(cls.__init__, eval_str=True).parameters.items()
           if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    flat = [p for n, p in inspect.signature(_legacy_objective, eval_str=True).parameters.items()
            if n != "method"]
    cls.__signature__ = inspect.Signature(own + flat)  # type: ignore[attr-defined]
    return cls


@LOSSES.register("size", help="alias of constraint: {family: size} with flat options "
                 "(method, t0, dual_lr, ...)")
@_flat_objective_options
class SizeConstraintLoss(ConstraintLoss):
    """Alias: ``ConstraintLoss({"family": "size", fraction, check[, bounds]}, objective)``
    with the old flat options (``method``, ``t0``, ``t_mult``, ``t_max``, ``dual_lr``,
    ``per_image``, ``units``, ``reduction``, ``proposal_iterations``, ``proposal_lr``)."""

    inputs = ("bounds",)

    def __init__(
        self, method: str = "log_barrier", *, fraction: bool = False, check: bool = True,
        num_classes: int | None = None, bounds: Sequence[Sequence[float]] | None = None,
        **flat: Any,
    ) -> None:
        constraint: dict[str, Any] = {"family": "size", "fraction": fraction, "check": check}
        if bounds is not None:
            constraint["bounds"] = bounds
        super().__init__(constraint, _legacy_objective(method, **flat), num_classes=num_classes)


@LOSSES.register("tags", help="alias of constraint: {family: tags} with flat options")
@_flat_objective_options
class TagConstraintLoss(ConstraintLoss):
    """Alias: ``ConstraintLoss({"family": "tags", min_size, fraction}, objective)`` with the
    flat options of :class:`SizeConstraintLoss`."""

    inputs = ("tags",)

    def __init__(
        self, method: str = "log_barrier", *, min_size: float = 1.0, fraction: bool = False,
        num_classes: int | None = None, **flat: Any,
    ) -> None:
        super().__init__({"family": "tags", "min_size": min_size, "fraction": fraction},
                         _legacy_objective(method, **flat), num_classes=num_classes)


@LOSSES.register("box", help="alias of constraint: {family: box} with flat options")
@_flat_objective_options
class BoxConstraintLoss(ConstraintLoss):
    """Alias: ``ConstraintLoss({"family": "box", band_width, size_fraction, emptiness,
    emptiness_weight, background}, objective)`` with the flat options of
    :class:`SizeConstraintLoss`; batch key ``"boxes"``. ``emptiness="ce"`` replaces the
    soft outside mass by :func:`box_emptiness_ce` (see
    :func:`weakseg.constrain.families.box_emptiness`)."""

    inputs = ("boxes",)

    def __init__(
        self, method: str = "log_barrier", *, band_width: int = 1,
        size_fraction: Sequence[float] | Sequence[Sequence[float]] = (0.5, 0.9),
        emptiness: str = "mass", emptiness_weight: float = 1.0, background: int = 0,
        num_classes: int | None = None, **flat: Any,
    ) -> None:
        super().__init__(
            {"family": "box", "band_width": band_width, "size_fraction": size_fraction,
             "emptiness": emptiness, "emptiness_weight": emptiness_weight,
             "background": background},
            _legacy_objective(method, **flat), num_classes=num_classes)


@LOSSES.register("centroid", help="alias of constraint: {family: centroid} with flat options")
class CentroidConstraintLoss(ConstraintLoss):
    """Alias: ``ConstraintLoss({"family": "centroid", fraction, check[, bounds]},
    objective)``; batch key ``"centroid_bounds"`` ``(B, C, D, 2)`` unless fixed ``bounds``
    ``(C, D, 2)`` are given. Not affine: no ``proposal``."""

    inputs = ("centroid_bounds",)

    def __init__(
        self, method: str = "log_barrier", *, fraction: bool = False, check: bool = True,
        t0: float = 5.0, t_mult: float = 1.1, t_max: float | None = None,
        num_classes: int | None = None, dual_lr: float = 1.0, reduction: str = "mean",
        bounds: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> None:
        constraint: dict[str, Any] = {"family": "centroid", "fraction": fraction,
                                      "check": check}
        if bounds is not None:
            constraint["bounds"] = bounds
        super().__init__(constraint, _legacy_objective(
            method, reduction=reduction, t0=t0, t_mult=t_mult, t_max=t_max, dual_lr=dual_lr),
            num_classes=num_classes)


class SizeEqualityLoss(nn.Module):
    """Known sizes as a loss: ``kind="l2"`` (:func:`size_equality_l2`, batch key ``"sizes"``
    in pixels or fractions) or ``"kl"`` (:func:`size_equality_kl`, ``"sizes"`` as
    proportions)."""

    inputs = ("sizes",)

    def __init__(self, kind: str = "l2", *, fraction: bool = False, eps: float = 1e-6,
                 reduction: str = "mean") -> None:
        super().__init__()
        if kind not in EQUALITY_KINDS:
            raise ValueError(f"kind must be one of {EQUALITY_KINDS}, got '{kind}'")
        check_reduction(reduction)
        self.kind = kind
        self.fraction = fraction
        self.eps = eps
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        if self.kind == "l2":
            return size_equality_l2(logits, sizes, fraction=self.fraction,
                                    reduction=self.reduction)
        return size_equality_kl(logits, sizes, eps=self.eps, reduction=self.reduction)


@LOSSES.register("area_sort", help="exact area fraction per class by sorting the soft mask "
                 "(vecsort, C9)")
class AreaBySortingLoss(nn.Module):
    """Module form of :func:`area_by_sorting` with a fixed ``area_fraction`` (a float, or one
    value per class, stored as a buffer)."""

    inputs: tuple[str, ...] = ()
    area_fraction: torch.Tensor

    def __init__(self, area_fraction: float | Sequence[float] = 0.1, *,
                 activation: str = "softmax", reduction: str = "mean") -> None:
        super().__init__()
        if activation not in AREA_ACTIVATIONS:
            raise ValueError(f"activation must be one of {AREA_ACTIVATIONS}, got '{activation}'")
        check_reduction(reduction)
        self.register_buffer("area_fraction", torch.as_tensor(area_fraction, dtype=torch.float))
        self.activation = activation
        self.reduction = reduction

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return area_by_sorting(logits, self.area_fraction, activation=self.activation,
                               reduction=self.reduction)
