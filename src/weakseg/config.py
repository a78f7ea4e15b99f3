"""Run configuration: dataclasses loaded from YAML (``safe_load``) plus overrides.

A config has four sections, each checked for unknown keys (with a "did you
mean" suggestion)::

    model: {name: unet2d, params: {base_channels: 16}}
    data:  {name: acdc_h5, root: ../shared/data/acdc, annotation: scribble, size: 128,
            train: "21-90", val: "91-100", priors: []}
    loss:
      - {name: partial_ce, weight: 1.0}
    train: {epochs: 20, batch_size: 8, lr: 0.001, seed: 0}

A second data set to adapt to goes in ``data.target`` and each loss term says which
domain it trains on (``domain: source | target | both``, default ``source``)::

    data:  {name: acdc_h5, root: ../shared/data/acdc, annotation: full, train: "21-100",
            spacing: [2.0, 2.0],
            target: {name: nifti_pairs, params: {...}, annotation: none,
                     train: split:train, val: split:val}}
    loss:
      - {name: ce_dice}                                  # source (the default)
      - {name: entropy, weight: 0.01, domain: target}

Overrides use dotted keys: ``--set train.epochs=5 loss.0.weight=0.5``; values
are parsed as YAML scalars. The resolved config is saved with every run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from weakseg.adapt import DOMAINS, INIT_PRIOR, init_prior_terms, with_init_prior
from weakseg.annotate import ANNOTATORS
from weakseg.annotate.base import CONTEXT, VOLUME_ENTRIES, check_annotator_params, context_kwargs
from weakseg.data import DATASETS
from weakseg.data.priors import (
    ESTIMATED_PRIORS,
    PRIOR_KEYS,
    SAMPLE_KEYS,
    check_prior_params,
    check_priors,
    priors_providing,
)
from weakseg.data.splits import parse_groups
from weakseg.errors import WeaksegError
from weakseg.losses import LOSSES
from weakseg.losses.recipe import LossRecipe, LossTerm
from weakseg.models import MODELS
from weakseg.registry import check_kwargs, did_you_mean

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TargetConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]


def _field(default: Any, **rules: Any) -> Any:
    """A dataclass field with validation rules read by :func:`_check_rules`:
    ``ge``/``gt``/``le``/``lt`` (bounds), ``multiple_of``, ``choices``; and how
    :func:`_section` reads it: ``selection`` (a list becomes ``"a,b"``), ``spacing``,
    ``section`` (a nested section of that dataclass, or null)."""
    return field(default=default, metadata=rules)


@dataclass
class ModelConfig:
    """Network: a registered model name and its parameters."""

    name: str = "unet2d"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TargetConfig:
    """``data.target``: a second data set, the domain to adapt to (e.g. another scanner).

    The same keys as the data-set part of :class:`DataConfig` (``name``, ``root``,
    ``params``, ``annotation`` — ``none`` by default: unlabelled target images —,
    ``annotation_params``, ``annotation_seed``, ``train``, ``val``, ``test``); the geometry
    and intensities follow ``data`` (``size``, ``spacing``, ``crop``, ``patch_depth``,
    ``normalization``), and its classes must be the source's. ``train`` selects the images
    the ``domain: target | both`` loss terms train on (unset when no term does, e.g. a
    source-only baseline validated on the target); ``val`` chooses the model (the domain
    the run adapts to) and ``test`` is reported at the end, both instead of ``data.val`` /
    ``data.test``. ``priors``: the estimated priors of the target's training slices
    (``estimated_fractions``, ``estimated_cell_fractions``: curriculum DA), read from the
    file ``estimates`` that ``weakseg estimate-priors`` writes; priors computed from full
    label maps are for ``data:`` only.
    """

    name: str | None = None
    root: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    annotation: str = "none"
    annotation_params: dict[str, Any] = field(default_factory=dict)
    annotation_seed: int = _field(0, ge=0)
    train: str | None = _field(None, selection=True)
    val: str | None = _field(None, selection=True)
    test: str | None = _field(None, selection=True)
    priors: list[str] = field(default_factory=list)
    prior_params: dict[str, Any] = field(default_factory=dict)
    estimates: str | None = None


@dataclass
class DataConfig:
    """Data set and the annotation used for training.

    ``annotation``: ``full`` (full masks), the name of an annotation stored with
    the data (``scribble`` for ACDC, ``weak`` for NIfTI label maps with an
    unlabelled value), or ``sim:<annotator>`` to simulate one from full masks
    with ``annotation_seed`` (e.g. ``sim:scribble``).
    ``train``/``val``/``test`` select groups (patients) by number (``"21-90"``), by names or
    glob patterns (``"patient02*"``, or a YAML list), or by the data set's own split
    (``"split:val"``); see :mod:`weakseg.data.splits`. Validation and test use the volumes
    with dense label maps (weak-only ones are skipped and logged).
    ``fold``: cross-validation fold ``k`` of the ``train`` selection (nnU-Net's
    ``splits_final.json`` when the data set has one, else a seeded ``num_folds``-fold by
    group); ``val`` must then be unset.
    ``priors``: per-slice priors for constraint losses, computed from the full masks of
    the training slices (:mod:`weakseg.data.priors`): ``tags``, ``boxes``,
    ``bounds_from_tags``, ``bounds_from_boxes``, ``oracle_bounds`` (ablations only); or
    read from the file ``estimates`` (``estimated_fractions``, ``estimated_cell_fractions``:
    class fractions estimated by ``weakseg estimate-priors``, no label map needed).
    ``prior_params``: parameters of the listed priors that take some, e.g.
    ``{bounds_from_estimates: {margin: 0.1}}``.
    ``full_labels``: semi-supervision (METHODS.md D4): a selection of training groups
    (patients, same syntax as ``train``) that train on their full masks while the rest use
    ``annotation`` (``none``: unlabelled; tags, scribbles, points...); it must name
    training patients that have full masks.
    ``crop``: train on random ``crop × crop`` windows of the resized slices (large images
    such as histology tiles); validation and prediction still use whole images.
    ``spacing``: unset → every slice is resized to ``size × size``; ``median`` (the training
    volumes' median in-plane spacing, as nnU-Net) or ``[y, x]`` mm → slices are resampled to
    that spacing keeping their aspect ratio and centred on a ``size × size`` canvas;
    prediction then slides ``crop`` (or ``size``) windows over the resampled slice.
    ``normalization``: ``auto`` (``ct`` for a CT data set, else ``minmax``), ``minmax``,
    ``zscore`` or ``ct`` (:mod:`weakseg.data.intensity`).
    ``patch_depth``: 3D models (``unet3d``) train on windows of this many slices (padded
    when a volume has fewer) and predict by 3D sliding windows of that depth.
    ``target``: a second data set to adapt to (:class:`TargetConfig`); validation and model
    selection then use its ``val`` selection, and ``data.val`` / ``data.test`` / ``data.fold``
    must be unset. ``spacing: median`` is the median of the source training volumes.
    """

    name: str = "phantom"
    root: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    annotation: str = "scribble"
    annotation_params: dict[str, Any] = field(default_factory=dict)
    annotation_seed: int = _field(0, ge=0)
    size: int = _field(128, ge=16, multiple_of=16)
    spacing: str | list[float] | None = _field(None, spacing=True)
    patch_depth: int = _field(16, ge=1)
    normalization: str = _field("auto", choices=("auto", "minmax", "zscore", "ct"))
    crop: int | None = None
    train: str | None = _field(None, selection=True)
    val: str | None = _field(None, selection=True)
    test: str | None = _field(None, selection=True)
    fold: int | None = _field(None, ge=0)
    num_folds: int = _field(5, ge=2)
    full_labels: str | None = _field(None, selection=True)
    priors: list[str] = field(default_factory=list)
    prior_params: dict[str, Any] = field(default_factory=dict)
    estimates: str | None = None
    target: TargetConfig | None = _field(None, section=TargetConfig)


@dataclass
class TrainConfig:
    """Optimisation budget and schedule."""

    epochs: int = _field(20, ge=1)
    batch_size: int = _field(8, ge=1)
    optimizer: str = _field("adam", choices=("adam", "sgd"))
    lr: float = _field(1e-3, gt=0)
    weight_decay: float = _field(1e-4, ge=0)
    momentum: float = _field(0.9, ge=0, lt=1)
    schedule: str = _field("poly", choices=("poly", "cosine", "constant"))
    seed: int = _field(0, ge=0)
    augment: bool = True
    val_every: int = _field(1, ge=1)
    threads: int | None = _field(None, ge=1)
    device: str = "auto"  # checked when training starts (a checkpoint may move machines)
    amp: bool = True  # mixed precision (float16 autocast + gradient scaling) on CUDA only
    max_steps_per_epoch: int | None = _field(None, ge=1)
    steps_per_epoch: int | None = _field(None, ge=1)
    #: a checkpoint (best.pt / last.pt of 'weakseg train') whose network weights start this
    #: run, e.g. self-training on top of a trained model; same classes, channels and network
    init: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm("partial_ce")])
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def _check_keys(section: str, given: dict[str, Any], allowed: list[str]) -> None:
    for key in given:
        if key not in allowed:
            raise WeaksegError(
                f"unknown config key '{section}.{key}'{did_you_mean(key, allowed)}; "
                f"allowed in '{section}': {', '.join(allowed)}"
            )


def _check_rules(where: str, value: Any, rules: dict[str, Any]) -> None:
    """Apply a field's validation rules (see :func:`_field`); ``None`` passes."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise WeaksegError(f"config '{where}' must be a finite number, got {value}")
    choices = rules.get("choices")
    if choices and value not in choices:
        raise WeaksegError(
            f"config '{where}' must be one of {', '.join(choices)}, got '{value}'"
            f"{did_you_mean(str(value), choices)}"
        )
    for rule, ok, text in (("ge", value.__ge__, "≥"), ("gt", value.__gt__, ">"),
                           ("le", value.__le__, "≤"), ("lt", value.__lt__, "<")):
        if rule in rules and ok(rules[rule]) is not True:
            raise WeaksegError(f"config '{where}' must be {text} {rules[rule]}, got {value}")
    step = rules.get("multiple_of")
    if step and value % step:
        raise WeaksegError(f"config '{where}' must be a multiple of {step}, got {value}")


def _spacing(where: str, value: Any) -> str | list[float] | None:
    """``data.spacing``: unset, ``median``, or ``[y, x]`` in mm (positive, finite)."""
    if value is None or value == "median":
        return value
    ok = (isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in value))
    if not ok:
        raise WeaksegError(f"config '{where}' must be median or [y, x] in mm (e.g. [1.5, 1.5]), "
                           f"got {value!r}")
    return [float(v) for v in value]


