"""The trainer: seeded, resumable, with validation-based model selection.

``train(cfg, out_dir)`` writes into ``out_dir``:

- ``config.yaml``: the resolved config;
- ``log.csv``: one row per epoch (learning rate, time, images/s, the mean of
  every loss term, validation Dice/HD95), rewritten from the checkpointed
  history so that a resumed run has no duplicate or missing rows;
- ``last.pt``: everything needed to resume (written atomically every epoch);
- ``best.pt``: the weights with the best validation mean Dice (never a test split);
- ``val_metrics.csv`` (and ``test_metrics.csv`` when ``data.test`` is set): the
  per-volume metrics of ``best.pt`` at the end, with ``val_overlay.png`` (image,
  ground truth, prediction on a few volumes) and ``curves.png`` (loss, validation Dice).

Determinism: every epoch draws its shuffling, augmentation and dropout from
generators seeded by ``(train.seed, epoch)``, so a run resumed from the
checkpoint of epoch *k* continues exactly as the uninterrupted run would.

Constraints: the priors of ``data.priors`` (tags, boxes, size bounds) travel with
the slices and reach the losses as batch entries; after every epoch the loss recipe
takes its ``epoch_step()`` (log-barrier ``t``), and its state (``t``, Lagrange
multipliers) is saved in ``last.pt`` with the weights. Terms that report how many
of their constraints are violated add ``train_<term>_violated`` to ``log.csv``, and,
when ``data.priors`` are set, ``val_<term>_violated``: the same fractions on the
validation slices (priors built from the validation masks the same way, at the
training size; no dual update), computed after every validation.

Domains (:mod:`weakseg.adapt`): with ``data.target`` and a loss term on the target, every
step also draws a target batch from its own seeded generator and runs the network once on
both (:func:`train_one_epoch`); validation, ``best.pt`` and the final metrics use the
target's ``val`` / ``test``. Every checkpoint of a run on full labels stores the class
fractions of its training labels (``label_fractions``), which a source-free run reads with
``marginal_prior`` ``prior: from_init`` (``prior_from_init`` in its own checkpoints).
Estimated priors (``estimated_fractions``, ``estimated_cell_fractions``: curriculum DA) are
read by slice identity from the ``estimates`` file of their block (``data`` or
``data.target``); its SHA-256 is kept in the checkpoints and a resume refuses a changed file.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from weakseg.adapt import (
    class_fractions,
    init_prior,
    init_prior_terms,
    stream_seed,
    with_init_prior,
)
from weakseg.config import Config, DataConfig, TargetConfig, config_from_dict, dump_config
from weakseg.data import DATASETS
from weakseg.data.base import Volume, VolumeSet
from weakseg.data.estimates import estimated_entries, file_digest, load_estimates
from weakseg.data.intensity import Normalization, fit_normalization
from weakseg.data.priors import (
    ESTIMATED_PRIORS,
    ORACLE_PRIORS,
    PRIOR_KEYS,
    check_prior_params,
    describe_priors,
)
from weakseg.data.semi import describe_split, full_label_keys
from weakseg.data.slices import (
    SliceData,
    augment_batch,
    build_slices,
    build_volumes,
    in_plane_spacing,
    median_spacing,
    random_crop,
)
from weakseg.data.splits import fold_split, select_groups
from weakseg.engine import distributed
from weakseg.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    LEGACY_TEMPS,
    load_checkpoint,
    save_atomic,
)
from weakseg.engine.device import resolve_device
from weakseg.engine.distributed import Dist, forward_global, loss_scale
from weakseg.engine.inference import checkpoint_geometry, predict_volume
from weakseg.errors import WeaksegError
from weakseg.losses.recipe import LossRecipe
from weakseg.metrics import VolumeMetrics
from weakseg.models import MODELS
from weakseg.report.plots import plot_curves, plot_volume_overlays
from weakseg.safeio import atomic_path, check_output_folder, remove_stale_temps, write_text_atomic

__all__ = [
    "DataSplits",
    "Run",
    "TrainResult",
    "build_model",
    "build_optimizer",
    "evaluate",
    "evaluate_volumes",
    "finalize",
    "load_data",
    "load_model_from_checkpoint",
    "save_epoch",
    "setup",
    "train",
    "train_one_epoch",
]

Logger = Callable[[str], None]


@dataclass
class DataSplits:
    """The data set and its volumes split by group (patient).

    ``val`` / ``test`` are the volumes the run is selected and reported on: those of
    ``data.target`` when the config has one (the domain adapted to), else the data set's.
    ``target`` / ``target_train``: the target data set and the volumes its loss terms train
    on (empty without a target block or a ``data.target.train`` selection)."""

    dataset: VolumeSet
    train: list[Volume]
    val: list[Volume]
    test: list[Volume]
    unscored: list[str] = field(default_factory=list)  # val/test volumes with weak labels only
    target: VolumeSet | None = None
    target_train: list[Volume] = field(default_factory=list)


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    best_score: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)


def load_data(cfg: Config) -> DataSplits:
    """Read the configured data set and split it by group (patient); with ``data.target``
    read that data set too: its ``train`` selection feeds the target terms, its ``val`` and
    ``test`` replace the source's (the source data set is then only trained on)."""
    dataset = _read_data_set(cfg.data)
    train = _select("data", cfg.data, dataset, "train")
    val, test = (_select("data", cfg.data, dataset, name) for name in ("val", "test"))
    if cfg.data.fold is not None:
        train, val = fold_split(train, cfg.data.fold, num_folds=cfg.data.num_folds)
    target, target_train = None, []
    if cfg.data.target is None:
        _check_disjoint(train, val, test)
    else:
        target = _read_data_set(cfg.data.target)
        _check_same_classes(cfg.data, dataset, target)
        target_train, val, test = (_select("data.target", cfg.data.target, target, name)
                                   for name in ("train", "val", "test"))
        _check_disjoint(target_train, val, test)
    unscored: list[str] = []
    for name, other in (("val", val), ("test", test)):
        if other and all(v.label is None for v in other):
            raise WeaksegError(
                f"none of the {len(other)} {name} volumes has a dense label map to be scored; "
                f"put dense masks for some {name} cases in the label folder"
            )
        unscored += [v.key for v in other if v.label is None]
    val = [v for v in val if v.label is not None]
    test = [v for v in test if v.label is not None]
    return DataSplits(dataset, train, val, test, unscored, target, target_train)


