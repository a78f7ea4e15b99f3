"""The command line end to end on tiny data: train → evaluate → predict, demo, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from weakseg.cli import main
from weakseg.data import DATASETS

from .conftest import REPO, tiny_config, write_h5_folder


@pytest.fixture(scope="module")
def h5_folder(tmp_path_factory) -> Path:
    """Phantom volumes written in the WSL4MIS h5 layout (4 = unlabelled)."""
    vset = DATASETS.build("phantom", num_volumes=4, size=32, slices=4, seed=3)
    return write_h5_folder(tmp_path_factory.mktemp("h5"), vset)


@pytest.fixture(scope="module")
def trained(h5_folder: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    raw = tiny_config(train__epochs=2)
    raw["data"] = {"name": "acdc_h5", "root": str(h5_folder), "annotation": "scribble",
                   "size": 32, "train": "1-3", "val": "4"}
    cfg = out / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(cfg), "--out", str(out / "run"), "--quiet"]) == 0
    return out / "run" / "best.pt"


def test_help_and_list(capsys):
    proc = subprocess.run([sys.executable, "-m", "weakseg.cli", "--help"], capture_output=True,
                          text=True, check=True)
    for word in ("demo", "train", "evaluate", "predict", "list"):
        assert word in proc.stdout
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("unet2d", "partial_ce", "ce_dice", "acdc_h5", "nifti", "phantom", "scribble",
                 "objectives:", "log_barrier", "proposals:", "graphcut", "priors:",
                 "bounds_from_tags", "nifti_pairs", "relative_size", "one_component"):
        assert name in out


def test_evaluate_writes_table_and_csv(trained: Path, h5_folder: Path, tmp_path: Path, capsys,
                                       monkeypatch):
    csv_path = tmp_path / "m.csv"
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    assert main(["evaluate", "--checkpoint", str(trained), "--data", str(h5_folder),
                 "--patients", "4", "--out", str(csv_path), "--quiet", "--threads", "1"]) == 0
    assert threads == [1]
    out = capsys.readouterr().out
    assert "LV" in out and "HD95" in out
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("key,dice_RV") and lines[1].startswith("patient004_frame01")
    assert lines[-1].startswith("mean")


def test_predict_h5_keeps_shape(trained: Path, h5_folder: Path, tmp_path: Path):
    assert main(["predict", "--checkpoint", str(trained), "--input", str(h5_folder),
                 "--output", str(tmp_path), "--quiet"]) == 0
    files = sorted(tmp_path.glob("*.h5"))
    assert len(files) == 4
    with h5py.File(files[0]) as f, h5py.File(h5_folder / files[0].name) as g:
        assert f["prediction"].shape == g["image"].shape
        assert f["prediction"][()].max() < 4


def test_predict_nifti_keeps_affine(trained: Path, tmp_path: Path):
    src = tmp_path / "in"
    src.mkdir()
    affine = np.diag([1.2, 1.2, 8.0, 1.0])
    affine[:3, 3] = [10, -20, 5]
    img = np.random.default_rng(0).random((40, 36, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(img, affine), src / "case_0000.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(trained), "--input", str(src), "--output",
                 str(out), "--quiet"]) == 0
    pred = nib.load(out / "case.nii.gz")
    assert pred.shape == img.shape
    assert np.allclose(pred.affine, affine)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--config", "missing.yaml"], "config file not found"),
        (["train", "--set", "train.epoch=3"], "did you mean 'epochs'"),
        (["evaluate", "--checkpoint", "nope.pt", "--data", "."], "checkpoint not found"),
        (["predict", "--checkpoint", "CKPT", "--input", "EMPTY", "--output", "x"],
         "no supported images"),
        (["evaluate", "--checkpoint", "CKPT", "--data", "H5", "--patients", "77"],
         "selects no volume"),
    ],
)
def test_errors_are_one_line(argv, match, trained, h5_folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    subs = {"CKPT": str(trained), "EMPTY": str(empty), "H5": str(h5_folder)}
    argv = [subs.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert match in err


def test_train_shipped_points_size_config_tiny(tmp_path: Path, capsys):
    """configs/phantom_points_size.yaml (points + tags + log-barrier size), shrunk, 2 epochs."""
    tiny = ["train.epochs=2", "train.threads=1", "data.params.num_volumes=4",
            "data.params.size=32", "data.params.slices=4", "data.size=32", "data.train=0-2",
            "data.val=3", "data.test=", "model.params.base_channels=4", "model.params.depth=2"]
    out = tmp_path / "run"
    argv = ["train", "--config", str(REPO / "configs" / "phantom_points_size.yaml"), "--out",
            str(out), "--quiet"]
    assert main(argv + [a for item in tiny for a in ("--set", item)]) == 0
    log = capsys.readouterr().out
    assert "prior bounds_from_tags" in log and "data-set statistic" in log
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"train_partial_ce", "train_size", "train_size_violated"} <= set(header)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["priors"] == ["tags", "bounds_from_tags"]


def test_train_constraint_without_prior_is_one_line_error(tmp_path: Path, capsys):
    raw = tiny_config(train__epochs=1)
    raw["loss"].append({"name": "tags", "weight": 1.0})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: loss 'tags' needs 'tags' in every batch; add data.priors: [tags]"


def test_not_a_checkpoint(tmp_path: Path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main(["evaluate", "--checkpoint", str(bad), "--data", str(tmp_path)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_demo_small(tmp_path: Path):
    from weakseg.demo import run_demo

    logs: list[str] = []
    results = run_demo(tmp_path, epochs=1, size=32, progress=False, log=logs.append)
    assert set(results) == {"full", "scribble_pce", "scribble_dense_crf"}
    assert (tmp_path / "overlay.png").stat().st_size > 1000
    assert (tmp_path / "curves.png").exists()
    table = (tmp_path / "results.md").read_text()
    assert "Dice LV" in table and "% of full" in table
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["test_metrics"]
    # a second call reuses the finished runs instead of retraining
    run_demo(tmp_path, epochs=1, size=32, progress=False, log=logs.append)
    assert any("reusing" in line for line in logs)


def test_set_takes_several_overrides_and_repeats():
    from weakseg.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--set", "train.epochs=2", "data.size=32", "--set", "train.lr=0.1"])
    assert args.set == ["train.epochs=2", "data.size=32", "train.lr=0.1"]


def test_predict_probabilities_and_single_file_name(trained: Path, tmp_path: Path):
    src = tmp_path / "in"
    src.mkdir()
    img = np.random.default_rng(0).random((40, 36, 3)).astype(np.float32)
    affine = np.diag([1.2, 1.2, 8.0, 1.0])
    nib.save(nib.Nifti1Image(img, affine), src / "case_0000.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(trained), "--input", str(src / "case_0000.nii.gz"),
                 "--output", str(out), "--quiet", "--probabilities", "--tta",
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["case.nii.gz",
                                                     "case_probabilities.nii.gz"]
    probs = nib.load(out / "case_probabilities.nii.gz")
    assert probs.shape == (40, 36, 3, 4) and np.allclose(probs.affine, affine)
    data = np.asarray(probs.dataobj)
    np.testing.assert_allclose(data.sum(axis=-1), 1.0, atol=1e-4)
    labels = np.asarray(nib.load(out / "case.nii.gz").dataobj)
    np.testing.assert_array_equal(labels, data.argmax(axis=-1))


def test_predict_h5_probabilities(trained: Path, h5_folder: Path, tmp_path: Path):
    assert main(["predict", "--checkpoint", str(trained), "--input", str(h5_folder),
                 "--output", str(tmp_path), "--quiet", "--probabilities"]) == 0
    with h5py.File(tmp_path / "patient001_frame01.h5") as f:
        assert f["probabilities"].shape == (4, *f["prediction"].shape)
        np.testing.assert_array_equal(f["probabilities"][()].argmax(axis=0), f["prediction"][()])


def test_largest_component_option_of_predict_and_evaluate(trained: Path, h5_folder: Path,
                                                         tmp_path: Path, capsys):
    """--largest-component: every foreground class one 3D blob in the written label maps;
    evaluate scores the cleaned maps."""
    from scipy import ndimage

    from weakseg.engine.inference import largest_component

    plain, kept = tmp_path / "plain", tmp_path / "kept"
    for out, extra in ((plain, []), (kept, ["--largest-component"])):
        assert main(["predict", "--checkpoint", str(trained), "--input", str(h5_folder),
                     "--output", str(out), "--quiet", *extra]) == 0
    for path in sorted(kept.glob("*.h5")):
        with h5py.File(path) as f, h5py.File(plain / path.name) as g:
            np.testing.assert_array_equal(f["prediction"][()],
                                          largest_component(g["prediction"][()]))
            for k in range(1, 4):
                assert ndimage.label(f["prediction"][()] == k)[1] <= 1
    assert main(["evaluate", "--checkpoint", str(trained), "--data", str(h5_folder),
                 "--patients", "4", "--out", str(tmp_path / "m.csv"), "--quiet",
                 "--largest-component"]) == 0
    assert "HD95" in capsys.readouterr().out


def test_evaluate_with_tta_on_cpu(trained: Path, h5_folder: Path, tmp_path: Path, capsys):
    assert main(["evaluate", "--checkpoint", str(trained), "--data", str(h5_folder),
                 "--patients", "4", "--out", str(tmp_path / "m.csv"), "--quiet", "--tta",
                 "--device", "cpu"]) == 0
    assert "HD95" in capsys.readouterr().out


def test_evaluate_reproduces_the_trainers_validation(trained: Path, h5_folder: Path,
                                                     tmp_path: Path):
    """``weakseg evaluate`` on the validation patients of a run gives its val_metrics.csv (the
    best model's validation scores), so post-processed rows (``--largest-component``) scored
    by evaluate compare with training's own numbers."""
    csv_path = tmp_path / "m.csv"
    assert main(["evaluate", "--checkpoint", str(trained), "--data", str(h5_folder),
                 "--patients", "4", "--out", str(csv_path), "--quiet"]) == 0
    ours = {r["key"]: r for r in csv.DictReader(open(csv_path)) if r["key"] != "mean"}
    theirs = {r["key"]: r for r in csv.DictReader(open(trained.parent / "val_metrics.csv"))
              if r["key"] != "mean"}
    assert ours.keys() == theirs.keys() and ours
    for key, row in theirs.items():
        for metric in ("dice_mean", "dice_RV", "dice_Myo", "dice_LV", "hd95_mean"):
            assert float(ours[key][metric]) == pytest.approx(float(row[metric]), abs=1e-6)
