"""Per-slice priors for the losses (``data.priors``): derived from full label maps, or read
from an estimates file.

Each prior is computed for every 2D training slice **after resizing**, from the slice's
nearest-resized full label map, so boxes and sizes are in training pixels. They travel with
the slices in :attr:`weakseg.data.slices.SliceData.extras` and reach the losses as batch
entries (a loss's ``inputs`` name them):

============================  ==================  ==============================================
prior                         batch key           what it is
============================  ==================  ==============================================
``tags``                      ``tags``            ``(N, C)`` bool, classes present in the slice
                                                  (image tags)
``boxes``                     ``boxes``           ``(N, C, S, S)`` bool, tight box of every
                                                  foreground class (the background gets none)
``bounds_from_tags``          ``bounds``          ``(N, C, 2)`` float: tagged classes get the
                                                  (min, max) size over all training slices that
                                                  contain them, absent ones ``(0, 0)``; a
                                                  **data-set statistic** of the training masks
                                                  (Kervadec et al., MedIA 2019)
``bounds_from_boxes``         ``bounds``          ``(N, C, 2)``: ``[0.5, 0.9] ×`` box area per
                                                  foreground class, ``(0, 0)`` if absent,
                                                  background unbounded ``(0, inf)`` (Kervadec
                                                  et al., MIDL 2020)
``oracle_bounds``             ``bounds``          ``(N, C, 2)``: the TRUE size ± 10 %: reads the
                                                  ground truth of the slice it constrains;
                                                  **ablations only**
``estimated_fractions``       ``fractions``       ``(N, C)`` float: class fractions of the slice
                                                  *estimated* by a model trained on another
                                                  domain, read from a file, not from labels (D3)
``estimated_cell_fractions``  ``cell_fractions``  ``(N, C, g, g)`` float: the same per cell of a
                                                  ``g × g`` grid (cell ``(i, j)``: rows
                                                  ``i·S/g …``, columns ``j·S/g …``)
``estimated_masks``           ``pseudo_masks``    ``(N, S, S)`` float: a pseudo-mask per slice
                                                  (class index, ``-100``: abstains) read from
                                                  the file, e.g. the CAM masks of ``weakseg
                                                  cam`` (C13); loss ``pseudo_ce``
``bounds_from_estimates``     ``bounds``          ``(N, C, 2)``: the estimated size of every
                                                  class ``× (1 ∓ margin)`` (default 0.1), in
                                                  pixels, from the same file: curriculum size
                                                  bounds (Kervadec et al., MICCAI 2019, C12)
============================  ==================  ==============================================

A prior with parameters takes them from ``data.prior_params`` (``{bounds_from_estimates:
{margin: 0.2}}``); :func:`check_prior_params` names the allowed ones.

The ``estimated_*`` priors and ``bounds_from_estimates`` need no label map: they are read,
by slice identity (volume key and slice index), from the file that ``weakseg
estimate-priors`` or ``weakseg train-size-regressor`` writes (:mod:`weakseg.data.estimates`),
named by ``data.estimates`` or ``data.target.estimates``; they are the only priors a target
domain (``data.target.priors``) can take.

Every prior is an entry of the registry :data:`PRIOR_REGISTRY`: its batch key, its producer
(from the full label maps), and how it changes when a training batch is rotated / flipped
(:func:`~weakseg.data.slices.augment_batch`) or cut to a crop window
(:func:`~weakseg.data.slices.random_crop`): ``boxes`` move and are cut with the image, but
both ``tags`` and ``boxes`` are *recomputed* from the window's full label map (a crop can
cut a class away, or shrink its box); size bounds and class fractions describe whole slices
and forbid a crop. Grid-cell fractions are laid out like the image (``spatial``): a rotated
or flipped slice has its cells rotated or flipped alike (the grid is square on a square
slice, so a cell maps exactly onto a cell).
The registry also holds ``index``, the batch entry every sample carries without being
listed (its position in the training set, for per-image Lagrange multipliers). A simulated
annotation may add per-volume entries of its own to the same extras, e.g. ``labelled_classes``
``(N, C)`` bool of ``sim:partial_sites`` (:mod:`weakseg.annotate.partial`): not spatial,
unchanged by rotations, flips and crops.

Class 0 is the background. At most one ``bounds`` source per run. With the phantom or any data
with full masks these are *simulated* weak annotations (tags, boxes) or statistics; the only
oracle is ``oracle_bounds``, and the trainer says so in its log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from weakseg.annotate.boxes import (
    box_masks,
    boxes_from_mask,
    oracle_size_bounds,
    size_bounds_from_boxes,
    size_bounds_from_tags,
    size_stats,
    tags_from_mask,
)
from weakseg.errors import WeaksegError
from weakseg.registry import Registry, did_you_mean

__all__ = [
    "CROP_RULES",
    "ESTIMATED_PRIORS",
    "ORACLE_PRIORS",
    "PRIORS",
    "PRIOR_KEYS",
    "PRIOR_REGISTRY",
    "SAMPLE_KEYS",
    "bounds_from_fractions",
    "SPATIAL_EXTRAS",
    "Prior",
    "check_prior_params",
    "check_priors",
    "compute_priors",
    "crop_priors",
    "describe_priors",
    "priors_providing",
    "sample_entries",
]

#: Box-size fractions of ``bounds_from_boxes`` and the margin of ``oracle_bounds``.
BOX_BOUNDS = (0.5, 0.9)
ORACLE_MARGIN = 0.1

#: What a crop window does to a batch entry: ``"cut"`` (spatial: cut at the window),
#: ``"recompute"`` (produced again from the window's full label map), ``"keep"``
#: (invariant), ``"forbid"`` (a whole-slice value no window keeps).
CROP_RULES = ("cut", "recompute", "keep", "forbid")


@dataclass(frozen=True)
class Prior:
    """One per-sample batch entry besides image and target.

    ``produce(labels, num_classes)`` maps full label maps ``(N, S, S)`` to the entry for every
    slice (first dimension ``N``); ``spatial`` entries are laid out like the image
    (``(..., S, S)``) and rotate / flip with it; ``on_crop`` is one of :data:`CROP_RULES`.
    ``listed=False`` entries are not named under ``data.priors``: every sample carries them,
    produced from the samples' positions by ``from_positions``. ``estimated`` entries are
    read from an estimates file (the field of that name: :mod:`weakseg.data.estimates`)
    instead of being produced from label maps, then mapped by ``derive(values, params,
    size)`` when given (``params``: :attr:`params` updated by ``data.prior_params``,
    ``size``: the canvas ``S``).
    """

    key: str
    description: str
    produce: Callable[[np.ndarray, int], np.ndarray] | None = None
    spatial: bool = False
    on_crop: str = "keep"
    oracle: bool = False
    listed: bool = True
    from_positions: Callable[[torch.Tensor], torch.Tensor] | None = None
    estimated: str | None = None
    derive: Callable[[np.ndarray, Mapping[str, float], int], np.ndarray] | None = None
    params: Mapping[str, float] = field(default_factory=dict)


#: name → :class:`Prior`; ``data.priors`` lists names of the listed ones.
PRIOR_REGISTRY: Registry[Prior] = Registry("prior")


def _tags(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return tags_from_mask(labels, num_classes=num_classes)


def _object_boxes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    boxes = boxes_from_mask(labels, num_classes=num_classes)                  # (N, C, 4)
    boxes[:, 0] = -1                          # the background is not an object with a box
    return boxes


def _box_masks(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return box_masks(_object_boxes(labels, num_classes), labels.shape[-2:])


def _bounds_from_tags(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return size_bounds_from_tags(_tags(labels, num_classes), size_stats(labels, num_classes))


def _bounds_from_boxes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    bounds = size_bounds_from_boxes(_object_boxes(labels, num_classes), *BOX_BOUNDS)
    bounds[:, 0] = (0.0, np.inf)
    return bounds


def _oracle_bounds(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return oracle_size_bounds(labels, num_classes=num_classes, margin=ORACLE_MARGIN)


def bounds_from_fractions(fractions: np.ndarray, size: int, *, margin: float = 0.1
                          ) -> np.ndarray:
    """Size bounds ``(N, C, 2)`` in pixels of an ``S × S`` slice from class fractions
    ``(N, C)``: ``f · S² · (1 − margin)`` and ``f · S² · (1 + margin)``, clipped to
    ``[0, S²]`` (the curriculum bounds of Kervadec et al., MICCAI 2019, with their 10 %).

    Example:
        >>> bounds_from_fractions(np.array([[0.75, 0.25]]), 4, margin=0.5).tolist()
        [[[6.0, 16.0], [2.0, 6.0]]]
    """
    if not 0.0 <= margin < 1.0:
        raise WeaksegError(f"bounds margin must be in [0, 1), got {margin}")
    sizes = np.asarray(fractions, dtype=np.float64)[..., None] * float(size) ** 2
    bounds = sizes * np.array([1.0 - margin, 1.0 + margin])
    return np.clip(bounds, 0.0, float(size) ** 2).astype(np.float32)


def _bounds_from_estimates(fractions: np.ndarray, params: Mapping[str, float],
                           size: int) -> np.ndarray:
    return bounds_from_fractions(fractions, size, margin=float(params["margin"]))


_lo, _hi = BOX_BOUNDS
_DEFINED: dict[str, Prior] = {
    "tags": Prior("tags", "classes present in each training slice, from its full mask "
                  "(simulated tags)", _tags, on_crop="recompute"),
    "boxes": Prior("boxes", "tight box of each foreground class in each training slice, from "
                   "its full mask (simulated boxes; none for the background)", _box_masks,
                   spatial=True, on_crop="recompute"),
    "bounds_from_tags": Prior("bounds", "size bounds = tags x (min, max) class size over the "
                              "full masks of the {num_slices} training slices (a data-set "
                              "statistic of the training set)", _bounds_from_tags,
                              on_crop="forbid"),
    "bounds_from_boxes": Prior("bounds", f"size bounds [{_lo:g}, {_hi:g}] x box area per "
                               "foreground class, background unbounded", _bounds_from_boxes,
                               on_crop="forbid"),
    "oracle_bounds": Prior("bounds", "reads the ground truth; for ablations only (true size of "
                           f"each training slice +- {100 * ORACLE_MARGIN:g} %)", _oracle_bounds,
                           on_crop="forbid", oracle=True),
    "estimated_fractions": Prior("fractions", "class fractions of each slice estimated by a "
                                 "model of another domain, read from the estimates file (no "
                                 "label of these slices is read; curriculum DA, D3)",
                                 on_crop="forbid", estimated="fractions"),
    "estimated_cell_fractions": Prior("cell_fractions", "class fractions of each cell of a "
                                      "square grid over each slice, estimated alike, read "
                                      "from the estimates file", spatial=True,
                                      on_crop="forbid", estimated="cell_fractions"),
    "bounds_from_estimates": Prior("bounds", "size bounds = estimated class size x (1 -+ "
                                   "margin) per slice, read from the estimates file (e.g. a "
                                   "size regressor trained on the fully labelled slices: "
                                   "'weakseg train-size-regressor'; no label of these slices "
                                   "is read)", on_crop="forbid", estimated="fractions",
                                   derive=_bounds_from_estimates, params={"margin": 0.1}),
    "estimated_masks": Prior("pseudo_masks", "pseudo-mask of each slice (class index, -100 "
                             "where it abstains), e.g. thresholded class activation maps of a "
                             "classifier trained on tags (weakseg cam, C13), read from the "
                             "estimates file (a crop is refused, as for every estimated "
                             "prior)", spatial=True, on_crop="forbid", estimated="masks"),
    "index": Prior("index", "position of each sample in the training set (per-image Lagrange "
                   "multipliers)", listed=False, from_positions=lambda pos: pos),
}
for _name, _prior in _DEFINED.items():
    PRIOR_REGISTRY.register(_name, help=_prior.description)(_prior)

#: The priors a config may list under ``data.priors`` (in listing order), and the batch key
#: each one fills.
PRIORS: tuple[str, ...] = tuple(name for name, prior in _DEFINED.items() if prior.listed)
PRIOR_KEYS: dict[str, str] = {name: _DEFINED[name].key for name in PRIORS}
#: Priors that read the ground truth of the very slice they constrain.
ORACLE_PRIORS: tuple[str, ...] = tuple(n for n in PRIORS if _DEFINED[n].oracle)
#: Priors read from an estimates file (no label map needed), e.g. for a target domain.
ESTIMATED_PRIORS: tuple[str, ...] = tuple(n for n in PRIORS if _DEFINED[n].estimated)
#: Batch entries laid out like the image (``(..., H, W)``): augmentation rotates/flips them.
SPATIAL_EXTRAS: frozenset[str] = frozenset(p.key for p in _DEFINED.values() if p.spatial)
#: Batch entries every sample carries without a ``data.priors`` entry (``index``).
SAMPLE_KEYS: frozenset[str] = frozenset(p.key for p in _DEFINED.values() if not p.listed)


def _rule(key: str) -> str | None:
    """The crop rule of batch key ``key`` (``None`` for keys no prior fills)."""
    rules = {p.on_crop for p in _DEFINED.values() if p.key == key}
    return rules.pop() if len(rules) == 1 else None


def _producer(key: str) -> Callable[[np.ndarray, int], np.ndarray]:
    return next(p.produce for p in _DEFINED.values() if p.key == key and p.produce is not None)


def priors_providing(key: str) -> list[str]:
    """The priors that fill batch entry ``key`` (e.g. ``"bounds"``), in listing order."""
    return [name for name, k in PRIOR_KEYS.items() if k == key]


def check_priors(priors: Sequence[str], *, where: str = "data.priors") -> None:
    """Reject unknown, repeated, or conflicting (two ``bounds`` sources) priors; ``where``
    names the list in the messages."""
    seen: dict[str, str] = {}
    for name in priors:
        if name not in PRIOR_KEYS:
            raise WeaksegError(
                f"unknown prior '{name}' in {where}{did_you_mean(name, PRIORS)}; "
                f"allowed: {', '.join(PRIORS)}"
            )
        key = PRIOR_KEYS[name]
        if key in seen:
            what = f"'{name}' is listed twice" if seen[key] == name else (
                f"'{seen[key]}' and '{name}' both give '{key}'")
            raise WeaksegError(f"{where}: {what}; keep one")
        seen[key] = name


def check_prior_params(priors: Sequence[str], params: Mapping[str, object], *,
                       where: str = "data") -> dict[str, dict[str, float]]:
    """``<where>.prior_params`` checked against the listed ``priors``: each key a listed
    prior that takes parameters, each parameter one it declares, a number; returns every
    listed prior's parameters with the defaults filled in."""
    out: dict[str, dict[str, float]] = {}
    for name, given in params.items():
        takes = [p for p in priors if p in _DEFINED and _DEFINED[p].params]
        if name not in priors:
            raise WeaksegError(f"{where}.prior_params names '{name}', which {where}.priors "
                               f"does not list{did_you_mean(name, takes)}; list it or remove "
                               "its parameters")
        allowed = dict(_DEFINED[name].params)
        if not allowed:
            raise WeaksegError(f"{where}.prior_params: prior '{name}' takes no parameters")
        if not isinstance(given, Mapping):
            raise WeaksegError(f"{where}.prior_params.{name} must be a mapping, e.g. "
                               f"{{{next(iter(allowed))}: {next(iter(allowed.values()))}}}")
        for key, value in given.items():
            if key not in allowed:
                raise WeaksegError(f"{where}.prior_params.{name} has no parameter '{key}'"
                                   f"{did_you_mean(str(key), list(allowed))}; allowed: "
                                   f"{', '.join(allowed)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    0.0 <= float(value) < 1.0):
                raise WeaksegError(f"{where}.prior_params.{name}.{key} must be a number in "
                                   f"[0, 1), got {value!r}")
    for name in priors:
        if name in _DEFINED and _DEFINED[name].params:
            given = params.get(name) or {}
            out[name] = {**_DEFINED[name].params,
                         **{k: float(v) for k, v in dict(given).items()}}  # type: ignore[call-overload]
    return out


def describe_priors(priors: Sequence[str], num_slices: int) -> list[str]:
    """One log line per prior saying where it comes from (oracle priors say so)."""
    return [f"{name}: {_DEFINED[name].description.format(num_slices=num_slices)}"
            for name in priors]


def compute_priors(
    labels: Sequence[np.ndarray], priors: Sequence[str], *, num_classes: int
) -> dict[str, torch.Tensor]:
    """The batch entries of ``priors`` for every slice of ``labels``.

    Args:
        labels: full label maps ``(Z, S, S)`` (already resized to the training size), one
            per volume; the slices of all volumes are concatenated in this order.
        priors: names from :data:`PRIORS` (checked with :func:`check_priors`).
        num_classes: number of classes ``C`` (class 0 = background).

    Returns:
        ``{key: tensor}`` with first dimension ``N`` = total number of slices: ``tags``
        ``(N, C)`` bool, ``boxes`` ``(N, C, S, S)`` bool, ``bounds`` ``(N, C, 2)`` float32
        (pixels).
    """
    check_priors(priors)
    if not priors:
        return {}
    if not labels:
        raise WeaksegError("data.priors need training slices; check data.train")
    stack = np.concatenate([np.asarray(lab, dtype=np.int64) for lab in labels])
    out: dict[str, torch.Tensor] = {}
    for name in PRIORS:
        produce = _DEFINED[name].produce
        if name in priors and produce is not None:
            out[PRIOR_KEYS[name]] = _as_tensor(produce(stack, num_classes))
    return out


def _as_tensor(value: np.ndarray) -> torch.Tensor:
    if value.dtype.kind == "f":
        value = value.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(value))


