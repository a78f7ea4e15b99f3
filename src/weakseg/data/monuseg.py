"""MoNuSeg H&E nuclei tiles with real point annotations (WeakNucleiSeg layout).

Layout of ``root`` (the ``data/MO`` folder of WeakNucleiSeg, Qu et al. MIDL 2019)::

    images/<stem>.png                      RGB tiles (1000 x 1000 for MoNuSeg)
    labels_instance/<stem>_label.png       uint16 instance maps, 0 = background
    labels_point/<stem>_label_point.png    one pixel per nucleus, value 255
                                           (only for the training tiles)
    split.json                             {"train": [<stem>.png, ...], "val": [...]}

Every tile becomes a :class:`~weakseg.data.base.Volume` with one slice:

* ``image``: float32 ``(1, H, W, 3)`` in ``[0, 1]`` (channels last);
* ``label``: int64 ``(1, H, W)``, ``1`` where the instance map is non-zero;
* ``annotations["points"]`` (tiles with a point file only): int64 ``(1, H, W)``,
  ``1`` (nucleus) on every non-zero pixel of the point file and
  :data:`~weakseg.data.base.IGNORE_INDEX` elsewhere. These are the real
  clicks: a few of them (under 1 % per tile) fall just outside the instance
  masks and are kept as they are. Point supervision labels no background.
* ``meta["instances"]``: the instance map, uint16 ``(1, H, W)`` (for
  :func:`weakseg.metrics.instances.aggregated_jaccard_index`);
  ``meta["point_coords"]``: int64 ``(N, 2)`` ``(y, x)`` of the points, when
  there is a point file; ``meta["path"]``, ``meta["format"] = "png"``.
* ``key`` = ``group`` = the file stem (``Breast_TCGA-A7-A13E-01Z-00-DX1``);
  the organ is the prefix before the first ``_``.

PNG files are read with Pillow (a dependency of matplotlib). No spacing is
stored (distances are in pixels; MoNuSeg is 40x magnification).

Cite Kumar et al., IEEE TMI 2017 (MoNuSeg) and Qu et al., MIDL 2019 (points).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.data.base import (
    DATASETS,
    IGNORE_INDEX,
    Volume,
    VolumeSet,
    check_image,
)
from weakseg.errors import WeaksegError

__all__ = ["MONUSEG_CLASSES", "load_monuseg", "read_monuseg_tile", "voronoi_point_labels"]

MONUSEG_CLASSES = ["background", "nucleus"]
_SPLITS = ("train", "val")


def _read_png(path: Path) -> np.ndarray:
    """Read one PNG as an array (uint8 RGB for colour images, raw values otherwise)."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            img: Image.Image = opened
            if img.mode in ("RGBA", "P", "CMYK", "LA", "YCbCr"):
                img = img.convert("RGB")
            return np.array(img)
    except Exception as exc:  # PIL raises OSError / UnidentifiedImageError / ...
        raise WeaksegError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def _read_rgb(path: Path) -> np.ndarray:
    arr = _read_png(path)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise WeaksegError(f"{path}: image has shape {arr.shape}; expected an RGB image")
    if arr.dtype not in (np.uint8, np.uint16):
        raise WeaksegError(f"{path}: image has dtype {arr.dtype}; expected 8-bit RGB")
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return check_image((arr.astype(np.float32) / scale)[None], str(path))


def _read_instances(path: Path, shape: tuple[int, int]) -> np.ndarray:
    arr = _read_png(path)
    if arr.ndim != 2 or arr.dtype.kind not in "biu":
        raise WeaksegError(
            f"{path}: instance map has shape {arr.shape} and dtype {arr.dtype}; expected a "
            f"single-channel integer PNG (0 = background, 1..N = nuclei)"
        )
    if arr.shape != shape:
        raise WeaksegError(
            f"{path}: instance map is {arr.shape[0]}x{arr.shape[1]} but its image is "
            f"{shape[0]}x{shape[1]}; image and labels must cover the same pixels"
        )
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > np.iinfo(np.uint16).max):
        raise WeaksegError(f"{path}: instance ids must be in 0..65535")
    return arr.astype(np.uint16)


