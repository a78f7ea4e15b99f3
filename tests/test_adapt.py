"""Domain-aware training (weakseg.adapt): the data.target block, loss domains, target batches,
validation on the target, resume, and source-free adaptation with a prior from train.init."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from weakseg.adapt import class_fractions, init_prior_terms, stream_seed, with_init_prior
from weakseg.config import config_from_dict, dump_config
from weakseg.data import DATASETS
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.trainer import load_data, train
from weakseg.errors import WeaksegError
from weakseg.losses.recipe import LossTerm

from .conftest import tiny_config, write_h5_folder

#: the phantom's field of view is 250 mm: 32 px → 7.8125 mm, the target's 48 px → 5.2 mm
SPACING = [250 / 32, 250 / 32]


def _quiet(line: str) -> None:
    pass


def adapt_config(epochs: int = 2, **target: object) -> dict:
    """Phantom source (scribbles) + a second phantom as target (another seed, more noise,
    a finer grid) resampled to the source's spacing; entropy on the target."""
    raw = tiny_config(train__epochs=epochs)
    raw["data"].update(train="0-3", val=None, spacing=SPACING)
    raw["data"]["target"] = {
        "name": "phantom",
        "params": {"num_volumes": 4, "size": 48, "slices": 4, "seed": 1, "noise": 0.15},
        "annotation": "none", "train": "0-1", "val": "2-3", **target}
    raw["loss"] = [{"name": "partial_ce"},
                   {"name": "entropy", "weight": 0.1, "domain": "target"}]
    return raw


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ config


def test_target_block_and_domains_parse_and_round_trip():
    cfg = config_from_dict(adapt_config())
    assert cfg.data.target is not None and cfg.data.target.name == "phantom"
    assert cfg.data.target.annotation == "none" and cfg.data.target.val == "2-3"
    assert [t.domain for t in cfg.loss] == ["source", "target"]
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again.to_dict() == cfg.to_dict()
    assert config_from_dict(tiny_config()).data.target is None  # optional


def _with(raw: dict, *, target: dict | None = None, loss: list | None = None,
          data: dict | None = None, train: dict | None = None) -> dict:
    raw["data"]["target"].update(target or {})
    raw["data"].update(data or {})
    raw["train"].update(train or {})
    if loss is not None:
        raw["loss"] = loss
    return raw


@pytest.mark.parametrize("change, match", [
    ({"target": {"anotation": "none"}},
     "unknown config key 'data.target.anotation'.*did you mean 'annotation'"),
    ({"target": {"name": None}}, "data.target needs a 'name'"),
    ({"target": {"name": "phantm"}}, "unknown data set 'phantm'"),
    ({"target": {"params": {"sead": 1}}}, "data.target.params.*did you mean 'seed'"),
    ({"target": {"annotation_params": {"width": 3}}},
     "data.target.annotation_params apply to simulated annotations only"),
    ({"loss": [{"name": "partial_ce", "domain": "targte"}]},
     "'loss.0.domain' must be one of source, target, both.*did you mean 'target'"),
    ({"loss": [{"name": "partial_ce", "domain": "target"}]},
     r"loss.0 \('partial_ce', domain: target\) learns from labels, but data.target.annotation "
     "is none"),
    ({"loss": [{"name": "ce_dice", "domain": "both"}]},
     "learns from labels, but data.target.annotation is none"),
    ({"loss": [{"name": "partial_ce"}], "data": {"annotation": "none"}},
     "learns from labels, but data.annotation is none"),
    ({"target": {"train": None}}, "trains on the target, but data.target.train is unset"),
    ({"data": {"val": "3"}}, "data.val='3' is set, but with data.target"),
    ({"data": {"priors": ["tags"]},
      "loss": [{"name": "partial_ce"}, {"name": "tags", "domain": "target"}]},
     "needs 'tags', but data.priors are computed for the data: samples only"),
    ({"loss": [{"name": "marginal_prior", "params": {"prior": "from_init"}}]},
     "prior: from_init reads the class fractions of the train.init checkpoint, but "
     "train.init is unset"),
    ({"loss": [{"name": "marginal_prior", "params": {"prior": "from_int"}}]},
     "did you mean 'from_init'"),
    ({"loss": [{"name": "marginal_prior", "params": {"prior": {"RV": 0.7, "LV": 0.6}}}]},
     "must sum to ≤ 1"),
])
def test_bad_adaptation_configs_are_one_line_errors(change, match):
    with pytest.raises(WeaksegError, match=match) as info:
        config_from_dict(_with(adapt_config(), **change))
    assert "\n" not in str(info.value)


def test_domain_target_needs_a_target_block():
    raw = tiny_config()
    raw["loss"][0]["domain"] = "target"
    with pytest.raises(WeaksegError, match="needs a data.target block"):
        config_from_dict(raw)
    raw["loss"][0]["domain"] = "both"  # without a target, source and both are the same
    with pytest.raises(WeaksegError, match="needs a data.target block"):
        config_from_dict(raw)


