"""A user's own nnU-Net raw folder: scribbles and dense masks together in labelsTr, several
cases per patient, cross-validation folds, from the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from weakseg.cli import main
from weakseg.data import DATASETS

from .conftest import tiny_config

AFFINE = np.diag([1.5, 1.5, 10.0, 1.0])


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> Path:
    """6 patients × 2 frames; patients 1-4 scribbled, patients 5-6 dense (for validation)."""
    root = tmp_path_factory.mktemp("Dataset001_Heart")
    vset = DATASETS.build("phantom", num_volumes=12, size=32, slices=4, seed=5)
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for i, vol in enumerate(vset.volumes):
        case = f"patient{i // 2 + 1:03d}_frame{1 + 11 * (i % 2):02d}"
        xyz = lambda a: np.ascontiguousarray(np.transpose(a, (2, 1, 0)))  # noqa: E731
        nib.save(nib.Nifti1Image(xyz(vol.image), AFFINE), root / "imagesTr" / f"{case}_0000.nii.gz")
        if i < 8:
            scr = vol.annotations["scribble"].copy()
            scr[scr < 0] = 4
            lab = scr.astype(np.uint8)
        else:
            lab = vol.label.astype(np.uint8)
        nib.save(nib.Nifti1Image(xyz(lab), AFFINE), root / "labelsTr" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "RV": 1, "Myo": 2, "LV": 3, "ignore": 4},
        "numTraining": 12, "file_ending": ".nii.gz"}))
    return root


def _config(tmp_path: Path, root: Path, **data) -> Path:
    raw = tiny_config(train__epochs=1)
    raw["data"] = {"name": "nifti", "root": str(root), "annotation": "weak", "size": 32,
                   "params": {"group_pattern": r"patient\d+"}, **data}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_with_sparse_and_dense_maps_in_one_folder(own_data, tmp_path, capsys):
    cfg = _config(tmp_path, own_data, train="1-4", val="5-6")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "8 volumes (weak" in out.replace("slices from ", "")
    rows = list(csv.DictReader(open(tmp_path / "run" / "val_metrics.csv")))
    assert [r["key"] for r in rows] == ["patient005_frame01", "patient005_frame12",
                                        "patient006_frame01", "patient006_frame12", "mean"]


def test_fold_from_the_command_line(own_data, tmp_path, capsys):
    """A seeded 3-fold over 6 patients: both frames of a patient stay on one side; validation
    cases of the fold with scribbles only are skipped and logged."""
    from weakseg.data.splits import fold_split

    vols = DATASETS.build("nifti", root=own_data, group_pattern=r"patient\d+").volumes
    folds = [fold_split(vols, k, num_folds=3)[1] for k in range(3)]
    k = next(k for k, val in enumerate(folds)
             if any(v.label is not None for v in val) and any(v.label is None for v in val))
    cfg = _config(tmp_path, own_data, train="patient*", num_folds=3)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet",
                 "--fold", str(k)]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["fold"] == k
    weak_val = sorted(v.key for v in folds[k] if v.label is None)
    assert f"not scored (weak labels only): {len(weak_val)} validation/test volumes" in out
    rows = list(csv.DictReader(open(tmp_path / "run" / "val_metrics.csv")))
    assert [r["key"] for r in rows[:-1]] == sorted(v.key for v in folds[k] if v.label is not None)


def test_fold_and_val_together_is_an_error(own_data, tmp_path, capsys):
    cfg = _config(tmp_path, own_data, train="1-6", val="5-6", fold=0)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "data.fold=0 chooses the validation cases; unset data.val" in capsys.readouterr().err


def test_numbers_without_group_pattern_are_refused(own_data, tmp_path, capsys):
    raw = yaml.safe_load(_config(tmp_path, own_data, train="21-24").read_text())
    raw["data"]["params"] = {}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out",
                 str(tmp_path / "run")]) == 2
    assert "hold several numbers; set the reader's group_pattern" in capsys.readouterr().err


def test_validation_with_scribbles_only_is_an_error(own_data, tmp_path, capsys):
    cfg = _config(tmp_path, own_data, train="1-3", val="4")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "none of the 2 val volumes has a dense label map" in capsys.readouterr().err


def test_spacing_aware_training_and_prediction(own_data, tmp_path, capsys):
    import torch

    cfg = _config(tmp_path, own_data, train="1-4", val="5-6", spacing="median", crop=16)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "slices resampled to 1.5 × 1.5 mm on a 32² canvas" in capsys.readouterr().out
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["spacing"] == [1.5, 1.5] and ckpt["roi"] == 16
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(out / "best.pt"), "--input",
                 str(own_data / "imagesTr"), "--output", str(pred), "--quiet"]) == 0
    written = nib.load(pred / "patient005_frame01.nii.gz")
    assert written.shape == (32, 32, 4) and np.allclose(written.affine, AFFINE)


def test_unet3d_from_the_command_line_with_the_3d_crf(tmp_path, capsys):
    """configs/phantom_unet3d_scribbles_crf.yaml, shrunk: 3D windows, 3D dense CRF, 3D
    sliding-window prediction back on the volume grid."""
    from .conftest import REPO

    out = tmp_path / "run"
    tiny = ["train.epochs=2", "train.threads=1", "data.params.num_volumes=4",
            "data.params.size=32", "data.params.slices=6", "data.size=32", "data.patch_depth=4",
            "data.train=0-1", "data.val=2", "data.test=3", "model.params.base_channels=4",
            "model.params.depth=2"]
    argv = ["train", "--config", str(REPO / "configs" / "phantom_unet3d_scribbles_crf.yaml"),
            "--out", str(out), "--quiet", "--set", *tiny]
    assert main(argv) == 0
    header = (out / "log.csv").read_text().splitlines()[0]
    assert "train_dense_crf" in header and "val_dice_mean" in header
    import torch

    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["spatial_dims"] == 3 and ckpt["patch_depth"] == 4
    assert ckpt["model"]["encoder.0.body.0.weight"].ndim == 5
    rows = list(csv.DictReader(open(out / "test_metrics.csv")))
    assert rows[0]["key"] == "phantom_003"