def _read_points(path: Path, shape: tuple[int, int]) -> np.ndarray:
    arr = _read_png(path)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.shape != shape:
        raise WeaksegError(
            f"{path}: point map is {arr.shape[0]}x{arr.shape[1]} but its image is "
            f"{shape[0]}x{shape[1]}; image and labels must cover the same pixels"
        )
    return arr > 0


def voronoi_point_labels(points: np.ndarray, *, radius: int = 2) -> np.ndarray:
    """Nucleus discs around the clicks and background on their Voronoi edges.

    Qu et al. ("Weakly supervised deep nuclei segmentation using points annotation in
    histopathology images", MIDL 2019) observe that between two neighbouring nuclei lies
    background, so the edges of the Voronoi diagram of the clicks are (almost always)
    background; they are derived from the points alone, with no mask.

    Args:
        points: bool ``(H, W)``, ``True`` on the clicked pixels.
        radius: pixels within this Euclidean distance of a click are labelled nucleus
            (0: the click pixel only).

    Returns:
        int64 ``(H, W)``: 1 = nucleus, 0 = background (Voronoi edges, two pixels wide),
        ``IGNORE_INDEX`` elsewhere; all ``IGNORE_INDEX`` without clicks.
    """
    from scipy import ndimage

    pts = np.asarray(points, dtype=bool)
    if pts.ndim != 2:
        raise WeaksegError(f"voronoi_point_labels: points must be (H, W), got {pts.shape}")
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise WeaksegError(f"voronoi_point_labels: radius must be an integer >= 0, got "
                           f"{radius!r}")
    out = np.full(pts.shape, IGNORE_INDEX, dtype=np.int64)
    if not pts.any():
        return out
    ids = np.zeros(pts.shape, dtype=np.int64)
    ids[pts] = np.arange(1, int(pts.sum()) + 1)
    dist, (iy, ix) = ndimage.distance_transform_edt(~pts, return_indices=True)
    nearest = ids[iy, ix]
    edge = np.zeros(pts.shape, dtype=bool)
    dy = nearest[1:] != nearest[:-1]
    dx = nearest[:, 1:] != nearest[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    out[edge] = 0
    out[dist <= radius] = 1
    return out


def read_monuseg_tile(
    image_path: str | Path,
    instance_path: str | Path,
    point_path: str | Path | None = None,
    *,
    point_radius: int = 2,
) -> Volume:
    """Read one tile (image, instance map and optional point map) into a ``Volume``."""
    image_path, instance_path = Path(image_path), Path(instance_path)
    for p in (image_path, instance_path, point_path):
        if p is not None and not Path(p).is_file():
            raise WeaksegError(f"file not found: {p}")
    image = _read_rgb(image_path)
    hw = (image.shape[1], image.shape[2])
    instances = _read_instances(instance_path, hw)[None]
    label = (instances > 0).astype(np.int64)
    annotations: dict[str, np.ndarray] = {}
    meta: dict[str, object] = {
        "format": "png",
        "path": str(image_path),
        "instances": instances,
    }
    if point_path is not None:
        points = _read_points(Path(point_path), hw)
        ann = np.full(label.shape, IGNORE_INDEX, dtype=np.int64)
        ann[0][points] = 1
        annotations["points"] = ann
        annotations["points_voronoi"] = voronoi_point_labels(points, radius=point_radius)[None]
        meta["point_coords"] = np.argwhere(points).astype(np.int64)
    stem = image_path.stem
    return Volume(
        key=stem,
        group=stem,
        image=image,
        label=label,
        annotations=annotations,
        spacing=None,
        meta=meta,
    )


def _read_split(root: Path, split: str) -> list[str]:
    """Stems listed under ``split`` in ``root/split.json``."""
    if split not in _SPLITS:
        raise WeaksegError(
            f"unknown MoNuSeg split '{split}'; use one of {', '.join(_SPLITS)} or leave it unset "
            f"for all tiles"
        )
    path = root / "split.json"
    if not path.is_file():
        raise WeaksegError(f"{path} not found; it is needed for split='{split}' (or unset split)")
    spec = _read_split_file(path)
    if not isinstance(spec.get(split), list):
        raise WeaksegError(
            f"{path}: expected {{\"train\": [...], \"val\": [...]}} with a list under '{split}'"
        )
    return [Path(str(name)).stem for name in spec[split]]


def _read_split_file(path: Path) -> dict[str, Any]:
    """``split.json`` as a mapping of split name → list of tile names; a malformed file is an
    error (never silently "no splits")."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeaksegError(f"cannot read {path}: {exc}; fix the JSON or remove the file") from exc
    bad = not isinstance(spec, dict) or any(
        not isinstance(v, list) or not all(isinstance(x, str) for x in v) for v in spec.values())
    if bad:
        raise WeaksegError(
            f"{path}: expected {{\"train\": [\"<tile>.png\", ...], \"val\": [...]}}, "
            "a list of tile names per split"
        )
    return spec


@DATASETS.register(
    "monuseg", help="MoNuSeg H&E nuclei tiles, instance maps and real point labels (PNG)"
)
def load_monuseg(
    *, root: str | Path, split: str | None = None, point_radius: int = 2
) -> VolumeSet:
    """Load MoNuSeg tiles from the WeakNucleiSeg layout (see the module docstring).

    Args:
        root: folder with ``images/``, ``labels_instance/``, ``labels_point/``
            and ``split.json``.
        split: ``"train"`` or ``"val"`` (as listed in ``split.json``), or
            ``None`` for every tile in ``images/``.
        point_radius: radius of the nucleus discs of ``points_voronoi``.

    Returns:
        A :class:`VolumeSet` with classes ``["background", "nucleus"]`` and 3
        input channels, one single-slice volume per tile, sorted by name.
    """
    root = Path(root)
    if not root.is_dir():
        raise WeaksegError(
            f"data folder not found: {root}; pass data.root=<folder with images/ and "
            f"labels_instance/>"
        )
    image_dir = root / "images"
    inst_dir = root / "labels_instance"
    point_dir = root / "labels_point"
    for d in (image_dir, inst_dir):
        if not d.is_dir():
            raise WeaksegError(
                f"{d} not found; a MoNuSeg folder needs images/ and labels_instance/ "
                f"(labels_point/ is optional)"
            )
    images = {p.stem: p for p in sorted(image_dir.glob("*.png"))}
    if not images:
        raise WeaksegError(f"no .png images in {image_dir}")
    stems = sorted(images)
    if split is not None:
        wanted = _read_split(root, split)
        missing = [s for s in wanted if s not in images]
        if missing:
            raise WeaksegError(
                f"split.json lists {len(missing)} tile(s) not in {image_dir}, e.g. "
                f"'{missing[0]}.png'; fix split.json or restore the images"
            )
        stems = sorted(set(wanted))
        if not stems:
            raise WeaksegError(f"split '{split}' in {root / 'split.json'} is empty")
    volumes = []
    for stem in stems:
        inst = inst_dir / f"{stem}_label.png"
        if not inst.is_file():
            raise WeaksegError(
                f"no instance label for {images[stem].name}: expected {inst}; every image "
                f"needs <stem>_label.png in labels_instance/"
            )
        point = point_dir / f"{stem}_label_point.png"
        volumes.append(read_monuseg_tile(images[stem], inst, point if point.is_file() else None,
                                         point_radius=point_radius))
    if (root / "split.json").is_file():
        spec = _read_split_file(root / "split.json")
        member: dict[str, str] = {}
        for name in _SPLITS:  # a split the file does not list leaves its tiles unassigned
            member.update({Path(t).stem: name for t in spec.get(name, [])})
        for vol in volumes:
            if vol.key in member:
                vol.meta["split"] = member[vol.key]
    return VolumeSet(volumes=volumes, class_names=list(MONUSEG_CLASSES), in_channels=3)
