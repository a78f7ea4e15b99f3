"""From volumes to 2D training slices, and back.

Images are normalised per volume (percentiles 0.5–99.5 → [0, 1]) and resized
with **linear** interpolation; label maps and weak annotations with **nearest**
(never the other way round). Two geometries: without a target spacing every slice is
resized to ``size × size`` (aspect ratio not kept); with one (``data.spacing``), every slice
is resampled to that in-plane spacing in mm (aspect ratio kept) and centred on a
``size × size`` canvas (padded: image 0, labels background / unlabelled; cropped when larger),
so that a pixel is the same size in mm in every training slice (:func:`to_spacing`).
Slices keep their volume key so that splits stay by patient and predictions can be stacked
back into volumes. Per-slice priors for the constraint losses (tags, boxes, size bounds:
:mod:`weakseg.data.priors`) are computed from the resized full label maps and kept in
``SliceData.extras``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.annotate import ANNOTATORS
from weakseg.annotate.base import VOLUME_ENTRIES, context_kwargs
from weakseg.data.base import IGNORE_INDEX, Volume
from weakseg.data.intensity import Normalization
from weakseg.data.priors import (
    PRIOR_REGISTRY,
    SPATIAL_EXTRAS,
    check_priors,
    compute_priors,
    crop_priors,
    sample_entries,
)
from weakseg.errors import WeaksegError

__all__ = [
    "SliceData",
    "annotation_entries",
    "augment_batch",
    "build_slices",
    "build_volumes",
    "center_canvas",
    "in_plane_spacing",
    "median_spacing",
    "normalize_intensity",
    "random_crop",
    "resize_image",
    "resize_labels",
    "resolve_annotation",
    "spacing_shape",
    "to_grid",
    "to_spacing",
    "volume_to_input",
    "z_windows",
]

#: Per-sample batch entries beside image and target (first dimension: the samples).
Extras = dict[str, torch.Tensor]


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Clip to the 0.5–99.5 percentiles of the volume and scale to [0, 1] (per channel)."""
    img = image if image.ndim == 4 else image[..., None]
    lo = np.percentile(img, 0.5, axis=(0, 1, 2))
    hi = np.percentile(img, 99.5, axis=(0, 1, 2))
    out = (np.clip(img, lo, hi) - lo) / np.maximum(hi - lo, 1e-8)
    return out.astype(np.float32)  # (Z, H, W, K)


def volume_to_input(volume: Volume, norm: Normalization | None = None) -> torch.Tensor:
    """Normalised image of a volume as a ``(Z, K, H, W)`` float tensor (original size);
    ``norm`` (:mod:`weakseg.data.intensity`) defaults to per-volume percentile min-max."""
    image = normalize_intensity(volume.image) if norm is None else norm.apply(volume.image)
    return torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()


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


def in_plane_spacing(volume: Volume, what: str = "data.spacing") -> tuple[float, float]:
    """``(y, x)`` pixel size in mm of ``volume``; an error when the format stores none."""
    if volume.spacing is None:
        raise WeaksegError(
            f"{what} needs the voxel spacing of each volume, but {volume.key} has none (e.g. "
            "WSL4MIS h5 files); use NIfTI files, or unset data.spacing (square resize)"
        )
    return float(volume.spacing[1]), float(volume.spacing[2])


def median_spacing(volumes: Sequence[Volume]) -> tuple[float, float]:
    """The median in-plane spacing ``(y, x)`` in mm of ``volumes`` (nnU-Net's default)."""
    sp = np.array([in_plane_spacing(v) for v in volumes])
    return float(np.median(sp[:, 0])), float(np.median(sp[:, 1]))


def spacing_shape(
    shape: tuple[int, int], spacing: tuple[float, float], target: tuple[float, float]
) -> tuple[int, int]:
    """The ``(H, W)`` of a ``shape`` slice resampled from ``spacing`` to ``target`` mm."""
    return (max(1, round(shape[0] * spacing[0] / target[0])),
            max(1, round(shape[1] * spacing[1] / target[1])))


