"""Semi-supervision by patient (METHODS.md D4): a few fully labelled patients, the rest with
another annotation (none, tags, scribbles, points...).

``data.full_labels`` selects, in the syntax of ``data.train`` (:mod:`weakseg.data.splits`),
the training groups whose slices train on their full masks; every other training slice gets
``data.annotation``. With ``annotation: none`` the other slices have no labelled pixel (their
target is all ``ignore_index``), so terms that learn from labels (``partial_ce``, ``ce_dice``)
only see the fully labelled patients, and the unlabelled terms (entropy, CRF, constraints)
see every slice.
"""

from __future__ import annotations

from collections.abc import Sequence

from weakseg.data.base import Volume
from weakseg.data.splits import select_groups
from weakseg.errors import WeaksegError

__all__ = ["describe_split", "full_label_keys"]


def full_label_keys(train: Sequence[Volume], every: Sequence[Volume], spec: str | None, *,
                    where: str = "data.full_labels") -> set[str]:
    """Keys of the training volumes selected by ``spec`` (``None``: none).

    Args:
        train: the training volumes (after the fold split, if any).
        every: all volumes of the data set (to name patients selected outside ``train``).
        spec: the selection (``"21-23"``, names, glob patterns).

    Raises:
        WeaksegError: the selection matches nothing, names patients outside ``train``, or
            patients without full label maps.
    """
    if not spec:
        return set()
    chosen = select_groups(list(every), spec)
    if not chosen:
        raise WeaksegError(f"{where}={spec!r} selects no patient of the data set; check the "
                           "selection (numbers like 21-23, names or glob patterns)")
    in_train = {v.key for v in train}
    outside = sorted({v.group for v in chosen if v.key not in in_train})
    if outside:
        raise WeaksegError(f"{where}={spec!r} names {len(outside)} patients outside the "
                           f"training volumes ({', '.join(outside[:3])}"
                           f"{'…' if len(outside) > 3 else ''}); select training patients")
    unlabelled = sorted({v.group for v in chosen if v.label is None})
    if unlabelled:
        have = len({v.group for v in chosen}) - len(unlabelled)
        raise WeaksegError(f"{where}={spec!r} selects {len({v.group for v in chosen})} "
                           f"patients but only {have} of them have full label maps (none for "
                           f"{', '.join(unlabelled[:3])}{'…' if len(unlabelled) > 3 else ''})")
    return {v.key for v in chosen}


def describe_split(train: Sequence[Volume], full: set[str], annotation: str) -> str:
    """``"3 fully labelled patients, 67 with scribble"`` (``annotation`` ``none``:
    ``67 unlabelled``)."""
    groups = {v.group for v in train}
    full_groups = {v.group for v in train if v.key in full}
    rest = len(groups - full_groups)
    other = "unlabelled" if annotation == "none" else f"with {annotation}"
    return (f"{len(full_groups)} fully labelled patient{'s' * (len(full_groups) != 1)}, "
            f"{rest} {other}")
