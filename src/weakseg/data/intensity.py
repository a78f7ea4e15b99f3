"""Intensity normalisation, chosen per modality (as nnU-Net does).

- ``minmax`` (default for MR and every non-CT image): per volume and channel, clip to the
  0.5–99.5 percentiles and scale to [0, 1]. MR intensities are in arbitrary units that differ
  from scan to scan, so each volume is normalised on its own.
- ``zscore``: per volume and channel, clip to the 0.5–99.5 percentiles, then subtract the
  mean and divide by the standard deviation of the clipped volume (nnU-Net's MR scheme).
- ``ct``: CT intensities are Hounsfield units, comparable across scans, so one transform
  for the whole data set: clip to the 0.5–99.5 percentiles of the **foreground** voxels of
  the training volumes (labelled non-background voxels, weak labels included), then
  z-score with their mean and standard deviation (nnU-Net's CT scheme). The statistics are
  fitted on the training volumes only and stored in the checkpoint.
- ``auto``: ``ct`` when the data set names its channel ``CT`` (``dataset.json``
  ``channel_names``), else ``minmax``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from weakseg.data.base import IGNORE_INDEX, Volume
from weakseg.errors import WeaksegError

__all__ = ["KINDS", "Normalization", "fit_normalization"]

KINDS = ("auto", "minmax", "zscore", "ct")
_SAMPLE = 200_000  # foreground voxels sampled per volume for the CT statistics


@dataclass(frozen=True)
class Normalization:
    """A fitted normalisation: ``kind`` and, for ``ct``, per-channel statistics."""

    kind: str = "minmax"
    lo: tuple[float, ...] = ()
    hi: tuple[float, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``image`` ``(Z, H, W[, K])`` → float32 ``(Z, H, W, K)``."""
        img = (image if image.ndim == 4 else image[..., None]).astype(np.float32)
        if self.kind == "ct":
            lo, hi = np.asarray(self.lo, np.float32), np.asarray(self.hi, np.float32)
            mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
            return ((np.clip(img, lo, hi) - mean) / np.maximum(std, 1e-8)).astype(np.float32)
        lo = np.percentile(img, 0.5, axis=(0, 1, 2))
        hi = np.percentile(img, 99.5, axis=(0, 1, 2))
        clipped = np.clip(img, lo, hi)
        if self.kind == "zscore":
            mean = clipped.mean(axis=(0, 1, 2))
            std = clipped.std(axis=(0, 1, 2))
            return ((clipped - mean) / np.maximum(std, 1e-8)).astype(np.float32)
        return ((clipped - lo) / np.maximum(hi - lo, 1e-8)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Normalization:
        """From a checkpoint (older checkpoints have none: ``minmax``)."""
        if not raw:
            return cls()
        return cls(str(raw["kind"]), *(tuple(float(v) for v in raw[k])
                                       for k in ("lo", "hi", "mean", "std")))


def _foreground(vol: Volume) -> np.ndarray | None:
    """Labelled non-background voxels of ``vol`` (dense label, else any weak annotation)."""
    maps = [vol.label] if vol.label is not None else list(vol.annotations.values())
    masks = [(m > 0) & (m != IGNORE_INDEX) for m in maps]
    return np.logical_or.reduce(masks) if masks else None


def fit_normalization(
    kind: str, volumes: Sequence[Volume], channel_names: Sequence[str] | None = None,
    seed: int = 0,
) -> Normalization:
    """Resolve ``auto`` and fit ``ct``'s statistics on ``volumes`` (the training volumes)."""
    if kind not in KINDS:
        raise WeaksegError(f"data.normalization '{kind}' is unknown; use one of "
                           f"{', '.join(KINDS)}")
    if kind == "auto":
        is_ct = bool(channel_names) and all(str(n).strip().upper() == "CT"
                                            for n in channel_names or ())
        kind = "ct" if is_ct else "minmax"
    if kind != "ct":
        return Normalization(kind)
    rng = np.random.default_rng(seed)
    samples = []
    for vol in volumes:
        fg = _foreground(vol)
        if fg is None or not fg.any():
            continue
        img = vol.image if vol.image.ndim == 4 else vol.image[..., None]
        values = img[fg]  # (n, K)
        if len(values) > _SAMPLE:
            values = values[rng.choice(len(values), _SAMPLE, replace=False)]
        samples.append(values)
    if not samples:
        raise WeaksegError("data.normalization 'ct' needs labelled foreground voxels in the "
                           "training volumes to fit its intensity window; use minmax or zscore")
    values = np.concatenate(samples).astype(np.float64)
    lo, hi = np.percentile(values, 0.5, axis=0), np.percentile(values, 99.5, axis=0)
    clipped = np.clip(values, lo, hi)
    return Normalization("ct", tuple(lo.tolist()), tuple(hi.tolist()),
                         tuple(clipped.mean(axis=0).tolist()), tuple(clipped.std(axis=0).tolist()))
