"""Pure parts of the PyMIC comparison driver (benchmarks/peers): budget, split, config
derivation, run names, log parsing and the prediction replay. Needs neither PyMIC nor its
venv nor the converted data."""

from __future__ import annotations

import configparser
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"


def _load(name: str):
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    spec = importlib.util.spec_from_file_location(f"_peers_{name}", PEERS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cfgs = _load("pymic_configs")
driver = _load("pymic_driver")


def test_budget_is_our_reduced_protocol():
    assert cfgs.budget_iterations() == 2400 == cfgs.BUDGET_ITERATIONS
    assert cfgs.budget_iterations(15, 160, 8, peer_batch=8) * 8 == 19_200
    assert cfgs.budget_iterations(30, 160, 8) == 4800
    with pytest.raises(ValueError):
        cfgs.budget_iterations(1, 1, 3, peer_batch=8)


@pytest.mark.parametrize("key, split", [
    ("patient021_frame01", "train"), ("patient090_frame13", "train"),
    ("patient091_frame01", "valid"), ("patient100_frame13.h5", "valid"),
    ("patient020_frame01", None), ("patient001_frame12", None),
])
def test_split(key, split):
    assert cfgs.split_of(key) == split


def test_patient_id_rejects_other_names():
    with pytest.raises(ValueError):
        cfgs.patient_id("subject1_DE")


def test_parse_agent():
    assert cfgs.parse_agent("gcrf@1") == ("gcrf", 1)
    assert cfgs.parse_agent("dmsps") == ("dmsps", 0)
    with pytest.raises(ValueError, match="unknown method"):
        cfgs.parse_agent("unet@0")
    with pytest.raises(ValueError, match="seed"):
        cfgs.parse_agent("pce@x")


def test_required_methods_are_published_pymic_agents():
    names = {m: (cfgs.PUBLISHED[m]["wsl"] or {}).get("method_name") for m in cfgs.METHODS}
    assert names["pce"] is None and names["full"] is None  # the fully_sup baseline
    assert names["gcrf"] == "GatedCRF" and names["dmpls"] == "DMPLS"
    assert names["dmsps"] == "DMSPS"
    assert set(cfgs.METHODS) == set(cfgs.PUBLISHED)


def _derive(method, **kw):
    return cfgs.derive_config(method, data_dir="/d", ckpt_dir="/c", **kw)


def test_pce_changes_only_budget_size_split_seed_device():
    cfg = _derive("pce", seed=3)
    d, n, t = cfg["dataset"], cfg["network"], cfg["training"]
    assert "weakly_supervised_learning" not in cfg
    assert d["supervise_type"] == "fully_sup"
    assert d["train_csv"] == "/d/image_train.csv" and d["valid_csv"] == "/d/image_valid.csv"
    assert d["train_batch_size"] == 8 and t["iter_max"] == 2400 and t["random_seed"] == 3
    assert t["gpus"] == [0] and cfg["testing"]["sliding_window_enable"] is False
    # PyMIC 0.6.2 name of the examples' UNet2D; the rest as published
    assert n["net_type"] == "UNet" and n["dimension"] == 2
    assert n["feature_chns"] == [16, 32, 64, 128, 256]
    assert n["dropout"] == [0.0, 0.0, 0.0, 0.5, 0.5]
    assert (t["optimizer"], t["learning_rate"], t["weight_decay"]) == ("Adam", 1e-3, 1e-5)
    assert t["loss_type"] == "CrossEntropyLoss"
    assert d["train_transform"][-1] == "PartialLabelToProbability"
    assert "Pad" not in d["train_transform"] and "RandomCrop" not in d["train_transform"]
    assert t["early_stop_patience"] == 8000  # as published: never cuts 2400 iterations
    assert t["iter_save"] % t["iter_valid"] == 0


def test_full_uses_dense_masks():
    assert _derive("full")["dataset"]["train_csv"] == "/d/image_train_full.csv"


def test_schedule_scaled_with_budget():
    scaled = _derive("gcrf")
    wsl = scaled["weakly_supervised_learning"]
    assert (wsl["rampup_start"], wsl["rampup_end"]) == (240, 1800)  # 2000, 15000 x 0.12
    assert scaled["training"]["reducelronplateau_patience"] == 240
    assert wsl["gatedcrfloss_radius"] == 5 and wsl["regularize_w"] == 0.1
    published = _derive("gcrf", rampup="published")["weakly_supervised_learning"]
    assert (published["rampup_start"], published["rampup_end"]) == (2000, 15000)
    with pytest.raises(ValueError):
        _derive("gcrf", rampup="linear")


def test_dmpls_and_dmsps_use_dbnet():
    dmpls = _derive("dmpls")
    assert dmpls["network"]["net_type"] == "DBNet" and dmpls["network"]["dimension"] == 2
    dmsps = _derive("dmsps")
    assert dmsps["network"]["net_type"] == "DBNet"
    assert dmsps["training"]["optimizer"] == "SGD"
    assert dmsps["training"]["lr_scheduler"] == "PolynomialLR"
    wsl = dmsps["weakly_supervised_learning"]
    assert wsl["method_name"] == "DMSPS" and wsl["regularize_w"] == 8
    assert wsl["rampup_end"] == 8  # 100 of 30 k iterations -> 8 of 2400
    assert dmsps["dataset"]["test_transform"] is None


def test_tiny_budget_keeps_a_rampup_interval():
    # PyMIC's sigmoid ramp-up divides by (end - start): equal values give NaN loss weights
    wsl = _derive("dmsps", iterations=4)["weakly_supervised_learning"]
    assert wsl["rampup_end"] > wsl["rampup_start"]
    wsl = _derive("gcrf", iterations=1)["weakly_supervised_learning"]
    assert wsl["rampup_end"] > wsl["rampup_start"]


def test_smoke_budget_and_resume():
    cfg = _derive("pce", iterations=20)
    t = cfg["training"]
    assert (t["iter_max"], t["iter_valid"], t["iter_save"]) == (20, 20, 20)
    assert "ckpt_init_name" not in t
    t = _derive("pce", resume_from="model_200.pt")["training"]
    assert (t["ckpt_init_name"], t["ckpt_init_mode"]) == ("model_200.pt", 1)
    t = _derive("pce", iterations=2400, iter_valid=100, save_every=250)["training"]
    assert t["iter_save"] == 200


def test_render_cfg_is_read_by_configparser():
    cfg = _derive("dmsps", seed=1)
    text = cfgs.render_cfg(cfg, "header line")
    assert text.startswith("# header line\n")
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert parser.sections() == list(cfg)
    assert parser["network"]["feature_chns"] == "[16, 32, 64, 128, 256]"
    assert parser["training"]["weight_decay"] == "0.0001"
    assert parser["training"]["nesterov"] == "False"
    assert parser["dataset"]["test_transform"] == "None"
    assert parser["dataset"]["train_transform"] == (
        "[RandomFlip, PartialLabelToProbability]")
    assert cfgs.render_cfg({"a": {"x": 1e-5}}).strip() == "[a]\nx = 1e-05"


def test_run_name_marks_other_budgets():
    assert driver.run_name("pce", 0, 2400, 8) == "pce@0"
    assert driver.run_name("pce", 0, 20, 8) == "pce@0-it20"
    assert driver.run_name("gcrf", 1, 20, 4) == "gcrf@1-it20b4"


def test_parse_pymic_logs(tmp_path):
    (tmp_path / "log_train_2026-12-02 10_00_00.txt").write_text(
        "\n2026-12-02 10:00:10 it 100\nlearning rate 0.001\n"
        "training/validation time: 50.00s/5.50s\n"
        "\n2026-12-02 10:01:10 it 200\ntraining/validation time: 40.00s/4.50s\n")
    (tmp_path / "log_train_2026-12-02 11_00_00.txt").write_text(
        "\n2026-12-02 11:00:10 it 300\ntraining/validation time: 45.00s/5.00s\n")
    stats = driver.parse_pymic_logs(tmp_path)
    assert stats == {"train_s": 135.0, "valid_s": 15.0, "blocks": 3, "last_iteration": 300}


def test_replay_model_serves_chunks_in_order():
    import torch

    a = np.random.default_rng(0).dirichlet(np.ones(4), size=(3, 8, 8)).transpose(3, 0, 1, 2)
    b = np.random.default_rng(1).dirichlet(np.ones(4), size=(2, 8, 8)).transpose(3, 0, 1, 2)
    model = driver.replay_model([("a", a.astype(np.float32)), ("b", b.astype(np.float32))])
    x = torch.zeros(2, 1, 8, 8)
    got = [model(x).softmax(1), model(x[:1]).softmax(1), model(x).softmax(1)]
    assert model.finished()
    np.testing.assert_allclose(got[0].numpy(), a[:, :2].transpose(1, 0, 2, 3), atol=1e-5)
    np.testing.assert_allclose(got[2].numpy(), b.transpose(1, 0, 2, 3), atol=1e-5)
    with pytest.raises(RuntimeError, match="more slices"):
        model(x)
    bad = driver.replay_model([("a", a.astype(np.float32))])
    with pytest.raises(RuntimeError, match="does not match"):
        bad(torch.zeros(1, 1, 16, 16))