def _read_data_set(d: DataConfig | TargetConfig) -> VolumeSet:
    params = dict(d.params)
    if d.root is not None:
        params["root"] = d.root
    return DATASETS.build(cast(str, d.name), **params)


def _select(where: str, d: DataConfig | TargetConfig, dataset: VolumeSet,
            name: str) -> list[Volume]:
    """The volumes of selection ``<where>.<name>``: unset selects every volume for
    ``data.train`` and none otherwise; a selection that matches nothing is an error."""
    spec = getattr(d, name)
    if not spec and not (where == "data" and name == "train"):
        return []
    chosen = select_groups(dataset.volumes, spec)
    if not chosen:
        raise WeaksegError(
            f"{where}.{name}='{spec}' selects no volume of {d.name}; check the selection "
            "(numbers like 21-90, case names or glob patterns)"
            f"{'' if name == 'train' else f', or unset {where}.{name}'}"
        )
    return chosen


def _check_disjoint(train: list[Volume], val: list[Volume], test: list[Volume]) -> None:
    for name, other in (("val", val), ("test", test)):
        shared = {v.group for v in train} & {v.group for v in other}
        if shared:
            raise WeaksegError(
                f"patients {sorted(shared)[:5]} are in both train and {name}; splits must be "
                "disjoint by patient"
            )


def _check_same_classes(d: DataConfig, source: VolumeSet, target: VolumeSet) -> None:
    """Source and target must share one class set (names and order) and channels."""
    if list(source.class_names) != list(target.class_names) or (
            source.in_channels != target.in_channels):
        raise WeaksegError(
            f"data ({d.name}) has classes {list(source.class_names)} and "
            f"{source.in_channels} channel(s) but data.target "
            f"({d.target.name if d.target else '?'}) has "
            f"{list(target.class_names)} and {target.in_channels}; source and target must "
            "share one class set (map the target's labels with its reader's params)")


def model_spatial_dims(cfg: Config) -> int:
    """2 or 3: what the registered model convolves over (``unet3d`` → 3)."""
    factory = MODELS.get(cfg.model.name)
    return int((getattr(factory, "keywords", None) or {}).get("spatial_dims", 2))


def build_model(cfg: Config, in_channels: int, num_classes: int) -> nn.Module:
    return MODELS.build(
        cfg.model.name, in_channels=in_channels, num_classes=num_classes, **cfg.model.params
    )


