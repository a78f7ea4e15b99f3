"""Point (click) and eroded-blob simulation from full label maps.

Two registered annotators, both following the ``ANNOTATORS`` contract
(``fn(label, *, num_classes, seed, **params)`` returns an int64 map of the same
shape with :data:`~weakseg.labels.IGNORE_INDEX` on unlabelled pixels):

* ``"points"`` (:func:`simulate_points`): one or a few clicks per structure, as
  in point-supervised segmentation (Bearman et al., "What's the point", ECCV
  2016; Qu et al., MIDL 2019 for nuclei), placed uniformly at random inside
  the structure or near its centroid, optionally drawn as small discs.
* ``"eroded_blobs"`` (:func:`simulate_eroded_blobs`): a small blob deep inside
  each structure, obtained by eroding the ground truth, the weak labels of the
  size-constraint papers (Kervadec et al., "Constrained-CNN losses for weakly
  supervised segmentation", MedIA 2019; their ``gen_weak.py`` ``erosion_strat``).

Everything is 2D: a 3D ``label`` ``(Z, H, W)`` is a stack of independent slices,
and connected components never span two slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from weakseg.annotate.base import ANNOTATORS, check_label_map, check_seed, is_int
from weakseg.errors import WeaksegError
from weakseg.labels import IGNORE_INDEX

__all__ = ["simulate_eroded_blobs", "simulate_points"]

#: In-plane 8-connectivity for a ``(Z, H, W)`` stack (nothing connects two slices).
_SQUARE_3D = np.pad(np.ones((1, 3, 3), dtype=bool), ((1, 1), (0, 0), (0, 0)))
_PLACEMENTS = ("uniform", "centroid")


# --------------------------------------------------------------------------- validation


def _check_classes(classes: Sequence[int] | None, num_classes: int, where: str) -> None:
    if classes is None:
        return
    bad = [c for c in classes if not is_int(c) or not 0 <= int(c) < num_classes]
    if bad:
        raise WeaksegError(
            f"{where}: classes {bad} are outside 0..{num_classes - 1}; list classes by index"
        )


# --------------------------------------------------------------------------- regions


def _regions(
    labels: np.ndarray, classes: Sequence[int], component_classes: set[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Number the regions to annotate.

    A region is the pixels of one class in one slice or, for the classes in
    ``component_classes``, one 8-connected component of that class in one slice.

    Returns:
        ``ids`` int64 ``(Z, H, W)``, 0 outside the regions, ``1..n`` inside, and
        ``region_class`` int64 ``(n + 1,)`` with the class of each region (entry 0
        unused).
    """
    z = labels.shape[0]
    ids = np.zeros(labels.shape, dtype=np.int64)
    region_class = [np.zeros(1, dtype=np.int64)]
    next_id = 1
    for c in classes:
        mask = labels == c
        if not mask.any():
            continue
        if c in component_classes:
            comps, n = ndimage.label(mask, structure=_SQUARE_3D)
            ids[mask] = comps[mask] + (next_id - 1)
        else:  # one region per slice where the class is present
            present = mask.any(axis=(1, 2))
            n = int(present.sum())
            slice_id = np.zeros(z, dtype=np.int64)
            slice_id[present] = np.arange(next_id, next_id + n)
            ids[mask] = np.broadcast_to(slice_id[:, None, None], labels.shape)[mask]
        region_class.append(np.full(n, c, dtype=np.int64))
        next_id += n
    return ids, np.concatenate(region_class)