def test_classes_of_source_and_target_must_agree(tmp_path: Path):
    from .test_cli_catalogue import _write_nnunet

    _write_nnunet(tmp_path / "nn3", DATASETS.build("phantom", num_volumes=4, size=32,
                                                   slices=4, seed=3), labelled=4, classes=3)
    raw = adapt_config(name="nifti", root=str(tmp_path / "nn3"), params={}, train="0-1",
                       val="2-3", annotation="none")
    with pytest.raises(WeaksegError, match=r"data \(phantom\) has classes \['background', "
                       r"'RV', 'Myo', 'LV'\].*data.target \(nifti\) has \['background', 'RV', "
                       r"'Myo'\].*share one class set"):
        load_data(config_from_dict(raw))


# ------------------------------------------------------------------------------ priors


def test_class_fractions_and_from_init_terms():
    targets = torch.tensor([[[0, 0, 1], [3, -100, -100]]])
    assert class_fractions(targets, 4) == pytest.approx([0.5, 0.25, 0.0, 0.25])
    with pytest.raises(WeaksegError, match="no labelled pixel"):
        class_fractions(torch.full((1, 2, 2), -100), 4)
    terms = [LossTerm("entropy"), LossTerm("marginal_prior", params={"prior": "from_init"})]
    assert init_prior_terms(terms) == [1]
    assert with_init_prior(terms, [0.7, 0.1, 0.1, 0.1])[1].params["prior"] == [0.7, 0.1, 0.1, 0.1]
    assert "prior" not in with_init_prior(terms, None)[1].params
    assert terms[1].params["prior"] == "from_init"  # not modified
    assert stream_seed(5, "target") != 5 and stream_seed(5, "target") == stream_seed(5, "target")


# ------------------------------------------------------------------------------ training


def test_adaptation_run_trains_on_both_and_validates_on_the_target(tmp_path: Path):
    cfg = config_from_dict(adapt_config())
    lines: list[str] = []
    train(cfg, tmp_path / "run", progress=False, log=lines.append)
    text = "\n".join(lines)
    assert "target domain phantom: 8 slices from 2 volumes (none) for entropy_target" in text
    assert "validation and model selection on the target: data.target.val = '2-3'" in text
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert {"train_partial_ce", "train_entropy_target", "val_dice_mean"} <= set(rows[0])
    scored = list(csv.DictReader(open(tmp_path / "run" / "val_metrics.csv")))
    assert [r["key"] for r in scored] == ["phantom_002", "phantom_003", "mean"]  # the target's
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["validated_on"] == "data.target.val"
    splits = load_data(cfg)
    assert [v.shape[1] for v in splits.val] == [48, 48]  # the target's own grid
    assert [v.shape[1] for v in splits.target_train] == [48, 48]
    assert load_checkpoint(tmp_path / "run" / "best.pt")["spacing"] == pytest.approx(SPACING)


def test_source_only_baseline_trains_exactly_as_without_the_target(tmp_path: Path):
    """A target block without target terms only validates: the same weights as a run
    without it (no target batch is drawn)."""
    raw = adapt_config()
    raw["loss"] = raw["loss"][:1]
    del raw["data"]["target"]["train"]
    train(config_from_dict(raw), tmp_path / "with", progress=False, log=_quiet)
    plain = adapt_config()
    plain["loss"] = plain["loss"][:1]
    del plain["data"]["target"]
    train(config_from_dict(plain), tmp_path / "without", progress=False, log=_quiet)
    assert _same(_weights(tmp_path / "with" / "last.pt"), _weights(tmp_path / "without" /
                                                                   "last.pt"))


def test_resume_with_a_target_matches_the_uninterrupted_run(tmp_path: Path):
    cfg = config_from_dict(adapt_config(epochs=3))
    train(cfg, tmp_path / "ref", progress=False, log=_quiet)
    train(cfg, tmp_path / "cut", progress=False, log=_quiet, stop_after_epoch=1)
    train(cfg, tmp_path / "cut", resume=True, progress=False, log=_quiet)
    assert _same(_weights(tmp_path / "cut" / "last.pt"), _weights(tmp_path / "ref" / "last.pt"))
    cols = ("train_total", "train_entropy_target", "val_dice_mean")
    ref = [[r[c] for c in cols] for r in csv.DictReader(open(tmp_path / "ref" / "log.csv"))]
    got = [[r[c] for c in cols] for r in csv.DictReader(open(tmp_path / "cut" / "log.csv"))]
    assert got == ref


