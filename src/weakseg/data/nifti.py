"""NIfTI folders in the nnU-Net / Medical Segmentation Decathlon raw layout.

The layout read by :func:`load_nifti_folder` (registered as data set ``"nifti"``)::

    root/
        dataset.json            # "labels" and "channel_names" (v2) or "modality" (v1)
        imagesTr/<case>_0000.nii.gz  (<case>_0001.nii.gz ... for more channels)
        labelsTr/<case>.nii.gz       (full masks; optional per case)
        <annotation_dir>/<case>.nii.gz  (weak annotations; optional)

Decathlon folders whose images are named ``<case>.nii.gz`` (one file per case,
4D when there are several modalities) are read as well.

``dataset.json`` labels are either nnU-Net v2 style (``{"background": 0, "RV": 1}``)
or Decathlon / v1 style (``{"0": "background", "1": "RV"}``). A label named
``"ignore"`` (the nnU-Net v2 convention for partial annotations) is the
unlabelled value and not a class; ``unlabelled_value`` (argument, or key in
``dataset.json``) overrides it. When an unlabelled value is known and no
``annotation_dir`` is given, the maps in ``labelsTr`` are partial annotations:
they are stored as the weak annotation ``"weak"`` and the volume has no full label.

nibabel arrays are ``(X, Y, Z)``; volumes are ``(Z, Y, X)`` (channels last) and
:func:`write_nifti_prediction` transposes back and reuses the source affine and
header, so predictions overlay the input images in any viewer.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from weakseg.data.base import (
    DATASETS,
    IGNORE_INDEX,
    Volume,
    VolumeSet,
    check_image,
    check_labels,
)
from weakseg.errors import WeaksegError
from weakseg.safeio import atomic_path

__all__ = [
    "load_nifti_folder",
    "load_nifti_pairs",
    "nifti_prediction_path",
    "nifti_probabilities_path",
    "read_nifti_image_folder",
    "write_nifti_prediction",
    "write_nifti_probabilities",
]

#: Weak annotations read by this module are stored under this name.
WEAK_KEY = "weak"

_AFFINE_TOL = 1e-3
_READ_ERRORS = (
    ImageFileError,
    HeaderDataError,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    struct.error,
)
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(?:\.gz)?$")


# --------------------------------------------------------------------------- files


def _is_nifti(path: Path) -> bool:
    name = path.name
    return (
        path.is_file()
        and not name.startswith(".")  # skips macOS "._x.nii.gz" files shipped with MSD
        and (name.endswith(".nii.gz") or name.endswith(".nii"))
    )


def _strip_ext(name: str) -> str:
    if name.endswith(".nii.gz"):
        return name[: -len(".nii.gz")]
    if name.endswith(".nii"):
        return name[: -len(".nii")]
    return name


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_nifti(p))


def _read(path: Path, *, labels: bool = False) -> tuple[np.ndarray, np.ndarray, Any]:
    """Return ``(array (X, Y, Z[, K]), affine, header)`` of one NIfTI file."""
    try:
        img: Any = nib.load(str(path))  # a spatial image (nibabel's stubs say less)
        if labels:
            data = np.asarray(img.dataobj)
        else:
            data = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
        header = img.header
    except _READ_ERRORS as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise WeaksegError(
            f"cannot read NIfTI file {path}: {msg}; the file is corrupt or not NIfTI, "
            f"re-export or remove it"
        ) from exc
    if data.ndim == 2:
        data = data[:, :, None]
    return data, affine, header


def _zyx_spacing(header: Any) -> tuple[float, float, float]:
    zooms = [float(z) for z in header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    return (zooms[2], zooms[1], zooms[0])


def _to_zyx(arr: np.ndarray) -> np.ndarray:
    """``(X, Y, Z[, K])`` -> ``(Z, Y, X[, K])``."""
    axes = (2, 1, 0) + tuple(range(3, arr.ndim))
    return np.ascontiguousarray(np.transpose(arr, axes))


def _same_geometry(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=0.0, atol=_AFFINE_TOL))


def _scan_images(image_dir: Path) -> tuple[dict[str, dict[int, Path]], bool]:
    """Group image files by case.

    Returns ``({case: {channel: path}}, nnunet_naming)``. nnU-Net naming
    (``<case>_0000.nii.gz``) is used when any file ends in ``_0000``; otherwise
    every file is one case (Decathlon layout, 4D for several modalities).
    """
    files = _nifti_files(image_dir)
    nnunet = any(
        (m := _CHANNEL_RE.match(p.name)) is not None and m.group("channel") == "0000" for p in files
    )
    cases: dict[str, dict[int, Path]] = {}
    for path in files:
        if nnunet:
            m = _CHANNEL_RE.match(path.name)
            if m is None:
                raise WeaksegError(
                    f"image file {path} does not follow the nnU-Net naming "
                    f"<case>_0000.nii.gz; rename it or move it out of {image_dir}"
                )
            case, channel = m.group("case"), int(m.group("channel"))
        else:
            case, channel = _strip_ext(path.name), 0
        chans = cases.setdefault(case, {})
        if channel in chans:
            raise WeaksegError(
                f"case '{case}' has two files for channel {channel} ({chans[channel].name} and "
                f"{path.name}); keep only one of .nii.gz / .nii"
            )
        chans[channel] = path
    return cases, nnunet


def _read_channel_file(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """Read one ``<case>_000k`` file, which must hold a single 3D (or 2D) image."""
    data, affine, header = _read(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise WeaksegError(
            f"{path}: image has shape {tuple(data.shape)}; each channel file must be "
            f"one 3D (or 2D) image"
        )
    return data, affine, header


def _read_case_image(
    case: str,
    channels: dict[int, Path],
    nnunet: bool,
    num_channels: int | None,
) -> tuple[np.ndarray, np.ndarray, Any, Path]:
    """Return ``(image (Z, Y, X[, K]) float32, affine, header, first path)``."""
    if nnunet:
        expected = num_channels if num_channels is not None else max(channels) + 1
        missing = [k for k in range(expected) if k not in channels]
        first = channels[min(channels)]
        if missing:
            want = first.parent / f"{case}_{missing[0]:04d}{_ext(first)}"
            raise WeaksegError(
                f"case '{case}': missing channel file {want} ({expected} channels expected); "
                f"add it or fix the channel list in dataset.json"
            )
        extra = sorted(k for k in channels if k >= expected)
        if extra:
            raise WeaksegError(
                f"case '{case}': channel file {channels[extra[0]]} is beyond the {expected} "
                f"channels declared in dataset.json; remove it or declare the channel"
            )
        first = channels[0]
        base, affine, header = _read_channel_file(first)
        arrays = [base]
        for k in range(1, expected):
            path = channels[k]
            data, aff, _ = _read_channel_file(path)
            if data.shape != base.shape:
                raise WeaksegError(
                    f"case '{case}': channel file {path} has shape {tuple(data.shape)} but "
                    f"channel 0 has {tuple(base.shape)}; all channels must share one grid"
                )
            if not _same_geometry(aff, affine):
                raise WeaksegError(
                    f"case '{case}': geometry mismatch between channel files "
                    f"{first.name} and {path.name} (affines differ by more than "
                    f"{_AFFINE_TOL} mm); resample them onto one grid"
                )
            arrays.append(data)
        image = base if expected == 1 else np.stack(arrays, axis=-1)
    else:
        first = channels[0]
        image, affine, header = _read(first)
        if image.ndim == 4 and image.shape[3] == 1:
            image = image[..., 0]
        k = 1 if image.ndim == 3 else int(image.shape[3])
        if image.ndim > 4:
            raise WeaksegError(
                f"{first}: image has shape {tuple(image.shape)}; expected 3D, or 4D with "
                f"channels last"
            )
        if num_channels is not None and k != num_channels:
            raise WeaksegError(
                f"{first}: image has {k} channel(s) but dataset.json declares {num_channels}; "
                f"fix the channel list in dataset.json"
            )
    image = check_image(_to_zyx(image), str(first))
    return image, affine, header, first


def _ext(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"


def _find_case_file(folder: Path, case: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        path = folder / f"{case}{ext}"
        if path.is_file():
            return path
    return None


def _check_orphans(folder: Path, cases: set[str], image_dir: Path) -> None:
    for path in _nifti_files(folder):
        case = _strip_ext(path.name)
        if case not in cases:
            raise WeaksegError(
                f"{path} has no image in {image_dir} (expected {case}_0000.nii.gz or "
                f"{case}.nii.gz); add the image or remove the file"
            )


# --------------------------------------------------------------------- dataset.json


def _as_int(value: Any, what: str, where: Path) -> int:
    if isinstance(value, bool):
        raise WeaksegError(f"{where}: {what} is {value!r}; expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    if isinstance(value, (list, tuple)):
        raise WeaksegError(
            f"{where}: {what} is {value!r}; region-based labels (lists of values) are not "
            f"supported, give one integer per label"
        )
    raise WeaksegError(f"{where}: {what} is {value!r}; expected an integer")


def _read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        raise WeaksegError(
            f"no dataset.json in {root}; expected the nnU-Net raw layout imagesTr/, "
            f"labelsTr/, dataset.json"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = " ".join(str(exc).split())
        raise WeaksegError(f"cannot read {path}: {msg}; fix the JSON syntax") from exc
    if not isinstance(spec, dict):
        raise WeaksegError(f"{path}: expected a JSON object at the top level")
    return spec


def _parse_labels(
    spec: dict[str, Any], path: Path, unlabelled_value: int | None
) -> tuple[list[str], int | None]:
    """Return ``(class names sorted by value, unlabelled value or None)``."""
    labels = spec.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise WeaksegError(
            f'{path}: missing or empty "labels"; give e.g. {{"background": 0, "RV": 1}}'
        )
    # v1 / Decathlon: {"0": "background"}; v2: {"background": 0}.
    v1 = all(isinstance(v, str) for v in labels.values())
    pairs: list[tuple[str, int]] = []
    for key, value in labels.items():
        if v1:
            pairs.append((str(value), _as_int(key, f"label key {key!r}", path)))
        else:
            pairs.append((str(key), _as_int(value, f"value of label {key!r}", path)))

    ignore_values = [v for name, v in pairs if name.lower() == "ignore"]
    if unlabelled_value is None and "unlabelled_value" in spec:
        unlabelled_value = _as_int(spec["unlabelled_value"], '"unlabelled_value"', path)
    if unlabelled_value is None and ignore_values:
        unlabelled_value = ignore_values[0]

    classes = [(v, name) for name, v in pairs if name.lower() != "ignore" and v != unlabelled_value]
    classes.sort()
    values = [v for v, _ in classes]
    if values != list(range(len(values))):
        raise WeaksegError(
            f"{path}: class label values are {values}; they must be 0..C-1 without gaps or "
            f"duplicates (background 0), with any unlabelled code declared as 'ignore'"
        )
    if len(classes) < 2:
        raise WeaksegError(
            f"{path}: only {len(classes)} class declared; need background and at least one "
            f"foreground label"
        )
    return [name for _, name in classes], unlabelled_value


def _channel_names(spec: dict[str, Any]) -> list[str] | None:
    """The modality of each channel (``channel_names`` / ``modality``), if declared."""
    for key in ("channel_names", "modality"):
        value = spec.get(key)
        if isinstance(value, dict):
            return [str(value[k]) for k in sorted(value, key=lambda k: int(str(k)))
                    if str(k).isdigit()]
        if isinstance(value, list):
            return [str(v) for v in value]
    return None


def _parse_channels(spec: dict[str, Any], path: Path) -> int | None:
    for key in ("channel_names", "modality"):
        value = spec.get(key)
        if value is None:
            continue
        if not isinstance(value, (dict, list)) or not value:
            raise WeaksegError(f'{path}: "{key}" must be a non-empty mapping like {{"0": "CT"}}')
        return len(value)
    return None


# --------------------------------------------------------------------------- reader


def _meta(case: str, channels: dict[int, Path], affine: np.ndarray, header: Any) -> dict[str, Any]:
    """What a NIfTI volume keeps to write predictions back onto its own grid."""
    paths = [str(p) for _, p in sorted(channels.items())]
    return {"format": "nifti", "path": paths[0], "channel_paths": paths, "affine": affine,
            "header": header, "case": case}


def _weak_or_dense(
    raw: np.ndarray, unlabelled: int | None, num_classes: int, where: str
) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """A label map holding the unlabelled value is a weak annotation; one without it is a
    dense label, and also the case's (fully labelled) weak annotation."""
    shape = (int(raw.shape[0]), int(raw.shape[1]), int(raw.shape[2]))
    if unlabelled is not None and bool((raw == unlabelled).any()):
        return None, {WEAK_KEY: _to_weak(raw, unlabelled, shape, num_classes, where)}
    label = check_labels(raw, shape, num_classes, where)
    return label, {WEAK_KEY: label.copy()}


