r"""Anatomical knowledge priors as constraint families (METHODS.md C14).

Two priors that hold for an organ whatever the image, registered in
:data:`~weakseg.constrain.families.CONSTRAINTS` so that every objective (penalty,
log-barrier, Lagrangian) optimises them through the one ``constraint`` loss:

* :func:`relative_size_constraints` (``relative_size``): bounds on the ratio of the soft
  sizes of two structures, :math:`\mathrm{lo} \le V_a / V_b \le \mathrm{hi}` (e.g. the left
  ventricle's blood pool against its myocardium), written *linearly* in the sizes,

  .. math::

      g = \bigl[\,(\mathrm{lo}\,V_b - V_a) / |\Omega|,\ (V_a - \mathrm{hi}\,V_b) / |\Omega|\,\bigr],

  so the constraint is affine in the probabilities (no division by a vanishing size, and
  Pathak's proposal applies);
* :func:`one_component_constraints` (``one_component``): one connected blob per structure —
  the soft mass of a class far from the largest connected component of the (detached)
  arg-max prediction,

  .. math::

      g_c = \Bigl(\textstyle\sum_{p \notin D_c} s_p^c - \tau\Bigr) / |\Omega|,

  with :math:`D_c` that component dilated by ``dilation`` pixels and :math:`\tau` a
  tolerance in pixels. The component is found on the CPU (``scipy.ndimage.label``, 2D and
  3D); the gradient flows through the probabilities only.

:func:`largest_components` is the connected-component helper they share with the
post-processing :func:`weakseg.engine.inference.largest_component`.

Classes are named by index or by name; names are resolved against the data's class names,
which the ``constraint`` loss receives from the recipe (``class_names``). A name or index
that does not exist fails when the loss is built, in one line with a did-you-mean.

Example:
    >>> import torch
    >>> logits = torch.zeros(1, 3, 4, 4)                      # V = (16/3, 16/3, 16/3)
    >>> c = relative_size_constraints(logits, pairs=[(1, 2, 0.5, 0.8)])
    >>> c.g                                                    # lower holds, upper violated
    tensor([[[-0.1667,  0.0667]]])

References:
    Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation", MedIA 2019
    (size constraints as inequalities of the soft size, optimised by a penalty).
    Kervadec et al., "Constrained deep networks: Lagrangian optimization via log-barrier
    extensions", MedIA 2022 (any inequality constraint by the log-barrier extension).
    The lecture "Weakly supervised CNN segmentation", part 2: other knowledge priors —
    number of instances (connected components), anatomical relative sizes between organs
    (METHODS.md C14).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from weakseg.constrain.families import (
    Constraint,
    _check_logits,
    _num_pixels,
    _spatial_dims,
    register_constraint,
    soft_size,
)

__all__ = [
    "largest_components",
    "one_component_constraints",
    "relative_size_constraints",
    "resolve_class",
]

ClassRef = int | str


# ------------------------------------------------------------------------- classes


def resolve_class(
    ref: object, *, num_classes: int | None, class_names: Sequence[str] | None, what: str
) -> int | None:
    """A class given by index or name → its index; ``None`` for a name while the class names
    are unknown (checked again once they are). ``what`` names the parameter in errors.

    Raises:
        ValueError: not an int or a string, a negative index, an index beyond the classes,
            or a name that is not a class (with a did-you-mean).
    """
    if class_names is not None:
        num_classes = len(class_names)
    if isinstance(ref, str):
        if class_names is None:
            return None
        if ref not in class_names:
            lower = {name.lower(): name for name in class_names}   # 'lv' → 'LV' too
            close = difflib.get_close_matches(ref.lower(), sorted(lower), n=1, cutoff=0.6)
            hint = f" (did you mean '{lower[close[0]]}'?)" if close else ""
            raise ValueError(f"{what}: unknown class '{ref}'{hint}; classes: "
                             f"{', '.join(class_names)}")
        return list(class_names).index(ref)
    if isinstance(ref, bool) or not isinstance(ref, int):
        raise ValueError(f"{what}: a class is an index or a name, got {ref!r}")
    if ref < 0 or (num_classes is not None and ref >= num_classes):
        known = f" (classes 0-{num_classes - 1})" if num_classes is not None else ""
        raise ValueError(f"{what}: class index {ref} does not exist{known}")
    return ref


def _indices(
    refs: Sequence[object], num_classes: int, class_names: Sequence[str] | None, what: str
) -> list[int]:
    """Every reference resolved (at evaluation: a name needs the class names)."""
    out = []
    for ref in refs:
        k = resolve_class(ref, num_classes=num_classes, class_names=class_names, what=what)
        if k is None:
            raise ValueError(f"{what}: class '{ref}' is given by name but the class names are "
                             "unknown; give class indices or class_names")
        out.append(k)
    return out


# ------------------------------------------------------------ relative sizes (C14)


def _check_pairs(
    pairs: object, num_classes: int | None, class_names: Sequence[str] | None
) -> list[tuple[ClassRef, ClassRef, float, float]]:
    """``pairs`` as ``(a, b, lo, hi)`` tuples, checked (classes as far as they are known)."""
    form = ("relative_size pairs must be a list of [a, b, lo, hi] (classes a, b by name or "
            "index, lo <= size_a / size_b <= hi)")
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError(f"{form}, got {pairs!r}")
    out = []
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 4:
            raise ValueError(f"{form}, got the item {pair!r}")
        a, b, lo, hi = pair
        what = f"relative_size pair {list(pair)}"
        ka = resolve_class(a, num_classes=num_classes, class_names=class_names, what=what)
        kb = resolve_class(b, num_classes=num_classes, class_names=class_names, what=what)
        if a == b or (ka is not None and ka == kb):
            raise ValueError(f"{what}: the two classes must differ")
        for name, value in (("lo", lo), ("hi", hi)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    math.isnan(value):
                raise ValueError(f"{what}: {name} must be a number, got {value!r}")
        if lo < 0 or hi < 0:
            raise ValueError(f"{what}: ratio bounds must be >= 0, got lo = {lo}, hi = {hi}")
        if lo > hi:
            raise ValueError(f"{what}: lo = {lo} > hi = {hi}")
        if math.isinf(lo):
            raise ValueError(f"{what}: lo must be finite, got {lo}")
        out.append((a, b, float(lo), float(hi)))
    return out


def _check_relative_params(params: Mapping[str, Any]) -> None:
    if "pairs" not in params:
        raise ValueError("constraint 'relative_size' needs pairs: [[a, b, lo, hi], ...], "
                         "e.g. [[LV, Myo, 0.5, 2.0]]")
    _check_pairs(params["pairs"], None, params.get("class_names"))


def _relative_multipliers(params: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {"relative_size": (len(params["pairs"]), 2)}


@register_constraint(
    "relative_size", inputs={}, optional={"tags": "tags"}, parts={"relative_size": (2,)},
    injected=("class_names",), validate=_check_relative_params,
    multipliers=_relative_multipliers,
    help="ratio bounds lo <= V_a / V_b <= hi between the sizes of two structures, linear "
         "in the sizes (C14)",
)
def relative_size_constraints(
    logits: torch.Tensor,
    tags: torch.Tensor | None = None,
    *,
    pairs: Sequence[Sequence[ClassRef | float]],
    class_names: Sequence[str] | None = None,
) -> Constraint:
    r"""Bounds on the ratio of the soft sizes of two structures (C14), linear in the sizes.

    For every pair :math:`(a, b, \mathrm{lo}, \mathrm{hi})`, the prior
    :math:`\mathrm{lo} \le V_a / V_b \le \mathrm{hi}` with :math:`V_c = \sum_p s_p^c` is
    written without a division (sizes are non-negative), so it is affine in the
    probabilities and every objective applies:

    .. math::

        g = \bigl[\,(\mathrm{lo}\,V_b - V_a) / |\Omega|,\
                    (V_a - \mathrm{hi}\,V_b) / |\Omega|\,\bigr]

    A lower bound ``lo = 0`` and an upper bound ``hi = inf`` are inactive. With ``tags``,
    a pair is active only in the images where both structures are present; without, in
    every image (then an image showing neither structure satisfies the bounds only with
    both sizes near 0, and one showing only ``b`` violates ``lo > 0``: give tags where
    structures can be absent, e.g. apical or basal slices).

    Args:
        logits: ``(B, C, *spatial)``.
        tags: optional ``(B, C)`` bool, ``True`` where the class is present.
        pairs: ``P`` items ``(a, b, lo, hi)``: classes ``a`` and ``b`` (index, or name with
            ``class_names``) and ``0 <= lo <= hi`` bounds on :math:`V_a / V_b` (``hi`` may
            be ``inf``; ``.inf`` in YAML).
        class_names: the data's class names, to resolve names (the loss injects them).

    Returns:
        :class:`Constraint` of shape ``(B, P, 2)`` (lower, upper).

    Raises:
        ValueError: malformed pairs, an unknown class, ``lo > hi`` or negative bounds; tags
            of the wrong shape.

    Shape:
        logits ``(B, C, *spatial)``, tags ``(B, C)``; output ``(B, P, 2)``.

    Reference:
        Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation", MedIA
        2019; Kervadec et al., "Constrained deep networks: Lagrangian optimization via
        log-barrier extensions", MedIA 2022; the lecture's anatomical priors (relative sizes
        between organs), METHODS.md C14.

    Example:
        >>> logits = torch.zeros(1, 4, 4, 4)                 # V = 4 for every class
        >>> names = ["background", "RV", "Myo", "LV"]
        >>> relative_size_constraints(logits, pairs=[("LV", "Myo", 0.5, 2.0)],
        ...                           class_names=names).g
        tensor([[[-0.1250, -0.2500]]])
    """
    _check_logits(logits)
    b, c = logits.shape[:2]
    checked = _check_pairs(pairs, c, class_names)
    what = "relative_size pairs"
    ia = torch.tensor(_indices([p[0] for p in checked], c, class_names, what),
                      device=logits.device)
    ib = torch.tensor(_indices([p[1] for p in checked], c, class_names, what),
                      device=logits.device)
    lo = torch.tensor([p[2] for p in checked], device=logits.device, dtype=logits.dtype)
    hi = torch.tensor([p[3] for p in checked], device=logits.device, dtype=logits.dtype)
    size = soft_size(logits)                                                   # (B, C)
    va, vb = size[:, ia], size[:, ib]                                          # (B, P)
    upper = torch.isfinite(hi)
    hi_finite = torch.where(upper, hi, torch.zeros_like(hi))  # inf · V has no gradient
    g = torch.stack([lo * vb - va, va - hi_finite * vb], dim=-1) / _num_pixels(logits)
    active = torch.stack([lo > 0, upper], dim=-1).expand(b, -1, -1)           # (B, P, 2)
    if tags is not None:
        if tags.dtype != torch.bool or tags.shape != logits.shape[:2]:
            raise ValueError(f"tags must be a (B, C) = {tuple(logits.shape[:2])} bool tensor, "
                             f"got {tuple(tags.shape)} {tags.dtype}")
        present = tags.to(logits.device)
        active = active & (present[:, ia] & present[:, ib]).unsqueeze(-1)
    return Constraint(torch.where(active, g, float("-inf")), active)


# ---------------------------------------------------------- one component (C14)


def _block_structure(spatial: int, connectivity: int) -> np.ndarray:
    """The neighbourhood of ``connectivity`` over the spatial axes of a ``(N, *spatial)``
    stack, never joining two items of the stack."""
    if isinstance(connectivity, bool) or not isinstance(connectivity, int) or \
            not 1 <= connectivity <= spatial:
        raise ValueError(f"connectivity must be an integer in [1, {spatial}] for {spatial} "
                         f"spatial axes, got {connectivity!r}")
    inner = ndimage.generate_binary_structure(spatial, connectivity)
    structure = np.zeros((3, *inner.shape), dtype=bool)
    structure[1] = inner
    return structure


def largest_components(
    masks: np.ndarray, *, connectivity: int = 1, dilation: int = 0
) -> np.ndarray:
    """The largest connected component of every mask of a stack, optionally dilated.

    Args:
        masks: ``(N, *spatial)`` bool, 1-3 spatial axes.
        connectivity: neighbours that connect, as in ``scipy.ndimage``: 1 = sharing a face
            (4-neighbours in 2D, 6 in 3D) up to the number of spatial axes (8 / 26).
        dilation: grow each component by that many steps of the same neighbourhood.

    Returns:
        ``(N, *spatial)`` bool; empty where the mask is empty. Of components of equal size,
        the first in raster order is kept.

    Example:
        >>> m = np.array([[[1, 1, 0, 1]]], dtype=bool)
        >>> largest_components(m).astype(int).tolist()
        [[[1, 1, 0, 0]]]
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim < 2:
        raise ValueError(f"masks must be (N, *spatial), got shape {masks.shape}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise ValueError(f"dilation must be an integer >= 0, got {dilation!r}")
    structure = _block_structure(masks.ndim - 1, connectivity)
    labels, count = ndimage.label(masks, structure=structure)
    keep = np.zeros(masks.shape, dtype=bool)
    if count == 0:
        return keep
    flat = labels.reshape(masks.shape[0], -1)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    owner = np.zeros(count + 1, dtype=np.int64)            # the mask each label lies in
    owner[flat] = np.arange(masks.shape[0])[:, None]
    best_size = np.zeros(masks.shape[0], dtype=np.int64)
    np.maximum.at(best_size, owner[1:], sizes[1:])
    ids = np.arange(1, count + 1)
    candidates = ids[sizes[1:] == best_size[owner[1:]]]
    best = np.full(masks.shape[0], count + 1)
    np.minimum.at(best, owner[candidates], candidates)    # ties: the first label
    chosen = np.zeros(count + 2, dtype=bool)
    chosen[best] = True
    chosen[0] = False
    keep = chosen[labels]
    if dilation:
        keep = ndimage.binary_dilation(keep, structure=structure, iterations=dilation)
    return keep


def _check_component_params(params: Mapping[str, Any]) -> None:
    names = params.get("class_names")
    classes = params.get("classes")
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or \
                not classes:
            raise ValueError(f"classes must be a list of class names or indices, got "
                             f"{classes!r}")
        for ref in classes:
            resolve_class(ref, num_classes=None, class_names=names, what="one_component classes")
    connectivity = params.get("connectivity", 1)
    if isinstance(connectivity, bool) or not isinstance(connectivity, int) or \
            not 1 <= connectivity <= 3:
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    dilation = params.get("dilation", 1)
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise ValueError(f"dilation must be an integer >= 0, got {dilation!r}")
    tolerance = params.get("tolerance", 0.0)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or \
            not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")


@register_constraint(
    "one_component", inputs={}, affine=False, injected=("class_names",),
    validate=_check_component_params,
    help="one blob per structure: soft mass far from the largest connected component of "
         "the prediction (C14)",
)
def one_component_constraints(
    logits: torch.Tensor,
    *,
    classes: Sequence[ClassRef] | None = None,
    dilation: int = 1,
    connectivity: int = 1,
    tolerance: float = 0.0,
    fraction: bool = False,
    class_names: Sequence[str] | None = None,
) -> Constraint:
    r"""One connected component per structure (C14): little soft mass far from the largest
    component of the prediction.

    With :math:`\hat y = \arg\max_k s^k` the (detached) hard prediction, :math:`L_c` the
    largest connected component of :math:`\{p : \hat y_p = c\}` and :math:`D_c` that
    component dilated by ``dilation`` steps,

    .. math::

        g_c = \Bigl(\textstyle\sum_{p \notin D_c} s_p^c - \tau\Bigr) / |\Omega|

    (with ``fraction``, :math:`\tau` is a fraction of :math:`|\Omega|`). Stray blobs of a
    class and its diffuse low probabilities far from the main blob count; the band of
    ``dilation`` pixels around the component lets its border move. :math:`D_c` is a
    constant (no gradient): the gradient of :math:`g_c` is that of the soft mass outside it.
    A class the prediction does not show has no component and its constraint is inactive,
    as are the classes not in ``classes``. Like the suppression of an absent tag, the soft
    mass is never exactly 0: a tolerance :math:`\tau > 0` leaves that much mass free.

    The components are computed on the CPU with ``scipy.ndimage.label`` (a host transfer of
    the ``(B, C, *spatial)`` arg-max per call), for all images and classes at once. The
    constraint is not affine (:math:`D_c` depends on the prediction): no Pathak proposal.

    Args:
        logits: ``(B, C, *spatial)``, 1-3 spatial axes.
        classes: the constrained classes (indices, or names with ``class_names``); default
            every class but the first (the background).
        dilation: steps of dilation of the component (``>= 0``).
        connectivity: 1 (faces: 4-neighbours in 2D, 6 in 3D) up to the number of spatial
            axes (8 / 26 neighbours).
        tolerance: :math:`\tau >= 0` in pixels, or a fraction of the image with ``fraction``.
        fraction: ``tolerance`` is a fraction of :math:`|\Omega|`.
        class_names: the data's class names, to resolve names (the loss injects them).

    Returns:
        :class:`Constraint` of shape ``(B, C)``.

    Shape:
        logits ``(B, C, *spatial)``; output ``(B, C)``.

    Reference:
        The lecture "Weakly supervised CNN segmentation", part 2: number of instances
        (connected components) as a knowledge prior (METHODS.md C14); the inequality form
        and its objectives: Kervadec et al., MedIA 2019 and MedIA 2022.

    Example:
        >>> logits = torch.zeros(1, 2, 1, 7)
        >>> logits[0, 1, 0, [0, 1, 2, 5]] = 2.0               # a blob of 3, a stray pixel
        >>> c = one_component_constraints(logits, dilation=1)
        >>> c.active.tolist(), round(float(c.g[0, 1]) * 7, 4)  # x = 4, 5, 6: 0.5 + 0.88 + 0.5
        ([[False, True]], 1.8808)
    """
    _check_logits(logits)
    b, c, *spatial = logits.shape
    chosen = (_indices(list(classes), c, class_names, "one_component classes")
              if classes is not None else list(range(1, c)))
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or \
            not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    total = float(_num_pixels(logits))
    tau = tolerance * total if fraction else float(tolerance)
    if not chosen:                                        # nothing to constrain
        off = torch.zeros(b, c, dtype=torch.bool, device=logits.device)
        return Constraint(logits.new_full((b, c), float("-inf")), off)
    hard = logits.detach().argmax(1)                                       # (B, *spatial)
    index = torch.tensor(chosen, device=logits.device, dtype=torch.long)
    shape = (1, len(chosen), *[1] * len(spatial))
    masks = (hard.unsqueeze(1) == index.view(shape)).cpu().numpy()        # (B, K, *spatial)
    near_k = largest_components(masks.reshape(b * len(chosen), *spatial),
                                connectivity=connectivity, dilation=dilation)
    near = np.ones((b, c, *spatial), dtype=bool)      # unconstrained classes: nothing outside
    near[:, chosen] = near_k.reshape(b, len(chosen), *spatial)
    far = torch.from_numpy(~near).to(logits.device)
    outside = (logits.softmax(1) * far).sum(_spatial_dims(logits))         # (B, C)
    g = (outside - tau) / total
    present = torch.from_numpy(masks.reshape(b, len(chosen), -1).any(-1)).to(logits.device)
    active = torch.zeros(b, c, dtype=torch.bool, device=logits.device)
    active[:, index] = present                      # classes of the prediction, constrained
    return Constraint(torch.where(active, g, float("-inf")), active)
