from __future__ import annotations

from pathlib import Path

import pytest

from weakseg.config import apply_overrides, config_from_dict, load_config
from weakseg.errors import WeaksegError
from weakseg.registry import Registry

from .conftest import REPO, tiny_config


def test_shipped_configs_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.loss and cfg.train.epochs >= 1


def test_overrides_types_and_lists():
    raw = apply_overrides(tiny_config(), ["train.epochs=7", "loss.0.weight=0.25",
                                          "data.train=0-1", "model.params.depth=3"])
    cfg = config_from_dict(raw)
    assert cfg.train.epochs == 7
    assert cfg.loss[0].weight == 0.25
    assert cfg.data.train == "0-1"
    assert cfg.model.params["depth"] == 3


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"train": {"epoch": 3}}, "unknown config key 'train.epoch'.*did you mean 'epochs'"),
        ({"trian": {}}, "unknown config key 'config.trian'.*did you mean 'train'"),
        ({"data": {"anotation": "full"}}, "did you mean 'annotation'"),
        ({"loss": [{"name": "partial_ce", "wieght": 1}]}, "did you mean 'weight'"),
        ({"loss": [{"name": "partial_ce", "weight": "1-2"}]}, "weight must be a number"),
        ({"train": {"epochs": "ten"}}, "must be an integer"),
        ({"train": {"lr": -1.0}}, "train.lr"),
        ({"train": {"optimizer": "adamw"}}, "must be one of adam, sgd.*did you mean 'adam'"),
        ({"model": {"name": "unet"}}, "unknown model 'unet'.*did you mean"),
        ({"data": {"name": "acdc"}}, "unknown data set 'acdc'"),
        ({"data": {"size": 100}}, "multiple of 16"),
        ({"loss": []}, "non-empty list"),
        ({"loss": [{"name": "dense_crf", "params": {"sigma_xy": -1}}]}, "loss 'dense_crf'.*sigma"),
        ({"data": {"priors": ["tag"]}}, "unknown prior 'tag'.*did you mean 'tags'"),
        ({"data": {"priors": "tags"}}, "'data.priors' must be a list"),
        ({"data": {"priors": ["oracle_bounds", "bounds_from_boxes"]}}, "both give 'bounds'"),
        ({"loss": [{"name": "size"}]}, "loss 'size' needs 'bounds'.*bounds_from_tags"),
        ({"loss": [{"name": "box"}], "data": {"priors": ["tags"]}},
         "needs 'boxes'.*data.priors: \\[boxes\\]"),
        ({"loss": [{"name": "size", "params": {"method": "barrier"}}]}, "loss 'size'.*method"),
        ({"data": {"crop": 100}}, "data.crop' must be a multiple of 16"),
        ({"data": {"crop": 256, "size": 128}}, "data.crop' must be a multiple of 16"),
        ({"data": {"crop": 64, "priors": ["bounds_from_tags"]}},
         "does not keep.*fixed fraction bounds"),
        ({"train": {"steps_per_epoch": 0}}, "train.steps_per_epoch' must be ≥ 1"),
        ({"loss": [{"name": "size", "params": {"bounds": [[0.5, 0.1], [0, 1]]}}]},
         "size loss bounds.*lower > upper"),
    ],
)
def test_config_errors_are_one_line(raw, match):
    with pytest.raises(WeaksegError, match=match) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_priors_from_yaml_and_overrides():
    raw = tiny_config()
    raw["loss"] = [{"name": "partial_ce"}, {"name": "size"}, {"name": "tags"}]
    raw = apply_overrides(raw, ["data.priors=[tags, bounds_from_boxes, boxes]"])
    cfg = config_from_dict(raw)
    assert cfg.data.priors == ["tags", "bounds_from_boxes", "boxes"]
    assert config_from_dict(tiny_config()).data.priors == []


def test_bad_override_and_files(tmp_path: Path):
    with pytest.raises(WeaksegError, match="key=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(WeaksegError, match="not an index"):
        apply_overrides({"loss": [{"name": "partial_ce"}]}, ["loss.3.weight=1"])
    with pytest.raises(WeaksegError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\n  lr: [\n")
    with pytest.raises(WeaksegError, match="invalid YAML"):
        load_config(bad)


def test_registry_suggests_close_names():
    reg: Registry[int] = Registry("thing")
    reg.register("partial_ce")(1)
    assert reg.get("partial_ce") == 1
    with pytest.raises(WeaksegError, match="did you mean 'partial_ce'"):
        reg.get("partal_ce")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("partial_ce")(2)
