"""PyMIC configurations for the ACDC scribble comparison: the published examples as data, and
the derivation that changes only budget, image size, split, seed and device to ours.

Pure functions only (no PyMIC, no torch, no weakseg imports), so that the unit tests run
without the peer environment.

Sources (read with the project's code-search tools, 2026-12-02; parameters restated here as
data, not copied files):

* HiLab-git/PyMIC_examples, ``seg_weak_sup/ACDC/config/unet2d_{baseline,em,tv,gcrf,mumford,
  ustm,dmpls}.cfg`` and its README: 2D U-Net 16-32-64-128-256 on 3D ``.nii.gz`` volumes
  listed in ``config/data/image_{train,valid,test}.csv`` (columns ``image,label``; the training
  label is the scribble map), ``train_transform = [Pad, RandomCrop, RandomFlip,
  NormalizeWithMeanStd, PartialLabelToProbability]`` with 3x224x224 crops, batch 4 (USTM 2),
  Adam 1e-3, weight decay 1e-5, ReduceLROnPlateau (gamma 0.5, patience 2000 iterations), 20 k
  iterations (USTM 30 k), validation every 100 iterations, regulariser weight ramped up
  (sigmoid) from iteration 2000 to 15000; pCE is the ``fully_sup`` baseline whose
  ``PartialLabelToProbability`` gives unlabelled pixels weight 0 in ``CrossEntropyLoss``.
* HiLab-git/DMSPS, ``config/acdc_dmsps.cfg``: PyMIC's ``DMSPS`` agent on WSL4MIS 2D slices
  (``train_dim = 2``, label key ``scribble``) validated on 3D volumes, ``DBNet`` with dropout
  0.05-0.1-0.2-0.3-0.5, SGD lr 1e-2 momentum 0.9 weight decay 1e-4, PolynomialLR power 0.9,
  30 k iterations, batch 24, 256x256, ``regularize_w = 8`` ramped up over iterations 0-100.
  PyMIC_examples has no DMSPS example, so this is the published DMSPS configuration.

What PyMIC 0.6.2 (pip) reads differently from those examples (checked in its source):

* ``net_type = UNet2D`` / ``UNet2D_DualBranch`` are not in ``pymic.net.net_dict_seg.SegNetDict``
  any more: they are ``UNet`` (``dimension = 2``) and ``DBNet`` (``dimension = 2``, which DBNet
  requires); older examples spell the output folder ``ckpt_save_dir`` (now ``ckpt_dir``) and
  the up-sampling ``bilinear = True`` (now ``up_mode = 2``).
* The scribble value "unlabelled" is the class count (4 for ACDC): ``PartialLabelToProbability``
  sets ``pixel_weight = 0`` where ``label == class_num``; WSL4MIS stores the same value 4.
* ``.nii.gz`` images must be 3D (``load_nifty_volume_as_4d_array`` rejects 2D), so each 2D
  training slice is stored as a one-slice volume ``(1, 128, 128)``; the 2D networks fold the
  depth axis into the batch.

Changes to ours (docs/benchmarks/acdc_scribbles.md reduced protocol), and nothing else:

* budget: ``iter_max`` x ``train_batch_size`` = 2400 x 8 = 19,200 slices of 128x128 (our 15
  epochs x 160 steps x batch 8). Schedule values counted in iterations (``rampup_start``,
  ``rampup_end``, ``ReduceLROnPlateau_patience``) are scaled by ``iter_max / published
  iter_max`` so that each phase keeps its share of the run (``--rampup published`` keeps them
  as published); ``early_stop_patience`` stays as published (>= 2400, so it never cuts the
  budget); ``iter_save`` becomes periodic (resume points).
* image size: slices are 128x128 already, so ``Pad``/``RandomCrop``/``Rescale`` to 128x128 are
  identities and are dropped (keeping ``Pad`` with a 2D size on the variable-depth validation
  volumes triggers a PyMIC 0.6.2 bug: the first volume's depth is kept for every later one);
  sliding-window inference (3x224x224) is off: the whole 128x128 slice is one window.
* split: train patients 021-090 (slices), select on 091-100 (volumes).
* seed: ``random_seed``.
* device: PyMIC 0.6.2 has no CPU switch (``torch.device("cuda:N")`` in ``train_valid`` and
  ``infer``); ``gpus = [0]`` stays and ``pymic_launch.py`` maps that device to the CPU.
  ``num_worker = 0``: data loading in the training process, as our trainer does.
* DMSPS only: its ``CustomTransform`` comes from the DMSPS repository's own code, not from
  PyMIC; it is replaced by PyMIC's ``RandomFlip`` (vertical/horizontal), the augmentation of
  PyMIC's own ACDC examples. PyMIC's ``RandomRot90`` cannot be used: in 0.6.2 it returns
  ``np.rot90`` views with negative strides that the DataLoader cannot batch ("ValueError: At
  least one stride in the given numpy array is negative") unless a later flip happens to copy
  them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BUDGET_BATCH",
    "BUDGET_ITERATIONS",
    "METHODS",
    "PUBLISHED",
    "SIZE",
    "TRAIN_PATIENTS",
    "VALID_PATIENTS",
    "budget_iterations",
    "derive_config",
    "parse_agent",
    "patient_id",
    "render_cfg",
    "split_of",
]

#: our split: train on 021-090, select on 091-100 (patients 001-020 are not in the data)
TRAIN_PATIENTS = range(21, 91)
VALID_PATIENTS = range(91, 101)
SIZE = 128
BUDGET_BATCH = 8


def budget_iterations(epochs: int = 15, steps: int = 160, batch: int = 8,
                      peer_batch: int = BUDGET_BATCH) -> int:
    """Iterations at ``peer_batch`` that see as many images as ``epochs x steps x batch``."""
    images = epochs * steps * batch
    if images % peer_batch:
        raise ValueError(f"{images} images is not a whole number of batches of {peer_batch}")
    return images // peer_batch


#: our reduced budget: 15 epochs x 160 steps x batch 8 = 19,200 images = 2400 iterations of 8
BUDGET_ITERATIONS = budget_iterations()


def patient_id(key: str) -> int:
    """``patient091_frame01`` (or a file name starting so) -> 91."""
    if not key.startswith("patient") or not key[7:10].isdigit():
        raise ValueError(f"not a WSL4MIS ACDC name: {key!r}")
    return int(key[7:10])


def split_of(key: str) -> str | None:
    """``"train"``, ``"valid"`` or None (not used) for a volume key."""
    pid = patient_id(key)
    if pid in TRAIN_PATIENTS:
        return "train"
    if pid in VALID_PATIENTS:
        return "valid"
    return None


# --- the published examples, as data ------------------------------------------------------

_EXAMPLES = "HiLab-git/PyMIC_examples seg_weak_sup/ACDC/config/"
_UNET = {"net_type": "UNet2D", "class_num": 4, "in_chns": 1,
         "feature_chns": [16, 32, 64, 128, 256], "dropout": [0.0, 0.0, 0.0, 0.5, 0.5],
         "up_mode": 2, "multiscale_pred": False}
_ADAM = {"optimizer": "Adam", "learning_rate": 1e-3, "momentum": 0.9, "weight_decay": 1e-5,
         "lr_scheduler": "ReduceLROnPlateau", "lr_gamma": 0.5,
         "reducelronplateau_patience": 2000, "early_stop_patience": 8000}
_FLIP = {"train_transform": ["RandomFlip", "NormalizeWithMeanStd", "PartialLabelToProbability"],
         "valid_transform": ["NormalizeWithMeanStd", "LabelToProbability"],
         "test_transform": ["NormalizeWithMeanStd"],
         "randomflip_flip_depth": False, "randomflip_flip_height": True,
         "randomflip_flip_width": True, "normalizewithmeanstd_channels": [0]}
_RAMP = {"regularize_w": 0.1, "rampup_start": 2000, "rampup_end": 15000}


def _example(source: str, *, wsl: dict[str, Any] | None = None, batch: int = 4,
             iter_max: int = 20000, network: Mapping[str, Any] = _UNET,
             training: Mapping[str, Any] = _ADAM, dataset: Mapping[str, Any] = _FLIP,
             labels: str = "scribble") -> dict[str, Any]:
    return {"source": source, "labels": labels, "batch": batch, "iter_max": iter_max,
            "network": dict(network), "training": dict(training), "dataset": dict(dataset),
            "wsl": wsl}


#: method -> the published configuration it is derived from (PyMIC method names in ``wsl``)
PUBLISHED: dict[str, dict[str, Any]] = {
    "pce": _example(_EXAMPLES + "unet2d_baseline.cfg"),
    # the same baseline with the dense masks: PyMIC's own full-supervision reference
    "full": _example(_EXAMPLES + "unet2d_baseline.cfg", labels="full"),
    "em": _example(_EXAMPLES + "unet2d_em.cfg",
                   wsl={"method_name": "EntropyMinimization", **_RAMP}),
    "tv": _example(_EXAMPLES + "unet2d_tv.cfg",
                   wsl={"method_name": "TotalVariation", **_RAMP}),
    "gcrf": _example(_EXAMPLES + "unet2d_gcrf.cfg", wsl={
        "method_name": "GatedCRF", **_RAMP, "gatedcrfloss_w0": 1.0, "gatedcrfloss_xy0": 5,
        "gatedcrfloss_rgb": 0.1, "gatedcrfloss_w1": 1.0, "gatedcrfloss_xy1": 3,
        "gatedcrfloss_radius": 5}),
    "mumford": _example(_EXAMPLES + "unet2d_mumford.cfg", wsl={
        "method_name": "MumfordShah", "regularize_w": 0.05, "rampup_start": 2000,
        "rampup_end": 15000, "mumfordshahloss_penalty": "l1", "mumfordshahloss_lambda": 1.0}),
    "ustm": _example(_EXAMPLES + "unet2d_ustm.cfg", batch=2, iter_max=30000,
                     training={**_ADAM, "reducelronplateau_patience": 4000,
                               "early_stop_patience": 10000},
                     wsl={"method_name": "USTM", **_RAMP}),
    "dmpls": _example(_EXAMPLES + "unet2d_dmpls.cfg",
                      network={**_UNET, "net_type": "UNet2D_DualBranch",
                               "dropout": [0.0, 0.0, 0.3, 0.5, 0.5]},
                      wsl={"method_name": "DMPLS", **_RAMP}),
    "dmsps": _example(
        "HiLab-git/DMSPS config/acdc_dmsps.cfg", batch=24, iter_max=30000,
        network={"net_type": "DBNet", "class_num": 4, "in_chns": 1,
                 "feature_chns": [16, 32, 64, 128, 256],
                 "dropout": [0.05, 0.1, 0.2, 0.3, 0.5]},
        training={"optimizer": "SGD", "nesterov": False, "learning_rate": 1e-2,
                  "momentum": 0.9, "weight_decay": 1e-4, "lr_scheduler": "PolynomialLR",
                  "lr_power": 0.9, "early_stop_patience": 10000},
        dataset={"train_transform": ["RandomFlip", "PartialLabelToProbability"],
                 "valid_transform": ["LabelToProbability"], "test_transform": None,
                 "randomflip_flip_depth": False, "randomflip_flip_height": True,
                 "randomflip_flip_width": True},
        wsl={"method_name": "DMSPS", "regularize_w": 8, "rampup_start": 0, "rampup_end": 100}),
}

#: the methods the comparison must run (issue 12), then the other published ones
METHODS = ["pce", "gcrf", "dmpls", "dmsps", "em", "tv", "mumford", "ustm", "full"]

#: PyMIC 0.6.2 names of networks renamed since the examples were written
_NET_RENAMES = {"UNet2D": "UNet", "UNet2D_DualBranch": "DBNet"}
#: schedule values counted in iterations, scaled with the budget
_ITERATION_KEYS = {"training": ["reducelronplateau_patience"],
                   "wsl": ["rampup_start", "rampup_end"]}


def parse_agent(spec: str) -> tuple[str, int]:
    """``"pce@0"`` -> ``("pce", 0)``; the seed defaults to 0."""
    method, _, seed = spec.partition("@")
    if method not in PUBLISHED:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    try:
        return method, int(seed or 0)
    except ValueError:
        raise ValueError(f"seed must be an integer in {spec!r}") from None


def derive_config(method: str, *, data_dir: str, ckpt_dir: str, seed: int = 0,
                  iterations: int = BUDGET_ITERATIONS, batch: int = BUDGET_BATCH,
                  iter_valid: int = 100, save_every: int = 200, rampup: str = "scaled",
                  resume_from: str | None = None) -> dict[str, dict[str, Any]]:
    """The PyMIC configuration (sections -> keys, lower case as PyMIC reads them) of ``method``
    at our budget, size, split, seed and device; see the module docstring for each change.

    ``resume_from``: a checkpoint file name inside ``ckpt_dir`` to continue from
    (``ckpt_init_mode = 1``: weights, optimizer state and iteration count)."""
    if rampup not in ("scaled", "published"):
        raise ValueError(f"rampup must be 'scaled' or 'published', got {rampup!r}")
    if iterations < 1 or batch < 1 or iter_valid < 1 or save_every < 1:
        raise ValueError("iterations, batch, iter_valid and save_every must be >= 1")
    ex = copy.deepcopy(PUBLISHED[method])
    scale = iterations / ex["iter_max"] if rampup == "scaled" else 1.0
    iter_valid = min(iter_valid, iterations)

    network = dict(ex["network"])
    network["net_type"] = _NET_RENAMES.get(network["net_type"], network["net_type"])
    network["dimension"] = 2

    weak = ex["wsl"] is not None
    dataset: dict[str, Any] = {
        "tensor_type": "float", "task_type": "seg",
        "supervise_type": "weak_sup" if weak else "fully_sup",
        "train_dir": data_dir,
        "train_csv": f"{data_dir}/image_train{'_full' if ex['labels'] == 'full' else ''}.csv",
        "valid_csv": f"{data_dir}/image_valid.csv",
        "test_csv": f"{data_dir}/image_valid.csv",
        "train_batch_size": batch, "num_worker": 0,
        **ex["dataset"],
    }

    training: dict[str, Any] = {"gpus": [0], "loss_type": "CrossEntropyLoss", **ex["training"]}
    for key in _ITERATION_KEYS["training"]:
        if key in training:
            training[key] = _scaled(training[key], scale)
    training.update({
        "ckpt_dir": ckpt_dir, "ckpt_prefix": "model", "random_seed": int(seed),
        "deterministic": True, "iter_max": iterations, "iter_valid": iter_valid,
        # a multiple of iter_valid (PyMIC saves when the iteration count is in range(0, max, n))
        "iter_save": max(iter_valid, min(save_every, iterations) // iter_valid * iter_valid),
    })
    if resume_from:
        training.update({"ckpt_init_name": resume_from, "ckpt_init_mode": 1})

    cfg: dict[str, dict[str, Any]] = {"dataset": dataset, "network": network,
                                      "training": training}
    if weak:
        wsl = dict(ex["wsl"])
        for key in _ITERATION_KEYS["wsl"]:
            if key in wsl:
                wsl[key] = _scaled(wsl[key], scale)
        if "rampup_end" in wsl:  # PyMIC divides by end - start (NaN weights when equal)
            wsl["rampup_end"] = max(wsl["rampup_end"], wsl.get("rampup_start", 0) + 1)
        cfg["weakly_supervised_learning"] = wsl
    cfg["testing"] = {"gpus": [0], "ckpt_mode": 1, "output_dir": f"{ckpt_dir}/predictions",
                      "sliding_window_enable": False}
    return cfg


def _scaled(value: int, scale: float) -> int:
    return int(math.floor(value * scale + 0.5))


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if v is None:
        return "None"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def render_cfg(cfg: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """The ``.cfg`` text PyMIC's ``parse_config`` reads (configparser, values parsed by PyMIC:
    ints, floats with a dot or an exponent, ``[a, b]`` lists, True/False, None)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    for section, values in cfg.items():
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_value(v)}" for k, v in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"
