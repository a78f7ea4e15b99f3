"""Read any supported folder for ``evaluate``/``predict`` and write predictions back safely.

Formats are detected from the folder: a ``dataset.json`` (nnU-Net / Decathlon
raw layout) or NIfTI files → NIfTI; ``*.h5`` files → WSL4MIS h5.

Predictions never overwrite their inputs: :func:`check_prediction_targets` refuses an output
folder that is, contains or lies inside the input (or the image / label folders of the
nnU-Net data set it belongs to), and any output file that is an input file; each prediction
is written to a temporary name and renamed (:mod:`weakseg.safeio`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weakseg.data.acdc import h5_prediction_path, load_acdc_h5, read_acdc_h5, write_h5_prediction
from weakseg.data.base import Volume, VolumeSet
from weakseg.data.nifti import (
    load_nifti_folder,
    nifti_prediction_path,
    nifti_probabilities_path,
    read_nifti_image_folder,
    write_nifti_prediction,
    write_nifti_probabilities,
)
from weakseg.errors import WeaksegError
from weakseg.safeio import is_within

__all__ = [
    "NNUNET_DATA_DIRS",
    "check_prediction_targets",
    "detect_format",
    "output_paths",
    "prediction_path",
    "read_images",
    "read_labelled",
    "source_files",
    "write_prediction",
]

#: Folders of an nnU-Net raw data set that hold images or ground truth.
NNUNET_DATA_DIRS = ("imagesTr", "imagesTs", "labelsTr", "labelsTs")


def detect_format(folder: str | Path) -> str:
    """``"nifti"`` or ``"h5"``; raises a one-line error for anything else."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise WeaksegError(f"folder not found: {folder}")
    if folder.is_file():
        if folder.suffix == ".h5":
            return "h5"
        if folder.name.endswith((".nii", ".nii.gz")):
            return "nifti"
        raise WeaksegError(f"unsupported file {folder}; expected .h5 or .nii/.nii.gz")
    if (folder / "dataset.json").exists() or any(folder.glob("*.nii*")):
        return "nifti"
    if any(folder.glob("*.h5")):
        return "h5"
    if any(folder.glob("images*/*.nii*")):
        return "nifti"
    raise WeaksegError(
        f"no supported images in {folder}; expected WSL4MIS .h5 files, NIfTI files, or an "
        "nnU-Net raw folder with dataset.json"
    )


def read_labelled(folder: str | Path, *, num_classes: int) -> VolumeSet:
    """Every volume of ``folder`` for scoring; ``label`` is ``None`` where a volume has no full
    label map (the caller decides whether that is an error)."""
    fmt = detect_format(folder)
    if fmt == "h5":
        if Path(folder).is_file():
            raise WeaksegError(f"--data {folder} is a file; give the folder that holds it")
        vset = load_acdc_h5(root=folder)
    else:
        vset = load_nifti_folder(folder)
    if vset.num_classes != num_classes:
        raise WeaksegError(
            f"{folder} declares {vset.num_classes} classes but the checkpoint predicts "
            f"{num_classes}; evaluate on data labelled like the training data"
        )
    return vset


def read_images(folder: str | Path) -> list[Volume]:
    """Every image under ``folder`` (labels not needed) for prediction."""
    folder = Path(folder).expanduser()
    if detect_format(folder) == "nifti":
        return read_nifti_image_folder(folder)
    files = [folder] if folder.is_file() else sorted(folder.glob("*.h5"))
    return [read_acdc_h5(f) for f in files]


def source_files(volume: Volume) -> list[Path]:
    """The files ``volume`` was read from (every channel of a NIfTI case)."""
    paths = volume.meta.get("channel_paths") or [volume.meta.get("path")]
    return [Path(p) for p in paths if p]


def prediction_path(volume: Volume, out_dir: str | Path) -> Path:
    """Where :func:`write_prediction` writes ``volume``'s label map."""
    if volume.meta.get("format") == "nifti":
        return nifti_prediction_path(volume, out_dir)
    return h5_prediction_path(volume, out_dir)


def output_paths(volume: Volume, out_dir: str | Path, *, probabilities: bool) -> list[Path]:
    """Every file :func:`write_prediction` writes for ``volume``."""
    paths = [prediction_path(volume, out_dir)]
    if probabilities and volume.meta.get("format") == "nifti":
        paths.append(nifti_probabilities_path(volume, out_dir))
    return paths


def _protected_folders(input_path: Path) -> list[Path]:
    """The input folder and, when it belongs to an nnU-Net data set (a ``dataset.json`` in it
    or beside it), that data set's image and label folders."""
    folder = input_path if input_path.is_dir() else input_path.parent
    protected = [folder]
    for root in (folder, folder.parent):
        if (root / "dataset.json").is_file():
            protected += [root / d for d in NNUNET_DATA_DIRS if (root / d).is_dir()]
    return protected


def check_prediction_targets(
    input_path: str | Path, out_dir: str | Path, volumes: list[Volume], *, force: bool = False,
    probabilities: bool = False,
) -> list[Path]:
    """Refuse an output that would write into the input; return the output paths.

    Always refused: ``out_dir`` equal to the input folder (or the folder of an input file),
    and an output file that is one of the input files. Refused unless ``force``: ``out_dir``
    inside or containing the input folder or an nnU-Net image/label folder of its data set,
    and output files that already exist (they would be replaced).
    """
    inp = Path(input_path).expanduser()
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise WeaksegError(f"--output {out} is an existing file; give a folder for the label maps")
    folder = inp if inp.is_dir() else inp.parent
    if out.resolve() == folder.resolve():
        raise WeaksegError(
            f"--output {out} is the input folder; predictions would be written among (and over) "
            "the images; choose another folder"
        )
    sources = {p.resolve() for v in volumes for p in source_files(v)}
    targets = [p for v in volumes for p in output_paths(v, out, probabilities=probabilities)]
    if len(set(targets)) < len(targets):
        twice = next(t for t in targets if targets.count(t) > 1)
        raise WeaksegError(
            f"two inputs would both be written to {twice.name}; give inputs with distinct "
            "case names (e.g. one folder per kind of image)"
        )
    for target in targets:
        if target.resolve() in sources:
            raise WeaksegError(f"--output {out}: {target.name} would overwrite an input image; "
                               "choose another folder")
    if force:
        return targets
    for protected in _protected_folders(inp):
        if is_within(out, protected) or is_within(protected, out):
            where = ("is" if out.resolve() == protected.resolve() else
                     "is inside" if is_within(out, protected) else "contains")
            raise WeaksegError(
                f"--output {out} {where} {protected}, which holds input images or labels; "
                "choose a folder outside the data set (or pass --force if that is intended)"
            )
    existing = [t for t in targets if t.exists()]
    if existing:
        raise WeaksegError(
            f"--output {out} already holds {len(existing)} of the {len(targets)} label maps "
            f"(e.g. {existing[0].name}); pass --force to replace them or choose an empty folder"
        )
    return targets


def write_prediction(
    volume: Volume, prediction: np.ndarray, out_dir: str | Path,
    probabilities: np.ndarray | None = None,
) -> list[Path]:
    """Write a class map (and the class probabilities ``(C, Z, H, W)`` when given) in the
    volume's own format and geometry, atomically; returns the written paths."""
    if volume.meta.get("format") == "nifti":
        paths = [write_nifti_prediction(volume, prediction, out_dir)]
        if probabilities is not None:
            paths.append(write_nifti_probabilities(volume, probabilities, out_dir))
        return paths
    return [write_h5_prediction(volume, prediction, out_dir, probabilities)]