def build_optimizer(
    cfg: Config, model: nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    t = cfg.train
    if t.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    total = max(total_steps, 1)
    if t.schedule == "poly":
        def factor(step: int) -> float:
            return max(1.0 - step / total, 0.0) ** 0.9
    elif t.schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    else:
        def factor(step: int) -> float:
            return 1.0
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**63


def train_one_epoch(
    model: nn.Module,
    recipe: LossRecipe,
    data: SliceData,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    batch_size: int,
    seed: int,
    augment: bool = True,
    max_steps: int | None = None,
    steps: int | None = None,
    crop: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "",
    dist: Dist = Dist(),  # noqa: B008  (an immutable value)
    amp: bool = False,
    target: SliceData | None = None,
) -> dict[str, float]:
    """One pass over ``data`` (shuffled, drop-last); returns the mean of each loss part.

    With ``dist`` (several processes, :mod:`weakseg.engine.distributed`) every process draws
    the same global batches and augmentations, runs ``model`` (DDP-wrapped) on its share and
    evaluates the loss on the gathered global batch. ``amp``: float16 autocast with gradient
    scaling, on CUDA only (the CPU path stays in float32 and deterministic).

    ``steps`` fixes the number of batches instead (drawn from as many fresh permutations
    as needed, for small sets of large images); ``max_steps`` caps it. ``crop`` takes a
    random ``crop × crop`` window of every sample (image, target and spatial priors alike).

    The batches carry ``image``, ``target`` and the per-sample entries of ``data.entries``
    (the priors of ``data.extras`` and ``index``, the samples' positions in ``data``, for
    per-image Lagrange multipliers: :mod:`weakseg.data.priors`),
    augmented alike. The mean of every diagnostic in ``recipe.last_stats`` is returned too
    (e.g. ``size_violated``). Schedules are not advanced here: call ``recipe.epoch_step()``
    after the epoch.

    ``target`` (the ``data.target`` samples, :mod:`weakseg.adapt`): every step also draws
    ``batch_size`` target samples, from their own generator (seeded by
    ``stream_seed(seed, "target")``; cropped and augmented alike), and the network runs
    once on the concatenation (source rows first), so that batch norm normalises both
    domains with the statistics of their mixture, the population its running statistics
    (used at evaluation) estimate. Each loss term sees its domain's rows (``domain``);
    target samples carry ``index`` after the source's (``len(data) + position``).
    """
    gen = torch.Generator().manual_seed(seed)
    order, steps = _batch_order(len(data), batch_size, steps, gen)
    if max_steps is not None:
        steps = min(steps, max_steps)
    if target is not None:
        target_gen = torch.Generator().manual_seed(stream_seed(seed, "target"))
        target_order, _ = _batch_order(len(target), batch_size, steps, target_gen)
    sums: dict[str, float] = {}
    model.train()
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    draw = partial(_draw_batch, crop=crop, augment=augment, device=device)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # dropout
        bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
        for step in bar:
            rows = slice(step * batch_size, (step + 1) * batch_size)
            batch, domains = draw(data, order[rows], gen), None
            if target is not None:
                other = draw(target, target_order[rows], target_gen, offset=len(data))
                batch, domains = _concat_domains(batch, other)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = forward_global(model, batch["image"], dist)
            total, parts = (recipe(logits.float(), batch) if domains is None  # one data set
                            else recipe(logits.float(), batch, domains=domains))
            if not torch.isfinite(total):
                raise WeaksegError(
                    f"the loss became {float(total)} at step {step} ({desc}); lower train.lr "
                    "or the loss weights"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total * loss_scale(dist)).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            parts = {"total": total.detach(), **parts, **recipe.last_stats}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if progress:
                bar.set_postfix(loss=f"{float(parts['total']):.4f}")
    return {k: v / steps for k, v in sums.items()} | {"steps": float(steps)}


def _batch_order(n: int, batch_size: int, steps: int | None,
                 gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """Sample positions for an epoch and its number of steps: one permutation of ``n``
    (``n // batch_size`` steps), or as many permutations as ``steps`` batches need."""
    order = torch.randperm(n, generator=gen)
    if steps is None:
        return order, max(n // batch_size, 1)
    rounds = -(-steps * batch_size // n)
    order = torch.cat([order] + [torch.randperm(n, generator=gen) for _ in range(rounds - 1)])
    return order, steps


def _draw_batch(data: SliceData, positions: torch.Tensor, gen: torch.Generator, *,
                crop: int | None, augment: bool, device: torch.device,
                offset: int = 0) -> dict[str, torch.Tensor]:
    """The batch of the samples at ``positions``: image, target and per-sample entries,
    cropped and augmented with ``gen``, on ``device``; ``offset`` is added to ``index``."""
    x, y = data.images[positions], data.targets[positions]
    extras = data.entries(positions)
    if offset and "index" in extras:
        extras["index"] = extras["index"] + offset
    if crop is not None:
        labels = None if data.crop_labels is None else data.crop_labels[positions]
        x, y, extras = random_crop(x, y, gen, crop, extras, labels=labels)
    if augment:
        x, y, extras = augment_batch(x, y, gen, extras)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    batch = {k: v.to(device, non_blocking=True) for k, v in extras.items()}
    batch.update(image=x, target=y)
    return batch


def _concat_domains(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, slice]]:
    """One batch of the source rows then the target rows, and where each domain's rows are.

    Entries both have are concatenated; the source's own priors keep the source rows only;
    the target's own priors (estimated fractions) get zero rows in front for the source, so
    that the target's rows of every entry are at the same positions. The config checks
    (:mod:`weakseg.config`) refuse a term that would read an entry on a domain without it."""
    n, m = source["image"].shape[0], target["image"].shape[0]
    batch = {k: torch.cat([v, target[k]]) if k in target else v for k, v in source.items()}
    for k, v in target.items():
        if k not in source:
            batch[k] = torch.cat([v.new_zeros((n, *v.shape[1:])), v])
    return batch, {"source": slice(0, n), "target": slice(n, n + m)}


def evaluate_volumes(
    model: nn.Module,
    volumes: list[Volume],
    class_names: list[str],
    *,
    size: int,
    device: torch.device | str = "cpu",
    tta: bool = False,
    progress: bool = False,
    on_prediction: Callable[[Volume, Any], None] | None = None,
    **geometry: Any,
) -> Any:
    """Predict and score every volume (3D Dice, HD95, ASD); returns a ``VolumeMetrics``.
    ``geometry``: ``spacing``, ``roi``, ``spatial_dims``, ``patch_depth`` of the checkpoint
    (:func:`weakseg.engine.inference.checkpoint_geometry`). ``on_prediction(volume, map)``
    sees every predicted label map (e.g. to keep some for pictures without predicting
    twice)."""
    metrics = VolumeMetrics(class_names)
    for vol in tqdm(volumes, desc="evaluate", disable=not progress, leave=False):
        if vol.label is None:
            raise WeaksegError(f"{vol.key}: no full label map to score against")
        pred = predict_volume(model, vol, size=size, device=device, tta=tta, **geometry)
        metrics.update(pred, vol.label, key=vol.key, spacing=vol.spacing)
        if on_prediction is not None:
            on_prediction(vol, pred)
    return metrics


@torch.no_grad()
def constraint_stats(
    model: nn.Module, recipe: LossRecipe, data: SliceData, *, batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean of the recipe's diagnostics (e.g. ``size_violated``) over ``data``'s slices,
    in eval mode (Lagrange multipliers are not updated); ``{}`` when there are none."""
    was_training = model.training, recipe.training
    model.eval()
    recipe.eval()
    sums: dict[str, float] = {}
    count = 0
    try:
        for i in range(0, len(data), batch_size):
            sl = slice(i, i + batch_size)
            positions = torch.arange(i, min(i + batch_size, len(data)))
            batch = {k: v.to(device) for k, v in data.entries(positions).items()}
            batch.update(image=data.images[sl].to(device), target=data.targets[sl].to(device))
            recipe(model(batch["image"]), batch)
            n = batch["image"].shape[0]
            for k, v in recipe.last_stats.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
    finally:
        model.train(was_training[0])
        recipe.train(was_training[1])
    return {k: v / max(count, 1) for k, v in sums.items()}


def _check_recipe_fits(
    model: nn.Module, recipe: LossRecipe, data: SliceData, cfg: Config, device: torch.device,
    target: SliceData | None = None,
) -> None:
    """Evaluate the loss once on two training slices, and two target samples when the run
    has some (eval mode: no state changes, no random numbers drawn), so that a loss that does
    not fit the data (e.g. fixed size bounds for another number of classes) fails before
    training starts, as a one-line error."""
    def first(samples: SliceData, offset: int = 0) -> dict[str, torch.Tensor]:
        n = min(2, len(samples))
        batch = samples.entries(torch.arange(n))
        if offset and "index" in batch:
            batch["index"] = batch["index"] + offset
        return {**batch, "image": samples.images[:n], "target": samples.targets[:n]}

    batch, domains = first(data), None
    if target is not None:
        batch, domains = _concat_domains(batch, first(target, len(data)))
    batch = {k: v.to(device) for k, v in batch.items()}
    was_training = model.training, recipe.training
    model.eval()
    recipe.eval()
    try:
        with torch.no_grad():
            logits = model(batch["image"])
            recipe(logits, batch) if domains is None else recipe(logits, batch, domains=domains)
    except ValueError as exc:
        if isinstance(exc, WeaksegError):
            raise
        names = ", ".join(term.name for term in cfg.loss)
        raise WeaksegError(f"the loss ({names}) does not fit the data: {exc}; check the loss "
                           "params against the data set's classes and priors") from exc
    finally:
        model.train(was_training[0])
        recipe.train(was_training[1])


def _write_log(history: list[dict[str, Any]], path: Path) -> None:
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(history)


def _same_config(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Keys whose values differ between a saved config and ``cfg`` (epochs may grow)."""
    now = cfg.to_dict()
    defaults = Config().to_dict()
    diffs = []
    for section in now:
        a, b = saved.get(section), now[section]
        if isinstance(a, dict) and isinstance(defaults[section], dict):
            a = {**defaults[section], **a}  # keys added since the run was saved (data.priors)
            if section == "data" and isinstance(a.get("target"), dict):  # data.target.priors
                a["target"] = {**asdict(TargetConfig()), **a["target"]}
        if section == "loss" and isinstance(a, list):  # runs saved before loss domains
            a = [{"domain": "source", **term} if isinstance(term, dict) else term for term in a]
        if section == "train" and isinstance(a, dict):
            a = {k: v for k, v in a.items() if k not in ("epochs", "threads", "device")}
            b = {k: v for k, v in b.items() if k not in ("epochs", "threads", "device")}
        if a != b:
            diffs.append(section)
    return diffs


@dataclass
class Run:
    """Everything one training run holds between its steps (built by :func:`setup`)."""

    cfg: Config
    out: Path
    device: torch.device
    splits: DataSplits
    data: SliceData
    val_slices: SliceData | None
    model: nn.Module
    recipe: LossRecipe
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps: int
    meta: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "score": -math.inf})
    start: int = 0
    writer: Any = None
    dist: Dist = field(default_factory=Dist)
    net: nn.Module | None = None  # what trains: ``model``, or ``model`` inside DDP
    target_data: SliceData | None = None  # data.target samples of the target loss terms

    @property
    def geometry(self) -> dict[str, Any]:
        """How this run's network predicts a volume (size, spacing, windows, 2D/3D)."""
        return checkpoint_geometry(self.meta)

    @property
    def spacing(self) -> tuple[float, float] | None:
        return self.geometry["spacing"]

    @property
    def domains(self) -> int:
        """How many batches a step draws: 2 with target samples, else 1."""
        return 1 if self.target_data is None else 2

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


def _check_run_folder(out_dir: str | Path, resume: bool) -> Path:
    out = check_output_folder(out_dir, "--out")
    if (out / "last.pt").exists() and not resume:
        raise WeaksegError(
            f"{out} already holds a run (last.pt); pass --resume to continue it or choose "
            "another --out folder"
        )
    if resume and not (out / "last.pt").exists():
        raise WeaksegError(
            f"nothing to resume in {out}: it has no last.pt; check the folder name, or drop "
            "--resume to start a new run"
        )
    return out


def setup(cfg: Config, out_dir: str | Path, *, resume: bool = False, log: Logger = print) -> Run:
    """Check the run folder and device, read the data, build the network, loss, optimiser
    and schedule, restore ``last.pt`` when resuming; nothing is written before all of it
    succeeded. Then the run folder gets its ``config.yaml``."""
    out = _check_run_folder(out_dir, resume)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    dist = distributed.from_env()
    device = distributed.init(dist, resolve_device(t.device, "train.device"))
    log = log if dist.main else _silent
    splits = load_data(cfg)
    ds = splits.dataset
    spacing = _target_spacing(cfg, splits.train, [*splits.target_train, *splits.val,
                                                   *splits.test])
    norm = fit_normalization(cfg.data.normalization, splits.train, ds.channel_names,
                             seed=cfg.train.seed)
    dims = model_spatial_dims(cfg)
    data, target_data = _training_samples(cfg, splits, spacing, norm, dims)
    torch.manual_seed(t.seed)  # model initialisation
    model = build_model(cfg, ds.in_channels, ds.num_classes)
    if t.init and not resume:  # a resumed run takes its weights from last.pt
        init_weights(model, t.init, ds.class_names, ds.in_channels)
    model = model.to(device)
    prior = init_prior(t.init, ds.class_names) if t.init and init_prior_terms(cfg.loss) else None
    recipe = LossRecipe(with_init_prior(cfg.loss, prior), num_classes=ds.num_classes,
                        class_names=list(ds.class_names)).to(device)
    _check_recipe_fits(model, recipe, data, cfg, device, target_data)
    val_slices = None
    val_priors = _validation_priors(cfg, recipe)
    if val_priors and splits.val:  # for the validation constraint logs
        val_slices = build_slices(splits.val, annotation="full", num_classes=ds.num_classes,
                                  size=cfg.data.size, priors=val_priors, spacing=spacing,
                                  norm=norm)
    steps = t.steps_per_epoch or max(len(data) // t.batch_size, 1)
    if t.max_steps_per_epoch:
        steps = min(steps, t.max_steps_per_epoch)
    optimizer, scheduler = build_optimizer(cfg, model, steps * t.epochs)
    meta = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "class_names": ds.class_names,
            "in_channels": ds.in_channels, "size": cfg.data.size,
            "spacing": list(spacing) if spacing else None, "roi": cfg.data.crop or cfg.data.size,
            "spatial_dims": dims, "patch_depth": cfg.data.patch_depth if dims == 3 else None,
            "normalization": norm.to_dict(),
            # class proportions of full training labels (prior: from_init of a later run)
            "label_fractions": (class_fractions(data.targets, ds.num_classes)
                                if cfg.data.annotation == "full" else None),
            "prior_from_init": prior,
            "estimates_sha256": {where: file_digest(str(block.estimates))
                                 for where, block in _estimate_blocks(cfg)}}
    run = Run(cfg, out, device, splits, data, val_slices, model, recipe, optimizer, scheduler,
              steps, meta, dist=dist, target_data=target_data)
    if resume:
        _restore(run, log)
    run.net = distributed.wrap(model, dist, device)
    if dist.active:
        run.model = run.net.module  # type: ignore[assignment]  # the trained modules (batch norm synchronised on CUDA)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out, LEGACY_TEMPS)  # left by a killed run
        write_text_atomic(out / "config.yaml", dump_config(cfg))
        run.writer = _tensorboard(out)
    _log_setup(run, log)
    return run


def _training_samples(
    cfg: Config, splits: DataSplits, spacing: tuple[float, float] | None,
    norm: Normalization, dims: int,
) -> tuple[SliceData, SliceData | None]:
    """The training samples of the source and, when a loss term trains on the target
    (``domain: target | both``), of ``data.target``, on one grid. Unlabelled source data
    without priors is refused unless the run starts from a model (``train.init``: source-free
    adaptation, self-training); an unlabelled target is fine (the source supervises)."""
    for where, block in [("data", cfg.data), ("data.target", cfg.data.target)]:
        if dims == 3 and block is not None and block.priors:
            raise WeaksegError(f"{where}.priors {block.priors} are per-slice (2D) priors; a 3D "
                               "model takes fixed bounds (size loss params) or none")
    names = list(splits.dataset.class_names)
    full = full_label_keys(splits.train, splits.dataset.volumes, cfg.data.full_labels)
    data = _samples(cfg, cfg.data, splits.train, names, spacing, norm, dims,
                    where="data", allow_unlabelled=bool(cfg.train.init), full=full)
    target = None
    if cfg.data.target is not None and any(term.domain != "source" for term in cfg.loss):
        target = _samples(cfg, cfg.data.target, splits.target_train, names, spacing, norm,
                          dims, where="data.target", allow_unlabelled=True)
    return data, target


def _estimate_blocks(cfg: Config) -> list[tuple[str, DataConfig | TargetConfig]]:
    """The data blocks that read an estimates file (``data``, ``data.target``)."""
    blocks: list[tuple[str, DataConfig | TargetConfig | None]] = [
        ("data", cfg.data), ("data.target", cfg.data.target)]
    return [(where, b) for where, b in blocks if b is not None and b.estimates]


def _validation_priors(cfg: Config, recipe: LossRecipe) -> list[str]:
    """The ``data.priors`` the validation slices get for the constraint logs (computed from
    their full masks): none when a term reads an entry they cannot have (estimated
    fractions exist for training slices only)."""
    priors = [p for p in cfg.data.priors if p not in ESTIMATED_PRIORS]
    known = {"image", "target", "index"} | {PRIOR_KEYS[p] for p in priors}
    if any(key not in known for loss in recipe.losses
           for key in getattr(loss, "inputs", ("target",))):
        return []
    return priors


def _samples(
    cfg: Config, d: DataConfig | TargetConfig, volumes: list[Volume], class_names: list[str],
    spacing: tuple[float, float] | None, norm: Normalization, dims: int, *,
    where: str, allow_unlabelled: bool, full: set[str] | None = None,
) -> SliceData:
    """2D slices or 3D windows of ``volumes`` with the annotation and priors of ``d``
    (``where``: ``data`` or ``data.target``): the priors computed from full label maps, then
    the estimated ones read from ``d.estimates`` by slice identity; the volumes of ``full``
    (``data.full_labels``) train on their full masks."""
    num_classes = len(class_names)
    priors = [p for p in d.priors if p not in ESTIMATED_PRIORS]
    estimated = [p for p in d.priors if p in ESTIMATED_PRIORS]
    if dims == 3:
        return build_volumes(
            volumes, annotation=d.annotation, num_classes=num_classes, size=cfg.data.size,
            depth=cfg.data.patch_depth, seed=d.annotation_seed,
            annotation_params=d.annotation_params, spacing=spacing, norm=norm,
            class_names=class_names, full=full or (),
        )
    data = build_slices(
        volumes, annotation=d.annotation, num_classes=num_classes, size=cfg.data.size,
        seed=d.annotation_seed, annotation_params=d.annotation_params, priors=priors,
        spacing=spacing, norm=norm, allow_unlabelled=allow_unlabelled or bool(estimated),
        class_names=class_names, full=full or (),
    )
    if estimated:
        data.extras.update(estimated_entries(
            str(d.estimates), estimated, data.keys, data.index, class_names=class_names,
            size=cfg.data.size, spacing=spacing, where=where,
            params=check_prior_params(d.priors, d.prior_params, where=where)))
    return data


def init_weights(model: nn.Module, path: str | Path, class_names: Sequence[str],
                 in_channels: int) -> None:
    """Load the network weights of checkpoint ``path`` (``train.init``) into ``model``:
    only the weights (no optimiser, schedule or loss state), from a run on the same classes
    and channels with the same network."""
    where = f"train.init {path}"
    try:
        ckpt = load_checkpoint(path)
    except WeaksegError as exc:
        raise WeaksegError(f"train.init: {exc}") from exc
    if list(ckpt["class_names"]) != list(class_names) or int(ckpt["in_channels"]) != in_channels:
        raise WeaksegError(
            f"{where}: that run has classes {list(ckpt['class_names'])} and "
            f"{ckpt['in_channels']} input channel(s), this data {list(class_names)} and "
            f"{in_channels}; start from a checkpoint trained on the same kind of data")
    _load_weights(model, ckpt["model"], f"{where}: its weights do not fit this config's "
                  "network ({reason}); use the same model name and params as the run that "
                  "wrote it")


def _load_weights(model: nn.Module, state: dict[str, Any], message: str) -> None:
    """``model.load_state_dict(state)``; a mismatch becomes one line: ``message`` with
    ``{reason}`` replaced by the last line of PyTorch's explanation."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].strip()[:160]
        raise WeaksegError(message.replace("{reason}", reason)) from exc


def _silent(line: str) -> None:
    """The log of processes other than rank 0."""


def _target_spacing(cfg: Config, train: list[Volume],
                    others: Sequence[Volume] = ()) -> tuple[float, float] | None:
    """``data.spacing`` resolved: ``median`` is computed from the (source) training volumes;
    those and ``others`` (target, validation) must all know their spacing."""
    if cfg.data.spacing is None:
        return None
    for vol in [*train, *others]:
        in_plane_spacing(vol)  # every volume must know its spacing
    if cfg.data.spacing == "median":
        return median_spacing(train)
    y, x = cast(list[float], cfg.data.spacing)
    return float(y), float(x)


def _restore(run: Run, log: Logger) -> None:
    ckpt = load_checkpoint(run.last_path)
    diffs = _same_config(ckpt["config"], run.cfg)
    if diffs:
        raise WeaksegError(
            f"cannot resume {run.out}: config sections {diffs} differ from the saved run; "
            "resume with the same config (only train.epochs may grow)"
        )
    saved = ckpt.get("estimates_sha256") or {}
    changed = [f"{where}.estimates" for where, digest in run.meta["estimates_sha256"].items()
               if saved.get(where, digest) != digest]
    if changed:
        raise WeaksegError(
            f"cannot resume {run.out}: the file of {changed[0]} changed since the run started "
            "(another estimate-priors run?); resume with the file it started with, or start "
            "a new run")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.recipe.load_state_dict(ckpt["recipe"])
    run.history, run.best, run.start = ckpt["history"], ckpt["best"], int(ckpt["epoch"])
    log(f"resuming {run.out} after epoch {run.start}/{run.cfg.train.epochs}")


def _samples_word(run: Run) -> str:
    if run.meta["spatial_dims"] == 3:
        return f"{run.cfg.data.patch_depth}-slice windows"
    return "slices"


def _log_setup(run: Run, log: Logger) -> None:
    cfg, splits, data = run.cfg, run.splits, run.data
    norm = run.meta["normalization"]
    if norm["kind"] != "minmax":
        stats = (f" (window {norm['lo']}..{norm['hi']}, mean {norm['mean']}, std {norm['std']})"
                 if norm["kind"] == "ct" else "")
        log(f"intensity normalisation: {norm['kind']}{stats}")
    if run.spacing is not None:
        log(f"slices resampled to {run.spacing[0]:.3g} × {run.spacing[1]:.3g} mm on a "
            f"{cfg.data.size}² canvas ({cfg.data.size * run.spacing[0]:.0f} mm field of view), "
            f"sliding {run.geometry['roi']}² windows at inference")
    log(
        f"training {cfg.model.name} on {len(data)} {_samples_word(run)} from "
        f"{len(splits.train)} volumes "
        f"({cfg.data.annotation}: {100 * data.labelled_fraction:.2f}% pixels labelled), "
        f"{len(splits.val)} validation volumes, {cfg.train.epochs} epochs × {run.steps} steps, "
        f"{run.device}"
    )
    if cfg.data.full_labels:
        full = full_label_keys(splits.train, splits.dataset.volumes, cfg.data.full_labels)
        log(f"semi-supervised: {describe_split(splits.train, full, cfg.data.annotation)} "
            f"(data.full_labels={cfg.data.full_labels!r})")
    if splits.unscored:
        listed = ", ".join(splits.unscored[:5]) + ("…" if len(splits.unscored) > 5 else "")
        log(f"not scored (weak labels only): {len(splits.unscored)} validation/test volumes "
            f"({listed})")
    for name, line in zip(cfg.data.priors, describe_priors(cfg.data.priors, len(data)),
                          strict=True):
        log(f"{'ORACLE ' if name in ORACLE_PRIORS else ''}prior {line}")
    for where, block in _estimate_blocks(cfg):
        est = load_estimates(str(block.estimates), where=f"{where}.estimates")
        log(f"{where} priors {', '.join(block.priors)} from {block.estimates}: {est.method}, "
            f"by {est.source} ({len(est)} slices, {est.grid} x {est.grid} cells)")
    _log_domains(run, log)


def _log_domains(run: Run, log: Logger) -> None:
    """What the target domain trains, where the model is selected, and a prior read from
    ``train.init`` (source-free adaptation)."""
    cfg, splits = run.cfg, run.splits
    prior = run.meta.get("prior_from_init")
    if prior is not None:
        shares = ", ".join(f"{c} {v:.4f}" for c, v in zip(splits.dataset.class_names, prior,
                                                           strict=True))
        log(f"marginal_prior prior from train.init (its training labels): {shares}")
    target = cfg.data.target
    if target is None:
        return
    if run.target_data is not None:
        terms = [name for name, term in zip(run.recipe.names, cfg.loss, strict=True)
                 if term.domain != "source"]
        log(f"target domain {target.name}: {len(run.target_data)} {_samples_word(run)} from "
            f"{len(splits.target_train)} volumes ({target.annotation}) for "
            f"{', '.join(terms)}; one forward on source + target batches")
    log(f"validation and model selection on the target: data.target.val = {target.val!r}, "
        f"{len(splits.val)} volumes of {target.name}")


def evaluate(run: Run) -> tuple[dict[str, float], float]:
    """Validation metrics of the current weights (Dice/HD95 per class, and the constraint
    violations on the validation slices when priors are set) and the selection score."""
    ds = run.splits.dataset
    vm = evaluate_volumes(run.model, run.splits.val, ds.class_names, device=run.device,
                          **run.geometry)
    scores = vm.compute()
    row = {f"val_{k}": v for k, v in scores.items() if k.startswith(("dice", "hd95"))}
    if run.val_slices is not None:
        stats = constraint_stats(run.model, run.recipe, run.val_slices, device=run.device)
        row.update({f"val_{k}": v for k, v in stats.items() if k.endswith("violated")})
    return row, float(scores["dice_mean"])


def save_epoch(run: Run, row: dict[str, Any], score: float) -> None:
    """Record epoch ``row["epoch"]``: ``best.pt`` when it is the best so far (the latest
    when there is no validation), ``last.pt`` (atomic), ``log.csv``, TensorBoard."""
    epoch = int(row["epoch"])
    if score > run.best["score"] or not run.splits.val:
        run.best = {"epoch": epoch, "score": float(score)}
        save_atomic({**run.meta, "model": run.model.state_dict(), "epoch": epoch,
                     "score": float(score)}, run.best_path)
    run.history.append(row)
    save_atomic(
        {**run.meta, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
         "scheduler": run.scheduler.state_dict(), "recipe": run.recipe.state_dict(),
         "epoch": epoch, "history": run.history, "best": run.best},
        run.last_path,
    )
    _write_log(run.history, run.out / "log.csv")
    if run.writer is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                run.writer.add_scalar(k, v, epoch)


def _keep_first(store: list[Any], n: int) -> Callable[[Volume, Any], None]:
    """An ``on_prediction`` callback keeping the first ``n`` label maps in ``store``."""
    def keep(volume: Volume, prediction: Any) -> None:
        if len(store) < n:
            store.append(prediction)
    return keep


def finalize(run: Run, seconds: float) -> TrainResult:
    """Score ``best.pt`` on the validation and test volumes; write their metrics, overlays,
    ``curves.png`` and ``summary.json``."""
    if run.writer is not None:
        run.writer.close()
    result = TrainResult(run.out, int(run.best["epoch"]), _score(run.best, run.splits.val),
                         seconds, run.history)
    run.model.load_state_dict(load_checkpoint(run.best_path)["model"])
    plot_curves(run.out / "curves.png", {run.out.name: run.out / "log.csv"})
    names = run.splits.dataset.class_names
    for name, vols in (("val", run.splits.val), ("test", run.splits.test)):
        if vols:
            shown = vols[:4]
            preds: list[Any] = []
            vm = evaluate_volumes(
                run.model, vols, names, device=run.device, **run.geometry,
                on_prediction=_keep_first(preds, len(shown)))
            vm.write_csv(run.out / f"{name}_metrics.csv")
            setattr(result, f"{name}_metrics", vm.compute())
            plot_volume_overlays(run.out / f"{name}_overlay.png", shown, {"prediction": preds},
                                 class_names=names)
    summary = {
        "best_epoch": result.best_epoch,
        "best_val_dice": result.best_score if run.splits.val else None,
        "validated_on": "data.target.val" if run.cfg.data.target else "data.val",
        "train_seconds_total": float(sum(r["train_seconds"] for r in run.history)),
        "val_metrics": result.val_metrics,
        "test_metrics": result.test_metrics,
    }
    write_text_atomic(run.out / "summary.json", json.dumps(summary, indent=2))
    return result


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Logger = print,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``out_dir`` (see the module docstring for what is written):
    :func:`setup`, then per epoch :func:`train_one_epoch`, :func:`evaluate` and
    :func:`save_epoch`, then :func:`finalize`.

    Args:
        resume: continue from ``out_dir/last.pt`` (an error when there is none).
        stop_after_epoch: stop (as if killed) after this many epochs; for tests.
    """
    run = setup(cfg, out_dir, resume=resume, log=log)
    main = run.dist.main
    t = cfg.train
    t0 = time.perf_counter()
    for epoch in range(run.start, t.epochs):
        tic = time.perf_counter()
        parts = train_one_epoch(
            run.net or run.model, run.recipe, run.data, run.optimizer, run.scheduler,
            batch_size=t.batch_size, seed=_epoch_seed(t.seed, epoch), augment=t.augment,
            max_steps=t.max_steps_per_epoch, steps=t.steps_per_epoch, crop=cfg.data.crop,
            device=run.device, progress=progress and main,
            desc=f"epoch {epoch + 1}/{t.epochs}", dist=run.dist, amp=t.amp,
            target=run.target_data,
        )
        run.recipe.epoch_step()  # log-barrier t; saved with the recipe state
        train_s = time.perf_counter() - tic
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": run.optimizer.param_groups[0]["lr"],
            "train_seconds": round(train_s, 3),
            "images_per_s": round(int(parts.pop("steps")) * t.batch_size * run.domains
                                  / max(train_s, 1e-9), 2),
        }
        row.update({f"train_{k}": v for k, v in parts.items()})
        score = -math.inf
        if main and run.splits.val and ((epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs):
            metrics, score = evaluate(run)
            row.update(metrics)
        row["epoch_seconds"] = round(time.perf_counter() - tic, 3)
        if main:
            save_epoch(run, row, score)
            val_txt = f" val Dice {row['val_dice_mean']:.4f}" if "val_dice_mean" in row else ""
            log(f"epoch {epoch + 1}/{t.epochs}: loss {parts['total']:.4f}{val_txt} "
                f"({train_s:.1f}s, {row['images_per_s']:.1f} img/s)")
        else:
            run.history.append(row)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            distributed.finish(run.dist)
            return TrainResult(run.out, int(run.best["epoch"]), _score(run.best, run.splits.val),
                               time.perf_counter() - t0, run.history)
    seconds = time.perf_counter() - t0
    distributed.barrier(run.dist)  # rank 0 has written the last checkpoint
    result = finalize(run, seconds) if main else TrainResult(
        run.out, int(run.best["epoch"]), math.nan, seconds, run.history)
    distributed.finish(run.dist)
    return result



def _score(best: dict[str, Any], val: list[Volume]) -> float:
    """The best validation mean Dice, or NaN when there was no validation."""
    return float(best["score"]) if val else math.nan


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV logs only
        return None
    return SummaryWriter(str(out / "tensorboard"))


def load_model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a checkpoint; returns ``(model, checkpoint)``."""
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_dict(ckpt["config"])
    except WeaksegError as exc:
        raise WeaksegError(f"checkpoint {path} holds an invalid config ({exc}); it was edited "
                           "by hand or written by another weakseg version") from exc
    model = build_model(cfg, int(ckpt["in_channels"]), len(ckpt["class_names"]))
    _load_weights(model, ckpt["model"], f"checkpoint {path}: its weights do not fit the "
                  "network its config describes ({reason}); the file was edited by hand or "
                  "damaged, use it as written")
    model.eval()
    return model, ckpt
