"""From volumes to 2D training slices, and back.

Images are normalised per volume (percentiles 0.5–99.5 → [0, 1]) and resized
with **linear** interpolation; label maps and weak annotations with **nearest**
(never the other way round). Slices keep their volume key so that splits stay
by patient and predictions can be stacked back into volumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.data.base import IGNORE_INDEX, Volume
from weakseg.errors import WeaksegError

__all__ = [
    "SliceData",
    "augment_batch",
    "build_slices",
    "normalize_intensity",
    "resize_image",
    "resize_labels",
    "resolve_annotation",
    "volume_to_input",
]


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Clip to the 0.5–99.5 percentiles of the volume and scale to [0, 1] (per channel)."""
    img = image if image.ndim == 4 else image[..., None]
    lo = np.percentile(img, 0.5, axis=(0, 1, 2))
    hi = np.percentile(img, 99.5, axis=(0, 1, 2))
    out = (np.clip(img, lo, hi) - lo) / np.maximum(hi - lo, 1e-8)
    return out.astype(np.float32)  # (Z, H, W, K)


def volume_to_input(volume: Volume) -> torch.Tensor:
    """Normalised image of a volume as a ``(Z, K, H, W)`` float tensor (original size)."""
    return torch.from_numpy(normalize_intensity(volume.image)).permute(0, 3, 1, 2).contiguous()


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(N, K, H, W)`` (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def resize_labels(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer maps ``(N, H, W)``."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    out = F.interpolate(y[:, None].float(), size=size, mode="nearest-exact")
    return out[:, 0].round().long()


def resolve_annotation(
    volume: Volume, annotation: str, *, num_classes: int, seed: int, params: dict | None = None
) -> np.ndarray:
    """The training target of ``volume`` for the configured ``annotation``.

    ``full`` → the full label map; ``sim:<name>`` → simulated from the full
    mask by annotator ``name`` with a per-volume seed; anything else → the
    named annotation stored with the data.
    """
    if annotation == "full":
        if volume.label is None:
            raise WeaksegError(
                f"{volume.key}: annotation 'full' needs full label maps but this volume has none"
            )
        return volume.label
    if annotation.startswith("sim:"):
        from weakseg.annotate import ANNOTATORS

        name = annotation[4:]
        simulate = ANNOTATORS.get(name)
        if volume.label is None:
            raise WeaksegError(
                f"{volume.key}: annotation '{annotation}' simulates from full masks but "
                "this volume has none"
            )
        vseed = (seed * 1_000_003 + sum(map(ord, volume.key))) % 2**31
        return simulate(volume.label, num_classes=num_classes, seed=vseed, **(params or {}))
    if annotation not in volume.annotations:
        have = ["full"] if volume.label is not None else []
        have += sorted(volume.annotations)
        raise WeaksegError(
            f"{volume.key}: no annotation '{annotation}'; this data has {have or 'none'}; "
            "use data.annotation=sim:scribble to simulate scribbles from full masks"
        )
    return volume.annotations[annotation]


@dataclass
class SliceData:
    """All training slices in memory, resized to ``size × size``.

    Attributes:
        images: ``(N, K, S, S)`` float32.
        targets: ``(N, S, S)`` int64 with ``IGNORE_INDEX`` for unlabelled pixels.
        keys: volume key of each slice; ``index``: slice index in its volume.
    """

    images: torch.Tensor
    targets: torch.Tensor
    keys: list[str]
    index: list[int]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labelled_fraction(self) -> float:
        return float((self.targets != IGNORE_INDEX).float().mean())


def build_slices(
    volumes: list[Volume],
    *,
    annotation: str,
    num_classes: int,
    size: int,
    seed: int = 0,
    annotation_params: dict | None = None,
) -> SliceData:
    """Slice, normalise and resize ``volumes`` into a :class:`SliceData`."""
    if not volumes:
        raise WeaksegError("no training volumes selected; check data.train and data.root")
    images, targets, keys, index = [], [], [], []
    for vol in volumes:
        target = resolve_annotation(
            vol, annotation, num_classes=num_classes, seed=seed, params=annotation_params
        )
        x = resize_image(volume_to_input(vol), (size, size))
        y = resize_labels(torch.from_numpy(np.asarray(target, dtype=np.int64)), (size, size))
        images.append(x)
        targets.append(y)
        keys += [vol.key] * x.shape[0]
        index += list(range(x.shape[0]))
    data = SliceData(torch.cat(images), torch.cat(targets), keys, index)
    if not (data.targets != IGNORE_INDEX).any():
        raise WeaksegError(
            f"annotation '{annotation}' has no labelled pixel in the whole data set "
            f"({len(volumes)} volumes); check the annotation files or the unlabelled value"
        )
    return data


def augment_batch(
    images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 90° rotations and flips per sample (image and target alike), seeded."""
    n = images.shape[0]
    rot = torch.randint(0, 4, (n,), generator=generator).tolist()
    flip = torch.randint(0, 2, (n,), generator=generator).tolist()
    xs, ys = [], []
    for i in range(n):
        x, y = images[i], targets[i]
        if rot[i]:
            x, y = torch.rot90(x, rot[i], (-2, -1)), torch.rot90(y, rot[i], (-2, -1))
        if flip[i]:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)
