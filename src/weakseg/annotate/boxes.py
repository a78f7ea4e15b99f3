"""Boxes, extreme points, image tags and size bounds derived from full label maps.

These weak annotations are not dense label maps, so they are plain functions
(not registered in ``ANNOTATORS``), except :func:`simulate_outside_boxes`, the dense
label map a box annotation implies (background outside every box). Everything is per
2D slice: a ``(Z, H, W)`` label map is a stack of independent slices, and a 2D
``(H, W)`` input gives the same results with the leading ``Z`` axis dropped.

* :func:`boxes_from_mask` / :func:`box_masks`: tight (or enlarged, jittered)
  bounding boxes per slice and class, for the box priors of Kervadec et al.,
  "Bounding boxes for weakly supervised segmentation: global constraints get
  close to full supervision" (MIDL 2020): outside the box is background, box
  tightness, box-size bounds.
* :func:`extreme_points`: top, bottom, left and right-most pixels (Maninis et
  al., "Deep Extreme Cut", CVPR 2018).
* :func:`tags_from_mask`: image-level tags, present / absent classes (Pathak
  et al., ICCV 2015; Kervadec et al., MedIA 2019).
* Size bounds ``[a, b]`` per slice and class, in pixels, for the size
  constraints (C3/C4/C5 of the design), the three sources of Kervadec et al.
  (MedIA 2019, and their ``bounds.py``): :func:`size_bounds_from_tags` (tags
  plus the min/max sizes of :func:`size_stats` measured on a labelled set),
  :func:`size_bounds_from_boxes` (fractions of the box area) and
  :func:`oracle_size_bounds` (the true size +- a margin: ablations only).

Conventions: boxes are ``(y0, x0, y1, x1)`` with ``y0, x0`` inclusive and
``y1, x1`` exclusive (``label[y0:y1, x0:x1]``); ``-1`` everywhere marks an absent
class. Sizes are numbers of pixels of one class in one 2D slice (not per volume).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from weakseg.annotate.base import ANNOTATORS, check_label_map, is_int
from weakseg.errors import WeaksegError
from weakseg.labels import IGNORE_INDEX

__all__ = [
    "box_masks",
    "boxes_from_mask",
    "extreme_points",
    "oracle_size_bounds",
    "simulate_outside_boxes",
    "size_bounds_from_boxes",
    "size_bounds_from_tags",
    "size_stats",
    "tags_from_mask",
]


def _first_last(any_: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a bool ``(..., N)`` array: first true index, last true index + 1, any true."""
    n = any_.shape[-1]
    present = np.asarray(any_.any(axis=-1))
    first = np.argmax(any_, axis=-1)
    last = n - np.argmax(any_[..., ::-1], axis=-1)
    return first, last, present


def boxes_from_mask(
    label: np.ndarray,
    *,
    num_classes: int,
    margin: int = 0,
    seed: int | None = None,
    jitter: int = 0,
) -> np.ndarray:
    """Bounding box of every class in every 2D slice.

    The tight box of a class is the smallest ``[y0, y1) x [x0, x1)`` rectangle
    containing all its pixels in the slice. It is then enlarged by ``margin``
    pixels on each side and, with ``jitter > 0``, each of its four sides moves
    by an independent integer drawn uniformly from ``[-jitter, jitter]``
    (imitating an imprecise annotator; a jittered box may cut the structure).
    Boxes are finally clipped to the image and kept at least one pixel wide.
    The background (class 0) gets a box like any other class.

    Args:
        label: full label map ``(Z, H, W)`` or ``(H, W)`` with values in
            ``[0, num_classes)``.
        num_classes: number of classes ``C``.
        margin: pixels added on every side (``>= 0``).
        seed: random seed, required when ``jitter > 0``.
        jitter: maximum shift of each side in pixels (``>= 0``).

    Returns:
        int64 ``(Z, C, 4)`` (``(C, 4)`` for a 2D label) with ``(y0, x0, y1, x1)``,
        all ``-1`` where the class is absent from the slice.
    """
    where = "boxes_from_mask"
    labels, squeeze = check_label_map(label, num_classes, where)
    if not is_int(margin) or margin < 0:
        raise WeaksegError(f"{where}: margin must be an integer >= 0, got {margin!r}")
    if not is_int(jitter) or jitter < 0:
        raise WeaksegError(f"{where}: jitter must be an integer >= 0, got {jitter!r}")
    if jitter > 0 and (not is_int(seed) or seed < 0):  # type: ignore[operator]
        raise WeaksegError(
            f"{where}: jitter > 0 needs a non-negative integer seed, got seed={seed!r}"
        )
    z, h, w = labels.shape
    boxes = np.full((z, num_classes, 4), -1, dtype=np.int64)
    present = np.zeros((z, num_classes), dtype=bool)
    for c in range(num_classes):
        mask = labels == c
        y0, y1, pres = _first_last(mask.any(axis=2))
        x0, x1, _ = _first_last(mask.any(axis=1))
        boxes[:, c] = np.stack([y0, x0, y1, x1], axis=1)
        present[:, c] = pres
    box = boxes.copy()
    box[..., :2] -= margin
    box[..., 2:] += margin
    if jitter > 0:
        rng = np.random.default_rng(seed)
        box += rng.integers(-jitter, jitter + 1, size=box.shape)
    size = np.array([h, w])
    box[..., :2] = np.clip(box[..., :2], 0, size - 1)
    box[..., 2:] = np.clip(box[..., 2:], box[..., :2] + 1, size)
    box[~present] = -1
    return box[0] if squeeze else box


