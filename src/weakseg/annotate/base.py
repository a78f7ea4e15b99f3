"""Registry of weak-annotation simulators.

A simulator turns a full label map ``(Z, H, W)`` into a weak annotation of the
same shape (``IGNORE_INDEX`` = unlabelled), with an explicit seed:
``ANNOTATORS.get(name)(label, num_classes=C, seed=s, **params) -> np.ndarray``.

Facts about the volume that a config never sets (:data:`CONTEXT`: its ``group`` id, the
data's ``annotation_seed``, the data set's ``class_names``) reach an annotator only when
its signature names them (:func:`context_kwargs`; the reader's
:func:`~weakseg.data.slices.resolve_annotation` fills them). An annotator may also give
per-volume batch entries besides the label map (:data:`VOLUME_ENTRIES`, e.g. the
``labelled_classes`` of ``partial_sites``), and check its parameters when a config is read
(:data:`PARAM_CHECKS`), before any data is loaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from weakseg.errors import WeaksegError
from weakseg.registry import Registry

__all__ = [
    "ANNOTATORS",
    "CONTEXT",
    "PARAM_CHECKS",
    "VOLUME_ENTRIES",
    "check_annotator_params",
    "check_label_map",
    "check_seed",
    "context_kwargs",
    "is_int",
]

ANNOTATORS: Registry[Callable[..., np.ndarray]] = Registry("annotator")

#: Keywords an annotator may declare to receive facts about the volume (never from a
#: config): ``group`` (the id the splits use, the patient), ``annotation_seed`` (the data's
#: seed, the same for every volume; ``seed`` is the per-volume one) and ``class_names``.
CONTEXT = ("group", "annotation_seed", "class_names")

#: Annotator name → ``fn(label, *, num_classes, seed, **context, **params)`` returning
#: per-volume batch entries ``{key: array}`` (one value per volume, e.g. ``(C,)``), which
#: every slice (or 3D window) of the volume carries; same parameters as the annotator.
VOLUME_ENTRIES: dict[str, Callable[..., dict[str, np.ndarray]]] = {}

#: Annotator name → ``check(params, where)``: the checks of its parameters that need no
#: data (run when a config is read; raise :class:`~weakseg.errors.WeaksegError` whose
#: message starts with ``where``, e.g. ``annotator 'partial_sites' (data.annotation_params)``).
PARAM_CHECKS: dict[str, Callable[[Mapping[str, Any], str], None]] = {}


def context_kwargs(fn: Callable[..., Any], **available: Any) -> dict[str, Any]:
    """The entries of ``available`` (names of :data:`CONTEXT`) that ``fn`` declares.

    Example:
        >>> def sim(label, *, num_classes, seed, group): ...
        >>> context_kwargs(sim, group="patient021", annotation_seed=0)
        {'group': 'patient021'}
    """
    unknown = set(available) - set(CONTEXT)
    if unknown:
        raise ValueError(f"annotator context {sorted(unknown)} is not one of {CONTEXT}")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in available.items() if k in params}


def check_annotator_params(name: str, params: Mapping[str, Any], where: str) -> None:
    """Run the data-free checks of annotator ``name`` on ``params`` (if it has any)."""
    check = PARAM_CHECKS.get(name)
    if check is not None:
        check(params, where)


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