def test_resume_run_saved_before_loss_domains_and_target_existed(tmp_path: Path):
    """A checkpoint whose config lacks loss domains and data.target still resumes."""
    from weakseg.engine.checkpoint import save_atomic

    train(config_from_dict(tiny_config(train__epochs=1)), tmp_path, progress=False, log=_quiet)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    del ckpt["config"]["data"]["target"]
    for term in ckpt["config"]["loss"]:
        del term["domain"]
    save_atomic(ckpt, tmp_path / "last.pt")
    train(config_from_dict(tiny_config(train__epochs=2)), tmp_path, resume=True,
          progress=False, log=_quiet)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def test_cli_adaptation_run_killed_and_resumed_matches(tmp_path: Path):
    """The command line: a phantom source and a phantom target, killed mid-run and resumed
    with --resume, ends with the uninterrupted run's weights (the target batches come from
    their own seeded generator)."""
    from weakseg.cli import main

    cfg_path = tmp_path / "adapt.yaml"
    cfg_path.write_text(yaml.safe_dump(adapt_config(epochs=6)))
    assert main(["train", "--config", str(cfg_path), "--out", str(tmp_path / "ref"),
                 "--quiet"]) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "weakseg.cli", "train", "--config", str(cfg_path), "--out",
         str(run), "--quiet"], env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= done < 6, f"the run was not killed mid-way (epoch {done})"
    assert main(["train", "--config", str(cfg_path), "--out", str(run), "--resume",
                 "--quiet"]) == 0
    assert _same(_weights(run / "last.pt"), _weights(tmp_path / "ref" / "last.pt"))
    assert _same(_weights(run / "best.pt"), _weights(tmp_path / "ref" / "best.pt"))


# ------------------------------------------------------------------------------ source-free


def _source_run(tmp_path: Path, annotation: str = "full") -> Path:
    """A source run on h5 files (read by the acdc_h5 reader) with full labels."""
    root = write_h5_folder(tmp_path / "source_h5", DATASETS.build(
        "phantom", num_volumes=4, size=32, slices=4, seed=3))
    raw = tiny_config(train__epochs=1)
    raw["data"] = {"name": "acdc_h5", "root": str(root), "annotation": annotation,
                   "size": 32, "train": "1-3", "val": "4"}
    if annotation == "full":
        raw["loss"] = [{"name": "ce_dice"}]
    out = tmp_path / f"source_{annotation}"
    train(config_from_dict(raw), out, progress=False, log=_quiet)
    return out / "best.pt"


def _source_free_config(init: Path) -> dict:
    raw = tiny_config(train__epochs=2, train__init=str(init))
    raw["data"].update(annotation="none", train="0-2", val="3")
    raw["data"]["params"].update(seed=1, noise=0.15)
    raw["loss"] = [{"name": "entropy"},
                   {"name": "marginal_prior", "weight": 0.5, "params": {"prior": "from_init"}}]
    return raw


def test_source_free_reads_the_prior_from_init_and_no_source_image(tmp_path: Path,
                                                                   monkeypatch):
    import h5py

    import weakseg.data.acdc as acdc

    source = _source_run(tmp_path)
    stored = load_checkpoint(source)["label_fractions"]
    assert len(stored) == 4 and sum(stored) == pytest.approx(1.0)
    assert stored[0] > 0.5 and all(v > 0 for v in stored)
    opened: list[object] = []

    def no_source(*args: object, **kwargs: object) -> None:
        opened.append(args)
        raise AssertionError(f"a source image was read: {args}")

    monkeypatch.setattr(h5py, "File", no_source)
    monkeypatch.setattr(acdc, "read_acdc_h5", no_source)
    lines: list[str] = []
    train(config_from_dict(_source_free_config(source)), tmp_path / "free", progress=False,
          log=lines.append)
    assert opened == []
    last = load_checkpoint(tmp_path / "free" / "last.pt")
    assert last["prior_from_init"] == pytest.approx(stored)
    assert last["recipe"]["losses.1.prior"].tolist() == pytest.approx(stored)
    assert last["label_fractions"] is None  # trained without labels: nothing to pass on
    assert any(line.startswith("marginal_prior prior from train.init") for line in lines)
    # resuming rebuilds the same prior
    raw = _source_free_config(source)
    raw["train"]["epochs"] = 3
    train(config_from_dict(raw), tmp_path / "free", resume=True, progress=False, log=_quiet)


def test_prior_from_a_run_without_full_labels_is_an_error(tmp_path: Path):
    source = _source_run(tmp_path, annotation="scribble")
    assert load_checkpoint(source)["label_fractions"] is None
    with pytest.raises(WeaksegError, match="stores no class fractions.*used 'scribble'"):
        train(config_from_dict(_source_free_config(source)), tmp_path / "free",
              progress=False, log=_quiet)


def test_unlabelled_data_without_init_has_nothing_to_learn(tmp_path: Path):
    raw = tiny_config(train__epochs=1)
    raw["data"]["annotation"] = "none"
    raw["loss"] = [{"name": "entropy"}]
    with pytest.raises(WeaksegError, match="nothing to learn from"):
        train(config_from_dict(raw), tmp_path / "run", progress=False, log=_quiet)