def box_masks(boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Rasterise boxes: ``True`` inside each box.

    Args:
        boxes: int ``(Z, C, 4)`` or ``(C, 4)`` from :func:`boxes_from_mask`
            (``-1`` rows = absent class, an all-false mask).
        shape: the slice size ``(H, W)`` (a longer shape uses its last two axes).

    Returns:
        bool ``(Z, C, H, W)`` (``(C, H, W)`` for ``(C, 4)`` boxes).
    """
    where = "box_masks"
    arr = np.asarray(boxes)
    if arr.ndim not in (2, 3) or arr.shape[-1] != 4:
        raise WeaksegError(
            f"{where}: boxes have shape {tuple(arr.shape)}; expected (Z, C, 4) or (C, 4)"
        )
    if arr.dtype.kind not in "iu":
        raise WeaksegError(f"{where}: boxes have dtype {arr.dtype}; expected integers")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise WeaksegError(f"{where}: shape {shape} is not an image size (H, W)")
    h, w = shape[-2:]
    absent = (arr == -1).all(axis=-1)
    y0, x0, y1, x1 = (arr[..., i] for i in range(4))
    ok = absent | ((y0 >= 0) & (y0 < y1) & (y1 <= h) & (x0 >= 0) & (x0 < x1) & (x1 <= w))
    if not ok.all():
        bad = arr[~ok][0].tolist()
        raise WeaksegError(
            f"{where}: box {bad} is not a valid (y0, x0, y1, x1) box inside a {h}x{w} image "
            f"(y1, x1 exclusive; -1 for absent classes)"
        )
    ys = np.arange(h)
    xs = np.arange(w)
    in_y = (ys >= y0[..., None]) & (ys < y1[..., None])
    in_x = (xs >= x0[..., None]) & (xs < x1[..., None])
    return in_y[..., :, None] & in_x[..., None, :]


@ANNOTATORS.register("outside_boxes",
                     help="background outside the boxes of the foreground classes")
def simulate_outside_boxes(
    label: np.ndarray, *, num_classes: int, seed: int = 0, margin: int = 0
) -> np.ndarray:
    """The pixel labels a box annotation gives: background outside every box.

    A box annotator who draws a (``margin``-enlarged) tight box around each foreground
    structure of a slice also says that every pixel outside all boxes is background
    (class 0); inside the boxes nothing is known (``IGNORE_INDEX``). A slice with no
    foreground structure is background everywhere. This is the partial cross-entropy
    target of the box setting of Kervadec et al. (MIDL 2020); the boxes themselves enter
    as priors (``data.priors: [boxes]``, the ``box`` loss).

    Args:
        label: full label map ``(Z, H, W)`` or ``(H, W)``.
        num_classes: number of classes ``C`` (class 0 = background).
        seed: unused (boxes are deterministic); accepted for the annotator contract.
        margin: pixels added around each box (``>= 0``).

    Returns:
        int64 map of the shape of ``label``: 0 outside the boxes, ``IGNORE_INDEX`` inside.
    """
    labels, squeeze = check_label_map(label, num_classes, "outside_boxes")
    boxes = boxes_from_mask(labels, num_classes=num_classes, margin=margin)
    inside = box_masks(boxes[:, 1:], labels.shape[-2:]).any(axis=1)  # (Z, H, W)
    out = np.where(inside, IGNORE_INDEX, 0).astype(np.int64)
    return out[0] if squeeze else out


def _middle_true(rows: np.ndarray) -> np.ndarray:
    """Index of the middle ``True`` of each row of a bool ``(..., N)`` array (0 if none)."""
    count = rows.sum(axis=-1)
    cum = np.cumsum(rows, axis=-1)
    return np.argmax(cum > ((count - 1) // 2)[..., None], axis=-1)


def extreme_points(label: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Top, bottom, left and right-most pixels of every class in every slice.

    Follows Maninis et al. (CVPR 2018), who simulate extreme-point clicks from
    the ground truth. Where several pixels are extreme (a flat top edge), the
    middle one of them is taken, so the result is deterministic. Each point is a
    pixel of the class on its boundary.

    Args:
        label: full label map ``(Z, H, W)`` or ``(H, W)``.
        num_classes: number of classes ``C``.

    Returns:
        int64 ``(Z, C, 4, 2)`` (``(C, 4, 2)`` for a 2D label): for
        ``[top, bottom, left, right]`` the ``(y, x)`` of the pixel, ``-1`` where
        the class is absent from the slice.
    """
    labels, squeeze = check_label_map(label, num_classes, "extreme_points")
    z = labels.shape[0]
    zi = np.arange(z)
    out = np.full((z, num_classes, 4, 2), -1, dtype=np.int64)
    for c in range(num_classes):
        mask = labels == c
        y0, y1, present = _first_last(mask.any(axis=2))
        x0, x1, _ = _first_last(mask.any(axis=1))
        top = _middle_true(mask[zi, y0, :])
        bottom = _middle_true(mask[zi, y1 - 1, :])
        left = _middle_true(mask[zi, :, x0])
        right = _middle_true(mask[zi, :, x1 - 1])
        pts = np.stack(
            [
                np.stack([y0, top], axis=1),
                np.stack([y1 - 1, bottom], axis=1),
                np.stack([left, x0], axis=1),
                np.stack([right, x1 - 1], axis=1),
            ],
            axis=1,
        )
        out[present, c] = pts[present]
    return out[0] if squeeze else out


def tags_from_mask(label: np.ndarray, *, num_classes: int, per: str = "slice") -> np.ndarray:
    """Image-level tags: which classes are present.

    Args:
        label: full label map ``(Z, H, W)`` or ``(H, W)``.
        num_classes: number of classes ``C``.
        per: ``"slice"`` (one tag vector per 2D slice) or ``"volume"`` (one for
            the whole volume).

    Returns:
        bool ``(Z, C)`` for ``per="slice"`` (``(C,)`` for a 2D label), bool
        ``(C,)`` for ``per="volume"``.
    """
    where = "tags_from_mask"
    if per not in ("slice", "volume"):
        raise WeaksegError(f"{where}: per must be 'slice' or 'volume', got {per!r}")
    labels, squeeze = check_label_map(label, num_classes, where)
    tags = _slice_sizes(labels, num_classes) > 0
    if per == "volume":
        return np.asarray(tags.any(axis=0))
    return tags[0] if squeeze else tags


def _slice_sizes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each class in each slice of ``(Z, H, W)`` labels: int64 ``(Z, C)``."""
    z = labels.shape[0]
    flat = labels.reshape(z, -1) + num_classes * np.arange(z)[:, None]
    return np.bincount(flat.ravel(), minlength=z * num_classes).reshape(z, num_classes)


def size_stats(
    labels: np.ndarray | Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Smallest and largest size of each class over the slices where it is present.

    This is how Kervadec et al. (MedIA 2019) set the bounds that go with image
    tags: measured on a (small) fully labelled set, then applied to every
    slice tagged with the class. Measure them on training data only.

    Args:
        labels: one label map ``(Z, H, W)`` / ``(H, W)`` or a sequence of them
            (volumes may differ in size).
        num_classes: number of classes ``C``.

    Returns:
        float64 ``(C, 2)``: ``(min, max)`` pixels per 2D slice over the slices
        that contain the class; ``(0, 0)`` for a class never present.
    """
    where = "size_stats"
    items = [labels] if isinstance(labels, np.ndarray) else list(labels)
    if not items:
        raise WeaksegError(f"{where}: no label maps given; pass a labelled training set")
    if not is_int(num_classes) or num_classes < 1:
        raise WeaksegError(f"{where}: num_classes must be an integer >= 1, got {num_classes!r}")
    lo = np.full(num_classes, np.inf)
    hi = np.zeros(num_classes)
    for i, item in enumerate(items):
        vol, _ = check_label_map(item, num_classes, f"{where} (label map {i})")
        sizes = _slice_sizes(vol, num_classes).astype(np.float64)
        lo = np.minimum(lo, np.where(sizes > 0, sizes, np.inf).min(axis=0))
        hi = np.maximum(hi, sizes.max(axis=0))
    lo[~np.isfinite(lo)] = 0.0
    return np.stack([lo, hi], axis=1)


def size_bounds_from_tags(tags: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Size bounds from image tags: ``stats[c]`` where ``c`` is tagged, ``(0, 0)`` elsewhere.

    The ``(0, 0)`` bounds of absent classes are the suppression constraint and
    the ``(min, max)`` of present ones the size constraint of C6 (Kervadec et
    al., MedIA 2019, ``TagBounds``).

    The stats are sizes per 2D slice, so pair them with per-slice tags: a class
    tagged present in a volume (``per="volume"``) may be absent from some of its
    slices, where the lower bound would be wrong.

    Args:
        tags: bool ``(Z, C)`` or ``(C,)`` from :func:`tags_from_mask`.
        stats: ``(C, 2)`` from :func:`size_stats`.

    Returns:
        float64 ``(Z, C, 2)`` (``(C, 2)`` for ``(C,)`` tags) with ``a <= b``.
    """
    where = "size_bounds_from_tags"
    t = np.asarray(tags)
    s = np.asarray(stats, dtype=np.float64)
    if t.ndim not in (1, 2) or t.dtype != bool:
        raise WeaksegError(
            f"{where}: tags must be a bool array (Z, C) or (C,), got {t.dtype} {tuple(t.shape)}"
        )
    if s.shape != (t.shape[-1], 2):
        raise WeaksegError(
            f"{where}: stats have shape {tuple(s.shape)}; expected ({t.shape[-1]}, 2) "
            f"(min, max) per class, as size_stats returns"
        )
    if not np.all(np.isfinite(s)) or np.any(s < 0) or np.any(s[:, 0] > s[:, 1]):
        raise WeaksegError(f"{where}: stats must be finite with 0 <= min <= max per class")
    unseen = np.flatnonzero(t.reshape(-1, t.shape[-1]).any(axis=0) & (s[:, 1] == 0))
    if unseen.size:
        raise WeaksegError(
            f"{where}: classes {unseen.tolist()} are tagged present but never occur in the "
            f"set size_stats was measured on; measure stats on labels that contain them"
        )
    return np.where(t[..., None], s, 0.0)


def size_bounds_from_boxes(boxes: np.ndarray, lo: float = 0.5, hi: float = 0.9) -> np.ndarray:
    """Size bounds ``[lo, hi] x box area`` (Kervadec et al. MIDL 2020, ``BoxBounds``).

    Args:
        boxes: int ``(Z, C, 4)`` or ``(C, 4)`` from :func:`boxes_from_mask`.
        lo: lower fraction of the box area, ``0 <= lo <= hi``.
        hi: upper fraction of the box area, ``hi <= 1``.

    Returns:
        float64 ``(Z, C, 2)`` (``(C, 2)``); ``(0, 0)`` for absent classes. Mind
        that the background box usually spans most of the image; use the bounds
        of the classes you constrain.
    """
    where = "size_bounds_from_boxes"
    arr = np.asarray(boxes)
    if arr.ndim not in (2, 3) or arr.shape[-1] != 4 or arr.dtype.kind not in "iu":
        raise WeaksegError(
            f"{where}: boxes must be integer (Z, C, 4) or (C, 4), got {arr.dtype} "
            f"{tuple(arr.shape)}"
        )
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
            raise WeaksegError(f"{where}: {name} must be a number in [0, 1], got {v!r}")
    if not 0.0 <= lo <= hi <= 1.0:
        raise WeaksegError(f"{where}: need 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")
    absent = (arr == -1).all(axis=-1)
    area = (arr[..., 2] - arr[..., 0]) * (arr[..., 3] - arr[..., 1])
    if np.any(area[~absent] <= 0):
        raise WeaksegError(f"{where}: boxes must have y1 > y0 and x1 > x0 (or be all -1)")
    area = np.where(absent, 0, area).astype(np.float64)
    return np.stack([lo * area, hi * area], axis=-1)


def oracle_size_bounds(label: np.ndarray, *, num_classes: int, margin: float = 0.1) -> np.ndarray:
    """Bounds ``[(1 - margin) V, (1 + margin) V]`` around the TRUE size ``V``: ablations only.

    This reads the ground truth of the very image it constrains, so it is not a
    weak annotation: use it only for upper-bound / ablation experiments (the
    "precise bounds" of Kervadec et al., MedIA 2019, ``PreciseBounds`` with a
    percentage margin). Absent classes get ``(0, 0)``.

    Args:
        label: full label map ``(Z, H, W)`` or ``(H, W)``.
        num_classes: number of classes ``C``.
        margin: relative margin, in ``[0, 1]``.

    Returns:
        float64 ``(Z, C, 2)`` (``(C, 2)`` for a 2D label) with ``0 <= a <= b``.
    """
    where = "oracle_size_bounds"
    labels, squeeze = check_label_map(label, num_classes, where)
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.number)) or not (
        0.0 <= float(margin) <= 1.0
    ):
        raise WeaksegError(f"{where}: margin must be a number in [0, 1], got {margin!r}")
    sizes = _slice_sizes(labels, num_classes).astype(np.float64)
    bounds = np.stack([(1.0 - margin) * sizes, (1.0 + margin) * sizes], axis=-1)
    return bounds[0] if squeeze else bounds