def _compile_group_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise WeaksegError(f"group_pattern '{pattern}' is not a regular expression: {exc}; "
                           "e.g. 'patient\\d+'") from exc


def _group_of(case: str, grouping: re.Pattern[str] | None, pattern: str | None) -> str:
    """The group (patient) id of ``case``: the first match of ``group_pattern``."""
    if grouping is None:
        return case
    m = grouping.search(case)
    if m is None:
        raise WeaksegError(f"group_pattern '{pattern}' does not match case '{case}'; every case "
                           "needs a group, e.g. 'patient\\d+' for patient021_frame01")
    return m.group(1) if grouping.groups else m.group(0)


def _read_folds(root: Path, cases: set[str]) -> dict[str, int]:
    """``case → fold in which it is validated`` from nnU-Net's ``splits_final.json``."""
    path = root / "splits_final.json"
    if not path.is_file():
        return {}
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeaksegError(f"cannot read {path}: {' '.join(str(exc).split())}; fix the JSON or "
                           "remove the file") from exc
    ok = isinstance(spec, list) and spec and all(
        isinstance(f, dict) and isinstance(f.get("val"), list) for f in spec)
    if not ok:
        raise WeaksegError(f'{path}: expected nnU-Net\'s list of {{"train": [...], "val": '
                           '[...]}}, one entry per fold')
    folds: dict[str, int] = {}
    for k, entry in enumerate(spec):
        for case in entry["val"]:
            if str(case) in folds:
                raise WeaksegError(f"{path}: case '{case}' is validated in folds "
                                   f"{folds[str(case)]} and {k}; each case belongs to one fold")
            folds[str(case)] = k
    unknown = sorted(set(folds) - cases)
    if unknown:
        raise WeaksegError(f"{path} names {len(unknown)} cases without an image, e.g. "
                           f"'{unknown[0]}'; regenerate it for this data set")
    missing = sorted(cases - set(folds))
    if missing:
        raise WeaksegError(f"{path} puts {len(missing)} cases in no validation fold, e.g. "
                           f"'{missing[0]}'; every case must be validated in one fold")
    return folds


