"""Registry of weak-annotation simulators.

A simulator turns a full label map ``(Z, H, W)`` into a weak annotation of the
same shape (``IGNORE_INDEX`` = unlabelled), with an explicit seed:
``ANNOTATORS.get(name)(label, num_classes=C, seed=s, **params) -> np.ndarray``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from weakseg.errors import WeaksegError
from weakseg.registry import Registry

__all__ = ["ANNOTATORS", "check_label_map", "check_seed", "is_int"]

ANNOTATORS: Registry[Callable[..., np.ndarray]] = Registry("annotator")


def is_int(value: object) -> bool:
    """True for Python/NumPy integers (not bools)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_label_map(label: np.ndarray, num_classes: int, where: str) -> tuple[np.ndarray, bool]:
    """Check a full label map; return it as int64 ``(Z, H, W)`` and whether it was 2D."""
    arr = np.asarray(label)
    if arr.ndim not in (2, 3):
        raise WeaksegError(
            f"{where}: label has shape {tuple(arr.shape)}; expected (H, W) or (Z, H, W)"
        )
    if arr.size == 0:
        raise WeaksegError(f"{where}: label is empty (shape {tuple(arr.shape)})")
    if arr.dtype.kind not in "biuf":
        raise WeaksegError(f"{where}: label has dtype {arr.dtype}; expected integer class indices")
    if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
        raise WeaksegError(f"{where}: label has non-integer values; expected class indices")
    if not is_int(num_classes) or num_classes < 1:
        raise WeaksegError(f"{where}: num_classes must be an integer >= 1, got {num_classes!r}")
    labels = arr.astype(np.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise WeaksegError(
            f"{where}: label has negative value {lo}, outside 0..{num_classes - 1}; pass a full "
            "label map (no unlabelled value)"
        )
    if hi >= num_classes:
        raise WeaksegError(
            f"{where}: label has value {hi} outside 0..{num_classes - 1}; check num_classes"
        )
    squeeze = labels.ndim == 2
    return (labels[None] if squeeze else labels), squeeze


def check_seed(seed: object, where: str) -> None:
    if not is_int(seed) or int(seed) < 0:  # type: ignore[call-overload]
        raise WeaksegError(f"{where}: seed must be a non-negative integer, got {seed!r}")