def center_canvas(x: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    """Centre ``x`` ``(..., H, W)`` on a ``size × size`` canvas: pad with ``fill``, or crop."""
    h, w = x.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    pad = (max(left, 0), max(size - w - left, 0), max(top, 0), max(size - h - top, 0))
    if any(pad):
        x = F.pad(x, pad, value=fill)
    y0, x0 = max(-top, 0), max(-left, 0)
    return x[..., y0:y0 + size, x0:x0 + size]


def to_spacing(
    volume: Volume, target: tuple[float, float], size: int, maps: Sequence[np.ndarray] = (),
    fills: Sequence[int] = (), norm: Normalization | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The normalised image ``(Z, K, size, size)`` of ``volume`` resampled to ``target`` mm
    and centred on the canvas, and each integer map of ``maps`` alike (nearest), padded with
    its ``fills`` value."""
    shape = spacing_shape(volume.shape[1:], in_plane_spacing(volume), target)
    x = center_canvas(resize_image(volume_to_input(volume, norm), shape), size, 0.0)
    out = []
    for m, fill in zip(maps, fills, strict=True):
        y = resize_labels(torch.from_numpy(np.asarray(m, dtype=np.int64)), shape)
        out.append(center_canvas(y, size, fill))
    return x, out


def to_grid(
    volume: Volume, size: int, spacing: tuple[float, float] | None = None,
    maps: Sequence[np.ndarray] = (), fills: Sequence[int] = (), norm: Normalization | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The normalised image ``(Z, K, size, size)`` of ``volume`` and each integer map of
    ``maps`` on the training grid: resized to a square without ``spacing``, else resampled
    and centred on the canvas (:func:`to_spacing`, padding each map with its ``fills``)."""
    if spacing is not None:
        return to_spacing(volume, spacing, size, maps, fills, norm)
    x = resize_image(volume_to_input(volume, norm), (size, size))
    return x, [resize_labels(torch.from_numpy(np.asarray(m, dtype=np.int64)), (size, size))
               for m in maps]


def resolve_annotation(
    volume: Volume, annotation: str, *, num_classes: int, seed: int, params: dict | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """The training target of ``volume`` for the configured ``annotation``.

    ``full`` → the full label map; ``none`` → no pixel label at all (training from
    priors alone, e.g. tags and size bounds); ``sim:<name>`` → simulated from the full
    mask by annotator ``name`` with a per-volume seed (and the volume's ``group``, the data's
    seed and ``class_names`` when the annotator declares them:
    :data:`weakseg.annotate.base.CONTEXT`); anything else → the named annotation stored with
    the data.
    """
    if annotation == "none":
        return np.full(volume.image.shape[:3], IGNORE_INDEX, dtype=np.int64)
    if annotation == "full":
        if volume.label is None:
            raise WeaksegError(
                f"{volume.key}: annotation 'full' needs full label maps but this volume has none"
            )
        return volume.label
    if annotation.startswith("sim:"):
        simulate = ANNOTATORS.get(annotation[4:])
        label, kwargs = _simulation(volume, annotation, simulate, num_classes, seed, params,
                                    class_names)
        return simulate(label, **kwargs)
    if annotation not in volume.annotations:
        have = ["full"] if volume.label is not None else []
        have += sorted(volume.annotations)
        raise WeaksegError(
            f"{volume.key}: no annotation '{annotation}'; this data has {have or 'none'}; "
            "use data.annotation=sim:scribble to simulate scribbles from full masks"
        )
    return volume.annotations[annotation]


def _simulation(
    volume: Volume, annotation: str, fn: Callable[..., object], num_classes: int, seed: int,
    params: dict | None, class_names: Sequence[str] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The full label map and the keyword arguments of simulator ``fn`` for ``volume``."""
    if volume.label is None:
        raise WeaksegError(
            f"{volume.key}: annotation '{annotation}' simulates from full masks but "
            "this volume has none"
        )
    vseed = (seed * 1_000_003 + sum(map(ord, volume.key))) % 2**31
    context = context_kwargs(fn, group=volume.group, annotation_seed=seed,
                             class_names=None if class_names is None else list(class_names))
    return volume.label, {"num_classes": num_classes, "seed": vseed, **(params or {}),
                          **context}


def annotation_entries(
    volume: Volume, annotation: str, *, num_classes: int, seed: int, params: dict | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """The per-volume batch entries a simulated annotation gives besides its label map
    (:data:`weakseg.annotate.base.VOLUME_ENTRIES`, e.g. ``labelled_classes`` ``(C,)`` of
    ``sim:partial_sites``); ``{}`` for every other annotation."""
    name = annotation[4:] if annotation.startswith("sim:") else None
    if name is None or name not in VOLUME_ENTRIES:
        return {}
    fn = VOLUME_ENTRIES[name]
    label, kwargs = _simulation(volume, annotation, fn, num_classes, seed, params, class_names)
    return {key: np.asarray(value) for key, value in fn(label, **kwargs).items()}


def _stack_entries(per_sample: list[dict[str, np.ndarray]], extras: Extras) -> Extras:
    """The annotation's per-sample entries (one dict per sample) stacked along the samples
    and added to ``extras`` (a key both give is an error)."""
    if not per_sample or not per_sample[0]:
        return extras
    clash = sorted(set(per_sample[0]) & set(extras))
    if clash:
        raise WeaksegError(f"batch entries {clash} come from both the annotation and "
                           "data.priors; keep one source")
    out = dict(extras)
    for key in per_sample[0]:
        out[key] = torch.from_numpy(np.ascontiguousarray(np.stack([e[key] for e in per_sample])))
    return out


@dataclass
class SliceData:
    """All training slices in memory, resized to ``size × size``.

    Attributes:
        images: ``(N, K, S, S)`` float32.
        targets: ``(N, S, S)`` int64 with ``IGNORE_INDEX`` for unlabelled pixels.
        keys: volume key of each slice; ``index``: slice index in its volume.
        extras: further per-slice batch entries, first dimension ``N`` (the priors of
            :mod:`weakseg.data.priors`: ``tags`` ``(N, C)`` bool, ``boxes``
            ``(N, C, S, S)`` bool, ``bounds`` ``(N, C, 2)`` float, in training pixels).
        crop_labels: ``(N, S, S)`` uint8 full label maps, kept only when a prior must be
            recomputed for a crop window (``tags``, ``boxes``: a crop can cut a class away);
            never a batch entry.
    """

    images: torch.Tensor
    targets: torch.Tensor
    keys: list[str]
    index: list[int]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    crop_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def entries(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample batch entries of the samples at ``positions`` (int64 ``(B,)``): the
        priors' rows and what every sample carries (``index``, see
        :func:`weakseg.data.priors.sample_entries`)."""
        return sample_entries(self.extras, positions)

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
    priors: Sequence[str] = (),
    spacing: tuple[float, float] | None = None,
    norm: Normalization | None = None,
    allow_unlabelled: bool = False,
    class_names: Sequence[str] | None = None,
    full: Collection[str] = (),
) -> SliceData:
    """Slice, normalise and resize ``volumes`` into a :class:`SliceData`.

    ``priors`` (names of :data:`weakseg.data.priors.PRIORS`) are computed per slice from
    the full label maps resized (nearest) to ``size``, into ``SliceData.extras``; they
    need volumes with full label maps. A simulated annotation's per-volume entries
    (:func:`annotation_entries`, e.g. ``labelled_classes``) go there too, repeated for every
    slice of the volume; ``class_names`` reach the annotators that name classes. With
    ``spacing`` (``(y, x)`` mm) the slices are
    resampled to it and centred on the ``size × size`` canvas instead (:func:`to_spacing`;
    targets are padded as unlabelled, full labels as background). ``annotation="none"``
    without priors gives nothing to learn from and is refused unless ``allow_unlabelled``
    (unlabelled images that other terms learn from: a target domain, source-free
    adaptation from a trained model). ``full``: keys of volumes whose target is their full
    label map whatever ``annotation`` says (semi-supervision, ``data.full_labels``).
    """
    if not volumes:
        raise WeaksegError("no training volumes selected; check data.train and data.root")
    priors = list(priors)
    check_priors(priors)
    estimated = [p for p in priors if PRIOR_REGISTRY.get(p).estimated]
    if estimated:
        raise WeaksegError(f"data.priors {estimated} are read from an estimates file, not "
                           "computed from label maps; add them to the slices with "
                           "weakseg.data.estimates.estimated_entries")
    if priors:
        unlabelled = [v.key for v in volumes if v.label is None]
        if unlabelled:
            raise WeaksegError(
                f"data.priors {priors} are computed from full label maps, but "
                f"{len(unlabelled)} training volumes have none (e.g. {unlabelled[0]}); "
                "remove data.priors or train on volumes with full masks"
            )
    images, targets, keys, index, full_maps = [], [], [], [], []
    entries: list[dict[str, np.ndarray]] = []
    for vol in volumes:
        own_annotation = "full" if vol.key in full else annotation
        target = resolve_annotation(vol, own_annotation, num_classes=num_classes, seed=seed,
                                    params=annotation_params, class_names=class_names)
        maps = [np.asarray(target)] + ([np.asarray(vol.label)] if priors else [])
        x, (y, *lab) = to_grid(vol, size, spacing, maps, [IGNORE_INDEX, 0][:len(maps)], norm)
        if priors:
            full_maps.append(lab[0].numpy())
        images.append(x)
        targets.append(y)
        keys += [vol.key] * x.shape[0]
        index += list(range(x.shape[0]))
        own = annotation_entries(vol, own_annotation, num_classes=num_classes, seed=seed,
                                 params=annotation_params, class_names=class_names)
        entries += [own] * x.shape[0]
    extras = _stack_entries(entries, compute_priors(full_maps, priors, num_classes=num_classes))
    recomputed = any(PRIOR_REGISTRY.get(p).on_crop == "recompute" for p in priors)
    crop_labels = None
    if recomputed:
        if num_classes > 256:
            raise WeaksegError(f"data.priors {priors} keep uint8 label maps for crops; "
                               f"{num_classes} classes do not fit")
        crop_labels = torch.from_numpy(np.concatenate(full_maps).astype(np.uint8))
    data = SliceData(torch.cat(images), torch.cat(targets), keys, index, extras, crop_labels)
    if annotation == "none" and not priors and not allow_unlabelled and not full:
        raise WeaksegError(
            "annotation 'none' gives no pixel label and data.priors is empty: nothing to "
            "learn from; list priors (e.g. data.priors=[tags, bounds_from_tags])"
        )
    if annotation != "none" and not (data.targets != IGNORE_INDEX).any():
        raise WeaksegError(
            f"annotation '{annotation}' has no labelled pixel in the whole data set "
            f"({len(volumes)} volumes); check the annotation files or the unlabelled value"
        )
    return data


def z_windows(depth: int, z: int) -> list[int]:
    """Start indices of ``depth``-slice windows along ``z`` slices: stride ``depth // 2``,
    the last window ending on the last slice; ``[0]`` when the volume is shorter."""
    if z <= depth:
        return [0]
    starts = list(range(0, z - depth + 1, max(depth // 2, 1)))
    return starts if starts[-1] == z - depth else [*starts, z - depth]


def _pad_z(t: torch.Tensor, depth: int, fill: float) -> torch.Tensor:
    """Pad dimension 0 of ``t`` to ``depth`` with ``fill`` (at the end)."""
    missing = depth - t.shape[0]
    if missing <= 0:
        return t
    return torch.cat([t, t.new_full((missing, *t.shape[1:]), fill)])


def build_volumes(
    volumes: list[Volume],
    *,
    annotation: str,
    num_classes: int,
    size: int,
    depth: int,
    seed: int = 0,
    annotation_params: dict | None = None,
    spacing: tuple[float, float] | None = None,
    norm: Normalization | None = None,
    class_names: Sequence[str] | None = None,
    full: Collection[str] = (),
) -> SliceData:
    """3D training samples: ``depth``-slice windows of every volume (stride ``depth // 2``),
    in-plane resized to ``size × size`` (or resampled to ``spacing`` on the canvas, as
    :func:`build_slices`). Volumes with fewer slices are padded (image 0, unlabelled).
    ``images`` are ``(N, K, depth, size, size)``, ``targets`` ``(N, depth, size, size)``;
    ``index`` is the first slice of each window; a simulated annotation's per-volume entries
    (:func:`annotation_entries`) are repeated for every window of the volume; ``full``: as
    for :func:`build_slices`."""
    if not volumes:
        raise WeaksegError("no training volumes selected; check data.train and data.root")
    images, targets, keys, index = [], [], [], []
    entries: list[dict[str, np.ndarray]] = []
    for vol in volumes:
        own_annotation = "full" if vol.key in full else annotation
        target = resolve_annotation(vol, own_annotation, num_classes=num_classes, seed=seed,
                                    params=annotation_params, class_names=class_names)
        own = annotation_entries(vol, own_annotation, num_classes=num_classes, seed=seed,
                                 params=annotation_params, class_names=class_names)
        x, (y,) = to_grid(vol, size, spacing, [np.asarray(target)], [IGNORE_INDEX], norm)
        for start in z_windows(depth, x.shape[0]):
            xs = _pad_z(x[start:start + depth], depth, 0.0)  # (D, K, S, S)
            images.append(xs.movedim(0, 1))
            targets.append(_pad_z(y[start:start + depth], depth, IGNORE_INDEX))
            keys.append(vol.key)
            index.append(start)
            entries.append(own)
    data = SliceData(torch.stack(images), torch.stack(targets), keys, index,
                     _stack_entries(entries, {}))
    if annotation != "none" and not (data.targets != IGNORE_INDEX).any():
        raise WeaksegError(
            f"annotation '{annotation}' has no labelled voxel in the whole data set "
            f"({len(volumes)} volumes); check the annotation files or the unlabelled value"
        )
    return data


@overload
def augment_batch(
    images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def augment_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    extras: Extras,
    *,
    spatial: Collection[str] = SPATIAL_EXTRAS,
) -> tuple[torch.Tensor, torch.Tensor, Extras]: ...


def augment_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    extras: Extras | None = None,
    *,
    spatial: Collection[str] = SPATIAL_EXTRAS,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, Extras]:
    """Random 90° rotations and flips per sample (image and target alike), seeded.

    With ``extras`` (per-sample batch entries, first dimension the batch), the entries
    named in ``spatial`` (laid out ``(B, ..., H, W)`` like the image, e.g. box masks) get
    the same rotation and flip as their image; the others (tags, size bounds) are invariant
    under rotations and flips and pass unchanged. Returns ``(images, targets)``, or
    ``(images, targets, extras)`` when ``extras`` is given. The generator is consumed the
    same way with or without extras.
    """
    n = images.shape[0]
    rot = torch.randint(0, 4, (n,), generator=generator).tolist()
    flip = torch.randint(0, 2, (n,), generator=generator).tolist()
    moved = [k for k in (extras or {}) if k in spatial]
    xs, ys = [], []
    es: dict[str, list[torch.Tensor]] = {k: [] for k in moved}
    for i in range(n):
        x, y = images[i], targets[i]
        e = {k: extras[k][i] for k in moved} if extras else {}
        if rot[i]:
            x, y = torch.rot90(x, rot[i], (-2, -1)), torch.rot90(y, rot[i], (-2, -1))
            e = {k: torch.rot90(v, rot[i], (-2, -1)) for k, v in e.items()}
        if flip[i]:
            x, y = x.flip(-1), y.flip(-1)
            e = {k: v.flip(-1) for k, v in e.items()}
        xs.append(x)
        ys.append(y)
        for k, v in e.items():
            es[k].append(v)
    if extras is None:
        return torch.stack(xs), torch.stack(ys)
    out = dict(extras)
    out.update({k: torch.stack(v) for k, v in es.items()})
    return torch.stack(xs), torch.stack(ys), out


def random_crop(
    images: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    size: int,
    extras: Extras | None = None,
    *,
    labels: torch.Tensor | None = None,
    spatial: Collection[str] = SPATIAL_EXTRAS,
) -> tuple[torch.Tensor, torch.Tensor, Extras]:
    """A random ``size × size`` window of every sample, seeded by ``generator``.

    The image, its target and the ``spatial`` extras are cut at the same offset; the priors
    that depend on what the window shows (``tags``, ``boxes``: a crop can cut a class away
    or shrink its box) are recomputed from ``labels``, the samples' full label maps
    ``(B, H, W)`` (``SliceData.crop_labels``), cut alike; other extras pass unchanged
    (whole-slice size bounds raise). See :func:`weakseg.data.priors.crop_priors`. The
    generator is consumed the same way whatever the extras. Returns
    ``(images, targets, extras)``.
    """
    h, w = images.shape[-2:]
    if not 1 <= size <= min(h, w):
        raise WeaksegError(f"crop {size} does not fit slices of {h}x{w}; lower data.crop")
    n = images.shape[0]
    ys = torch.randint(0, h - size + 1, (n,), generator=generator).tolist()
    xs = torch.randint(0, w - size + 1, (n,), generator=generator).tolist()
    extras = dict(extras or {})

    def cut(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([t[i, ..., y:y + size, x:x + size]
                            for i, (y, x) in enumerate(zip(ys, xs, strict=True))])

    return cut(images), cut(targets), crop_priors(extras, cut, labels, frozenset(spatial))
