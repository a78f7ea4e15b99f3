"""ACDC cardiac MRI in the WSL4MIS h5 layout (real scribbles).

Each file ``patientNNN_frameFF.h5`` holds ``image`` float32 ``(Z, H, W)`` in
[0, 1], ``label`` uint8 (0 background, 1 RV, 2 Myo, 3 LV) and ``scribble``
uint16 with the same classes and ``4`` = unlabelled (Valvano et al., IEEE TMI
2021). The files carry no voxel spacing, so distances are in voxels unless the
data set is given a nominal one (``data.params.nominal_spacing``).

Cite Bernard et al., IEEE TMI 2018 (ACDC) and Luo et al., MICCAI 2022 (WSL4MIS).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from weakseg.data.base import (
    DATASETS,
    IGNORE_INDEX,
    Volume,
    VolumeSet,
    check_image,
    check_labels,
)
from weakseg.data.splits import parse_groups
from weakseg.errors import WeaksegError
from weakseg.safeio import atomic_path

__all__ = [
    "ACDC_CLASSES",
    "h5_prediction_path",
    "load_acdc_h5",
    "read_acdc_h5",
    "write_h5_prediction",
]

ACDC_CLASSES = ["background", "RV", "Myo", "LV"]
_NAME = re.compile(r"(patient\d+)_frame(\d+)\.h5$")
_SCRIBBLE_UNLABELLED = 4


def read_acdc_h5(path: str | Path, *, num_classes: int = 4,
                 spacing: tuple[float, float, float] | None = None) -> Volume:
    """Read one WSL4MIS h5 volume; ``scribble`` value 4 becomes ``IGNORE_INDEX``.
    ``spacing``: the ``(z, y, x)`` mm to assume (the files store none)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise WeaksegError(f"file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise WeaksegError(
                    f"{path}: no 'image' dataset (found {sorted(f.keys())}); "
                    "expected the WSL4MIS layout with image/label/scribble"
                )
            image = f["image"][()]
            label = f["label"][()] if "label" in f else None
            scribble = f["scribble"][()] if "scribble" in f else None
    except WeaksegError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/... on corrupt files
        raise WeaksegError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    where = str(path)
    image = check_image(image, where)
    if image.ndim == 2:  # a single slice stored as (H, W)
        image = image[None]
    shape = image.shape[:3]
    annotations: dict[str, np.ndarray] = {}
    full = None
    if label is not None:
        full = check_labels(label.reshape(shape) if label.ndim == 2 else label, shape,
                            num_classes, where)
    if scribble is not None:
        scr = np.asarray(scribble).astype(np.int64)
        if scr.ndim == 2:
            scr = scr[None]
        scr[scr == _SCRIBBLE_UNLABELLED] = IGNORE_INDEX
        annotations["scribble"] = check_labels(
            scr, shape, num_classes, where, what="scribble", allow_ignore=True
        )
    m = _NAME.search(path.name)
    group = m.group(1) if m else path.stem
    return Volume(
        key=path.stem,
        group=group,
        image=image,
        label=full,
        annotations=annotations,
        spacing=spacing,
        meta={"format": "h5", "path": str(path)},
    )


@DATASETS.register("acdc_h5", help="ACDC cardiac MRI, WSL4MIS h5 files (image/label/scribble)")
def load_acdc_h5(*, root: str | Path, patients: str | None = None,
                 nominal_spacing: list[float] | None = None) -> VolumeSet:
    """Load every ``*.h5`` volume under ``root``.

    Args:
        root: folder with ``patientNNN_frameFF.h5`` files.
        patients: optional patient filter, e.g. ``"21-90"`` or ``"91-100,5"``.
        nominal_spacing: ``[z, y, x]`` mm given to every volume, since the files store no
            spacing (e.g. ``[10, 1.5, 1.5]``, about ACDC's typical voxel; the true in-plane
            spacing varies by patient): lets ``data.spacing`` resample ACDC to the grid of
            a data set with real spacing (domain adaptation) and puts HD95 in nominal mm.
            Unset: no spacing, distances in voxels.
    """
    spacing = None
    if nominal_spacing is not None:
        if len(nominal_spacing) != 3 or not all(v > 0 for v in nominal_spacing):
            raise WeaksegError(f"nominal_spacing must be [z, y, x] in mm (3 positive numbers), "
                               f"got {nominal_spacing}")
        z, y, x = (float(v) for v in nominal_spacing)
        spacing = (z, y, x)
    root = Path(root)
    if not root.is_dir():
        raise WeaksegError(f"data folder not found: {root}; pass data.root=<folder with .h5 files>")
    files = sorted(root.glob("*.h5"))
    if not files:
        raise WeaksegError(f"no .h5 files in {root}; expected WSL4MIS patientNNN_frameFF.h5 files")
    wanted = parse_groups(patients) if patients else None
    volumes = []
    for path in files:
        m = _NAME.search(path.name)
        if wanted is not None and (m is None or int(m.group(1)[7:]) not in wanted):
            continue
        volumes.append(read_acdc_h5(path, spacing=spacing))
    if not volumes:
        raise WeaksegError(f"no volume in {root} matches patients='{patients}'")
    return VolumeSet(volumes=volumes, class_names=list(ACDC_CLASSES), in_channels=1)


def h5_prediction_path(volume: Volume, out_dir: str | Path) -> Path:
    """Where :func:`write_h5_prediction` writes ``volume``'s prediction."""
    return Path(out_dir) / f"{volume.key}.h5"


def write_h5_prediction(
    volume: Volume, prediction: np.ndarray, out_dir: str | Path,
    probabilities: np.ndarray | None = None,
) -> Path:
    """Write ``prediction`` (Z, H, W) as ``<key>.h5`` with dataset ``prediction`` (uint8),
    and ``probabilities`` (C, Z, H, W) as dataset ``probabilities`` (float16) when given.

    Written to a temporary name and renamed: a kill never leaves a torn file."""
    import h5py

    path = h5_prediction_path(volume, out_dir)
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("prediction", data=prediction.astype(np.uint8), compression="gzip")
            if probabilities is not None:
                f.create_dataset("probabilities", data=probabilities.astype(np.float16),
                                 compression="gzip")
    except OSError as exc:
        raise WeaksegError(f"cannot write prediction to {path}: {exc.strerror or exc}") from exc
    return path
