"""Read any supported folder for ``evaluate``/``predict`` and write predictions back.

Formats are detected from the folder: a ``dataset.json`` (nnU-Net / Decathlon
raw layout) or NIfTI files → NIfTI; ``*.h5`` files → WSL4MIS h5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weakseg.data.base import Volume, VolumeSet
from weakseg.errors import WeaksegError

__all__ = ["detect_format", "read_images", "read_labelled", "write_prediction"]


def detect_format(folder: str | Path) -> str:
    """``"nifti"`` or ``"h5"``; raises a one-line error for anything else."""
    folder = Path(folder)
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
    """Volumes with full label maps for scoring."""
    from weakseg.data.acdc import load_acdc_h5
    from weakseg.data.nifti import load_nifti_folder

    fmt = detect_format(folder)
    vset = load_acdc_h5(root=folder) if fmt == "h5" else load_nifti_folder(folder)
    if vset.num_classes != num_classes:
        raise WeaksegError(
            f"{folder} declares {vset.num_classes} classes but the checkpoint predicts "
            f"{num_classes}; evaluate on data labelled like the training data"
        )
    labelled = [v for v in vset.volumes if v.label is not None]
    if not labelled:
        raise WeaksegError(f"no volume in {folder} has a full label map to score against")
    return VolumeSet(labelled, vset.class_names, vset.in_channels)


def read_images(folder: str | Path) -> list[Volume]:
    """Every image under ``folder`` (labels not needed) for prediction."""
    from weakseg.data.acdc import read_acdc_h5
    from weakseg.data.nifti import read_nifti_image_folder

    folder = Path(folder)
    if detect_format(folder) == "nifti":
        return read_nifti_image_folder(folder)
    files = [folder] if folder.is_file() else sorted(folder.glob("*.h5"))
    return [read_acdc_h5(f) for f in files]


def write_prediction(volume: Volume, prediction: np.ndarray, out_dir: Path) -> Path:
    """Write a class map in the volume's own format and geometry."""
    from weakseg.data.acdc import write_h5_prediction
    from weakseg.data.nifti import write_nifti_prediction

    if volume.meta.get("format") == "nifti":
        return write_nifti_prediction(volume, prediction, out_dir)
    return write_h5_prediction(volume, prediction, out_dir)