def _coerce(section: str, name: str, value: Any, default: Any, annotation: str) -> Any:
    """Type check of scalar fields (YAML gives str/int/float/bool/None)."""
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
        if f.metadata.get("selection") and isinstance(value, list):  # [case_a, "case_b*"]
            value = ",".join(str(v) for v in value)
        if f.metadata.get("spacing"):
            kwargs[key] = _spacing(f"{name}.{key}", value)
            continue
        if f.metadata.get("section"):
            kwargs[key] = None if value is None else _section(f"{name}.{key}",
                                                              f.metadata["section"], value)
            continue
        kwargs[key] = _coerce(name, key, value, f.default, str(f.type))
        _check_rules(f"{name}.{key}", kwargs[key], dict(f.metadata))
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
        _check_keys(f"loss.{i}", term, ["name", "weight", "params", "domain"])
        params = term.get("params") or {}
        if not isinstance(params, dict):
            raise WeaksegError(f"config 'loss.{i}.params' must be a mapping, got {params!r}")
        domain = _coerce(f"loss.{i}", "domain", term.get("domain", "source"), "source", "str")
        _check_rules(f"loss.{i}.domain", domain, {"choices": DOMAINS})
        terms.append(LossTerm(str(term["name"]), term.get("weight", 1.0), dict(params),
                              domain=domain))
    cfg = Config(loss=terms, **sections)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Value checks that span fields or need the registries."""
    MODELS.get(cfg.model.name)
    DATASETS.get(cfg.data.name)
    for term in cfg.loss:
        LOSSES.get(term.name)
    init_terms = init_prior_terms(cfg.loss)
    if init_terms and not cfg.train.init:
        raise WeaksegError(
            f"loss.{init_terms[0]}.params.prior: {INIT_PRIOR} reads the class fractions of the "
            "train.init checkpoint, but train.init is unset; set it or give the prior as numbers")
    # builds every term: bad loss parameters fail here (from_init: checked in setup)
    recipe = LossRecipe(with_init_prior(cfg.loss, None))
    _check_target(cfg)
    _check_full_labels(cfg.data)
    _check_estimates(cfg)
    _check_domains(cfg, recipe)
    _check_loss_inputs(cfg, recipe)
    _check_params(cfg)
    if cfg.data.fold is not None and cfg.data.val:
        raise WeaksegError(
            f"data.fold={cfg.data.fold} chooses the validation cases; unset data.val "
            f"('{cfg.data.val}') or data.fold"
        )
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
    bounds = [p for p in cfg.data.priors if p in priors_providing("bounds")]
    if crop is not None and bounds:
        raise WeaksegError(
            f"data.priors '{bounds[0]}' gives sizes of whole slices, which a data.crop window "
            "does not keep; drop data.crop, or give the size loss fixed fraction bounds "
            "(params: {bounds: [[lo, hi], ...], fraction: true})"
        )
    for where, priors in _prior_lists(cfg):
        estimated = [p for p in priors if p in ESTIMATED_PRIORS]
        if crop is not None and estimated:
            raise WeaksegError(
                f"{where}.priors '{estimated[0]}' gives class fractions of whole slices, which "
                "a data.crop window does not keep; drop data.crop (train on whole canvases)")


def _prior_lists(cfg: Config) -> list[tuple[str, list[str]]]:
    """``(where, priors)`` of ``data`` and, with a target block, ``data.target``."""
    found = [("data", list(cfg.data.priors))]
    if cfg.data.target is not None:
        found.append(("data.target", list(cfg.data.target.priors)))
    return found


def _check_estimates(cfg: Config) -> None:
    """Estimated priors need an estimates file and an estimates file needs them; the target
    takes estimated priors only (it has no full label maps to compute the others from)."""

    blocks: list[tuple[str, DataConfig | TargetConfig]] = [("data", cfg.data)]
    if cfg.data.target is not None:
        blocks.append(("data.target", cfg.data.target))
    for where, block in blocks:
        check_priors(block.priors, where=f"{where}.priors")
        check_prior_params(block.priors, block.prior_params, where=where)
        estimated = [p for p in block.priors if p in ESTIMATED_PRIORS]
        if where == "data.target":
            other = [p for p in block.priors if p not in ESTIMATED_PRIORS]
            if other:
                raise WeaksegError(
                    f"data.target.priors '{other[0]}' is computed from full label maps, which "
                    "the target's training images do not have; the target takes "
                    f"{', '.join(ESTIMATED_PRIORS)} (read from data.target.estimates), or move "
                    f"'{other[0]}' to data.priors")
        if estimated and not block.estimates:
            raise WeaksegError(
                f"{where}.priors '{estimated[0]}' is read from an estimates file, but "
                f"{where}.estimates is unset; write one with 'weakseg estimate-priors "
                "--checkpoint SOURCE_RUN/best.pt --config CONFIG --out FILE.npz'")
        if block.estimates and not estimated:
            raise WeaksegError(
                f"{where}.estimates is set but {where}.priors lists none of "
                f"{', '.join(ESTIMATED_PRIORS)}, which read it; add them or unset it")


def _check_full_labels(d: DataConfig) -> None:
    """``data.full_labels``: not with full annotations everywhere nor with an annotation
    that brings per-volume entries; numbers inside a numeric ``train`` (the rest is checked
    against the volumes when the data are read)."""
    if not d.full_labels:
        return
    if d.annotation == "full":
        raise WeaksegError(f"data.full_labels={d.full_labels!r} is set but data.annotation is "
                           "full (every patient already has full masks); unset one")
    if d.annotation.startswith("sim:") and d.annotation[len("sim:"):] in VOLUME_ENTRIES:
        raise WeaksegError(f"data.full_labels cannot be combined with {d.annotation} (its "
                           "per-patient entries do not describe full masks)")
    try:
        wanted, train = parse_groups(d.full_labels), parse_groups(d.train or "")
    except WeaksegError:
        return  # names or patterns: checked against the volumes
    outside = sorted(wanted - train) if d.train else []
    if outside:
        raise WeaksegError(f"data.full_labels={d.full_labels!r} names patients outside "
                           f"data.train={d.train!r} ({', '.join(map(str, outside[:5]))}); "
                           "fully labelled patients must be training patients")


def _check_params(cfg: Config) -> None:
    """The ``params`` blocks of the model, the data sets and a simulated annotation: names
    and types from the factories' signatures (values are checked when they are built)."""
    check_kwargs(MODELS.get(cfg.model.name), cfg.model.params,
                 f"model '{cfg.model.name}' (model.params)", ("in_channels", "num_classes"))
    sources: list[tuple[str, DataConfig | TargetConfig]] = [("data", cfg.data)]
    if cfg.data.target is not None:
        sources.append(("data.target", cfg.data.target))
    for where, d in sources:
        data_params = dict(d.params)
        if d.root is not None:
            data_params["root"] = d.root
        check_kwargs(DATASETS.get(str(d.name)), data_params,  # a name: _check_target
                     f"data set '{d.name}' ({where}.params)")
        _check_annotation(where, d.annotation, d.annotation_params)


