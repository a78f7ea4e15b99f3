"""Semi-supervision by patient (data.full_labels, D4), the curriculum size regressor (C12) and
the bounds_from_estimates prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weakseg.adapt.size_regression import (
    SizeRegressor,
    fit_size_regressor,
    label_fractions,
    predict_fractions,
    size_mae,
    train_size_regressor,
)
from weakseg.config import config_from_dict
from weakseg.data import DATASETS
from weakseg.data.base import IGNORE_INDEX, Volume
from weakseg.data.estimates import Estimates, estimated_entries, load_estimates, save_estimates
from weakseg.data.priors import bounds_from_fractions, check_prior_params, crop_priors
from weakseg.data.semi import describe_split, full_label_keys
from weakseg.data.slices import augment_batch, build_slices
from weakseg.engine.trainer import setup, train
from weakseg.errors import WeaksegError

from .conftest import tiny_config


def _semi(**data: object) -> dict:
    raw = tiny_config(train__epochs=1)
    raw["data"].update({"annotation": "none", "full_labels": "0", **data})
    return raw


# --- semi-supervised split -------------------------------------------------------------------

def test_full_labels_split_slices(tmp_path):
    """Patient 0 trains on its full masks, patients 1-2 (annotation none) have no label."""
    logged: list[str] = []
    run = setup(config_from_dict(_semi()), tmp_path / "run", log=logged.append)
    vols = {v.key: v for v in run.splits.train}
    assert sorted(vols) == ["phantom_000", "phantom_001", "phantom_002"]
    for i, key in enumerate(run.data.keys):
        target = run.data.targets[i]
        if key == "phantom_000":
            assert (target != IGNORE_INDEX).all()
            assert torch.equal(target, torch.from_numpy(vols[key].label[run.data.index[i]]).long())
        else:
            assert (target == IGNORE_INDEX).all()
    assert any("semi-supervised: 1 fully labelled patient, 2 unlabelled" in line
               for line in logged)


def test_full_labels_with_scribbles():
    vset = DATASETS.build("phantom", num_volumes=3, size=32, slices=2, seed=0)
    label0 = vset.volumes[0].label.copy()
    data = build_slices(vset.volumes, annotation="sim:scribble", num_classes=4, size=32,
                        full={"phantom_000"})
    assert np.array_equal(vset.volumes[0].label, label0)  # inputs not modified
    full = [k == "phantom_000" for k in data.keys]
    labelled = (data.targets != IGNORE_INDEX).float().mean(dim=(1, 2))
    assert torch.all(labelled[full] == 1) and torch.all(labelled[~torch.tensor(full)] < 0.5)
    assert describe_split(vset.volumes, {"phantom_000"}, "sim:scribble") == (
        "1 fully labelled patient, 2 with sim:scribble")


def test_full_label_keys_errors():
    vset = DATASETS.build("phantom", num_volumes=4, size=32, slices=2, seed=0)
    vols = list(vset.volumes)
    train = vols[:3]
    assert full_label_keys(train, vols, "0-1") == {"phantom_000", "phantom_001"}
    assert full_label_keys(train, vols, None) == set()
    with pytest.raises(WeaksegError, match="outside the training volumes \\(phantom_003"):
        full_label_keys(train, vols, "2-3")
    with pytest.raises(WeaksegError, match="selects no patient"):
        full_label_keys(train, vols, "17")
    weak = Volume(key="phantom_001", group="phantom_001", image=vols[1].image, label=None)
    with pytest.raises(WeaksegError, match="selects 2 patients but only 1 of them have full"):
        full_label_keys([vols[0], weak], [vols[0], weak], "0-1")


@pytest.mark.parametrize(("data", "match"), [
    ({"full_labels": "3"}, "names patients outside data.train='0-2' \\(3\\)"),
    ({"annotation": "full"}, "data.annotation is full"),
    ({"annotation": "sim:partial_sites"}, "cannot be combined with sim:partial_sites"),
    ({"full_labels": None}, "learns from labels, but data.annotation is none"),
])
def test_full_labels_config_errors(data, match):
    with pytest.raises(WeaksegError, match=match):
        config_from_dict(_semi(**data))


# --- bounds_from_estimates -------------------------------------------------------------------

def test_bounds_from_fractions_values():
    fractions = np.array([[0.5, 0.25, 0.25, 0.0], [0.97, 0.01, 0.01, 0.01]])
    before = fractions.copy()
    bounds = bounds_from_fractions(fractions, 32, margin=0.1)
    assert bounds.shape == (2, 4, 2) and bounds.dtype == np.float32
    np.testing.assert_allclose(bounds[0, 0], [0.9 * 512, 1.1 * 512], rtol=1e-6)
    np.testing.assert_allclose(bounds[0, 3], [0.0, 0.0])
    np.testing.assert_allclose(bounds[1, 0], [0.97 * 0.9 * 1024, 1024.0], rtol=1e-6)  # clipped
    np.testing.assert_array_equal(fractions, before)
    np.testing.assert_allclose(bounds_from_fractions(fractions, 32, margin=0.0)[..., 0],
                               fractions * 1024, rtol=1e-6)
    with pytest.raises(WeaksegError, match="margin must be in \\[0, 1\\), got 1.5"):
        bounds_from_fractions(fractions, 32, margin=1.5)


def _estimates(n: int = 3) -> Estimates:
    fr = np.tile(np.array([[0.7, 0.1, 0.1, 0.1]], np.float32), (n, 1))
    fr[:, 1] += np.arange(n, dtype=np.float32) * 0.01
    fr[:, 0] -= np.arange(n, dtype=np.float32) * 0.01
    return Estimates(keys=["a"] * n, index=list(range(n)), fractions=fr,
                     cell_fractions=fr[:, :, None, None].copy(),
                     class_names=["background", "RV", "Myo", "LV"], size=32, spacing=None,
                     mae=np.array([0.01, 0.02, 0.03, 0.04]), mae_slices=5)


def test_bounds_from_estimates_entries(tmp_path):
    est = _estimates()
    path = save_estimates(est, tmp_path / "e.npz")
    back = load_estimates(path)
    assert back.mae is not None and back.mae_slices == 5
    np.testing.assert_allclose(back.mae, est.mae)
    kw = {"class_names": est.class_names, "size": 32, "spacing": None, "where": "data"}
    default = estimated_entries(path, ["bounds_from_estimates"], ["a", "a"], [2, 0], **kw)
    bounds = default["bounds"]
    assert bounds.shape == (2, 4, 2) and bounds.dtype == torch.float32
    np.testing.assert_allclose(bounds[0, 1], [0.12 * 1024 * 0.9, 0.12 * 1024 * 1.1], rtol=1e-5)
    np.testing.assert_allclose(bounds[1, 0], [0.7 * 1024 * 0.9, 0.7 * 1024 * 1.1], rtol=1e-5)
    wide = estimated_entries(path, ["bounds_from_estimates"], ["a"], [0], **kw,
                             params={"bounds_from_estimates": {"margin": 0.5}})["bounds"]
    np.testing.assert_allclose(wide[0, 0], [0.35 * 1024, 1024.0], rtol=1e-5)  # clipped to S²


def test_bounds_rotate_flip_and_crop_rules():
    """Size bounds describe the whole slice: unchanged by rotations and flips, refused by a
    crop window."""
    bounds = torch.rand(4, 4, 2)
    images, targets = torch.rand(4, 1, 8, 8), torch.zeros(4, 8, 8, dtype=torch.long)
    _, _, out = augment_batch(images, targets, torch.Generator().manual_seed(0),
                              {"bounds": bounds})
    assert torch.equal(out["bounds"], bounds)
    with pytest.raises(WeaksegError, match="describes whole slices"):
        crop_priors({"bounds": bounds}, lambda t: t[..., :4, :4], None)


def test_prior_params_checks():
    assert check_prior_params(["bounds_from_estimates"], {}) == {
        "bounds_from_estimates": {"margin": 0.1}}
    given = {"bounds_from_estimates": {"margin": 0.2}}
    assert check_prior_params(["bounds_from_estimates"], given) == given
    for params, match in [({"bounds_from_estimates": {"margn": 0.2}}, "did you mean 'margin'"),
                          ({"bounds_from_estimates": {"margin": 2}}, "in \\[0, 1\\), got 2"),
                          ({"tags": {"margin": 0.1}}, "does not list"),
                          ({"bounds_from_estimates": 0.2}, "must be a mapping")]:
        with pytest.raises(WeaksegError, match=match):
            check_prior_params(["bounds_from_estimates"], params)
    with pytest.raises(WeaksegError, match="takes no parameters"):
        check_prior_params(["tags"], {"tags": {"margin": 0.1}})


# --- size regressor --------------------------------------------------------------------------

def _phantom_fractions(volumes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    vset = DATASETS.build("phantom", num_volumes=volumes, size=32, slices=6, seed=seed)
    data = build_slices(vset.volumes, annotation="full", num_classes=4, size=32)
    return data.images, label_fractions(data.targets, 4)


def test_size_regressor_fits_phantom_sizes():
    """150 steps on 60 slices of 32² (about 4 s on one thread): the held-out error is well
    below that of predicting the training mean, for every class."""
    torch.set_num_threads(1)
    images, fractions = _phantom_fractions(10, seed=0)
    held_images, held_fractions = _phantom_fractions(4, seed=1)
    before = images.clone(), fractions.clone()
    model = fit_size_regressor(images, fractions, steps=150, batch_size=16, lr=1e-2, width=8,
                               depth=3, seed=0)
    assert torch.equal(images, before[0]) and torch.equal(fractions, before[1])
    mae = size_mae(predict_fractions(model, held_images), held_fractions)
    baseline = size_mae(fractions.mean(0, keepdim=True).expand_as(held_fractions),
                        held_fractions)
    assert mae.shape == (4,)
    assert float(mae[0]) < 0.5 * float(baseline[0]), (mae, baseline)
    assert float(mae[1:].mean()) < 0.7 * float(baseline[1:].mean()), (mae, baseline)
    assert float(mae.max()) < 0.015, mae


def test_size_regressor_shapes_and_errors():
    net = SizeRegressor(2, 3, width=4, depth=2)
    assert net(torch.zeros(5, 2, 16, 16)).shape == (5, 3)
    assert predict_fractions(net, torch.zeros(3, 2, 16, 16)).sum(1).allclose(torch.ones(3))
    np.testing.assert_allclose(label_fractions(torch.tensor([[[0, 1], [IGNORE_INDEX, 2]]]), 3),
                               [[0.5, 0.25, 0.25]])
    with pytest.raises(WeaksegError, match="fully labelled slices; none"):
        fit_size_regressor(torch.zeros(0, 1, 16, 16), torch.zeros(0, 3))
    with pytest.raises(WeaksegError, match="\\(N, C\\) tensors"):
        size_mae(torch.zeros(3), torch.zeros(3))


def test_train_size_regressor_and_train_with_bounds(tmp_path):
    torch.set_num_threads(1)
    raw = tiny_config(train__epochs=1)
    raw["data"].update({"annotation": "sim:points", "full_labels": "0-1"})
    cfg = config_from_dict(raw)
    fit = train_size_regressor(cfg, holdout=1, steps=20, batch_size=4, width=4)
    est = fit.estimates
    assert fit.fit_groups == ["phantom_000"] and fit.heldout_groups == ["phantom_001"]
    assert fit.weak_slices == 4 and len(est) == 12 and est.grid == 1
    assert est.mae is not None and est.mae.shape == (4,) and est.mae_slices == 4
    vset = DATASETS.build("phantom", num_volumes=4, size=32, slices=4, seed=0)
    full = build_slices(vset.volumes[:2], annotation="full", num_classes=4, size=32)
    rows = {(k, i): r for r, (k, i) in enumerate(zip(est.keys, est.index, strict=True))}
    true = label_fractions(full.targets, 4).numpy()
    for j, (k, i) in enumerate(zip(full.keys, full.index, strict=True)):
        np.testing.assert_allclose(est.fractions[rows[(k, i)]], true[j], atol=1e-6)
    path = save_estimates(est, tmp_path / "sizes.npz")
    raw["data"].update({"priors": ["bounds_from_estimates"], "estimates": str(path),
                        "prior_params": {"bounds_from_estimates": {"margin": 0.2}}})
    raw["loss"].append({"name": "constraint", "params": {
        "constraint": {"family": "size"}, "objective": {"method": "log_barrier"}}})
    result = train(config_from_dict(raw), tmp_path / "run", progress=False)
    assert result.best_epoch == 1


def test_train_size_regressor_errors():
    raw = tiny_config()
    with pytest.raises(WeaksegError, match="data.full_labels is unset"):
        train_size_regressor(config_from_dict(raw), steps=1)
    raw["data"]["full_labels"] = "0"
    with pytest.raises(WeaksegError, match="--holdout 1 leaves no fully labelled patient"):
        train_size_regressor(config_from_dict(raw), steps=1)


def test_full_labels_3d_windows():
    from weakseg.data.slices import build_volumes

    vset = DATASETS.build("phantom", num_volumes=2, size=32, slices=4, seed=0)
    data = build_volumes(vset.volumes, annotation="none", num_classes=4, size=32, depth=4,
                         full={"phantom_001"})
    assert data.keys == ["phantom_000", "phantom_001"]
    assert (data.targets[0] == IGNORE_INDEX).all() and (data.targets[1] != IGNORE_INDEX).all()


def test_cli_reports_the_regressor_error(tmp_path, capsys):
    import yaml

    from weakseg.cli import main

    raw = tiny_config()
    raw["data"].update({"annotation": "sim:points", "full_labels": "0-1"})
    cfg = tmp_path / "semi.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "sizes.npz"
    argv = ["train-size-regressor", "--config", str(cfg), "--out", str(out), "--steps", "5",
            "--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    est = load_estimates(out)
    assert est.mae is not None and est.mae_slices == 4
    assert ("mean absolute error of the class fractions on 4 slices of held-out patients "
            "(phantom_001): background ") in printed
    assert f"RV {est.mae[1]:.4f}" in printed
    assert "estimated the class sizes of 4 weakly labelled slices (12 training slices" in printed
    assert main(argv) == 2  # exists
    assert main([*argv, "--force", "--holdout", "0"]) == 0
    assert "not measured" in capsys.readouterr().out
    assert load_estimates(out).mae is None