def _read_label_map(
    path: Path, shape: tuple[int, int, int], affine: np.ndarray, image_path: Path
) -> np.ndarray:
    """Return the raw label map ``(Z, Y, X)`` after shape and geometry checks."""
    data, aff, _ = _read(path, labels=True)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    data = _to_zyx(data)
    if data.dtype.kind not in "iuf":
        raise WeaksegError(f"{path}: label map has dtype {data.dtype}; expected integers")
    # Shape first (a wrong grid usually also differs in affine); values are checked later.
    check_labels(np.zeros(data.shape, np.uint8), shape, 1, str(path))
    if not _same_geometry(aff, affine):
        raise WeaksegError(
            f"{path}: geometry mismatch with image {image_path.name} (affines differ by more "
            f"than {_AFFINE_TOL} mm); resample the label onto the image grid"
        )
    return data


def _to_weak(
    raw: np.ndarray,
    unlabelled_value: int,
    shape: tuple[int, int, int],
    num_classes: int,
    where: str,
) -> np.ndarray:
    raw = raw.astype(np.float64) if raw.dtype.kind == "f" else raw.astype(np.int64)
    weak = np.where(raw == unlabelled_value, IGNORE_INDEX, raw)
    return check_labels(
        weak, shape, num_classes, where, what=f"annotation '{WEAK_KEY}'", allow_ignore=True
    )


