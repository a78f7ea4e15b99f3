r"""Differentiable constraint values from logits (METHODS.md C1, C2, C6, C7, C9, C11).

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
:mod:`weakseg.constrain` (penalty, log-barrier, Lagrangian) ignore them and the metrics can
count violations among the active ones only. Turn them into a loss with
:func:`weakseg.constrain.apply` or :class:`weakseg.constrain.ConstraintObjective`.

Objectives that are not inequalities return a loss directly: :func:`size_equality_l2`
(C1), :func:`size_equality_kl` (C2) and :func:`area_by_sorting` (C9).

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
    Zhang, David & Gong, "Curriculum domain adaptation for semantic segmentation of urban
    scenes", ICCV 2017. Zhou et al., "Prior-aware neural network for partially-supervised
    multi-organ segmentation", ICCV 2019.
    Fong, Patrick & Vedaldi, "Understanding deep networks via extremal perturbations and
    smooth masks", ICCV 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from weakseg.constrain import METHODS, ConstraintObjective, pathak_proposal
from weakseg.errors import WeaksegError
from weakseg.losses._utils import check_reduction
from weakseg.losses.base import LOSSES

__all__ = [
    "AREA_ACTIVATIONS",
    "AreaBySortingLoss",
    "BoxConstraintLoss",
    "CentroidConstraintLoss",
    "Constraint",
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
#: Scales of the constraint values fed to the objectives (see :class:`SizeConstraintLoss`).
UNITS = ("fraction", "pixels")
#: Forms of the box emptiness prior (see :class:`BoxConstraintLoss`).
EMPTINESS = ("mass", "ce")
EQUALITY_KINDS = ("l2", "kl")


class Constraint(NamedTuple):
    """Constraint values and which of them are active."""

    g: torch.Tensor
    """Values, ``g <= 0`` satisfied; ``-inf`` where inactive."""
    active: torch.Tensor
    """Bool, same shape as ``g``: the constraints that take part."""


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
    value: torch.Tensor | float | Sequence[float], like: torch.Tensor, shape: tuple[int, ...],
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


def _reduce_classes(per_class: torch.Tensor, reduction: str) -> torch.Tensor:
    """``(B, C)`` terms: ``"mean"`` over images of the sum over classes, ``"sum"``, ``"none"``."""
    if reduction == "none":
        return per_class
    if reduction == "sum":
        return per_class.sum()
    return per_class.sum(1).mean()


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


# ---------------------------------------------------------------------------- modules

#: How a constraint loss turns its constraints into an objective: the methods of
#: :func:`weakseg.constrain.apply`, or Pathak's proposal as a soft target.
LOSS_METHODS: tuple[str, ...] = (*METHODS, "proposal")


class _InequalityLoss(nn.Module):
    """Shared part of the constraint losses: a :class:`ConstraintObjective` per term.

    ``units`` is the scale of ``g`` the penalty / log-barrier / Lagrangian see:
    ``"fraction"`` (the image fractions of :func:`size_constraints` and co., the default) or
    ``"pixels"`` (``g·|Ω|``, the units of Kervadec et al.'s log-barrier papers). It matters
    for the log-barrier, whose branch switch sits at ``g = -1/t²``: in fractions with
    ``t = 5`` that is 4 % of the image, so most constraints lie on the linear extension
    (a constant push, even when satisfied); in pixels the switch is at 0.04 pixel and a
    satisfied constraint feels the barrier's decaying ``1/(t·|g|)`` force.

    After every forward, :attr:`last_stats` holds (detached, no host sync) ``"violated"``,
    the fraction of the active constraints violated by more than half a pixel (``g`` above
    ``tol``, image-fraction units), and for several terms also ``"<term>_violated"``.
    """

    def __init__(
        self,
        parts: dict[str, tuple[int, ...]],
        method: str,
        *,
        t0: float,
        t_mult: float,
        t_max: float | None,
        dual_lr: float,
        reduction: str,
        proposal_iterations: int = 30,
        proposal_lr: float = 4.0,
        units: str = "fraction",
        per_image: bool = False,
    ) -> None:
        super().__init__()
        if method not in LOSS_METHODS:
            raise ValueError(f"constraint method must be one of {LOSS_METHODS}, got '{method}'")
        if isinstance(proposal_iterations, bool) or not isinstance(proposal_iterations, int) \
                or proposal_iterations < 1:
            raise ValueError(f"proposal_iterations must be an integer >= 1, got "
                             f"{proposal_iterations!r}")
        if not math.isfinite(proposal_lr) or proposal_lr <= 0:
            raise ValueError(f"proposal_lr must be a finite number > 0, got {proposal_lr}")
        if units not in UNITS:
            raise ValueError(f"units must be one of {UNITS}, got '{units}'")
        if per_image and method != "lagrangian":
            raise ValueError(f"per_image multipliers need method 'lagrangian', got '{method}'")
        if per_image:  # the batch's data-set indices select each image's multipliers
            self.inputs = (*type(self).inputs, "index")
        self.method = method
        self.units = units
        self.proposal_iterations = proposal_iterations
        self.proposal_lr = float(proposal_lr)
        objective_method = "penalty" if method == "proposal" else method  # unused then
        self.objectives = nn.ModuleDict({
            name: ConstraintObjective(objective_method, t0=t0, t_mult=t_mult, t_max=t_max,
                                      slots=slots, dual_lr=dual_lr, reduction=reduction,
                                      per_image=per_image)
            for name, slots in parts.items()
        })
        self.last_stats: dict[str, torch.Tensor] = {}

    def _objective(
        self,
        logits: torch.Tensor,
        constraints: dict[str, Constraint],
        again: Callable[[torch.Tensor], dict[str, Constraint]],
        tol: float,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of ``constraints`` (those of ``logits``) by the configured method
        (``index``: the batch's data-set indices, for per-image multipliers).

        ``"proposal"`` (Pathak et al., ICCV 2015): the constrained proposal ``P`` closest to
        the prediction in KL (:func:`~weakseg.constrain.pathak_proposal`, the constraints must
        be affine in the probabilities; ``again`` re-evaluates them for other log-probabilities,
        without re-checking the inputs) becomes a soft target,
        ``mean_p −Σ_c P_p^c log s_p^c``; the others go through :meth:`_total`.
        """
        if self.method != "proposal":
            scale = float(_num_pixels(logits)) if self.units == "pixels" else 1.0
            return self._total(constraints, tol, scale, index)
        self.last_stats = _violation_stats(constraints, tol)

        def flat_g(z: torch.Tensor) -> torch.Tensor:
            return torch.cat([c.g.flatten(1) for c in again(z).values()], dim=1)

        proposal = pathak_proposal(logits, flat_g, iterations=self.proposal_iterations,
                                   lr=self.proposal_lr)
        return -(proposal.probs * logits.log_softmax(1)).sum(1).mean()

    def _total(self, constraints: dict[str, Constraint], tol: float = 0.0,
               scale: float = 1.0, index: torch.Tensor | None = None) -> torch.Tensor:
        values = [self.objectives[name](c.g * scale, c.active, index)
                  for name, c in constraints.items()]
        self.last_stats = _violation_stats(constraints, tol)
        return torch.stack(values).sum(0) if values[0].ndim == 0 else values[0]

    def epoch_step(self) -> None:
        """Grow the log-barrier ``t`` of every term (call once per epoch)."""
        for objective in self.objectives.values():
            objective.epoch_step()


@torch.no_grad()
def _violation_stats(constraints: dict[str, Constraint], tol: float) -> dict[str, torch.Tensor]:
    """Fraction of active constraints with ``g > tol``, overall and per term if several."""
    counts = {name: (((c.g > tol) & c.active).sum(), c.active.sum())
              for name, c in constraints.items()}
    violated = torch.stack([v for v, _ in counts.values()]).sum()
    active = torch.stack([a for _, a in counts.values()]).sum()
    stats = {"violated": violated / active.clamp_min(1)}
    if len(counts) > 1:
        stats.update({f"{name}_violated": v / a.clamp_min(1) for name, (v, a) in counts.items()})
    return stats


def _half_pixel(logits: torch.Tensor) -> float:
    """Half a pixel as a fraction of the image: the tolerance of the violation counts."""
    return 0.5 / _num_pixels(logits)


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


def _slots(num_classes: int | None, *tail: int) -> tuple[int, ...]:
    return () if num_classes is None else (num_classes, *tail)


@LOSSES.register("size", help="size bounds a <= V_c <= b per image and class, from data.priors "
                 "(C3-C5)")
class SizeConstraintLoss(_InequalityLoss):
    """Size bounds (:func:`size_constraints`) as a loss, with the method selectable.

    ``method``: ``"penalty"``, ``"log_barrier"`` (``t0``, ``t_mult``, ``t_max``; call
    :meth:`epoch_step` once per epoch) or ``"lagrangian"`` (one λ per class and bound side
    if ``num_classes`` is given, else one λ for all; dual step ``dual_lr`` at each training
    forward) or ``"proposal"`` (Pathak et al., ICCV 2015: cross-entropy to the constrained
    proposal, ``proposal_iterations`` dual steps of size ``proposal_lr``, see
    :func:`~weakseg.constrain.pathak_proposal`). The batch key it reads is ``"bounds"``
    ``(B, C, 2)``, unless fixed ``bounds``
    (one ``(lo, hi)`` per class, the same for every image; pixels, or fractions with
    ``fraction=True``; ``.inf`` allowed as upper bound) are given here: then it reads nothing
    from the batch (e.g. a known range of the nucleus fraction of histology crops).
    ``per_image=True`` (Lagrangian only) keeps one set of multipliers per training image
    instead of sharing them across images; the loss then also reads the batch's ``index``
    (the trainer's sample positions), see :class:`~weakseg.constrain.ConstraintObjective`.
    ``units`` (``"fraction"`` or ``"pixels"``) is the scale of ``g`` the objectives see,
    see :class:`_InequalityLoss`.
    """

    inputs: tuple[str, ...] = ("bounds",)
    fixed_bounds: torch.Tensor | None

    def __init__(
        self,
        method: str = "log_barrier",
        *,
        fraction: bool = False,
        check: bool = True,
        t0: float = 5.0,
        t_mult: float = 1.1,
        t_max: float | None = None,
        num_classes: int | None = None,
        dual_lr: float = 1.0,
        reduction: str = "mean",
        proposal_iterations: int = 30,
        proposal_lr: float = 4.0,
        bounds: Sequence[Sequence[float]] | None = None,
        units: str = "fraction",
        per_image: bool = False,
    ) -> None:
        super().__init__({"size": _slots(num_classes, 2)}, method, t0=t0, t_mult=t_mult,
                         t_max=t_max, dual_lr=dual_lr, reduction=reduction,
                         proposal_iterations=proposal_iterations, proposal_lr=proposal_lr,
                         units=units, per_image=per_image)
        self.fraction = fraction
        self.check = check
        fixed = None
        if bounds is not None:
            fixed = _fixed_bounds(bounds, 2, "(C, 2): one (lo, hi) per class")
            check_size_bounds(fixed[None], 1 if fraction else 2**62, fraction=fraction,
                              what="size loss bounds")
            self.inputs = tuple(k for k in self.inputs if k != "bounds")
        self.register_buffer("fixed_bounds", fixed, persistent=False)

    def forward(self, logits: torch.Tensor, bounds: torch.Tensor | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        if self.fixed_bounds is not None:
            if self.fixed_bounds.shape[0] != logits.shape[1]:
                raise ValueError(f"the size loss has bounds for {self.fixed_bounds.shape[0]} "
                                 f"classes but the logits have {logits.shape[1]}")
            bounds = self.fixed_bounds.to(logits.dtype)
        elif bounds is None:
            raise ValueError("the size loss needs per-image bounds (B, C, 2) or fixed bounds")
        first = {"size": size_constraints(logits, bounds, fraction=self.fraction,
                                          check=self.check)}
        return self._objective(
            logits, first,
            lambda z: {"size": size_constraints(z, bounds, fraction=self.fraction, check=False)},
            _half_pixel(logits), index)


@LOSSES.register("tags", help="image tags: suppress absent, include present classes (C6)")
class TagConstraintLoss(_InequalityLoss):
    """Image-tag constraints (:func:`tag_constraints`) as a loss; batch key ``"tags"``.

    The method options are those of :class:`SizeConstraintLoss` (one λ per class).
    """

    inputs = ("tags",)

    def __init__(
        self,
        method: str = "log_barrier",
        *,
        min_size: float = 1.0,
        fraction: bool = False,
        t0: float = 5.0,
        t_mult: float = 1.1,
        t_max: float | None = None,
        num_classes: int | None = None,
        dual_lr: float = 1.0,
        reduction: str = "mean",
        proposal_iterations: int = 30,
        proposal_lr: float = 4.0,
        units: str = "fraction",
        per_image: bool = False,
    ) -> None:
        super().__init__({"tags": _slots(num_classes)}, method, t0=t0, t_mult=t_mult,
                         t_max=t_max, dual_lr=dual_lr, reduction=reduction,
                         proposal_iterations=proposal_iterations, proposal_lr=proposal_lr,
                         units=units, per_image=per_image)
        self.min_size = min_size
        self.fraction = fraction

    def forward(self, logits: torch.Tensor, tags: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        def make(z: torch.Tensor) -> dict[str, Constraint]:
            return {"tags": tag_constraints(z, tags, min_size=self.min_size,
                                            fraction=self.fraction)}

        return self._objective(logits, make(logits), make, _half_pixel(logits), index)


@LOSSES.register("box", help="box priors: empty outside, tight inside, box-size bounds (C7)")
class BoxConstraintLoss(_InequalityLoss):
    """Box priors (:func:`box_constraints`) as a loss: the sum of the objectives of the
    ``outside``, ``tightness`` and ``size`` terms (each with its own state; with the
    Lagrangian, one λ per class and term, shared by the bands). Batch key ``"boxes"``
    ``(B, C, *spatial)`` bool.

    ``emptiness`` picks the form of "nothing of class c outside its box":

    * ``"mass"``: the soft-mass constraint ``outside`` of :func:`box_constraints`, through
      the same method as the other terms. A softmax never reaches 0, so this constraint is
      never met: with a log-barrier it pushes every outside probability down with a constant
      force, which on ACDC out-pushed the tightness bands and collapsed training to
      all-background (``docs/benchmarks/acdc_constraints.md``).
    * ``"ce"``: the per-pixel form, :func:`box_emptiness_ce` — at every pixel the mass of the
      classes allowed there (the ``background`` class, and each class whose box covers the
      pixel) is pushed to 1 by a cross-entropy, which vanishes once met; outside every box
      this is the partial cross-entropy on background pixels that box supervision implies.
      The ``outside`` constraint is then only reported in the logs (``outside_violated``,
      not part of ``violated``), not optimised. Its
      weight ``emptiness_weight`` sets the balance with the other terms (a mean over pixels,
      about 1, against barriers in ``units``).

    With ``"ce"`` a class with no box in an image is taken as absent from it (boxes are
    given for every structure present).
    """

    inputs = ("boxes",)

    def __init__(
        self,
        method: str = "log_barrier",
        *,
        band_width: int = 1,
        size_fraction: Sequence[float] | Sequence[Sequence[float]] = (0.5, 0.9),
        emptiness: str = "mass",
        emptiness_weight: float = 1.0,
        background: int = 0,
        t0: float = 5.0,
        t_mult: float = 1.1,
        t_max: float | None = None,
        num_classes: int | None = None,
        dual_lr: float = 1.0,
        reduction: str = "mean",
        proposal_iterations: int = 30,
        proposal_lr: float = 4.0,
        units: str = "fraction",
        per_image: bool = False,
    ) -> None:
        if reduction == "none":
            raise ValueError("BoxConstraintLoss sums three terms: reduction must be "
                             "'mean' or 'sum'; use box_constraints() for the raw values")
        if emptiness not in EMPTINESS:
            raise ValueError(f"emptiness must be one of {EMPTINESS}, got '{emptiness}'")
        if not math.isfinite(emptiness_weight) or emptiness_weight < 0:
            raise ValueError(f"emptiness_weight must be a finite number >= 0, got "
                             f"{emptiness_weight}")
        if isinstance(background, bool) or not isinstance(background, int) or background < 0:
            raise ValueError(f"background must be a class index >= 0, got {background!r}")
        parts = {"outside": _slots(num_classes), "tightness": _slots(num_classes, 1),
                 "size": _slots(num_classes, 2)}
        super().__init__(parts, method, t0=t0, t_mult=t_mult, t_max=t_max, dual_lr=dual_lr,
                         reduction=reduction,
                         proposal_iterations=proposal_iterations, proposal_lr=proposal_lr,
                         units=units, per_image=per_image)
        _box_fractions(size_fraction, None, torch.zeros(()))  # validate now, not mid-run
        self.band_width = band_width
        self.size_fraction = size_fraction
        self.emptiness = emptiness
        self.emptiness_weight = float(emptiness_weight)
        self.background = background

    def forward(self, logits: torch.Tensor, boxes: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        def make(z: torch.Tensor) -> dict[str, Constraint]:
            out = box_constraints(z, boxes, band_width=self.band_width,
                                  size_fraction=self.size_fraction)
            if self.emptiness == "ce":
                del out["outside"]
            return out

        constraints = box_constraints(logits, boxes, band_width=self.band_width,
                                      size_fraction=self.size_fraction)
        tol = _half_pixel(logits)
        if self.emptiness == "mass":
            return self._objective(logits, constraints, make, tol, index)
        outside = constraints.pop("outside")
        loss = self._objective(logits, constraints, make, tol, index)
        # "violated" counts the optimised terms; the soft outside mass is only reported
        # (a softmax always leaves more than half a pixel of it)
        self.last_stats["outside_violated"] = _violation_stats({"outside": outside},
                                                               tol)["violated"]
        return loss + self.emptiness_weight * box_emptiness_ce(logits, boxes,
                                                               background=self.background)


@LOSSES.register("centroid", help="soft centroid of each class within bounds per axis, e.g. "
                 "a location prior (C11)")
class CentroidConstraintLoss(_InequalityLoss):
    """Centroid bounds (:func:`centroid_constraints`) as a loss; batch key
    ``"centroid_bounds"`` ``(B, C, D, 2)``, or fixed ``bounds`` given here, one
    ``[[lo, hi], ...]`` per class and spatial axis (``(C, D, 2)``, the same for every image;
    normalised coordinates with ``fraction=True``, ``.inf`` to leave an axis free), e.g. "the
    left ventricle's centre lies in the middle half of a cropped short-axis slice". With the
    Lagrangian and ``num_classes``, λ has shape ``(C, 1, 2)`` (shared by the axes)."""

    inputs: tuple[str, ...] = ("centroid_bounds",)
    fixed_bounds: torch.Tensor | None

    def __init__(
        self,
        method: str = "log_barrier",
        *,
        fraction: bool = False,
        check: bool = True,
        t0: float = 5.0,
        t_mult: float = 1.1,
        t_max: float | None = None,
        num_classes: int | None = None,
        dual_lr: float = 1.0,
        reduction: str = "mean",
        bounds: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> None:
        if method == "proposal":
            raise ValueError("method 'proposal' needs constraints affine in the probabilities; "
                             "the centroid is a ratio: use penalty, log_barrier or lagrangian")
        super().__init__({"centroid": _slots(num_classes, 1, 2)}, method, t0=t0,
                         t_mult=t_mult, t_max=t_max, dual_lr=dual_lr, reduction=reduction)
        self.fraction = fraction
        self.check = check
        fixed = None
        if bounds is not None:
            fixed = _fixed_bounds(bounds, 3, "(C, D, 2): one (lo, hi) per class and spatial axis")
            if bool((torch.isnan(fixed).any(-1) | (fixed[..., 0] > fixed[..., 1])).any()):
                raise ValueError(f"centroid bounds must satisfy lo <= hi, got {fixed.tolist()}")
            self.inputs = ()
        self.register_buffer("fixed_bounds", fixed, persistent=False)

    def forward(
        self, logits: torch.Tensor, centroid_bounds: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.fixed_bounds is not None:
            bounds = self.fixed_bounds.to(logits.dtype)
            if bounds.shape[:2] != (logits.shape[1], logits.ndim - 2):
                raise ValueError(f"centroid bounds have shape {tuple(bounds.shape)} but the "
                                 f"logits need ({logits.shape[1]}, {logits.ndim - 2}, 2)")
        elif centroid_bounds is None:
            raise ValueError("the centroid loss needs per-image bounds or fixed bounds")
        else:
            bounds = centroid_bounds
        constraint = centroid_constraints(logits, bounds, fraction=self.fraction,
                                          check=self.check)
        return self._total({"centroid": constraint}, 0.5 / max(logits.shape[2:]))


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
