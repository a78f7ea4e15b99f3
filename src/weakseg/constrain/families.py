r"""What is constrained: constraint families as pure functions of the logits (METHODS.md C3,
C6, C7, C11).

With :math:`s_p = \mathrm{softmax}(z_p)` and the soft size :math:`V_c = \sum_{p \in \Omega}
s_p^c` of class :math:`c` in one image, every *inequality* constraint is returned as a value
:math:`g` such that :math:`g \le 0` means satisfied, per image and class, divided by
:math:`|\Omega|` (pixel counts become image fractions; positions are divided by the axis
length), so that the same step sizes and weights work at any resolution:

* :func:`size_constraints` (C3/C4/C5): :math:`a \le V_c \le b` →
  :math:`[(a - V_c),\ (V_c - b)] / |\Omega|`;
* :func:`tag_constraints` (C6): tag absent → :math:`V_c \le 0`; present → :math:`V_c \ge m`;
* :func:`box_constraints` (C7): emptiness outside the box, tightness of every band of
  ``w`` rows/columns crossing it, box-size bounds (and :func:`box_emptiness_ce`, the
  per-pixel form of the emptiness);
* :func:`centroid_constraints` (C11): soft centroid within bounds.

Constraints come back as a :class:`Constraint` ``(g, active)``: inactive entries (e.g. a bound
``(0, inf)``) hold ``-inf`` in ``g`` and ``False`` in ``active``, so the objectives of
:mod:`weakseg.constrain.objectives` (penalty, log-barrier, Lagrangian, proposal) ignore them
and the metrics count violations among the active ones only.

**The registry.** :data:`CONSTRAINTS` maps a family name (``size``, ``tags``, ``box``,
``centroid``) to a :class:`ConstraintFamily`: the pure function, the batch entries it reads,
the names of the constraints it returns (and the shape of one Lagrange multiplier per class
for each), whether it is affine in the probabilities (Pathak's proposal needs that), which
inputs may be fixed in the config instead of read from the batch, and an optional per-pixel
surrogate that replaces some of its constraints (the box emptiness as a cross-entropy).
Adding a constraint is one function with :func:`register_constraint` on it; the loss that
optimises it is :class:`weakseg.losses.constraints.ConstraintLoss`.

Everything works in 2D and 3D (reductions over ``range(2, ndim)``) and is vectorised over
images, classes, bounds and bands.

References:
    Pathak, Krähenbühl & Darrell, "Constrained convolutional neural networks for weakly
    supervised segmentation", ICCV 2015.
    Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation", MedIA 2019.
    Kervadec et al., "Constrained deep networks: Lagrangian optimization via log-barrier
    extensions", MedIA 2022.
    Kervadec et al., "Bounding boxes for weakly supervised segmentation: global constraints
    get close to full supervision", MIDL 2020.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from weakseg.errors import WeaksegError
from weakseg.registry import Registry, did_you_mean

__all__ = [
    "CONSTRAINTS",
    "EMPTINESS",
    "Constraint",
    "ConstraintFamily",
    "FixedInput",
    "box_constraints",
    "box_emptiness",
    "box_emptiness_ce",
    "centroid_constraints",
    "check_size_bounds",
    "half_pixel",
    "register_constraint",
    "size_constraints",
    "soft_size",
    "tag_constraints",
    "violation_stats",
]


class Constraint(NamedTuple):
    """Constraint values and which of them are active."""

    g: torch.Tensor
    """Values, ``g <= 0`` satisfied; ``-inf`` where inactive."""
    active: torch.Tensor
    """Bool, same shape as ``g``: the constraints that take part."""


# -------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class FixedInput:
    """An input of a family that a config may fix (the same for every image) instead of
    reading it from the batch: ``convert(value, params)`` checks the config value and returns
    a tensor; ``shape(logits)`` is the shape it must have for those logits."""

    convert: Callable[[Any, Mapping[str, Any]], torch.Tensor]
    shape: Callable[[torch.Tensor], tuple[int, ...]]


@dataclass(frozen=True)
class ConstraintFamily:
    """One registered constraint family (see :func:`register_constraint`)."""

    name: str
    fn: Callable[..., Constraint | dict[str, Constraint]]
    """``fn(logits, **inputs, **params)`` → one :class:`Constraint` or named ones."""
    inputs: Mapping[str, str]
    """Argument name of ``fn`` → the batch key it is read from."""
    parts: Mapping[str, tuple[int, ...]]
    """Name of every constraint ``fn`` returns → the shape of one Lagrange multiplier per
    class after the class axis (e.g. ``(2,)`` for a lower and an upper bound)."""
    affine: bool = True
    """Affine in the probabilities (Pathak's proposal needs it)."""
    tolerance: Callable[[torch.Tensor], float] = field(default=lambda logits: half_pixel(logits))
    """``g`` above it counts as violated in the logs (image-fraction units)."""
    fixed: Mapping[str, FixedInput] = field(default_factory=dict)
    validate: Callable[[Mapping[str, Any]], None] | None = None
    """Checks the parameters when a loss is built (not mid-run)."""
    surrogate: Callable[..., dict[str, torch.Tensor]] | None = None
    """``surrogate(logits, **inputs, **its params)`` → ``{constraint name: loss}``: a per-pixel
    loss that replaces the named constraints (then only reported in the logs); ``{}`` when
    its parameters do not ask for it."""
    optional: Mapping[str, str] = field(default_factory=dict)
    """Argument name of ``fn`` → a batch key passed when the batch has it, left out otherwise
    (e.g. ``tags``, which switch off the constraints of absent classes)."""
    injected: tuple[str, ...] = ()
    """Keyword parameters of ``fn`` the loss fills from the data (``class_names``), never
    given in a config; :attr:`validate` sees them too (``None`` where unknown)."""
    multipliers: Callable[[Mapping[str, Any]], Mapping[str, tuple[int, ...]]] | None = None
    """``multipliers(params)`` → the shape of one set of Lagrange multipliers per constraint
    name, for constraints that are not one per class (e.g. one per pair of classes); by
    default ``(num_classes, *parts[name])``."""
    per_batch: bool = False
    """The constraints are on the batch as a whole (one row, the images pooled, e.g. the
    average class fraction ``class_fraction``): per-image multipliers do not apply."""

    def parameters(self) -> list[str]:
        """The keyword parameters a config may give (``fn``'s and the surrogate's, and the
        inputs that can be fixed)."""
        skip = {*self.inputs, *self.optional, *self.injected}
        names = [n for n in _keywords(self.fn) if n not in skip]
        if self.surrogate is not None:
            names += [n for n in _keywords(self.surrogate) if n not in skip]
        return [*self.fixed, *names]

    def split(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``params`` → (those of ``fn``, those of the surrogate); unknown names raise."""
        allowed = self.parameters()
        for key in params:
            if key not in allowed:
                raise WeaksegError(
                    f"unknown parameter '{key}' for constraint '{self.name}'"
                    f"{did_you_mean(key, allowed)}; allowed: {', '.join(allowed) or 'none'}"
                )
        own = _keywords(self.fn)
        fn_params = {k: v for k, v in params.items() if k in own}
        return fn_params, {k: v for k, v in params.items() if k not in own}

    def evaluate(
        self, logits: torch.Tensor, inputs: Mapping[str, Any], params: Mapping[str, Any]
    ) -> dict[str, Constraint]:
        """The named constraints of ``logits`` (``inputs`` by argument name)."""
        out = self.fn(logits, **inputs, **params)
        return {self.name: out} if isinstance(out, Constraint) else out


def _keywords(fn: Callable[..., Any]) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())[1:]  # after the logits
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


#: Constraint families by name; ``weakseg list constraints`` shows them.
CONSTRAINTS: Registry[ConstraintFamily] = Registry("constraint")


def register_constraint(
    name: str,
    *,
    inputs: Mapping[str, str],
    parts: Mapping[str, tuple[int, ...]] | None = None,
    affine: bool = True,
    tolerance: Callable[[torch.Tensor], float] | None = None,
    fixed: Mapping[str, FixedInput] | None = None,
    validate: Callable[[Mapping[str, Any]], None] | None = None,
    surrogate: Callable[..., dict[str, torch.Tensor]] | None = None,
    optional: Mapping[str, str] | None = None,
    injected: Sequence[str] = (),
    multipliers: Callable[[Mapping[str, Any]], Mapping[str, tuple[int, ...]]] | None = None,
    per_batch: bool = False,
    help: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a pure constraint function as family ``name`` (returns it unchanged).

    ``parts`` defaults to one constraint named ``name`` with one multiplier per class. The
    other keywords are the fields of :class:`ConstraintFamily`.

    Example:
        >>> @register_constraint("example_upper", inputs={})     # doctest: +SKIP
        ... def upper(logits, *, limit=0.5):
        ...     size = soft_size(logits, fraction=True)
        ...     return Constraint(size - limit, torch.ones_like(size, dtype=torch.bool))
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        doc = (fn.__doc__ or "").strip().splitlines()
        family = ConstraintFamily(
            name, fn, dict(inputs), dict(parts or {name: ()}), affine,
            tolerance or (lambda logits: half_pixel(logits)), dict(fixed or {}), validate,
            surrogate, dict(optional or {}), tuple(injected), multipliers, per_batch,
        )
        CONSTRAINTS.register(name, help=help or (doc[0] if doc else name))(family)
        return fn

    return deco


def half_pixel(logits: torch.Tensor) -> float:
    """Half a pixel as a fraction of the image: the tolerance of the violation counts."""
    return 0.5 / math.prod(logits.shape[2:])


@torch.no_grad()
def violation_stats(constraints: Mapping[str, Constraint], tol: float) -> dict[str, torch.Tensor]:
    """Fraction of active constraints with ``g > tol``, overall (``"violated"``) and per
    constraint name if there are several (``"<name>_violated"``); detached, no host sync."""
    counts = {name: (((c.g > tol) & c.active).sum(), c.active.sum())
              for name, c in constraints.items()}
    violated = torch.stack([v for v, _ in counts.values()]).sum()
    active = torch.stack([a for _, a in counts.values()]).sum()
    stats = {"violated": violated / active.clamp_min(1)}
    if len(counts) > 1:
        stats.update({f"{name}_violated": v / a.clamp_min(1) for name, (v, a) in counts.items()})
    return stats


def _fixed_bounds(bounds: object, ndim: int, expected: str) -> torch.Tensor:
    """Fixed per-class bounds from a config as a float tensor: ``(C, 2)`` (``ndim=2``) or
    ``(C, D, 2)`` with 1-3 axes (``ndim=3``), ``C >= 2``; ``expected`` names the shape in the
    error message."""
    try:
        fixed = torch.as_tensor(bounds, dtype=torch.float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bounds must be {expected} nested lists, got {bounds!r}") from err
    if fixed.ndim != ndim or fixed.shape[-1] != 2 or fixed.shape[0] < 2 or (
            ndim == 3 and not 1 <= fixed.shape[1] <= 3):
        raise ValueError(f"bounds must have shape {expected}, got shape {tuple(fixed.shape)}")
    return fixed


# --------------------------------------------------------------------------- helpers


def _check_logits(logits: torch.Tensor) -> None:
    if logits.ndim < 3 or logits.ndim > 5:
        raise ValueError(
            f"logits must be (B, C, *spatial) with 1-3 spatial dims, got {tuple(logits.shape)}"
        )
    if not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def _num_pixels(x: torch.Tensor) -> int:
    return math.prod(x.shape[2:])


def _as_tensor(
    value: torch.Tensor | float | Sequence[Any], like: torch.Tensor, shape: tuple[int, ...],
    what: str, expected: str,
) -> torch.Tensor:
    """``value`` on ``like``'s device and dtype, broadcast to ``shape``."""
    tensor = torch.as_tensor(value, device=like.device).to(like.dtype)
    try:
        return tensor.expand(shape)
    except RuntimeError as err:
        raise ValueError(
            f"{what} of shape {tuple(tensor.shape)} does not broadcast to {expected} = {shape}"
        ) from err


def _first(bad: torch.Tensor) -> tuple[int, ...]:
    """Index of the first ``True`` of ``bad`` (a host sync: checks only)."""
    return tuple(int(i) for i in bad.nonzero()[0].tolist())


def soft_size(logits: torch.Tensor, *, fraction: bool = False) -> torch.Tensor:
    r"""Soft size :math:`V_c = \sum_{p \in \Omega} s_p^c` of every class in every image.

    Args:
        logits: ``(B, C, *spatial)``.
        fraction: return :math:`V_c / |\Omega|` (a class proportion) instead of pixels.

    Shape:
        logits ``(B, C, *spatial)``; output ``(B, C)``.

    Example:
        >>> soft_size(torch.zeros(2, 4, 8, 8))[0]
        tensor([16., 16., 16., 16.])
    """
    _check_logits(logits)
    probs = logits.softmax(1)
    dims = _spatial_dims(logits)
    return probs.mean(dims) if fraction else probs.sum(dims)


# ------------------------------------------------------------------------- sizes (C3)


def check_size_bounds(
    bounds: torch.Tensor, num_pixels: int, *, fraction: bool = False, what: str = "size bounds"
) -> None:
    """Raise :class:`WeaksegError` for NaN, negative or infeasible bounds ``(B, C, 2)``.

    Infeasible: lower > upper, or lower above the image size (``num_pixels``, or 1 if the
    bounds are fractions). The message names the first offending image and class.
    """
    lo, hi = bounds.unbind(-1)
    total, unit = (1.0, "fraction") if fraction else (float(num_pixels), "pixels")
    checks = [
        (torch.isnan(bounds).any(-1), "is NaN"),
        ((bounds < 0).any(-1), "is negative; sizes are >= 0"),
        (lo > hi, "is infeasible: lower > upper"),
        (lo > total, f"is infeasible: lower above the image size {total:g} ({unit})"),
    ]
    for bad, why in checks:
        if bool(bad.any()):
            where = _first(bad)
            image, cls = (where[0], where[1]) if len(where) >= 2 else (0, where[-1])
            value = [float(v) for v in bounds[where].tolist()]
            raise WeaksegError(
                f"{what} for image {image}, class {cls}: (lower, upper) = {tuple(value)} {why}"
            )


def _size_fixed(value: object, params: Mapping[str, Any]) -> torch.Tensor:
    fixed = _fixed_bounds(value, 2, "(C, 2): one (lo, hi) per class")
    fraction = bool(params.get("fraction", False))
    check_size_bounds(fixed[None], 1 if fraction else 2**62, fraction=fraction,
                      what="size loss bounds")
    return fixed


@register_constraint(
    "size", inputs={"bounds": "bounds"}, parts={"size": (2,)},
    fixed={"bounds": FixedInput(_size_fixed, lambda z: (z.shape[1], 2))},
    help="size bounds a <= V_c <= b per image and class, from data.priors or fixed (C3-C5)",
)
def size_constraints(
    logits: torch.Tensor,
    bounds: torch.Tensor | Sequence[Sequence[float]],
    *,
    fraction: bool = False,
    check: bool = True,
) -> Constraint:
    r"""Size bounds :math:`a_c \le V_c \le b_c` as constraint values (C3/C4/C5, C6 sizes).

    .. math::

        g = \bigl[\,(a_c - V_c) / |\Omega|,\ (V_c - b_c) / |\Omega|\,\bigr]

    A lower bound is active only where :math:`a > 0`, an upper bound only where
    :math:`b < |\Omega|` (otherwise it always holds; in particular ``(0, inf)`` switches a
    class off); inactive entries are ``-inf``.

    Args:
        logits: ``(B, C, *spatial)``.
        bounds: ``(B, C, 2)`` ``[lower, upper]`` per image and class (or anything that
            broadcasts to it, e.g. ``(C, 2)`` for all images), in pixels, or fractions of the
            image if ``fraction``; ``inf`` allowed as upper bound.
        fraction: bounds are fractions of :math:`|\Omega|` in ``[0, 1]``.
        check: reject NaN, negative and infeasible bounds (a host sync; switch off in hot
            loops once the data are known to be valid).

    Returns:
        :class:`Constraint` with ``g`` and ``active`` of shape ``(B, C, 2)``.

    Raises:
        WeaksegError: NaN, negative or infeasible bounds (message names image and class).

    Shape:
        logits ``(B, C, *spatial)``, bounds ``(B, C, 2)``; output ``(B, C, 2)``.

    Reference:
        Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation",
        MedIA 2019.

    Example:
        >>> logits = torch.zeros(1, 2, 4, 4)                 # V = (8, 8)
        >>> size_constraints(logits, torch.tensor([[[0.0, 16.0], [10.0, 12.0]]])).g
        tensor([[[   -inf,    -inf],
                 [ 0.1250, -0.2500]]])
    """
    _check_logits(logits)
    b, c = logits.shape[:2]
    bounds = _as_tensor(bounds, logits, (b, c, 2), "size bounds", "(B, C, 2)")
    total = 1.0 if fraction else float(_num_pixels(logits))
    if check:
        check_size_bounds(bounds, _num_pixels(logits), fraction=fraction)
    lo, hi = bounds.unbind(-1)
    size = soft_size(logits, fraction=fraction)
    g = torch.stack([lo - size, size - hi], dim=-1) / total
    active = torch.stack([lo > 0, hi < total], dim=-1)
    return Constraint(torch.where(active, g, float("-inf")), active)


@register_constraint("tags", inputs={"tags": "tags"},
                     help="image tags: suppress absent, include present classes (C6)")
def tag_constraints(
    logits: torch.Tensor, tags: torch.Tensor, *, min_size: float = 1.0, fraction: bool = False
) -> Constraint:
    r"""Image-level tags as constraints (C6): suppression of absent, inclusion of present
    classes.

    .. math::

        g_c = \begin{cases} V_c / |\Omega| & \text{tag } c \text{ absent } (V_c \le 0) \\
              (m - V_c) / |\Omega| & \text{tag } c \text{ present } (V_c \ge m)
              \end{cases}

    A soft size is never exactly 0, so an absent class is always (slightly) violated: the
    objective keeps pushing its probabilities down (linearly with the log-barrier
    extension or the Lagrangian, the paper's choice).

    Args:
        logits: ``(B, C, *spatial)``.
        tags: ``(B, C)`` bool, ``True`` where the class is present (include the background,
            normally present).
        min_size: ``m``, the minimal size of a present class, in pixels (or a fraction of the
            image if ``fraction``).
        fraction: ``min_size`` is a fraction of :math:`|\Omega|`.

    Returns:
        :class:`Constraint` of shape ``(B, C)``, all entries active.

    Shape:
        logits ``(B, C, *spatial)``, tags ``(B, C)``; output ``(B, C)``.

    Reference:
        Pathak et al., ICCV 2015 (suppression / foreground constraints); Kervadec et al.,
        MedIA 2019.

    Example:
        >>> logits = torch.zeros(1, 2, 4, 4)                 # V = (8, 8)
        >>> tag_constraints(logits, torch.tensor([[True, False]]), min_size=10.0).g
        tensor([[0.1250, 0.5000]])
    """
    _check_logits(logits)
    if tags.dtype != torch.bool or tags.shape != logits.shape[:2]:
        raise ValueError(
            f"tags must be a (B, C) = {tuple(logits.shape[:2])} bool tensor, got "
            f"{tuple(tags.shape)} {tags.dtype}"
        )
    total = 1.0 if fraction else float(_num_pixels(logits))
    if not 0 < min_size <= total:
        raise ValueError(f"min_size must be in (0, {total:g}], got {min_size}")
    size = soft_size(logits, fraction=fraction)
    g = torch.where(tags.to(logits.device), min_size - size, size) / total
    return Constraint(g, torch.ones_like(g, dtype=torch.bool))


# ------------------------------------------------------------------------- boxes (C7)


def _band_constraints(
    inside: torch.Tensor, boxes: torch.Tensor, band_width: int, total: float
) -> Constraint:
    """Tightness of every band of ``band_width`` slices along every spatial axis."""
    gs, actives = [], []
    spatial = _spatial_dims(inside)
    for axis in spatial:  # the 1-3 spatial axes, not the bands
        other = tuple(d for d in spatial if d != axis)
        mass = inside.sum(other) if other else inside          # (B, C, n) mass per slice
        crosses = boxes.any(other) if other else boxes         # (B, C, n) slice in the box
        zero = mass.new_zeros(mass.shape[:-1] + (1,))
        cum = torch.cat([zero, mass.cumsum(-1)], dim=-1)
        cum_rows = torch.cat([zero.long(), crosses.long().cumsum(-1)], dim=-1)
        band_mass = cum[..., band_width:] - cum[..., :-band_width]
        inside_box = (cum_rows[..., band_width:] - cum_rows[..., :-band_width]) == band_width
        start = crosses.long().argmax(-1, keepdim=True)       # first slice of the box
        offset = torch.arange(band_mass.shape[-1], device=mass.device) - start
        active = inside_box & (offset % band_width == 0)       # consecutive, non-overlapping
        gs.append(torch.where(active, (band_width - band_mass) / total, float("-inf")))
        actives.append(active)
    return Constraint(torch.cat(gs, dim=-1), torch.cat(actives, dim=-1))


def _box_fractions(
    size_fraction: Sequence[float] | Sequence[Sequence[float]], num_classes: int | None,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` as ``(C,)`` tensors from one pair or ``C`` pairs, checked (``C`` taken
    from ``size_fraction`` itself when ``num_classes`` is None)."""
    try:
        frac = torch.as_tensor(size_fraction, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"size_fraction must be (lo, hi) or C such pairs, got "
                         f"{size_fraction!r}") from err
    if num_classes is None:
        num_classes = frac.shape[0] if frac.ndim == 2 else 1
    if frac.shape == (2,):
        frac = frac.expand(num_classes, 2)
    if frac.shape != (num_classes, 2):
        raise ValueError(f"size_fraction must be (lo, hi) or {num_classes} (lo, hi) pairs (one "
                         f"per class), got shape {tuple(frac.shape)}")
    lo, hi = frac[:, 0], frac[:, 1]
    if not bool(((lo >= 0) & (lo <= hi) & (hi <= 1)).all()):
        raise ValueError(f"size_fraction must satisfy 0 <= lo <= hi <= 1, got "
                         f"{frac.tolist()}")
    return (lo.to(like.device, like.dtype), hi.to(like.device, like.dtype))


#: Forms of the box emptiness prior (see :func:`box_emptiness`).
EMPTINESS = ("mass", "ce")


def _check_box_params(params: Mapping[str, Any]) -> None:
    band_width = params.get("band_width", 1)
    if isinstance(band_width, bool) or not isinstance(band_width, int) or band_width < 1:
        raise ValueError(f"band_width must be an integer >= 1, got {band_width!r}")
    _box_fractions(params.get("size_fraction", (0.5, 0.9)), None, torch.zeros(()))
    emptiness = params.get("emptiness", "mass")
    if emptiness not in EMPTINESS:
        raise ValueError(f"emptiness must be one of {EMPTINESS}, got '{emptiness}'")
    weight = params.get("emptiness_weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
            not math.isfinite(weight) or weight < 0:
        raise ValueError(f"emptiness_weight must be a finite number >= 0, got {weight!r}")
    background = params.get("background", 0)
    if isinstance(background, bool) or not isinstance(background, int) or background < 0:
        raise ValueError(f"background must be a class index >= 0, got {background!r}")


def box_emptiness(
    logits: torch.Tensor, boxes_mask: torch.Tensor, *, emptiness: str = "mass",
    emptiness_weight: float = 1.0, background: int = 0,
) -> dict[str, torch.Tensor]:
    """The surrogate of the box family: with ``emptiness="ce"`` the per-pixel form
    ``emptiness_weight ·`` :func:`box_emptiness_ce` replaces the ``outside`` constraint
    (a softmax never meets the soft-mass form; ``docs/benchmarks/acdc_constraints.md``);
    ``{}`` with ``"mass"``. With ``"ce"`` a class with no box in an image is absent from it."""
    if emptiness == "mass":
        return {}
    weight = float(emptiness_weight)
    return {"outside": weight * box_emptiness_ce(logits, boxes_mask, background=background)}


@register_constraint(
    "box", inputs={"boxes_mask": "boxes"},
    parts={"outside": (), "tightness": (1,), "size": (2,)},
    validate=_check_box_params, surrogate=box_emptiness,
    help="box priors: empty outside, tight inside, box-size bounds (C7)",
)
def box_constraints(
    logits: torch.Tensor,
    boxes_mask: torch.Tensor,
    *,
    band_width: int = 1,
    size_fraction: Sequence[float] | Sequence[Sequence[float]] = (0.5, 0.9),
) -> dict[str, Constraint]:
    r"""Bounding-box priors (C7): emptiness outside, tightness inside, box-size bounds.

    For class :math:`c` with box :math:`B_c` (``boxes_mask[:, c]``):

    .. math::

        g^{out}_c &= \textstyle\sum_{p \notin B_c} s_p^c / |\Omega|
            \quad (\text{nothing outside the box}) \\
        g^{tight}_{c,l} &= \bigl(w - \textstyle\sum_{p \in B_c \cap S_l} s_p^c\bigr) / |\Omega|
            \quad (\text{every band } S_l \text{ of } w \text{ rows/columns crossing it}) \\
        g^{size}_c &= \bigl[\,\mathrm{lo}\,|B_c| - V^{in}_c,\ V^{in}_c - \mathrm{hi}\,|B_c|\,\bigr]
            / |\Omega|, \quad V^{in}_c = \textstyle\sum_{p \in B_c} s_p^c

    The box-size bounds are on the mass *inside* the box: the mass outside is the emptiness
    term's, and an upper bound on the whole-image size would also push down every pixel of
    the image — at initialisation (``s ≈ 1/C`` everywhere) by a violation of thousands of
    pixels, which drove ACDC training into an all-background, saturated softmax.

    Bands are the consecutive, non-overlapping slabs of ``band_width`` slices perpendicular to
    each spatial axis, starting at the box's first slice; a last slab narrower than
    ``band_width`` is dropped. In 3D a band is a slab of ``w`` slices, which must hold at
    least ``w`` voxels. All bands of all axes are computed with one cumulative sum per axis:
    ``tightness`` has one entry per possible band position of every axis,
    :math:`n = \sum_d (n_d - w + 1)`, ``-inf`` / inactive where no band starts.

    One box per class and image is the intended use (``boxes_mask[b, c]`` is that box). A
    mask holding several boxes of the same class still gives valid but weaker tightness
    bands (a slice must cross the union, not each box); give several instances separate
    images or channels for the full prior. Classes without a box in an image (e.g. the
    background) are inactive: combine with :func:`tag_constraints` for absent classes.

    Args:
        logits: ``(B, C, *spatial)``.
        boxes_mask: ``(B, C, *spatial)`` bool, ``True`` inside the box of class ``c``.
        band_width: ``w``, slices per band (``>= 1``).
        size_fraction: ``(lo, hi)``, bounds on the object's size as fractions of the box
            area, ``0 <= lo <= hi <= 1``; or one ``(lo, hi)`` per class (``C`` pairs), e.g.
            a thin ring such as the myocardium fills far less of its box than a disc.

    Returns:
        ``{"outside": (B, C), "tightness": (B, C, n), "size": (B, C, 2)}``, each a
        :class:`Constraint`.

    Shape:
        logits and boxes_mask ``(B, C, *spatial)``; outputs as above.

    Reference:
        Kervadec, Dolz, Wang, Granger & Ben Ayed, "Bounding boxes for weakly supervised
        segmentation: global constraints get close to full supervision", MIDL 2020.

    Example:
        >>> logits = torch.zeros(1, 2, 8, 8)
        >>> boxes = torch.zeros(1, 2, 8, 8, dtype=torch.bool); boxes[0, 1, 2:6, 1:4] = True
        >>> out = box_constraints(logits, boxes)
        >>> out["tightness"].g.shape, int(out["tightness"].active.sum())   # 4 rows + 3 cols
        (torch.Size([1, 2, 16]), 7)
    """
    _check_logits(logits)
    if boxes_mask.dtype != torch.bool or boxes_mask.shape != logits.shape:
        raise ValueError(
            f"boxes_mask must be a bool tensor shaped like the logits {tuple(logits.shape)}, "
            f"got {tuple(boxes_mask.shape)} {boxes_mask.dtype}"
        )
    if isinstance(band_width, bool) or not isinstance(band_width, int) or band_width < 1:
        raise ValueError(f"band_width must be an integer >= 1, got {band_width!r}")
    lo, hi = _box_fractions(size_fraction, logits.shape[1], logits)
    boxes = boxes_mask.to(logits.device)
    dims = _spatial_dims(logits)
    total = float(_num_pixels(logits))
    probs = logits.softmax(1)
    inside = probs * boxes
    has_box = boxes.flatten(2).any(-1)                                        # (B, C)
    size = inside.sum(dims)                                   # mass inside the box
    outside = (probs.sum(dims) - size) / total
    area = boxes.sum(dims).to(logits.dtype)
    size_g = torch.stack([lo * area - size, size - hi * area], dim=-1) / total  # lo, hi: (C,)
    size_active = has_box.unsqueeze(-1).expand(size_g.shape)
    return {
        "outside": Constraint(torch.where(has_box, outside, float("-inf")), has_box),
        "tightness": _band_constraints(inside, boxes, band_width, total),
        "size": Constraint(torch.where(size_active, size_g, float("-inf")), size_active),
    }


def box_emptiness_ce(
    logits: torch.Tensor, boxes_mask: torch.Tensor, *, background: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Per-pixel emptiness of the boxes (C7): each pixel may only hold the classes allowed there.

    With :math:`A_p` the classes allowed at pixel :math:`p` — the ``background`` class, and
    every class :math:`c` whose box :math:`B_c` covers :math:`p`:

    .. math::

        \mathcal{L} = \frac{1}{|\Omega|} \sum_{p \in \Omega}
            -\log \sum_{k \in A_p} s_p^k

    Outside every box this is the cross-entropy of the background label; inside a box it
    only forbids the classes whose boxes do not cover the pixel (0 where every class is
    allowed). It is the pixel-wise version of "no mass of class c outside its box",
    :math:`\sum_{p \notin B_c} s_p^c \le 0`, which a softmax can approach but never meet;
    here each term vanishes once the forbidden probabilities do. A class with no box in an
    image is forbidden everywhere in it (absent).

    Args:
        logits: ``(B, C, *spatial)``.
        boxes_mask: ``(B, C, *spatial)`` bool, ``True`` inside the box of class ``c``
            (the ``background`` channel is ignored).
        background: the class allowed everywhere.
        reduction: ``"mean"`` over images and pixels, ``"sum"``, or ``"none"``
            (``(B, *spatial)``).

    Reference:
        Kervadec, Dolz, Wang, Granger & Ben Ayed, "Bounding boxes for weakly supervised
        segmentation: global constraints get close to full supervision", MIDL 2020.

    Example:
        >>> logits = torch.zeros(1, 2, 4, 4)
        >>> boxes = torch.zeros(1, 2, 4, 4, dtype=torch.bool); boxes[0, 1, :2, :2] = True
        >>> round(float(box_emptiness_ce(logits, boxes)), 4)   # 12 of 16 pixels: -log 0.5
        0.5199
    """
    _check_logits(logits)
    if boxes_mask.dtype != torch.bool or boxes_mask.shape != logits.shape:
        raise ValueError(
            f"boxes_mask must be a bool tensor shaped like the logits {tuple(logits.shape)}, "
            f"got {tuple(boxes_mask.shape)} {boxes_mask.dtype}"
        )
    if not 0 <= background < logits.shape[1]:
        raise ValueError(f"background class {background} is not one of the "
                         f"{logits.shape[1]} classes")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got '{reduction}'")
    allowed = boxes_mask.to(logits.device).clone()
    allowed[:, background] = True
    log_probs = logits.log_softmax(1)
    per_pixel = -torch.logsumexp(log_probs.masked_fill(~allowed, float("-inf")), dim=1)
    if reduction == "none":
        return per_pixel
    return per_pixel.sum() if reduction == "sum" else per_pixel.mean()


# ---------------------------------------------------------------------- centroid (C11)


def _centroid_fixed(value: object, params: Mapping[str, Any]) -> torch.Tensor:
    fixed = _fixed_bounds(value, 3, "(C, D, 2): one (lo, hi) per class and spatial axis")
    if bool((torch.isnan(fixed).any(-1) | (fixed[..., 0] > fixed[..., 1])).any()):
        raise ValueError(f"centroid bounds must satisfy lo <= hi, got {fixed.tolist()}")
    return fixed


@register_constraint(
    "centroid", inputs={"bounds": "centroid_bounds"}, parts={"centroid": (1, 2)},
    affine=False, tolerance=lambda logits: 0.5 / max(logits.shape[2:]),
    fixed={"bounds": FixedInput(_centroid_fixed,
                                lambda z: (z.shape[1], z.ndim - 2, 2))},
    help="soft centroid of each class within bounds per axis, e.g. a location prior (C11)",
)
def centroid_constraints(
    logits: torch.Tensor,
    bounds: torch.Tensor | Sequence[float],
    *,
    fraction: bool = False,
    check: bool = True,
) -> Constraint:
    r"""Soft centroid of every class within bounds, per spatial axis (C11).

    .. math::

        m_{c,d} = \frac{\sum_p x_d(p)\, s_p^c}{V_c}, \qquad
        g = \bigl[\,(a_{c,d} - m_{c,d}) / n_d,\ (m_{c,d} - b_{c,d}) / n_d\,\bigr]

    with :math:`x_d(p)` the pixel index along axis ``d`` (``0 … n_d − 1``), or with
    ``fraction`` the normalised coordinate :math:`(x_d + 0.5) / n_d` in ``(0, 1)`` (and
    no division by :math:`n_d`). A bound outside the coordinates' range (e.g. ``-inf`` /
    ``inf``) is inactive. The soft centroid of a class that is absent is that of its
    small probabilities; switch such classes off with infinite bounds.

    Args:
        logits: ``(B, C, *spatial)``.
        bounds: ``(B, C, D, 2)`` ``[lower, upper]`` per image, class and spatial axis (D = 1,
            2 or 3, in the logits' axis order), or anything broadcastable to it.
        fraction: bounds in normalised coordinates.
        check: reject NaN bounds and lower > upper (a host sync).

    Returns:
        :class:`Constraint` of shape ``(B, C, D, 2)``.

    Raises:
        WeaksegError: NaN bounds or lower > upper.

    Shape:
        logits ``(B, C, *spatial)``, bounds ``(B, C, D, 2)``; output ``(B, C, D, 2)``.

    Reference:
        Kervadec et al., "Constrained deep networks: Lagrangian optimization via log-barrier
        extensions", MedIA 2022 (centroid constraints).

    Example:
        >>> logits = torch.zeros(1, 1, 5, 5)                 # centroid (2, 2)
        >>> centroid_constraints(logits, torch.tensor([[3.0, 4.0], [0.0, 4.0]])).g[0, 0]
        tensor([[0.2000,   -inf],
                [  -inf,   -inf]])
    """
    _check_logits(logits)
    b, c, *spatial = logits.shape
    ndim = len(spatial)
    bounds = _as_tensor(bounds, logits, (b, c, ndim, 2), "centroid bounds", "(B, C, D, 2)")
    if check:
        bad = torch.isnan(bounds).any(-1) | (bounds[..., 0] > bounds[..., 1])
        if bool(bad.any()):
            i, k, d = _first(bad)
            value = tuple(float(v) for v in bounds[i, k, d].tolist())
            raise WeaksegError(
                f"centroid bounds for image {i}, class {k}, axis {d}: (lower, upper) = {value} "
                "is NaN or infeasible (lower > upper)"
            )
    probs = logits.softmax(1)
    dims = _spatial_dims(logits)
    size = probs.sum(dims).clamp_min(torch.finfo(logits.dtype).tiny)     # (B, C)
    centroids, lows, highs, scales = [], [], [], []
    for axis, n in zip(dims, spatial, strict=True):  # the 1-3 spatial axes
        other = tuple(d for d in dims if d != axis)
        profile = probs.sum(other) if other else probs                      # (B, C, n)
        coord = torch.arange(n, device=logits.device, dtype=logits.dtype)
        if fraction:
            coord = (coord + 0.5) / n
        centroids.append((profile * coord).sum(-1) / size)
        lows.append(coord[0])
        highs.append(coord[-1])
        scales.append(1.0 if fraction else float(n))
    centroid = torch.stack(centroids, dim=-1)                                # (B, C, D)
    scale = torch.tensor(scales, device=logits.device, dtype=logits.dtype)
    lo, hi = bounds.unbind(-1)
    g = torch.stack([lo - centroid, centroid - hi], dim=-1) / scale.unsqueeze(-1)
    active = torch.stack([lo > torch.stack(lows), hi < torch.stack(highs)], dim=-1)
    return Constraint(torch.where(active, g, float("-inf")), active)