@DATASETS.register("nifti", help="NIfTI folder in the nnU-Net / Decathlon raw layout")
def load_nifti_folder(
    root: str | Path,
    *,
    annotation_dir: str | None = None,
    image_dir: str = "imagesTr",
    label_dir: str = "labelsTr",
    unlabelled_value: int | None = None,
    group_pattern: str | None = None,
) -> VolumeSet:
    """Read a NIfTI data set in the nnU-Net / Decathlon raw layout.

    With an unlabelled value (nnU-Net v2's ``ignore`` label) and no ``annotation_dir``,
    ``label_dir`` may mix weak and dense maps: a map holding the unlabelled value is a weak
    annotation (``"weak"``), a map without it is a dense label (used for validation and
    ``evaluate``, and as its own ``"weak"`` annotation in training). A ``splits_final.json``
    in ``root`` (nnU-Net's list of ``{"train": [...], "val": [...]}``) gives the folds.

    Args:
        root: folder holding ``dataset.json``, ``image_dir`` and ``label_dir``.
        annotation_dir: sub-folder of ``root`` with weak annotations
            ``<case>.nii.gz``; the unlabelled value marks unlabelled voxels.
        image_dir: sub-folder with ``<case>_0000.nii.gz`` images.
        label_dir: sub-folder with full masks ``<case>.nii.gz`` (optional per
            case); partial annotations when an unlabelled value is known and
            ``annotation_dir`` is not given.
        unlabelled_value: code of unlabelled voxels in annotation files;
            overrides ``"unlabelled_value"`` and the ``"ignore"`` label of
            ``dataset.json``.
        group_pattern: regular expression whose first match in a case id is the group
            (patient) of the case, e.g. ``"patient\\d+"`` groups ``patient021_frame01``
            and ``patient021_frame12``; default: each case is its own group.

    Returns:
        The volumes (key is the case id) with class names sorted by label value.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise WeaksegError(f"data folder {root} does not exist; check the data root path")
    spec_path = root / "dataset.json"
    spec = _read_dataset_json(root)
    if unlabelled_value is not None:
        unlabelled_value = _as_int(unlabelled_value, "unlabelled_value", spec_path)
    class_names, unlabelled = _parse_labels(spec, spec_path, unlabelled_value)
    num_classes = len(class_names)
    num_channels = _parse_channels(spec, spec_path)

    images = root / image_dir
    if not images.is_dir():
        raise WeaksegError(
            f"image folder {images} does not exist; expected the nnU-Net raw layout "
            f"{image_dir}/<case>_0000.nii.gz (set image_dir if it is named differently)"
        )
    cases, nnunet = _scan_images(images)
    if not cases:
        raise WeaksegError(
            f"no images in {images}; expected files named <case>_0000.nii.gz (or .nii)"
        )

    labels = root / label_dir
    if labels.exists() and not labels.is_dir():
        raise WeaksegError(f"label folder {labels} is not a folder; check label_dir")
    if labels.is_dir():
        _check_orphans(labels, set(cases), images)

    annotations: Path | None = None
    if annotation_dir is not None:
        annotations = root / annotation_dir
        if not annotations.is_dir():
            raise WeaksegError(
                f"annotation folder {annotations} does not exist; check annotation_dir"
            )
        if unlabelled is None:
            raise WeaksegError(
                f"annotation_dir '{annotation_dir}' is given but the unlabelled value is "
                f"unknown; declare an 'ignore' label in dataset.json or set unlabelled_value"
            )
        _check_orphans(annotations, set(cases), images)
        if not any(_find_case_file(annotations, c) is not None for c in cases):
            raise WeaksegError(
                f"annotation folder {annotations} has no <case>.nii.gz for any image in "
                f"{images}; name annotations like the cases"
            )
    # Without a separate annotation folder, a known unlabelled value means
    # labelsTr holds partial annotations (the nnU-Net v2 "ignore" convention).
    labels_are_partial = unlabelled is not None and annotations is None
    grouping = _compile_group_pattern(group_pattern)
    folds = _read_folds(root, set(cases))

    volumes: list[Volume] = []
    for case in sorted(cases):
        image, affine, header, first = _read_case_image(case, cases[case], nnunet, num_channels)
        shape = (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
        label: np.ndarray | None = None
        weak: dict[str, np.ndarray] = {}

        label_path = _find_case_file(labels, case) if labels.is_dir() else None
        if label_path is not None:
            raw = _read_label_map(label_path, shape, affine, first)
            if labels_are_partial:
                label, weak = _weak_or_dense(raw, unlabelled, num_classes, str(label_path))
            else:
                label = check_labels(raw, shape, num_classes, str(label_path))

        if annotations is not None and unlabelled is not None:
            ann_path = _find_case_file(annotations, case)
            if ann_path is not None:
                raw = _read_label_map(ann_path, shape, affine, first)
                weak[WEAK_KEY] = _to_weak(raw, unlabelled, shape, num_classes, str(ann_path))

        meta = _meta(case, cases[case], affine, header)
        if case in folds:
            meta["fold"] = folds[case]
        volumes.append(
            Volume(
                key=case,
                group=_group_of(case, grouping, group_pattern),
                image=image,
                label=label,
                annotations=weak,
                spacing=_zyx_spacing(header),
                meta=meta,
            )
        )

    in_channels = {v.channels for v in volumes}
    if len(in_channels) != 1:
        counts = {v.key: v.channels for v in volumes[:8]}
        raise WeaksegError(
            f"cases in {images} have different channel counts {counts}; every case needs the "
            f"same channels (declare them in dataset.json)"
        )

    with_weak = [v for v in volumes if WEAK_KEY in v.annotations]
    if with_weak and not any(
        bool((v.annotations[WEAK_KEY] != IGNORE_INDEX).any()) for v in with_weak
    ):
        raise WeaksegError(
            f"annotation '{WEAK_KEY}' has no labelled voxel in the whole data set; check the "
            f"unlabelled value ({unlabelled}) and the annotation files"
        )

    return VolumeSet(volumes=volumes, class_names=class_names, in_channels=in_channels.pop(),
                     channel_names=_channel_names(spec))


@DATASETS.register(
    "nifti_pairs",
    help="NIfTI images and label maps in two folders, labels named <case><suffix> (MS-CMRSeg)",
)
def load_nifti_pairs(
    *,
    root: str | Path | None = None,
    roots: list[str] | None = None,
    labels: dict[str, int] | None = None,
    image_dir: str = "images",
    label_dir: str = "labels",
    label_suffixes: list[str] | None = None,
    group_pattern: str | None = None,
) -> VolumeSet:
    """Read one or several folders that each hold ``image_dir/<case>.nii.gz`` and
    ``label_dir/<case><suffix>.nii.gz`` (the first suffix of ``label_suffixes`` that exists;
    a case without one has no label), e.g. MS-CMRSeg's ``train/`` and ``val/``.

    Args:
        root: one folder; ``roots``: several (their volumes are concatenated, each volume's
            ``meta["split"]`` is its folder's name, so ``data.train: split:train`` selects).
        labels: class name → value, background 0 first (``{"background": 0, "RV": 1}``);
            a name ``ignore`` gives the unlabelled value of weak maps. Default: the
            ``dataset.json`` ``labels`` of the first folder.
        label_suffixes: file-name suffixes of the label maps (default ``["", "_scribble",
            "_manual"]``). A map holding the unlabelled value is a weak annotation
            (``"weak"``); one without it is a dense label (and its own weak annotation).
        group_pattern: as for :func:`load_nifti_folder`.
    """
    folders = [Path(r).expanduser() for r in ([root] if root is not None else []) + (roots or [])]
    if not folders:
        raise WeaksegError("nifti_pairs needs data.root or data.params.roots (folders with "
                           f"{image_dir}/ and {label_dir}/)")
    for folder in folders:
        if not (folder / image_dir).is_dir():
            raise WeaksegError(f"{folder / image_dir} does not exist; each folder needs "
                               f"{image_dir}/ and {label_dir}/ (set image_dir / label_dir)")
    spec = {"labels": labels} if labels is not None else _read_dataset_json(folders[0])
    class_names, unlabelled = _parse_labels(spec, folders[0] / "dataset.json", None)
    suffixes = label_suffixes if label_suffixes is not None else ["", "_scribble", "_manual"]
    grouping = _compile_group_pattern(group_pattern)
    volumes: list[Volume] = []
    seen: dict[str, Path] = {}
    for folder in folders:
        for path in _nifti_files(folder / image_dir):
            case = _strip_ext(path.name)
            if case in seen:
                raise WeaksegError(f"case '{case}' is in {seen[case]} and {folder}; case names "
                                   "must be unique across data.params.roots")
            seen[case] = folder
            image, affine, header, first = _read_case_image(case, {0: path}, False, None)
            shape = (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
            label: np.ndarray | None = None
            weak: dict[str, np.ndarray] = {}
            label_path = next((folder / label_dir / f"{case}{sfx}{_ext(path)}" for sfx in suffixes
                               if (folder / label_dir / f"{case}{sfx}{_ext(path)}").is_file()),
                              None)
            if label_path is not None:
                raw = _read_label_map(label_path, shape, affine, first)
                label, weak = _weak_or_dense(raw, unlabelled, len(class_names), str(label_path))
            volumes.append(Volume(
                key=case, group=_group_of(case, grouping, group_pattern), image=image,
                label=label, annotations=weak, spacing=_zyx_spacing(header),
                meta={**_meta(case, {0: first}, affine, header), "split": folder.name},
            ))
    if not volumes:
        raise WeaksegError(f"no NIfTI images in {', '.join(str(f / image_dir) for f in folders)}")
    channels = {v.channels for v in volumes}
    if len(channels) != 1:
        raise WeaksegError(f"images have different channel counts {sorted(channels)}; every "
                           "case needs the same channels")
    return VolumeSet(volumes=volumes, class_names=class_names, in_channels=channels.pop())


# ----------------------------------------------------------------------- prediction


def read_nifti_image_folder(folder: str | Path) -> list[Volume]:
    """Read the images of a folder for prediction (no labels).

    ``folder`` is an nnU-Net root (its ``imagesTs/``, else ``imagesTr/``, is
    read), a plain folder of images, or a single ``.nii.gz`` / ``.nii`` file.
    Files named ``<case>_0000.nii.gz`` are grouped with their ``_000k``
    channels; otherwise every NIfTI file is one single-channel (or 4D,
    channels-last) image.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise WeaksegError(f"input {folder} does not exist; give a folder of NIfTI images")
    num_channels: int | None = None
    if folder.is_file():
        if not _is_nifti(folder):
            raise WeaksegError(f"input {folder} is not a .nii.gz / .nii file")
        m = _CHANNEL_RE.match(folder.name)  # case_0000.nii.gz → case "case"
        name = m.group("case") if m and m.group("channel") == "0000" else _strip_ext(folder.name)
        cases: dict[str, dict[int, Path]] = {name: {0: folder}}
        nnunet = False
        image_dir = folder.parent
    else:
        image_dir = folder
        for sub in ("imagesTs", "imagesTr"):
            if (folder / sub).is_dir() and _nifti_files(folder / sub):
                image_dir = folder / sub
                break
        if image_dir != folder and (folder / "dataset.json").is_file():
            spec_path = folder / "dataset.json"
            num_channels = _parse_channels(_read_dataset_json(folder), spec_path)
        cases, nnunet = _scan_images(image_dir)
        if not cases:
            raise WeaksegError(
                f"no NIfTI images (*.nii.gz, *.nii) in {image_dir}; give a folder of images "
                f"or an nnU-Net root with imagesTs/"
            )
    volumes: list[Volume] = []
    for case in sorted(cases):
        image, affine, header, first = _read_case_image(case, cases[case], nnunet, num_channels)
        volumes.append(
            Volume(
                key=case,
                group=case,
                image=image,
                spacing=_zyx_spacing(header),
                meta=_meta(case, cases[case], affine, header),
            )
        )
    counts = {v.channels for v in volumes}
    if len(counts) > 1:
        raise WeaksegError(
            f"images in {image_dir} have different channel counts {sorted(counts)}; "
            f"predict each kind of image separately"
        )
    return volumes


def write_nifti_prediction(volume: Volume, prediction: np.ndarray, out_dir: str | Path) -> Path:
    """Write a ``(Z, H, W)`` class map as ``out_dir/<case>.nii.gz`` (uint8).

    The source affine and header (from ``volume.meta``) are reused so the
    prediction lies on the input grid; volumes from other formats get an
    affine built from ``volume.spacing``.
    """
    pred = np.asarray(prediction)
    if tuple(pred.shape) != volume.shape:
        raise WeaksegError(
            f"prediction for '{volume.key}' has shape {tuple(pred.shape)} but the image has "
            f"{volume.shape}; predict on the full (Z, H, W) volume"
        )
    if pred.dtype.kind not in "biu" or (pred.size and (pred.min() < 0 or pred.max() > 255)):
        raise WeaksegError(
            f"prediction for '{volume.key}' must be a class map of integers 0..255 "
            f"(got dtype {pred.dtype}); take argmax over classes first"
        )
    data = np.ascontiguousarray(np.transpose(pred.astype(np.uint8), (2, 1, 0)))

    header = volume.meta.get("header")
    if header is not None and isinstance(header, nib.Nifti1Header):
        header = header.copy()
    else:
        header = nib.Nifti1Header()
    img = nib.Nifti1Image(data, _affine_of(volume), header)
    img.header.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    img.header["intent_code"] = 0

    return _save(img, nifti_prediction_path(volume, out_dir), "prediction")


def _affine_of(volume: Volume) -> np.ndarray:
    """The source affine, or one built from the volume's spacing (other formats)."""
    affine = volume.meta.get("affine")
    if affine is None:
        sz, sy, sx = volume.spacing or (1.0, 1.0, 1.0)
        affine = np.diag([sx, sy, sz, 1.0])
    return np.asarray(affine, dtype=np.float64)


def _save(img: Any, path: Path, what: str) -> Path:
    """``nib.save`` through a temporary name (never a torn file), one-line errors."""
    try:
        with atomic_path(path) as tmp:
            nib.save(img, str(tmp))
    except OSError as exc:
        raise WeaksegError(f"cannot write {what} to {path}: {exc.strerror or exc}") from exc
    return path


def nifti_probabilities_path(volume: Volume, out_dir: str | Path) -> Path:
    """Where :func:`write_nifti_probabilities` writes: ``<case>_probabilities.nii.gz``."""
    return Path(out_dir) / f"{volume.meta.get('case', volume.key)}_probabilities.nii.gz"


def write_nifti_probabilities(
    volume: Volume, probabilities: np.ndarray, out_dir: str | Path
) -> Path:
    """Write softmax probabilities ``(C, Z, H, W)`` as a 4D float32 NIfTI ``(X, Y, Z, C)``
    on the input grid (same affine)."""
    probs = np.asarray(probabilities, dtype=np.float32)
    if probs.ndim != 4 or tuple(probs.shape[1:]) != volume.shape:
        raise WeaksegError(f"probabilities for '{volume.key}' have shape {probs.shape}; "
                           f"expected (C, {', '.join(map(str, volume.shape))})")
    data = np.ascontiguousarray(np.transpose(probs, (3, 2, 1, 0)))
    img = nib.Nifti1Image(data, _affine_of(volume))
    img.header.set_data_dtype(np.float32)
    return _save(img, nifti_probabilities_path(volume, out_dir), "probabilities")


def nifti_prediction_path(volume: Volume, out_dir: str | Path) -> Path:
    """Where :func:`write_nifti_prediction` writes ``volume``'s prediction: ``<case>.nii.gz``
    (the case id without the ``_0000`` channel suffix)."""
    return Path(out_dir) / f"{volume.meta.get('case', volume.key)}.nii.gz"
