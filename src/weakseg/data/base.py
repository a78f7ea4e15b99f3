"""The in-memory volume every reader returns, and its validation.

A :class:`Volume` is one 3D image (a single 2D image is a volume with one slice)
with, optionally, its full label map and any number of named weak annotations.
Arrays are ``(Z, H, W)``; slicing for 2D training is along ``Z``. Weak
annotations use :data:`IGNORE_INDEX` for unlabelled voxels, whatever code the
source file used (ACDC's ``4``, nnU-Net's ``ignore`` label, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weakseg.errors import WeaksegError
from weakseg.labels import IGNORE_INDEX
from weakseg.registry import Registry

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "Volume",
    "VolumeSet",
    "check_image",
    "check_labels",
]


@dataclass
class Volume:
    """One image volume with its labels.

    Attributes:
        key: unique id of the volume (e.g. ``patient091_frame01``).
        group: id used for splitting (the patient); slices of one patient never
            end up in two splits.
        image: float32 ``(Z, H, W)`` or ``(Z, H, W, K)`` for K channels
            (channels last, as stored on disk).
        label: full label map ``(Z, H, W)`` int64 with values in ``[0, C)``,
            or ``None`` when the data has no full masks.
        annotations: named weak annotations ``(Z, H, W)`` int64 with values in
            ``[0, C)`` or :data:`IGNORE_INDEX`.
        spacing: voxel size ``(z, y, x)`` in mm, or ``None`` when the format does
            not store it (metrics are then in voxels).
        meta: reader-specific data needed to write predictions back
            (source path, format, affine, header, ...).
    """

    key: str
    group: str
    image: np.ndarray
    label: np.ndarray | None = None
    annotations: dict[str, np.ndarray] = field(default_factory=dict)
    spacing: tuple[float, float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, h, w = self.image.shape[:3]
        return (int(z), int(h), int(w))

    @property
    def channels(self) -> int:
        return 1 if self.image.ndim == 3 else int(self.image.shape[3])


def check_image(image: np.ndarray, where: str) -> np.ndarray:
    """Return ``image`` as float32 after checking it is 3D/4D and finite."""
    if image.ndim not in (3, 4):
        raise WeaksegError(
            f"{where}: image has shape {tuple(image.shape)}; expected (Z, H, W) or (Z, H, W, K)"
        )
    if image.size == 0:
        raise WeaksegError(f"{where}: image is empty (shape {tuple(image.shape)})")
    image = np.asarray(image, dtype=np.float32)
    bad = ~np.isfinite(image)
    if bad.any():
        raise WeaksegError(
            f"{where}: image has {int(bad.sum())} NaN/Inf voxels; fix or mask them before training"
        )
    return image


def check_labels(
    labels: np.ndarray,
    shape: tuple[int, int, int],
    num_classes: int,
    where: str,
    *,
    what: str = "label",
    allow_ignore: bool = False,
) -> np.ndarray:
    """Return ``labels`` as int64 after checking shape and value range.

    With ``allow_ignore`` the value :data:`IGNORE_INDEX` is also accepted.
    """
    if tuple(labels.shape) != tuple(shape):
        raise WeaksegError(
            f"{where}: {what} shape {tuple(labels.shape)} does not match image shape "
            f"{tuple(shape)}; image and {what} must cover the same voxels"
        )
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise WeaksegError(f"{where}: {what} has non-integer values; expected class indices")
    labels = labels.astype(np.int64)
    valid = (labels >= 0) & (labels < num_classes)
    if allow_ignore:
        valid |= labels == IGNORE_INDEX
    if not valid.all():
        values = np.unique(labels[~valid])[:8].tolist()
        allowed = f"0..{num_classes - 1}" + (" or unlabelled" if allow_ignore else "")
        raise WeaksegError(
            f"{where}: {what} has values {values} outside the declared classes ({allowed}); "
            f"check the class list / number of classes in the config"
        )
    return labels


@dataclass
class VolumeSet:
    """What a data-set reader returns: volumes plus what the classes are."""

    volumes: list[Volume]
    class_names: list[str]
    in_channels: int = 1
    channel_names: list[str] | None = None  # e.g. ["CT"] (chooses the normalisation)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


#: Data-set readers: ``DATASETS.get(name)(**params) -> VolumeSet``.
DATASETS: Registry[Callable[..., VolumeSet]] = Registry("data set")
