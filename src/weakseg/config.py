"""Run configuration: dataclasses loaded from YAML (``safe_load``) plus overrides.

A config has four sections, each checked for unknown keys (with a "did you
mean" suggestion)::

    model: {name: unet2d, params: {base_channels: 16}}
    data:  {name: acdc_h5, root: ../shared/data/acdc, annotation: scribble, size: 128,
            train: "21-90", val: "91-100", priors: []}
    loss:
      - {name: partial_ce, weight: 1.0}
    train: {epochs: 20, batch_size: 8, lr: 0.001, seed: 0}

Overrides use dotted keys: ``--set train.epochs=5 loss.0.weight=0.5``; values
are parsed as YAML scalars. The resolved config is saved with every run.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from weakseg.errors import WeaksegError
from weakseg.losses.recipe import LossRecipe, LossTerm
from weakseg.registry import did_you_mean

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]


@dataclass
class ModelConfig:
    """Network: a registered model name and its parameters."""

    name: str = "unet2d"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Data set and the annotation used for training.

    ``annotation``: ``full`` (full masks), the name of an annotation stored with
    the data (``scribble`` for ACDC, ``weak`` for NIfTI label maps with an
    unlabelled value), or ``sim:<annotator>`` to simulate one from full masks
    with ``annotation_seed`` (e.g. ``sim:scribble``).
    ``train``/``val``/``test`` select groups (patients) by number, e.g. ``"21-90"``.
    ``priors``: per-slice priors for constraint losses, computed from the full masks of
    the training slices (:mod:`weakseg.data.priors`): ``tags``, ``boxes``,
    ``bounds_from_tags``, ``bounds_from_boxes``, ``oracle_bounds`` (ablations only).
    ``crop``: train on random ``crop × crop`` windows of the resized slices (large images
    such as histology tiles); validation and prediction still use whole images.
    """

    name: str = "phantom"
    root: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    annotation: str = "scribble"
    annotation_params: dict[str, Any] = field(default_factory=dict)
    annotation_seed: int = 0
    size: int = 128
    crop: int | None = None
    train: str | None = None
    val: str | None = None
    test: str | None = None
    priors: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Optimisation budget and schedule."""

    epochs: int = 20
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "poly"
    seed: int = 0
    augment: bool = True
    val_every: int = 1
    threads: int | None = None
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    steps_per_epoch: int | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm("partial_ce")])
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
_CHOICES = {
    ("train", "optimizer"): ("adam", "sgd"),
    ("train", "schedule"): ("poly", "cosine", "constant"),
}


def _check_keys(section: str, given: dict[str, Any], allowed: list[str]) -> None:
    for key in given:
        if key not in allowed:
            raise WeaksegError(
                f"unknown config key '{section}.{key}'{did_you_mean(key, allowed)}; "
                f"allowed in '{section}': {', '.join(allowed)}"
            )


def _coerce(section: str, name: str, value: Any, default: Any, annotation: str) -> Any:
    """Light type check of scalar fields (YAML gives str/int/float/bool/None)."""
    where = f"{section}.{name}"
    if value is None:
        if "None" in annotation:
            return None
        raise WeaksegError(f"config '{where}' must not be empty")
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise WeaksegError(f"config '{where}' must be an integer, got {value!r}")
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WeaksegError(f"config '{where}' must be a number, got {value!r}")
        return float(value)
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise WeaksegError(f"config '{where}' must be true or false, got {value!r}")
        return value
    if annotation.startswith("str"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise WeaksegError(f"config '{where}' must be a string, got {value!r}")
        allowed = _CHOICES.get((section, name))
        if allowed and value not in allowed:
            raise WeaksegError(
                f"config '{where}' must be one of {', '.join(allowed)}, got '{value}'"
                f"{did_you_mean(value, allowed)}"
            )
        return value
    if annotation.startswith("dict"):
        if not isinstance(value, dict):
            raise WeaksegError(f"config '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if annotation.startswith("list[str]"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise WeaksegError(
                f"config '{where}' must be a list of names, e.g. [a, b], got {value!r}"
            )
        return list(value)
    return value


def _section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WeaksegError(f"config section '{name}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(name, raw, list(fields))
    kwargs = {}
    for key, value in raw.items():
        f = fields[key]
        kwargs[key] = _coerce(name, key, value, f.default, str(f.type))
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a plain dict."""
    if not isinstance(raw, dict):
        raise WeaksegError("the config must be a YAML mapping with model/data/loss/train sections")
    _check_keys("config", raw, ["model", "data", "loss", "train"])
    sections = {k: _section(k, cls, raw.get(k)) for k, cls in _SECTIONS.items()}
    loss_raw = raw.get("loss", [{"name": "partial_ce"}])
    if not isinstance(loss_raw, list) or not loss_raw:
        raise WeaksegError("config 'loss' must be a non-empty list of {name, weight, params}")
    terms = []
    for i, term in enumerate(loss_raw):
        if not isinstance(term, dict) or "name" not in term:
            raise WeaksegError(f"config 'loss.{i}' must be a mapping with a 'name', got {term!r}")
        _check_keys(f"loss.{i}", term, ["name", "weight", "params"])
        params = term.get("params") or {}
        if not isinstance(params, dict):
            raise WeaksegError(f"config 'loss.{i}.params' must be a mapping, got {params!r}")
        terms.append(LossTerm(str(term["name"]), term.get("weight", 1.0), dict(params)))
    cfg = Config(loss=terms, **sections)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Value checks that span fields or need the registries."""
    from weakseg.data import DATASETS
    from weakseg.losses import LOSSES
    from weakseg.models import MODELS

    MODELS.get(cfg.model.name)
    DATASETS.get(cfg.data.name)
    for term in cfg.loss:
        LOSSES.get(term.name)
    recipe = LossRecipe(cfg.loss)  # builds every term: bad loss parameters fail here
    _check_loss_inputs(cfg, recipe)
    t = cfg.train
    for name in ("epochs", "batch_size", "val_every"):
        if getattr(t, name) < 1:
            raise WeaksegError(f"config 'train.{name}' must be ≥ 1, got {getattr(t, name)}")
    if t.lr <= 0:
        raise WeaksegError(f"config 'train.lr' must be > 0, got {t.lr}")
    if cfg.data.size < 16 or cfg.data.size % 16:
        raise WeaksegError(
            f"config 'data.size' must be a multiple of 16 (U-Net down-sampling), "
            f"got {cfg.data.size}"
        )
    crop = cfg.data.crop
    if crop is not None and (crop < 16 or crop % 16 or crop > cfg.data.size):
        raise WeaksegError(
            f"config 'data.crop' must be a multiple of 16 between 16 and data.size "
            f"({cfg.data.size}), got {crop}"
        )
    from weakseg.data.priors import priors_providing

    bounds = [p for p in cfg.data.priors if p in priors_providing("bounds")]
    if crop is not None and bounds:
        raise WeaksegError(
            f"data.priors '{bounds[0]}' gives sizes of whole slices, which a data.crop window "
            "does not keep; drop data.crop, or give the size loss fixed fraction bounds "
            "(params: {bounds: [[lo, hi], ...], fraction: true})"
        )
    for name in ("steps_per_epoch", "max_steps_per_epoch"):
        value = getattr(t, name)
        if value is not None and value < 1:
            raise WeaksegError(f"config 'train.{name}' must be ≥ 1 (or unset), got {value}")


def _check_loss_inputs(cfg: Config, recipe: LossRecipe) -> None:
    """Every batch entry a loss reads must come from the data (image, target, the sample
    index or a prior)."""
    from weakseg.data.priors import PRIOR_KEYS, check_priors, priors_providing

    check_priors(cfg.data.priors)
    provided = {"image", "target", "index"} | {PRIOR_KEYS[p] for p in cfg.data.priors}
    for term, loss in zip(cfg.loss, recipe.losses, strict=True):
        for key in getattr(loss, "inputs", ("target",)):
            if key in provided:
                continue
            sources = priors_providing(key)
            if not sources:
                fix = "no data.priors entry provides it"
            else:
                fix = f"add data.priors: [{sources[0]}]"
                if len(sources) > 1:
                    fix += f" (or {' / '.join(sources[1:])})"
            raise WeaksegError(f"loss '{term.name}' needs '{key}' in every batch; {fix}")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeaksegError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            at = f" at line {line + 1}" if line is not None else ""
            raise WeaksegError(f"{path}: invalid YAML{at}; check indentation and quotes") from exc
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (list items by index: ``loss.0.weight=2``)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise WeaksegError(f"bad override '{item}'; use key=value, e.g. train.epochs=5")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        node: Any = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise WeaksegError(
                        f"bad override '{item}': '{part}' is not an index of a "
                        f"{len(node)}-item list"
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if part not in node or node[part] is None:
                        node[part] = [] if part == "loss" else {}
                    node = node[part]
            else:
                raise WeaksegError(f"bad override '{item}': '{part}' is not inside a section")
    return raw


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