def _check_annotation(where: str, annotation: str, params: dict[str, Any]) -> None:
    """``<where>.annotation`` and its ``annotation_params`` (simulated annotations only)."""
    if annotation.startswith("sim:"):
        name = annotation[len("sim:"):]
        if "seed" in params:
            raise WeaksegError(f"{where}.annotation_params must not set 'seed'; use "
                               f"{where}.annotation_seed")
        simulate = ANNOTATORS.get(name)
        what = f"annotator '{name}' ({where}.annotation_params)"
        context = tuple(context_kwargs(simulate, **dict.fromkeys(CONTEXT)))
        check_kwargs(simulate, params, what, ("label", "num_classes", *context))
        check_annotator_params(name, params, what)
    elif params:
        raise WeaksegError(
            f"{where}.annotation_params apply to simulated annotations only, but "
            f"{where}.annotation is '{annotation}'; remove them or use annotation: "
            "sim:<annotator>"
        )


def _check_target(cfg: Config) -> None:
    """``data.target``: a named data set; the source's own validation keys unset (the
    target's ``val`` chooses the model)."""
    target = cfg.data.target
    if target is None:
        return
    if target.name is None:
        raise WeaksegError(f"data.target needs a 'name' (a data set: "
                           f"{', '.join(DATASETS.names())})")
    DATASETS.get(target.name)
    for key in ("val", "test", "fold"):
        value = getattr(cfg.data, key)
        if value is not None:
            raise WeaksegError(
                f"data.{key}={value!r} is set, but with data.target the target's selections "
                f"validate and test (data.target.val / data.target.test); unset data.{key}")