def sample_entries(extras: Mapping[str, torch.Tensor],
                   positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-sample batch entries of the samples at ``positions``: the rows of the
    computed priors ``extras``, and the entries every sample carries (``index``)."""
    out = {key: value[positions] for key, value in extras.items()}
    for prior in _DEFINED.values():
        if prior.from_positions is not None:
            out[prior.key] = prior.from_positions(positions)
    return out


def crop_priors(
    extras: Mapping[str, torch.Tensor],
    cut: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor | None,
    spatial: frozenset[str] | set[str] | Sequence[str] = SPATIAL_EXTRAS,
) -> dict[str, torch.Tensor]:
    """``extras`` for a crop window: ``cut`` (which crops ``(B, ..., H, W)`` tensors at the
    batch's windows) for spatial entries, recomputation from ``cut(labels)`` (the windows'
    full label maps ``(B, h, w)``) for ``tags`` and ``boxes``, unchanged otherwise.

    Raises:
        WeaksegError: a whole-slice entry (size bounds), or a recomputed one without
            ``labels``.
    """
    out = dict(extras)
    stale = [k for k in extras if _rule(k) == "recompute"]
    for key in extras:
        if _rule(key) == "forbid":
            raise WeaksegError(f"batch entry '{key}' (data.priors {priors_providing(key)}) "
                               "describes whole slices, which a crop window does not keep; "
                               "drop data.crop")
        if key in spatial and key not in stale:
            out[key] = cut(extras[key])
    if stale:
        if labels is None:
            raise WeaksegError(f"cropping needs the full label maps to recompute {stale} for "
                               "the crop window (SliceData.crop_labels)")
        window = cut(labels).numpy().astype(np.int64)
        for key in stale:
            num_classes = int(extras[key].shape[1])
            fresh = _as_tensor(_producer(key)(window, num_classes))
            out[key] = fresh.to(extras[key].device)
    return out
