"""Trainer: reproducibility, logs, checkpoints, and resume after a real kill."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from weakseg.config import config_from_dict
from weakseg.data.base import IGNORE_INDEX, Volume
from weakseg.data.slices import build_slices
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.trainer import build_model, init_weights, train
from weakseg.errors import WeaksegError

from .conftest import tiny_config


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_writes_everything_and_is_seeded(tmp_path: Path):
    cfg = config_from_dict(tiny_config())
    r1 = train(cfg, tmp_path / "a", progress=False, log=lambda s: None)
    r2 = train(cfg, tmp_path / "b", progress=False, log=lambda s: None)
    for name in ("config.yaml", "log.csv", "last.pt", "best.pt", "val_metrics.csv",
                 "summary.json"):
        assert (tmp_path / "a" / name).exists(), name
    assert _same(_weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt"))
    assert r1.best_score == r2.best_score
    rows = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_total", "train_partial_ce", "val_dice_mean", "images_per_s"} <= set(rows[0])
    # best.pt is the epoch with the best validation Dice
    best = max(rows, key=lambda r: float(r["val_dice_mean"]))
    assert load_checkpoint(tmp_path / "a" / "best.pt")["epoch"] == int(best["epoch"])
    # a different seed gives different weights
    other = config_from_dict(tiny_config(train__seed=1))
    train(other, tmp_path / "c", progress=False, log=lambda s: None)
    assert not _same(_weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "c" / "last.pt"))


def test_existing_run_needs_resume_and_same_config(tmp_path: Path):
    cfg = config_from_dict(tiny_config(train__epochs=1))
    train(cfg, tmp_path, progress=False, log=lambda s: None)
    with pytest.raises(WeaksegError, match="--resume"):
        train(cfg, tmp_path, progress=False, log=lambda s: None)
    changed = config_from_dict(tiny_config(train__epochs=1, train__lr=0.5))
    with pytest.raises(WeaksegError, match="differ"):
        train(changed, tmp_path, resume=True, progress=False, log=lambda s: None)


def test_no_labelled_pixel_in_dataset_is_an_error():
    image = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    empty = np.full((2, 8, 8), IGNORE_INDEX)
    vols = [Volume(f"v{i}", f"p{i}", image, annotations={"scribble": empty}) for i in range(3)]
    with pytest.raises(WeaksegError, match="no labelled pixel in the whole data set"):
        build_slices(vols, annotation="scribble", num_classes=4, size=16)
    with pytest.raises(WeaksegError, match="no annotation 'points'.*sim:scribble"):
        build_slices(vols, annotation="points", num_classes=4, size=16)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path):
    raw = tiny_config(train__epochs=8)
    raw["data"]["params"]["num_volumes"] = 8
    raw["data"]["train"] = "0-6"
    raw["data"]["val"] = "7"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = config_from_dict(raw)
    train(cfg, tmp_path / "ref", progress=False, log=lambda s: None)

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "weakseg.cli", "train", "--config", str(cfg_path), "--out",
         str(run), "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= done < 8, f"the run was not killed mid-way (epoch {done})"

    train(cfg, run, resume=True, progress=False, log=lambda s: None)
    assert _same(_weights(run / "last.pt"), _weights(tmp_path / "ref" / "last.pt"))
    assert _same(_weights(run / "best.pt"), _weights(tmp_path / "ref" / "best.pt"))
    rows = list(csv.DictReader(open(run / "log.csv")))
    ref_rows = list(csv.DictReader(open(tmp_path / "ref" / "log.csv")))
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, 9)]
    assert [r["train_total"] for r in rows] == [r["train_total"] for r in ref_rows]


def _constrained_config(epochs: int, priors: list[str] | None = None,
                        per_image: bool = False) -> dict:
    """Points on the phantom with log-barrier tags and a Lagrangian size constraint."""
    raw = tiny_config(train__epochs=epochs)
    raw["data"].update(annotation="sim:points", priors=priors or ["tags", "bounds_from_tags"])
    raw["loss"] = [
        {"name": "partial_ce", "weight": 1.0},
        {"name": "size", "weight": 1.0,
         "params": {"method": "lagrangian", "num_classes": 4, "dual_lr": 0.5,
                    "per_image": per_image}},
        {"name": "tags", "weight": 0.5,
         "params": {"method": "log_barrier", "t0": 2.0, "t_mult": 1.5}},
    ]
    return raw


def _same_recipe_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
               for k in a)


@pytest.mark.parametrize("per_image", [False, True])
def test_resume_keeps_log_barrier_t_and_lagrange_multipliers(tmp_path: Path, per_image: bool):
    """Stopped after epoch 2 and resumed = uninterrupted: weights and constraint state
    (class-shared or per-image multipliers)."""
    cfg = config_from_dict(_constrained_config(epochs=4, per_image=per_image))
    train(cfg, tmp_path / "ref", progress=False, log=lambda s: None)
    train(cfg, tmp_path / "cut", progress=False, log=lambda s: None, stop_after_epoch=2)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    train(cfg, tmp_path / "cut", resume=True, progress=False, log=lambda s: None)

    ref, cut = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(
        tmp_path / "cut" / "last.pt")
    assert _same(cut["model"], ref["model"])
    assert _same_recipe_state(cut["recipe"], ref["recipe"])
    # the state is not trivial: t grew once per epoch, the multipliers moved
    schedule = ref["recipe"]["losses.2.objective._extra_state"]["schedule"]
    assert schedule["epoch"] == 4 and schedule["t"] == pytest.approx(2.0 * 1.5**4)
    lam = ref["recipe"]["losses.1.objective.terms.size.multipliers.lam"]
    if per_image:  # one (4, 2) set per training slice seen, several of them moved
        assert lam.ndim == 3 and lam.shape[1:] == (4, 2) and lam.shape[0] > 1
        assert int((lam > 0).any(-1).any(-1).sum()) > 1
    else:
        assert lam.shape == (4, 2) and (lam > 0).any()
    rows = list(csv.DictReader(open(tmp_path / "cut" / "log.csv")))
    ref_rows = list(csv.DictReader(open(tmp_path / "ref" / "log.csv")))
    assert {"train_size", "train_size_violated", "train_tags", "train_tags_violated"} <= set(
        rows[0])
    assert all(0 <= float(r["train_size_violated"]) <= 1 for r in rows)
    # the same fractions on the validation slices, logged after every validation
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in ("val_size_violated",
                                                              "val_tags_violated"))
    assert [r["val_size_violated"] for r in rows] == [r["val_size_violated"] for r in ref_rows]
    assert [r["train_total"] for r in rows] == [r["train_total"] for r in ref_rows]


def test_trainer_logs_priors_and_says_oracle(tmp_path: Path):
    logs: list[str] = []
    cfg = config_from_dict(_constrained_config(epochs=1, priors=["tags", "oracle_bounds"]))
    train(cfg, tmp_path, progress=False, log=logs.append, stop_after_epoch=1)
    oracle = [line for line in logs if "oracle_bounds" in line]
    assert oracle and "reads the ground truth; for ablations only" in oracle[0]
    assert oracle[0].startswith("ORACLE")
    logs.clear()
    cfg = config_from_dict(_constrained_config(epochs=1))
    train(cfg, tmp_path / "b", progress=False, log=logs.append, stop_after_epoch=1)
    assert any("bounds_from_tags" in line and "data-set statistic" in line for line in logs)
    assert not any("ORACLE" in line for line in logs)


def test_resume_run_saved_before_data_priors_existed(tmp_path: Path):
    """A checkpoint whose config lacks a key added later (data.priors) still resumes."""
    from weakseg.engine.checkpoint import save_atomic

    train(config_from_dict(tiny_config(train__epochs=1)), tmp_path, progress=False,
          log=lambda s: None)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    del ckpt["config"]["data"]["priors"]
    save_atomic(ckpt, tmp_path / "last.pt")
    train(config_from_dict(tiny_config(train__epochs=2)), tmp_path, resume=True,
          progress=False, log=lambda s: None, stop_after_epoch=2)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def test_crops_and_fixed_steps_per_epoch(tmp_path: Path):
    """Random crops with a fixed number of steps (small sets of large images), fixed-size
    bounds read nothing from the batch; the run is seeded like any other."""
    raw = tiny_config(data__crop=16, data__annotation="sim:points", train__epochs=2,
                      train__steps_per_epoch=5)
    raw["loss"] = [{"name": "partial_ce"},
                   {"name": "size", "params": {"bounds": [[0.3, 1.0], [0, 0.4], [0, 0.4],
                                                          [0, 0.4]], "fraction": True}}]
    cfg = config_from_dict(raw)
    r1 = train(cfg, tmp_path / "a", progress=False, log=lambda s: None)
    r2 = train(cfg, tmp_path / "b", progress=False, log=lambda s: None)
    rows = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    assert [float(r["images_per_s"]) > 0 for r in rows] == [True, True]
    assert "train_size_violated" in rows[0]
    assert _same(_weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt"))
    assert r1.best_score == r2.best_score
    assert load_checkpoint(tmp_path / "a" / "last.pt")["scheduler"]["last_epoch"] == 10


def test_random_crop_cuts_spatial_extras_alike():
    from weakseg.data.slices import random_crop

    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float).reshape(2, 1, 8, 8)
    y = x[:, 0].long()
    mask = x.expand(2, 3, 8, 8) > 60
    other = torch.ones(2, 3, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    # tags and boxes are recomputed for the window (tests/test_data_priors.py); a spatial
    # entry is cut like the image, any other passes unchanged
    cx, cy, extras = random_crop(x, y, gen, 4, {"mask": mask, "other": other},
                                 spatial={"mask"})
    assert cx.shape == (2, 1, 4, 4) and cy.shape == (2, 4, 4)
    assert torch.equal(cx[:, 0].long(), cy) and torch.equal(extras["mask"][:, 0], cx[:, 0] > 60)
    assert extras["other"] is other
    with pytest.raises(WeaksegError, match="does not fit"):
        random_crop(x, y, gen, 9)


def test_init_starts_from_the_checkpoint_weights_only(tmp_path: Path):
    """``train.init``: the network starts from a checkpoint's weights (not its optimiser or
    epoch); other classes are refused; a resumed run takes last.pt, not the init file."""
    base = config_from_dict(tiny_config(train__epochs=2))
    train(base, tmp_path / "base", progress=False, log=lambda s: None)
    best = tmp_path / "base" / "best.pt"
    before = best.read_bytes()
    init = config_from_dict(tiny_config(train__epochs=1, train__init=str(best), train__lr=1e-12))
    train(init, tmp_path / "tuned", progress=False, log=lambda s: None)
    start = load_checkpoint(best)["model"]
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pt")
    assert tuned["epoch"] == 1 and best.read_bytes() == before
    for key, value in start.items():  # lr ~ 0: the weights are still the checkpoint's
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(tuned["model"][key], value, atol=1e-6), key
    scratch = config_from_dict(tiny_config(train__epochs=1, train__lr=1e-12))
    train(scratch, tmp_path / "scratch", progress=False, log=lambda s: None)
    other = load_checkpoint(tmp_path / "scratch" / "last.pt")["model"]
    assert not all(torch.allclose(other[k], v) for k, v in start.items()
                   if v.is_floating_point())
    model = build_model(init, 1, 4)
    with pytest.raises(WeaksegError, match=r"train.init .*this data \['a', 'b'\]"):
        init_weights(model, best, ["a", "b"], 1)
    best.rename(tmp_path / "moved.pt")  # resuming must not read the init file
    longer = config_from_dict(tiny_config(train__epochs=2, train__init=str(best), train__lr=1e-12))
    train(longer, tmp_path / "tuned", resume=True, progress=False, log=lambda s: None)
    assert load_checkpoint(tmp_path / "tuned" / "last.pt")["epoch"] == 2