def _check_domains(cfg: Config, recipe: LossRecipe) -> None:
    """Each term's ``domain`` exists in this config, has training images, and has labels
    when the term learns from labels (``needs_labels``, e.g. ``partial_ce``)."""
    target = cfg.data.target
    for i, (term, loss) in enumerate(zip(cfg.loss, recipe.losses, strict=True)):
        where = f"loss.{i} ('{term.name}', domain: {term.domain})"
        if term.domain != "source":
            if target is None:
                raise WeaksegError(
                    f"{where} needs a data.target block (the target data set); add one, or "
                    "for source-free adaptation put the target in data: and drop the domain")
            if not target.train:
                raise WeaksegError(f"{where} trains on the target, but data.target.train is "
                                   "unset; select the target's training volumes")
        if not getattr(loss, "needs_labels", False):
            continue
        labelled = "full" if cfg.data.full_labels else cfg.data.annotation  # some full masks
        seen = [("data", labelled)] if term.domain != "target" else []
        if target is not None and term.domain != "source":
            seen.append(("data.target", target.annotation))
        for key, annotation in seen:
            if annotation == "none":
                raise WeaksegError(
                    f"{where} learns from labels, but {key}.annotation is none (no labelled "
                    f"pixel); give {key} an annotation (e.g. scribble) or drop the term"
                    f"{' or use domain: source' if key == 'data.target' else ''}")


