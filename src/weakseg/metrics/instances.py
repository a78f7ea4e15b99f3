"""Instance-level metrics for nuclei segmentation.

* :func:`aggregated_jaccard_index` (AJI) of Kumar et al., "A Dataset and a
  Technique for Generalized Nuclear Segmentation for Computational Pathology",
  IEEE TMI 2017, the instance metric of MoNuSeg (also used by Qu et al., MIDL
  2019, on point-supervised nuclei).
* :func:`instances_from_semantic`: connected components of a semantic mask, to
  turn a predicted foreground mask into instances.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from weakseg.errors import WeaksegError

__all__ = ["aggregated_jaccard_index", "instances_from_semantic"]


def _check_instances(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "biu":
        raise WeaksegError(
            f"aggregated_jaccard_index: {name} has dtype {a.dtype}; expected an integer "
            f"instance map (0 = background, 1..N = instances)"
        )
    if a.size == 0:
        raise WeaksegError(f"aggregated_jaccard_index: {name} is empty")
    if a.min() < 0:
        raise WeaksegError(f"aggregated_jaccard_index: {name} has negative instance ids")
    return a.astype(np.int64).ravel()


def _compact(ids: np.ndarray) -> np.ndarray:
    """Renumber a flat instance map so that 0 stays background and instances are 1..n."""
    values, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.ravel()
    return inverse if values[0] == 0 else inverse + 1


def aggregated_jaccard_index(pred_instances: np.ndarray, gt_instances: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017).

    For every ground-truth instance ``G_i`` take the predicted instance ``S_j``
    with the largest IoU (ties: the smallest predicted id; none if no predicted
    instance overlaps ``G_i``), add ``|G_i & S_j|`` to ``C`` and ``|G_i | S_j|``
    to ``U`` (``|G_i|`` when there is no overlapping prediction). Finally add to
    ``U`` the size of every predicted instance that was never selected.
    ``AJI = C / U``.

    This is the original definition: one predicted instance may be selected by
    several ground-truth instances (unlike "AJI+" of Graham et al., 2019).
    Instance ids need not be consecutive; ``0`` is background. Both maps empty
    gives ``1.0`` (a correct "nothing"), exactly one empty gives ``0.0``.

    Args:
        pred_instances: integer instance map, any shape.
        gt_instances: integer instance map of the same shape.

    Returns:
        AJI in ``[0, 1]``.
    """
    if np.shape(pred_instances) != np.shape(gt_instances):
        raise WeaksegError(
            f"aggregated_jaccard_index: prediction shape {np.shape(pred_instances)} does not "
            f"match ground-truth shape {np.shape(gt_instances)}"
        )
    p = _check_instances(pred_instances, "prediction")
    g = _check_instances(gt_instances, "ground truth")
    g, p = _compact(g), _compact(p)
    ng, np_ = int(g.max(initial=0)), int(p.max(initial=0))
    if ng == 0 and np_ == 0:
        return 1.0
    g_size = np.bincount(g, minlength=ng + 1)[1:]
    p_size = np.bincount(p, minlength=np_ + 1)[1:]
    if ng == 0 or np_ == 0:
        return 0.0

    # Sparse intersection table: one row per overlapping (gt, pred) pair.
    both = (g > 0) & (p > 0)
    pair, inter = np.unique(g[both] * (np_ + 1) + p[both], return_counts=True)
    gi, pj = pair // (np_ + 1), pair % (np_ + 1)
    union = g_size[gi - 1] + p_size[pj - 1] - inter
    iou = inter / union
    # Best prediction per gt: sort by gt, then IoU descending, then pred id.
    order = np.lexsort((pj, -iou, gi))
    first = np.concatenate([[True], gi[order][1:] != gi[order][:-1]])
    best = order[first]
    matched_gt = np.zeros(ng, dtype=bool)
    matched_gt[gi[best] - 1] = True
    used_pred = np.zeros(np_, dtype=bool)
    used_pred[pj[best] - 1] = True
    c = float(inter[best].sum())
    u = float(union[best].sum() + g_size[~matched_gt].sum() + p_size[~used_pred].sum())
    return c / u


def instances_from_semantic(
    mask: np.ndarray, *, connectivity: int = 8, min_size: int = 0
) -> np.ndarray:
    """Connected components of a foreground mask, numbered ``1..N`` (0 = background).

    Args:
        mask: ``(H, W)`` or ``(Z, H, W)`` array, non-zero = foreground. A 3D
            stack is labelled slice by slice (components never span slices)
            with ids unique over the stack.
        connectivity: in-plane ``4`` or ``8`` (the ``skimage.measure.label``
            default for 2D, used by most nuclei code).
        min_size: components with fewer pixels are removed (then the ids are
            renumbered consecutively).

    Returns:
        int32 instance map of the shape of ``mask``.
    """
    where = "instances_from_semantic"
    m = np.asarray(mask)
    if m.ndim not in (2, 3):
        raise WeaksegError(
            f"{where}: mask has shape {tuple(m.shape)}; expected (H, W) or (Z, H, W)"
        )
    if connectivity not in (4, 8):
        raise WeaksegError(f"{where}: connectivity must be 4 or 8, got {connectivity!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise WeaksegError(f"{where}: min_size must be an integer >= 0, got {min_size!r}")
    fg = m != 0
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    if m.ndim == 3:
        structure = np.pad(structure[None], ((1, 1), (0, 0), (0, 0)))
    comps, n = ndimage.label(fg, structure=structure)
    if min_size > 0 and n > 0:
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        keep = sizes >= min_size
        keep[0] = False
        new_id = np.zeros(n + 1, dtype=np.int64)
        new_id[keep] = np.arange(1, int(keep.sum()) + 1)
        comps = new_id[comps]
    return comps.astype(np.int32)
