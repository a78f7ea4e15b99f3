"""Scribble simulation from full label maps (seeded, registered as ``"scribble"``).

The simulated scribbles imitate the hand-drawn ACDC scribbles of Valvano et al.
(2021): thin lines drawn roughly along the middle of each structure, one per
connected part, covering about one percent of the pixels. See
:func:`simulate_scribbles` for the algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from weakseg.annotate.base import ANNOTATORS, check_label_map
from weakseg.errors import WeaksegError
from weakseg.labels import IGNORE_INDEX

__all__ = ["simulate_scribbles"]

#: In-plane 4-connected structuring element for erosion (one pixel per step).
_CROSS_3D = np.pad(ndimage.generate_binary_structure(2, 1)[None], ((1, 1), (0, 0), (0, 0)))
#: In-plane 8-connectivity: components and scribble paths are 8-connected.
_SQUARE_3D = np.pad(np.ones((1, 3, 3), dtype=bool), ((1, 1), (0, 0), (0, 0)))
#: A component gets a scribble if it has at least this many pixels ...
_MIN_PIXELS = 4
#: ... and at least this fraction of the largest component of its class.
_MIN_RELATIVE = 0.1
#: Extra cost of a pixel on the rim of a component relative to one on its medial axis.
_OFF_CENTRE_COST = 3.0
#: Strength of the smooth random cost perturbation that makes the lines wiggle.
_WIGGLE = 0.5
#: Neighbour offsets (dy, dx) that, with their opposites, give 8-connectivity.
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


@ANNOTATORS.register("scribble", help="thin seeded scribbles along each structure")
def simulate_scribbles(
    label: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    classes: Sequence[int] | None = None,
    width: int = 1,
    erosion: int = 2,
    fraction: float = 1.0,
) -> np.ndarray:
    """Simulate scribble annotations from a full label map.

    Algorithm, for every 2D slice (along the first axis of a 3D ``label``) and
    every requested class present in that slice, background included:

    1. Erode the class region by ``erosion`` pixels (4-connected steps, the image
       border counts as outside). If nothing is left, retry with one pixel less,
       down to no erosion, so that every present class gets a scribble.
    2. Split the eroded region into 8-connected components and keep those with
       at least 4 pixels and at least 10 % of the size of the largest one (the
       largest is always kept).
    3. Give every pixel a cost that is 1 on the component's medial axis (the
       maximum of its Euclidean distance transform) and grows to 4 on its rim,
       multiplied by a smooth random field (a Gaussian-filtered noise image) so
       that the lines wiggle like hand-drawn ones.
    4. Trace an approximate weighted geodesic diameter of each component: from
       a random pixel of the component take the pixel ``A`` farthest from it in
       straight line, run Dijkstra's algorithm from ``A`` over the 8-connected
       pixel graph of the component (edge weight = step length x mean pixel
       cost) and take the farthest pixel ``B``; the scribble is the cheapest
       path ``A -> B``. This is a thin curve that follows the structure's medial
       axis: a chord through a blob (LV), about half of a ring (myocardium), the
       length of a crescent (RV), a long curve through the background.
    5. Keep a random contiguous sub-arc with ``fraction`` of the path's length,
       thicken it to ``width`` pixels and intersect it with the class's true
       region, so every labelled pixel has its true class.

    All randomness comes from ``np.random.default_rng(seed)``; the same inputs
    and seed give the same scribbles.

    Args:
        label: full label map ``(Z, H, W)`` or ``(H, W)`` with values in
            ``[0, num_classes)``.
        num_classes: number of classes ``C`` (background included).
        seed: non-negative random seed.
        classes: the classes to scribble (default: all ``C``); others stay
            unlabelled.
        width: line width in pixels (1 = one-pixel-wide 8-connected lines).
        erosion: how many pixels the scribbles keep away from region borders.
        fraction: fraction of each traced path that is kept, in ``[0, 1]``
            (``0`` gives no scribble at all).

    Returns:
        int64 array of the same shape as ``label`` holding the class index on
        scribbled pixels and :data:`~weakseg.labels.IGNORE_INDEX` elsewhere.
    """
    labels = _check_inputs(label, num_classes, seed, classes, width, erosion, fraction)
    wanted = sorted(set(range(num_classes) if classes is None else (int(c) for c in classes)))
    squeeze = labels.ndim == 2
    volume = labels[None] if squeeze else labels
    out = _simulate(volume, wanted, np.random.default_rng(seed), width, erosion, fraction)
    return out[0] if squeeze else out


def _check_inputs(
    label: np.ndarray,
    num_classes: int,
    seed: int,
    classes: Sequence[int] | None,
    width: int,
    erosion: int,
    fraction: float,
) -> np.ndarray:
    """Validate the arguments of :func:`simulate_scribbles`; return ``label`` as int64."""
    where = "scribble simulation"
    labels, squeeze = check_label_map(label, num_classes, where)
    labels = labels[0] if squeeze else labels
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WeaksegError(f"{where}: seed must be a non-negative integer, got {seed!r}")
    if classes is not None:
        bad = [c for c in classes if not 0 <= int(c) < num_classes]
        if bad:
            raise WeaksegError(
                f"{where}: classes {bad} are outside 0..{num_classes - 1}; list classes by index"
            )
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise WeaksegError(f"{where}: width must be an integer >= 1, got {width!r}")
    if isinstance(erosion, bool) or not isinstance(erosion, (int, np.integer)) or erosion < 0:
        raise WeaksegError(f"{where}: erosion must be an integer >= 0, got {erosion!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.number)):
        raise WeaksegError(f"{where}: fraction must be a number in [0, 1], got {fraction!r}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise WeaksegError(f"{where}: fraction must be in [0, 1], got {fraction!r}")
    return labels


def _simulate(
    labels: np.ndarray,
    classes: list[int],
    rng: np.random.Generator,
    width: int,
    erosion: int,
    fraction: float,
) -> np.ndarray:
    """Scribble every slice of ``labels`` ``(Z, H, W)``; see :func:`simulate_scribbles`.

    All slices and classes are handled at once: every kept component becomes a
    separate connected part of one pixel graph, so one multi-source Dijkstra run
    traces all scribbles of the volume.
    """
    z, h, w = labels.shape
    out = np.full(labels.shape, IGNORE_INDEX, dtype=np.int64)
    # Smooth random field that perturbs the path costs (independently per slice).
    field = ndimage.gaussian_filter(rng.standard_normal(labels.shape), sigma=(0.0, 2.0, 2.0))
    field *= _WIGGLE / max(float(field.std()), 1e-6)
    wiggle = np.exp(field)

    comp_ids = np.zeros(labels.shape, dtype=np.int64)  # 0 = not part of a kept component
    comp_class: list[np.ndarray] = []
    next_id = 1
    for c in classes:
        mask = labels == c
        if not mask.any():
            continue
        region = _eroded(mask, erosion)
        comps, n = ndimage.label(region, structure=_SQUARE_3D)
        if n == 0:
            continue
        flat = comps.ravel()
        sizes = np.bincount(flat, minlength=n + 1)
        # Slice of each component, and the size of the largest component per slice.
        nz = np.flatnonzero(flat)
        comp_z = np.zeros(n + 1, dtype=np.int64)
        comp_z[flat[nz]] = nz // (h * w)
        largest = np.zeros(z, dtype=np.int64)
        np.maximum.at(largest, comp_z[1:], sizes[1:])
        big = largest[comp_z]
        threshold = np.maximum(np.minimum(_MIN_PIXELS, big), _MIN_RELATIVE * big)
        keep_comp = sizes >= threshold
        keep_comp[0] = False
        new_id = np.zeros(n + 1, dtype=np.int64)
        new_id[keep_comp] = np.arange(next_id, next_id + int(keep_comp.sum()))
        next_id += int(keep_comp.sum())
        comp_class.append(np.full(int(keep_comp.sum()), c, dtype=np.int64))
        kept = new_id[comps]
        comp_ids[kept > 0] = kept[kept > 0]
    if next_id == 1:
        return out
    classes_of = np.concatenate([np.zeros(1, dtype=np.int64), *comp_class])
    n_comps = next_id - 1

    # Distance to the border of the kept regions (the image border counts as border;
    # a huge z sampling keeps the transform within each slice), normalised by its
    # maximum in each component: 0 on the medial axis, 1 on the rim.
    keep = comp_ids > 0
    padded = np.pad(keep, ((0, 0), (1, 1), (1, 1)))
    dist = ndimage.distance_transform_edt(padded, sampling=(1e6, 1.0, 1.0))[:, 1:-1, 1:-1]
    dmax = ndimage.maximum(dist, comp_ids, index=np.arange(n_comps + 1))
    dmax = np.maximum(np.asarray(dmax, dtype=np.float64), 1.0)
    cost = (1.0 + _OFF_CENTRE_COST * (1.0 - dist / dmax[comp_ids])) * wiggle

    paths = _trace_paths(comp_ids, cost, n_comps, rng)
    drawn = np.zeros(labels.size, dtype=np.int64)  # class + 1 on scribbled pixels
    for k, path in enumerate(paths, start=1):
        m = max(1, int(round(fraction * len(path)))) if fraction > 0 else 0
        start = int(rng.integers(0, len(path) - m + 1))
        drawn[path[start : start + m]] = classes_of[k] + 1
    drawn3 = drawn.reshape(labels.shape)
    for c in classes:
        line = drawn3 == c + 1
        if not line.any():
            continue
        if width > 1:
            line = ndimage.binary_dilation(line, structure=_square_2d(width))
        out[line & (labels == c)] = c
    return out


def _eroded(mask: np.ndarray, erosion: int) -> np.ndarray:
    """Erode each slice of ``mask`` by ``erosion`` pixels, or by less if it would vanish."""
    result = mask.copy()
    level = mask
    for _ in range(erosion):
        level = ndimage.binary_erosion(level, structure=_CROSS_3D)
        alive = level.any(axis=(1, 2))
        if not alive.any():
            break
        result[alive] = level[alive]
    return result


def _square_2d(width: int) -> np.ndarray:
    """A ``(1, width, width)`` structuring element (in-plane square)."""
    return np.ones((1, width, width), dtype=bool)


def _trace_paths(
    comp_ids: np.ndarray, cost: np.ndarray, n: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Return, for components ``1..n``, the flat voxel indices of their traced path."""
    z, h, w = comp_ids.shape
    flat = np.flatnonzero(comp_ids)
    node = np.full(comp_ids.size, -1, dtype=np.int64)
    node[flat] = np.arange(flat.size)
    node3d = node.reshape(comp_ids.shape)
    node_comp = comp_ids.ravel()[flat]
    node_cost = cost.ravel()[flat]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for dy, dx in _OFFSETS:
        # Pairs (y, x) -> (y + dy, x + dx) with both pixels inside the image.
        a = node3d[:, : h - dy, max(0, -dx) : w - max(0, dx)]
        b = node3d[:, dy:, max(0, dx) : w - max(0, -dx)]
        both = (a >= 0) & (b >= 0)
        ia, ib = a[both], b[both]
        same = node_comp[ia] == node_comp[ib]
        ia, ib = ia[same], ib[same]
        rows.append(ia)
        cols.append(ib)
        weights.append(np.hypot(dy, dx) * 0.5 * (node_cost[ia] + node_cost[ib]))
    graph = csr_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
        shape=(flat.size, flat.size),
    )

    # One random start per component (nodes grouped by component). The first end
    # of the path is the pixel farthest (in straight line) from it, the second the
    # pixel farthest from the first along the cost-weighted graph.
    order = np.argsort(node_comp, kind="stable")
    counts = np.bincount(node_comp, minlength=n + 1)[1:]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    starts = order[offsets + (rng.random(n) * counts).astype(np.int64)]
    yx = np.stack(np.unravel_index(flat, comp_ids.shape)[1:], axis=1).astype(np.float64)
    start_of_node = starts[node_comp - 1]
    euclid = ((yx - yx[start_of_node]) ** 2).sum(axis=1)
    ends_a = _argmax_per_component(euclid, order, offsets, counts)
    # Components are disconnected, so a multi-source run measures each from its own end.
    dist, pred, _ = dijkstra(
        graph, directed=False, indices=ends_a, min_only=True, return_predecessors=True
    )
    ends_b = _argmax_per_component(dist, order, offsets, counts)

    paths: list[np.ndarray] = []
    for a_node, b_node in zip(ends_a.tolist(), ends_b.tolist(), strict=True):
        trace = [b_node]
        while trace[-1] != a_node:
            trace.append(int(pred[trace[-1]]))
        paths.append(flat[np.asarray(trace[::-1], dtype=np.int64)])
    return paths


def _argmax_per_component(
    values: np.ndarray, order: np.ndarray, offsets: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Node index of the (first) largest value in each component.

    ``order`` lists the nodes grouped by component; component ``k`` occupies
    ``order[offsets[k] : offsets[k] + counts[k]]``.
    """
    grouped = values[order]
    best = np.maximum.reduceat(grouped, offsets)
    hits = np.flatnonzero(grouped == np.repeat(best, counts))
    group = np.repeat(np.arange(counts.size), counts)[hits]
    first = np.concatenate([[True], group[1:] != group[:-1]])
    return order[hits[first]]