def _check_loss_inputs(cfg: Config, recipe: LossRecipe) -> None:
    """Every batch entry a loss reads must come from the data of its domain: image, target,
    the sample index, or a prior of that domain's ``priors`` (priors computed from full label
    maps are for the ``data:`` samples only; the target takes estimated priors)."""
    samples = {"image", "target"} | SAMPLE_KEYS
    have = {where: samples | {PRIOR_KEYS[p] for p in priors}
            for where, priors in _prior_lists(cfg)}
    for term, loss in zip(cfg.loss, recipe.losses, strict=True):
        blocks = {"source": ["data"], "target": ["data.target"],
                  "both": ["data", "data.target"]}[term.domain]
        for key in getattr(loss, "inputs", ("target",)):
            for where in blocks:
                if key in have.get(where, samples):
                    continue
                sources = priors_providing(key)
                if where == "data.target":
                    sources = [p for p in sources if p in ESTIMATED_PRIORS]
                    if not sources and key in have["data"]:
                        raise WeaksegError(
                            f"loss '{term.name}' (domain: {term.domain}) needs '{key}', but "
                            "data.priors are computed for the data: samples only (from their "
                            "full label maps), not for data.target; use domain: source")
                if not sources:
                    fix = "no data.priors entry provides it"
                else:
                    fix = f"add {where}.priors: [{sources[0]}]"
                    if len(sources) > 1:
                        fix += f" (or {' / '.join(sources[1:])})"
                    if sources[0] in ESTIMATED_PRIORS:
                        fix += (f" and {where}.estimates: the file of 'weakseg "
                                "estimate-priors'")
                on = "" if term.domain == "source" else f" on {where}"
                raise WeaksegError(f"loss '{term.name}' needs '{key}' in every batch{on}; {fix}")


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """``safe_load`` that refuses a key given twice in one mapping (YAML would keep the last
    one silently, e.g. a second ``train:`` section replacing the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(
                    f"key '{key}' appears twice in one mapping (line "
                    f"{key_node.start_mark.line + 1}); keep one, the second would silently win"
                )
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise WeaksegError(f"--config {path} is a folder; give a YAML file, e.g. "
                               "configs/acdc_scribbles_pce.yaml")
        if not path.is_file():
            raise WeaksegError(f"config file not found: {path}")
        try:
            raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
        except _DuplicateKey as exc:
            raise WeaksegError(f"{path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise WeaksegError(f"{path} is not a text file; give a YAML config") from exc
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
