"""Per-slice priors for the constraint losses, derived from full label maps (``data.priors``).

Each prior is computed for every 2D training slice **after resizing**, from the slice's
nearest-resized full label map, so boxes and sizes are in training pixels. They travel with
the slices in :attr:`weakseg.data.slices.SliceData.extras` and reach the losses as batch
entries (a loss's ``inputs`` name them):

=====================  ===========  ==========================================================
prior                  batch key    what it is
=====================  ===========  ==========================================================
``tags``               ``tags``     ``(N, C)`` bool, classes present in the slice (image tags)
``boxes``              ``boxes``    ``(N, C, S, S)`` bool, tight box of every foreground class
                                    (the background gets none: all false)
``bounds_from_tags``   ``bounds``   ``(N, C, 2)`` float: tagged classes get the (min, max)
                                    size over all training slices that contain them, absent
                                    ones ``(0, 0)``; a **data-set statistic** of the training
                                    masks (Kervadec et al., MedIA 2019)
``bounds_from_boxes``  ``bounds``   ``(N, C, 2)``: ``[0.5, 0.9] ×`` box area per foreground
                                    class, ``(0, 0)`` if absent, background unbounded
                                    ``(0, inf)`` (Kervadec et al., MIDL 2020)
``oracle_bounds``      ``bounds``   ``(N, C, 2)``: the TRUE size ± 10 %: reads the ground truth
                                    of the slice it constrains; **ablations only**
=====================  ===========  ==========================================================

Class 0 is the background. At most one ``bounds`` source per run. With the phantom or any data
with full masks these are *simulated* weak annotations (tags, boxes) or statistics; the only
oracle is ``oracle_bounds``, and the trainer says so in its log.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from weakseg.errors import WeaksegError
from weakseg.registry import did_you_mean

__all__ = [
    "ORACLE_PRIORS",
    "PRIORS",
    "PRIOR_KEYS",
    "SPATIAL_EXTRAS",
    "check_priors",
    "compute_priors",
    "describe_priors",
    "priors_providing",
]

#: The priors a config may list under ``data.priors``, and the batch key each one fills.
PRIOR_KEYS: dict[str, str] = {
    "tags": "tags",
    "boxes": "boxes",
    "bounds_from_tags": "bounds",
    "bounds_from_boxes": "bounds",
    "oracle_bounds": "bounds",
}
PRIORS: tuple[str, ...] = tuple(PRIOR_KEYS)
#: Priors that read the ground truth of the very slice they constrain.
ORACLE_PRIORS: tuple[str, ...] = ("oracle_bounds",)
#: Batch entries laid out like the image (``(..., H, W)``): augmentation rotates/flips them.
SPATIAL_EXTRAS: frozenset[str] = frozenset({"boxes"})

#: Box-size fractions of ``bounds_from_boxes`` and the margin of ``oracle_bounds``.
BOX_BOUNDS = (0.5, 0.9)
ORACLE_MARGIN = 0.1


def priors_providing(key: str) -> list[str]:
    """The priors that fill batch entry ``key`` (e.g. ``"bounds"``), in listing order."""
    return [name for name, k in PRIOR_KEYS.items() if k == key]


def check_priors(priors: Sequence[str]) -> None:
    """Reject unknown, repeated, or conflicting (two ``bounds`` sources) priors."""
    seen: dict[str, str] = {}
    for name in priors:
        if name not in PRIOR_KEYS:
            raise WeaksegError(
                f"unknown prior '{name}' in data.priors{did_you_mean(name, PRIORS)}; "
                f"allowed: {', '.join(PRIORS)}"
            )
        key = PRIOR_KEYS[name]
        if key in seen:
            what = f"'{name}' is listed twice" if seen[key] == name else (
                f"'{seen[key]}' and '{name}' both give '{key}'")
            raise WeaksegError(f"data.priors: {what}; keep one")
        seen[key] = name


def describe_priors(priors: Sequence[str], num_slices: int) -> list[str]:
    """One log line per prior saying where it comes from (oracle priors say so)."""
    lo, hi = BOX_BOUNDS
    text = {
        "tags": "classes present in each training slice, from its full mask (simulated tags)",
        "boxes": "tight box of each foreground class in each training slice, from its full "
                 "mask (simulated boxes; none for the background)",
        "bounds_from_tags": "size bounds = tags x (min, max) class size over the full masks of "
                            f"the {num_slices} training slices (a data-set statistic of the "
                            "training set)",
        "bounds_from_boxes": f"size bounds [{lo:g}, {hi:g}] x box area per foreground class, "
                             "background unbounded",
        "oracle_bounds": f"reads the ground truth; for ablations only (true size of each "
                         f"training slice +- {100 * ORACLE_MARGIN:g} %)",
    }
    return [f"{name}: {text[name]}" for name in priors]


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
    from weakseg.annotate.boxes import (
        box_masks,
        boxes_from_mask,
        oracle_size_bounds,
        size_bounds_from_boxes,
        size_bounds_from_tags,
        size_stats,
        tags_from_mask,
    )

    check_priors(priors)
    if not priors:
        return {}
    if not labels:
        raise WeaksegError("data.priors need training slices; check data.train")
    stack = np.concatenate([np.asarray(lab, dtype=np.int64) for lab in labels])
    out: dict[str, torch.Tensor] = {}
    tags = None
    if "tags" in priors or "bounds_from_tags" in priors:
        tags = tags_from_mask(stack, num_classes=num_classes)                  # (N, C)
    boxes = None
    if "boxes" in priors or "bounds_from_boxes" in priors:
        boxes = boxes_from_mask(stack, num_classes=num_classes)                # (N, C, 4)
        boxes[:, 0] = -1                      # the background is not an object with a box
    if "tags" in priors:
        out["tags"] = torch.from_numpy(np.ascontiguousarray(tags))
    if "boxes" in priors:
        out["boxes"] = torch.from_numpy(box_masks(boxes, stack.shape[-2:]))
    bounds = None
    if "bounds_from_tags" in priors:
        bounds = size_bounds_from_tags(tags, size_stats(stack, num_classes))
    elif "bounds_from_boxes" in priors:
        bounds = size_bounds_from_boxes(boxes, *BOX_BOUNDS)
        bounds[:, 0] = (0.0, np.inf)
    elif "oracle_bounds" in priors:
        bounds = oracle_size_bounds(stack, num_classes=num_classes, margin=ORACLE_MARGIN)
    if bounds is not None:
        out["bounds"] = torch.from_numpy(bounds.astype(np.float32))
    return out