def _uniform_clicks(
    ids_flat: np.ndarray, n: int, k: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``k[r]`` distinct pixels drawn uniformly in each region ``r`` (all if it is smaller)."""
    pix = np.flatnonzero(ids_flat)
    region = ids_flat[pix]
    # Random key per pixel; the k smallest keys of a region are a uniform sample
    # without replacement of that region.
    order = np.lexsort((rng.random(pix.size), region))
    region_sorted = region[order]
    counts = np.bincount(region, minlength=n + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(pix.size) - starts[region_sorted]
    return pix[order[rank < k[region_sorted]]]


def _centroid_clicks(
    ids: np.ndarray,
    n: int,
    k: np.ndarray,
    jitter: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Clicks near the centroid of each region; see :func:`simulate_points`."""
    shape = ids.shape
    ids_flat = ids.ravel()
    # Interior: the region eroded by one pixel (4-connected steps, image border =
    # outside), or the whole region where that erosion removes all of it.
    interior_ids = np.zeros_like(ids)
    for_erosion = np.pad(ids, ((0, 0), (1, 1), (1, 1)))
    same = np.ones(ids.shape, dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        shifted = for_erosion[:, 1 + dy : 1 + dy + shape[1], 1 + dx : 1 + dx + shape[2]]
        same &= shifted == ids
    interior_ids[same & (ids > 0)] = ids[same & (ids > 0)]
    alive = np.bincount(interior_ids.ravel(), minlength=n + 1) > 0
    use_interior = alive[ids] & (ids > 0)
    cand = np.where(use_interior, interior_ids, np.where(alive[ids], 0, ids)).ravel()

    pix = np.flatnonzero(cand)
    region = cand[pix]
    _, yy, xx = np.unravel_index(pix, shape)
    # Centroid and equivalent radius sqrt(area / pi) of each whole region.
    index = np.arange(1, n + 1)
    grid_y = np.broadcast_to(np.arange(shape[1])[None, :, None], shape)
    grid_x = np.broadcast_to(np.arange(shape[2])[None, None, :], shape)
    cy = np.asarray(ndimage.mean(grid_y, ids, index), dtype=np.float64)
    cx = np.asarray(ndimage.mean(grid_x, ids, index), dtype=np.float64)
    area = np.bincount(ids_flat, minlength=n + 1)[1:].astype(np.float64)
    r_eq = np.sqrt(area / np.pi)
    order = np.argsort(region, kind="stable")
    counts = np.bincount(region, minlength=n + 1)[1:]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    clicks: list[np.ndarray] = []
    for i in range(int(k.max(initial=0))):
        wanted = k[1:] > i  # regions that get an i-th click
        # Target = centroid (+ Gaussian offset of std jitter * r_eq); the first click
        # of a region has no offset only when jitter is 0.
        ty = cy + jitter * r_eq * rng.standard_normal(n)
        tx = cx + jitter * r_eq * rng.standard_normal(n)
        d2 = (yy - ty[region - 1]) ** 2 + (xx - tx[region - 1]) ** 2
        best = np.minimum.reduceat(d2[order], offsets)
        hits = np.flatnonzero(d2[order] == np.repeat(best, counts))
        grp = region[order][hits]
        first = np.concatenate([[True], grp[1:] != grp[:-1]])
        chosen = pix[order[hits[first]]]  # one pixel per region, in region order
        clicks.append(chosen[wanted])
    return np.concatenate(clicks) if clicks else np.zeros(0, dtype=np.int64)


def _disc(radius: int) -> np.ndarray:
    """A ``(1, 2r+1, 2r+1)`` Euclidean disc."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy**2 + xx**2 <= radius**2)[None]


# --------------------------------------------------------------------------- points


@ANNOTATORS.register("points", help="seeded clicks per structure (uniform or near the centroid)")
def simulate_points(
    label: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    points_per_structure: int = 1,
    placement: str = "uniform",
    radius: int = 0,
    include_background: bool = True,
    background_points: int | None = None,
    per_component: bool = False,
    jitter: float = 0.1,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Simulate point (click) annotations from a full label map.

    For every 2D slice and every annotated class present in it, the structure
    receives ``points_per_structure`` clicks (``background_points`` for class 0).
    With ``per_component=True`` every 8-connected component of a foreground
    class is a separate structure (one click per nucleus, say); the background
    is always one region per slice. Absent classes get nothing.

    Placement of the clicks of one structure:

    * ``"uniform"``: distinct pixels drawn uniformly at random inside it (all
      its pixels if it has fewer than requested).
    * ``"centroid"``: each click is the *interior* pixel nearest to a target
      point, the structure's centroid plus a Gaussian offset with standard
      deviation ``jitter * sqrt(area / pi)`` per axis (``jitter`` is relative
      to the radius of the disc of the same area). Interior pixels are those
      whose four neighbours belong to the same structure; if there are none,
      all its pixels. So a click is always inside the structure even when the
      centroid is not (a ring, a crescent). With ``jitter=0`` all clicks of a
      structure coincide.

    With ``radius > 0`` each click is drawn as a Euclidean disc of that radius,
    clipped to the clicked class in that slice, so every labelled pixel keeps
    its true class.

    All randomness comes from ``np.random.default_rng(seed)``.

    Args:
        label: full label map ``(Z, H, W)`` or ``(H, W)`` with values in
            ``[0, num_classes)``.
        num_classes: number of classes ``C`` (background = 0 included).
        seed: non-negative random seed.
        points_per_structure: clicks per foreground structure (``>= 1``).
        placement: ``"uniform"`` or ``"centroid"``.
        radius: disc radius in pixels (``0`` = single pixels).
        include_background: also click the background (class 0).
        background_points: clicks on the background per slice (default:
            ``points_per_structure``); ``0`` is the same as
            ``include_background=False``.
        per_component: one structure per connected component instead of per
            class and slice.
        jitter: centroid placement only, offset scale (see above), ``>= 0``.
        classes: the classes to annotate (default: all); the background is
            annotated only if it is listed here and ``include_background``.

    Returns:
        int64 array of the shape of ``label``: the class index on clicked pixels,
        :data:`~weakseg.labels.IGNORE_INDEX` elsewhere.
    """
    where = "point simulation"
    labels, squeeze = check_label_map(label, num_classes, where)
    check_seed(seed, where)
    _check_classes(classes, num_classes, where)
    if not is_int(points_per_structure) or points_per_structure < 1:
        raise WeaksegError(
            f"{where}: points_per_structure must be an integer >= 1, got {points_per_structure!r}"
        )
    if background_points is None:
        background_points = points_per_structure
    if not is_int(background_points) or background_points < 0:
        raise WeaksegError(
            f"{where}: background_points must be an integer >= 0, got {background_points!r}"
        )
    if placement not in _PLACEMENTS:
        raise WeaksegError(
            f"{where}: placement must be one of {', '.join(_PLACEMENTS)}, got {placement!r}"
        )
    if not is_int(radius) or radius < 0:
        raise WeaksegError(f"{where}: radius must be an integer >= 0, got {radius!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float, np.number)) or not (
        np.isfinite(jitter) and jitter >= 0
    ):
        raise WeaksegError(f"{where}: jitter must be a finite number >= 0, got {jitter!r}")

    wanted = sorted(set(range(num_classes) if classes is None else (int(c) for c in classes)))
    if not include_background or background_points == 0:
        wanted = [c for c in wanted if c != 0]
    components = {c for c in wanted if c != 0} if per_component else set()
    ids, region_class = _regions(labels, wanted, components)
    n = region_class.size - 1
    out = np.full(labels.shape, IGNORE_INDEX, dtype=np.int64)
    if n == 0:
        return out[0] if squeeze else out
    k = np.where(region_class == 0, background_points, points_per_structure)
    k[0] = 0
    rng = np.random.default_rng(seed)
    if placement == "uniform":
        clicks = _uniform_clicks(ids.ravel(), n, k, rng)
    else:
        clicks = _centroid_clicks(ids, n, k, float(jitter), rng)
    flat = out.reshape(-1)
    flat[clicks] = labels.reshape(-1)[clicks]
    if radius > 0:
        disc = _disc(int(radius))
        for c in wanted:
            seeds = out == c
            if seeds.any():
                out[ndimage.binary_dilation(seeds, structure=disc) & (labels == c)] = c
    return out[0] if squeeze else out


# --------------------------------------------------------------------------- eroded blobs


@ANNOTATORS.register("eroded_blobs", help="a small blob deep inside each structure (eroded GT)")
def simulate_eroded_blobs(
    label: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    erosion_fraction: float = 0.7,
    iterations: int | None = None,
    per_component: bool = False,
    include_background: bool = False,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Simulate the eroded-ground-truth weak labels of the size-constraint papers.

    Kervadec et al. (MedIA 2019) train with a heavily eroded ground truth: a
    small blob inside the target, the rest of the image unlabelled (the
    background too), and let size constraints recover the full region. Their
    ``gen_weak.py`` (``erosion_strat``) erodes each 2D slice's class mask with a
    3x3 square structuring element for 10 iterations, retrying with 9, 8, ...,
    1 iterations if nothing is left, and keeps the unchanged mask if even one
    iteration empties it.

    This function works on every 2D slice and every annotated class present in
    it (per 8-connected component with ``per_component=True``, so that small
    structures are not erased by the erosion depth that suits large ones), in
    one of two modes:

    * ``iterations=k`` (the paper's rule, exactly): with ``d`` the chessboard
      distance of each pixel to the outside of its region (the image border
      counts as outside; ``d = 1`` on the rim) and ``D`` its maximum over the
      region, keep the pixels with ``d >= min(k + 1, D)``. This equals ``k``
      erosions by the 3x3 square, with the paper's fallback to fewer
      iterations (down to the unchanged region) when ``k`` erosions would
      empty the region. Kervadec et al. used ``k = 10`` on ACDC.
    * ``iterations=None`` (default, scale-free): with ``d`` the Euclidean
      distance to the outside and ``D`` its maximum (the radius of the largest
      inscribed disc), keep the pixels with ``d >= erosion_fraction * D``.
      For a disc of radius ``R`` this is a concentric disc of radius about
      ``(1 - erosion_fraction) * R``; ``0`` keeps the whole region and ``1``
      only its deepest pixel(s).

    Every present structure thus keeps a non-empty blob inside its true region.
    The result is deterministic: ``seed`` is accepted for the annotator
    contract and validated, but unused.

    Args:
        label: full label map ``(Z, H, W)`` or ``(H, W)``.
        num_classes: number of classes ``C`` (background = 0 included).
        seed: non-negative integer (unused, see above).
        erosion_fraction: relative erosion depth in ``[0, 1]`` (Euclidean mode).
        iterations: number of 3x3 erosions (paper mode), ``>= 0``; overrides
            ``erosion_fraction``.
        per_component: erode each connected component on its own.
        include_background: also give the background (class 0) a blob; the
            paper leaves it unlabelled.
        classes: the classes to annotate (default: all foreground classes).

    Returns:
        int64 array of the shape of ``label``: the class index inside the blobs,
        :data:`~weakseg.labels.IGNORE_INDEX` elsewhere.
    """
    where = "eroded-blob simulation"
    labels, squeeze = check_label_map(label, num_classes, where)
    check_seed(seed, where)
    _check_classes(classes, num_classes, where)
    if iterations is not None and (not is_int(iterations) or iterations < 0):
        raise WeaksegError(f"{where}: iterations must be an integer >= 0 or None, got "
                           f"{iterations!r}")
    if isinstance(erosion_fraction, bool) or not isinstance(
        erosion_fraction, (int, float, np.number)
    ) or not 0.0 <= float(erosion_fraction) <= 1.0:
        raise WeaksegError(
            f"{where}: erosion_fraction must be a number in [0, 1], got {erosion_fraction!r}"
        )
    wanted = sorted(set(range(num_classes) if classes is None else (int(c) for c in classes)))
    if not include_background:
        wanted = [c for c in wanted if c != 0]
    ids, region_class = _regions(labels, wanted, set(wanted) if per_component else set())
    n = region_class.size - 1
    out = np.full(labels.shape, IGNORE_INDEX, dtype=np.int64)
    if n == 0:
        return out[0] if squeeze else out

    # Distance of each pixel to the nearest pixel of another class in its slice (the
    # image border counts as outside; 1 on the rim). Two components of one class are
    # never 8-adjacent, so this is also the distance to the outside of a component.
    dist = np.zeros(ids.shape, dtype=np.float64)
    for c in wanted:
        mask = labels == c
        if not mask.any():
            continue
        padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
        if iterations is None:  # Euclidean; a huge z sampling keeps it in-plane
            d = ndimage.distance_transform_edt(padded, sampling=(1e6, 1.0, 1.0))
        else:  # chessboard = 3x3-square erosion depth; the metric has no z neighbours
            d = ndimage.distance_transform_cdt(padded, metric=_SQUARE_3D)
        dist[mask] = d[:, 1:-1, 1:-1][mask]
    dmax = np.asarray(ndimage.maximum(dist, ids, np.arange(1, n + 1)), dtype=np.float64)
    if iterations is None:
        thr = float(erosion_fraction) * dmax
    else:
        thr = np.minimum(float(iterations) + 1.0, dmax)
    thr = np.concatenate([[np.inf], thr])
    keep = (ids > 0) & (dist >= thr[ids] - 1e-9)
    out[keep] = region_class[ids[keep]]
    return out[0] if squeeze else out

