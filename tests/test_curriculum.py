"""Curriculum domain adaptation (D3): the label-distribution loss, the estimated priors (file,
lookup, rotation/flip/crop rules), the estimator, and the whole path on the phantom (train
on the source, estimate the target's label distributions, adapt, resume)."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from weakseg.adapt.curriculum import estimate_fractions, estimate_priors
from weakseg.cli import main
from weakseg.config import config_from_dict
from weakseg.data.estimates import (
    Estimates,
    estimated_entries,
    load_estimates,
    save_estimates,
)
from weakseg.data.priors import ESTIMATED_PRIORS, PRIOR_REGISTRY, SPATIAL_EXTRAS
from weakseg.data.slices import augment_batch, build_slices, random_crop
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.trainer import train
from weakseg.errors import WeaksegError
from weakseg.losses import LOSSES, LabelDistributionLoss, label_distribution_loss
from weakseg.losses.distribution import region_fractions

from .test_adapt import SPACING, adapt_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _quiet(line: str) -> None:
    pass


def _softmax_fractions(logits: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    return region_fractions(logits.softmax(1), grid)


def _reference(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(q_r || mean softmax of region r), region by region in Python loops: ``(B, *grid)``
    (``(B,)`` for whole images), with ``F.kl_div`` (which takes log Ŝ and q)."""
    b, c, *spatial = logits.shape
    grid = tuple(q.shape[2:]) or (1,) * len(spatial)
    probs = logits.softmax(1)
    out = torch.zeros((b, *grid), dtype=logits.dtype)
    for i in range(b):
        for cell in itertools.product(*(range(g) for g in grid)):
            window = tuple(slice(k * (n // g), (k + 1) * (n // g))
                           for k, n, g in zip(cell, spatial, grid, strict=True))
            s_hat = probs[(i, slice(None), *window)].reshape(c, -1).mean(1)
            target = q[(i, slice(None), *cell)] if q.ndim > 2 else q[i]
            out[(i, *cell)] = F.kl_div(s_hat.log(), target, reduction="sum")
    return out if q.ndim > 2 else out.reshape(b)


def _random_fractions(shape: tuple[int, ...], gen: torch.Generator, zeros: bool = True
                      ) -> torch.Tensor:
    q = torch.rand(shape, generator=gen, dtype=torch.float64)
    if zeros:
        q = q * (torch.rand(shape, generator=gen) > 0.3)  # absent classes: q_c = 0
        q[:, 0] += 0.05                                   # every region keeps some mass
    return q / q.sum(1, keepdim=True)


# ------------------------------------------------------------------------------ the loss


def test_hand_values():
    logits = torch.zeros(1, 2, 4, 4)                                    # Ŝ = (0.5, 0.5)
    assert float(label_distribution_loss(logits, torch.tensor([[1.0, 0.0]]))) == pytest.approx(
        math.log(2))
    assert float(label_distribution_loss(logits, torch.tensor([[0.5, 0.5]]))) == 0.0
    # one cell all class 1 (Ŝ = (e/(1+e)... ) computed by hand: logits 0 vs 1 on the left half
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, :, 0] = 1.0
    s1 = math.exp(1) / (1 + math.exp(1))
    q = torch.tensor([[[[0.0, 0.5]], [[1.0, 0.5]]]])                   # (1, 2, 1, 2)
    expected = [-math.log(s1), 0.0]
    got = label_distribution_loss(logits, q, reduction="none")
    assert got.shape == (1, 1, 2) and got[0, 0].tolist() == pytest.approx(expected)


@pytest.mark.parametrize("shape, grid", [((2, 3, 8, 6), ()), ((2, 3, 8, 6), (4, 3)),
                                         ((2, 3, 4, 6, 2), ()), ((2, 3, 4, 6, 2), (2, 3, 1))])
def test_value_and_gradient_equal_the_loop_reference(shape, grid):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    q = _random_fractions((shape[0], shape[1], *grid), gen)
    got = label_distribution_loss(logits, q, reduction="none")
    ref = _reference(logits, q)
    assert got.shape == ref.shape == (shape[0], *grid)
    assert torch.allclose(got, ref, atol=1e-10)
    g_got, = torch.autograd.grad(got.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g_got, g_ref, atol=1e-10)
    assert torch.allclose(label_distribution_loss(logits, q), ref.mean())
    assert torch.allclose(label_distribution_loss(logits, q, reduction="sum"), ref.sum())


def test_the_papers_cross_entropy_has_the_same_gradient():
    """Zhang et al. minimise −Σ q log Ŝ; the KL is that minus H(q), a constant."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    q = _random_fractions((2, 4, 2, 2), gen)
    ce = -(q * _softmax_fractions(logits, (2, 2)).log()).sum(1).mean()
    entropy = -torch.xlogy(q, q).sum(1).mean()
    kl = label_distribution_loss(logits, q)
    assert torch.allclose(kl, ce - entropy)
    assert torch.allclose(torch.autograd.grad(kl, logits)[0], torch.autograd.grad(ce, logits)[0])


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    for q in (_random_fractions((2, 3), gen), _random_fractions((2, 3, 2, 2), gen)):
        assert torch.autograd.gradcheck(lambda z, q=q: label_distribution_loss(z, q), (logits,))


def test_minimum_at_the_estimate_and_finite_with_absent_classes():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 4, 4, generator=gen, requires_grad=True)
    q = _softmax_fractions(logits.detach(), (2, 2))
    assert float(label_distribution_loss(logits.detach(), q)) == pytest.approx(0.0, abs=1e-6)
    q = torch.zeros(1, 3, 2, 2)
    q[:, 0] = 1.0                                                       # only background
    value = label_distribution_loss(logits, q)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("fractions, match", [
    (torch.full((2, 3), 1 / 3), r"do not fit logits \(1, 3, 4, 4\)"),
    (torch.full((1, 3, 3, 3), 1 / 3), r"grid \(3, 3\) does not divide the spatial size"),
    (torch.full((1, 3, 2), 1 / 3), r"do not fit logits"),
    (torch.tensor([[0.5, 0.5, 0.5]]), "must sum to 1 over the classes"),
    (torch.tensor([[1.5, -0.5, 0.0]]), "must be finite and ≥ 0"),
    (torch.tensor([[1, 0, 0]]), "must be floating point"),
])
def test_bad_fractions_are_errors_that_show_the_shape(fractions, match):
    with pytest.raises(ValueError, match=match):
        label_distribution_loss(torch.zeros(1, 3, 4, 4), fractions)


def test_reduction_and_options_are_validated():
    with pytest.raises(ValueError, match="reduction must be one of"):
        label_distribution_loss(torch.zeros(1, 2, 4, 4), torch.full((1, 2), 0.5),
                                reduction="avg")
    with pytest.raises(ValueError, match="both 0: nothing to constrain"):
        LabelDistributionLoss(global_weight=0, cell_weight=0)
    with pytest.raises(ValueError, match="cell_weight must be finite and ≥ 0"):
        LabelDistributionLoss(cell_weight=-1)
    # the sum check can be switched off (a cost on large batches)
    loose = torch.tensor([[0.6, 0.6]])
    assert torch.isfinite(label_distribution_loss(torch.zeros(1, 2, 4, 4), loose, check=False))


def test_module_equals_the_weighted_functions_and_names_its_inputs():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    q, cells = _random_fractions((2, 3), gen).float(), _random_fractions((2, 3, 4, 4), gen).float()
    loss = LabelDistributionLoss(global_weight=0.5, cell_weight=2.0)
    assert loss.inputs == ("fractions", "cell_fractions")
    expected = (0.5 * label_distribution_loss(logits, q)
                + 2.0 * label_distribution_loss(logits, cells))
    assert torch.allclose(loss(logits, fractions=q, cell_fractions=cells), expected)
    assert set(loss.last_stats) == {"global", "cells"}
    per_image = LabelDistributionLoss(reduction="none")(logits, q, cells)
    assert per_image.shape == (2,)
    assert LabelDistributionLoss(cell_weight=0).inputs == ("fractions",)
    assert LabelDistributionLoss(global_weight=0).inputs == ("cell_fractions",)
    with pytest.raises(ValueError, match="needs the batch entry 'cell_fractions'"):
        loss(logits, fractions=q)
    assert "label_distribution" in LOSSES.names()


# ------------------------------------------------------------------------------ priors


def _label_maps(gen: torch.Generator, n: int = 3, size: int = 16) -> torch.Tensor:
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):  # asymmetric shapes: every rotation / flip gives another map
        labels[i, 1:6, 2:11] = 1
        labels[i, 9:15, 3:6] = 2
        labels[i, int(torch.randint(0, 12, (), generator=gen)), 12:15] = 3
    return labels


def _fractions_of(labels: torch.Tensor, grid: int, classes: int = 4
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    onehot = F.one_hot(labels, classes).movedim(-1, 1).float()
    return onehot.mean((2, 3)), region_fractions(onehot, (grid, grid))


def test_cells_rotate_and_flip_with_their_slice():
    """Augmenting a batch moves the grid-cell fractions exactly as the cells of the rotated /
    flipped label map: recomputed from the augmented labels, they are the augmented entries."""
    assert "cell_fractions" in SPATIAL_EXTRAS and "fractions" not in SPATIAL_EXTRAS
    gen = torch.Generator().manual_seed(5)
    labels = _label_maps(gen, n=8)
    fractions, cells = _fractions_of(labels, grid=4)
    images = labels[:, None].float()
    seen = set()
    for seed in range(6):
        aug = torch.Generator().manual_seed(seed)
        _, moved, extras = augment_batch(images, labels, aug,
                                         {"fractions": fractions, "cell_fractions": cells})
        want_fractions, want_cells = _fractions_of(moved, grid=4)
        assert torch.allclose(extras["cell_fractions"], want_cells)
        assert torch.equal(extras["fractions"], fractions)          # invariant
        assert torch.allclose(want_fractions, fractions)
        seen |= {tuple(moved[i].flatten().tolist()) for i in range(len(moved))}
    assert len(seen) > 8  # several of the 8 rotations/flips were drawn


#: The priors of curriculum DA (the file's fractions as they are; ESTIMATED_PRIORS also holds
#: bounds_from_estimates, size bounds derived from the same fractions).
CURRICULUM_PRIORS = ("estimated_fractions", "estimated_cell_fractions")


def test_estimated_priors_forbid_a_crop_and_are_registered():
    for name in ESTIMATED_PRIORS:
        prior = PRIOR_REGISTRY.get(name)
        assert prior.on_crop == "forbid" and prior.produce is None and prior.estimated
    gen = torch.Generator().manual_seed(6)
    labels = _label_maps(gen)
    fractions, cells = _fractions_of(labels, grid=4)
    for extras in ({"fractions": fractions}, {"cell_fractions": cells}):
        with pytest.raises(WeaksegError, match="describes whole slices.*drop data.crop"):
            random_crop(labels[:, None].float(), labels, gen, 8, extras)


def _estimates(keys: list[str], index: list[int], classes: int = 3, grid: int = 2,
               size: int = 8, spacing: tuple[float, float] | None = (2.0, 2.0)) -> Estimates:
    n = len(keys)
    share = np.arange(1, classes + 1, dtype=np.float32) / sum(range(1, classes + 1))
    fr = np.tile(share, (n, 1))      # the same fractions for every slice; each slice is
    cells = np.broadcast_to(fr[:, :, None, None], (n, classes, grid, grid)).copy()
    for r in range(n):               # marked by its first cell
        cells[r, :, 0, 0] = np.eye(classes, dtype=np.float32)[r % classes]
    return Estimates(keys, index, fr, cells, [f"c{i}" for i in range(classes)], size,
                     spacing, method="test", source="hand")


def test_estimates_file_round_trip_and_lookup_by_slice_identity(tmp_path: Path):
    est = _estimates(["a", "a", "b"], [0, 1, 0])
    path = save_estimates(est, tmp_path / "e.npz")
    back = load_estimates(path)
    assert back.keys == ["a", "a", "b"] and back.index == [0, 1, 0] and back.grid == 2
    assert np.array_equal(back.cell_fractions, est.cell_fractions)
    assert back.spacing == (2.0, 2.0) and back.method == "test" and back.source == "hand"
    # the training slices in another order, a subset
    got = estimated_entries(path, list(CURRICULUM_PRIORS), ["b", "a"], [0, 1],
                            class_names=["c0", "c1", "c2"], size=8, spacing=(2.0, 2.0))
    assert set(got) == {"fractions", "cell_fractions"}
    assert got["cell_fractions"].shape == (2, 3, 2, 2)
    assert torch.equal(got["cell_fractions"][0], torch.from_numpy(est.cell_fractions[2]))
    assert torch.equal(got["cell_fractions"][1], torch.from_numpy(est.cell_fractions[1]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".weakseg-tmp")]


@pytest.mark.parametrize("change, match", [
    ({"keys": ["a", "c"], "index": [0, 3]}, r"no estimate for 1 of the 2 training slices "
                                            r"\(c slice 3\); estimate again"),
    ({"class_names": ["bg", "c1", "c2"]}, r"has classes \['c0', 'c1', 'c2'\], this data "
                                          r"\['bg', 'c1', 'c2'\]"),
    ({"size": 16}, "was estimated on a 8² canvas at 2 × 2 mm, this run trains on a 16² canvas"),
    ({"spacing": None}, "this run trains on a 8² canvas at square resize"),
])
def test_lookup_refuses_other_slices_classes_or_grids(tmp_path: Path, change, match):
    path = save_estimates(_estimates(["a", "b"], [0, 0]), tmp_path / "e.npz")
    args = {"keys": ["a", "b"], "index": [0, 0], "class_names": ["c0", "c1", "c2"],
            "size": 8, "spacing": (2.0, 2.0), **change}
    with pytest.raises(WeaksegError, match=match) as info:
        estimated_entries(path, ["estimated_fractions"], args.pop("keys"), args.pop("index"),
                          **args)
    assert "\n" not in str(info.value) and "data.target.estimates" in str(info.value)
    odd = save_estimates(_estimates(["a"], [0], grid=4, size=6, spacing=None),
                         tmp_path / "odd.npz")
    with pytest.raises(WeaksegError, match="4 × 4 grid, which does not divide the 6²"):
        estimated_entries(odd, ["estimated_fractions"], ["a"], [0], class_names=["c0", "c1",
                                                                                  "c2"],
                          size=6, spacing=None)


def test_unreadable_estimates_files_are_one_line_errors(tmp_path: Path):
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    for name, match in (("garbage.npz", "cannot read"), ("other.npz", "is not an estimates "
                                                                      "file"),
                        ("missing.npz", "not found; write it with 'weakseg estimate-priors")):
        with pytest.raises(WeaksegError, match=match):
            load_estimates(tmp_path / name, where="data.target.estimates")


# ------------------------------------------------------------------------------ estimator


class _Probabilities(nn.Module):
    """A 'network' whose softmax is known: class 1 has probability 0.9 where the image is
    1 and 0.2 where it is 0 (two classes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = torch.where(x[:, :1] > 0.5, 0.9, 0.2)
        return torch.cat([(1 - p1).log(), p1.log()], dim=1)


def test_estimator_on_a_hand_built_case():
    image = torch.zeros(2, 1, 4, 4)
    image[0, 0, :2, :2] = 1.0                                  # top-left cell bright
    image[1] = 1.0                                             # all bright
    fractions, cells = estimate_fractions(_Probabilities(), image, grid=2, batch_size=1)
    assert fractions.shape == (2, 2) and cells.shape == (2, 2, 2, 2)
    assert fractions[0].tolist() == pytest.approx([1 - 0.375, 0.375])  # (4·0.9 + 12·0.2)/16
    assert torch.allclose(cells[0, 1], torch.tensor([[0.9, 0.2], [0.2, 0.2]]))
    assert fractions[1].tolist() == pytest.approx([0.1, 0.9])
    assert torch.allclose(cells.sum(1), torch.ones(2, 2, 2))
    # the flips of test-time augmentation are flipped back: the same for this model
    f_tta, c_tta = estimate_fractions(_Probabilities(), image, grid=2, tta=True)
    assert torch.allclose(f_tta, fractions) and torch.allclose(c_tta, cells)
    with pytest.raises(WeaksegError, match="grid 3 does not divide slices of 4x4"):
        estimate_fractions(_Probabilities(), image, grid=3)


# ------------------------------------------------------------------------------ config


def _curriculum_config(estimates: str, epochs: int = 2, **changes: object) -> dict:
    """The phantom adaptation config of test_adapt with full source labels and the
    label-distribution loss on the target."""
    raw = adapt_config(epochs=epochs, priors=list(CURRICULUM_PRIORS), estimates=estimates)
    raw["data"]["annotation"] = "full"
    raw["loss"] = [{"name": "ce_dice"},
                   {"name": "label_distribution", "weight": 0.5, "domain": "target",
                    "params": {"cell_weight": 1.0}}]
    for key, value in changes.items():
        section, name = key.split("__")
        raw[section][name] = value
    return raw


@pytest.mark.parametrize("edit, match", [
    (lambda r: r["data"]["target"].update(priors=["tags"]),
     r"data.target.priors 'tags' is computed from full label maps.*the target takes "
     "estimated_fractions, estimated_cell_fractions"),
    (lambda r: r["data"]["target"].update(estimates=None),
     "data.target.estimates is unset; write one with 'weakseg estimate-priors"),
    (lambda r: r["data"]["target"].update(priors=[]),
     "data.target.estimates is set but data.target.priors lists none"),
    (lambda r: r["data"]["target"].update(priors=["estimated_fractoins"]),
     "unknown prior 'estimated_fractoins' in data.target.priors.*did you mean"),
    (lambda r: r["data"]["target"].update(priors=["estimated_fractions"]),
     r"loss 'label_distribution' needs 'cell_fractions' in every batch on data.target; add "
     r"data.target.priors: \[estimated_cell_fractions\] and data.target.estimates"),
    (lambda r: r["data"].update(crop=16),
     "'estimated_fractions' gives class fractions of whole slices.*drop data.crop"),
    (lambda r: r["loss"][1].update(domain="source"),
     r"loss 'label_distribution' needs 'fractions' in every batch; add data.priors: "
     r"\[estimated_fractions\]"),
])
def test_bad_curriculum_configs_are_one_line_errors(edit, match):
    raw = _curriculum_config("estimates.npz")
    edit(raw)
    with pytest.raises(WeaksegError, match=match) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ whole path


def _source_run(tmp_path: Path) -> Path:
    """A source run on the phantom with full labels (validated on the phantom target)."""
    raw = adapt_config(epochs=1)
    raw["data"]["annotation"] = "full"
    raw["loss"] = [{"name": "ce_dice"}]
    del raw["data"]["target"]["train"]
    train(config_from_dict(raw), tmp_path / "source", progress=False, log=_quiet)
    return tmp_path / "source" / "best.pt"


def test_train_source_estimate_adapt_and_resume(tmp_path: Path, capsys):
    """The whole D3 path on a phantom → phantom shift: a source run, ``weakseg
    estimate-priors`` on the target's training slices, an adaptation run with the
    label-distribution loss on the target, and a resume identical to the uninterrupted run."""
    source = _source_run(tmp_path)
    estimates = tmp_path / "estimates.npz"
    cfg_path = tmp_path / "curriculum.yaml"
    cfg_path.write_text(yaml.safe_dump(_curriculum_config(str(estimates))))
    assert main(["estimate-priors", "--checkpoint", str(source), "--config", str(cfg_path),
                 "--out", str(estimates), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "estimated the class fractions of 8 slices of data.target (phantom, 2 volumes)" in out
    est = load_estimates(estimates)
    assert est.keys == ["phantom_000"] * 4 + ["phantom_001"] * 4 and est.index == [0, 1, 2, 3] * 2
    assert est.fractions.shape == (8, 4) and est.cell_fractions.shape == (8, 4, 4, 4)
    assert np.allclose(est.fractions.sum(1), 1, atol=1e-5)
    assert np.allclose(est.cell_fractions.sum(1), 1, atol=1e-5)
    # the global fractions are the means of the cells (equal cells)
    assert np.allclose(est.cell_fractions.mean((2, 3)), est.fractions, atol=1e-5)
    assert est.size == 32 and est.spacing == pytest.approx(SPACING)

    # the same numbers from the library, on the slices as the trainer builds them
    cfg = config_from_dict(_curriculum_config(str(estimates)))
    again = estimate_priors(source, cfg)
    assert np.allclose(again.fractions, est.fractions, atol=1e-6)

    lines: list[str] = []
    train(cfg, tmp_path / "ref", progress=False, log=lines.append)
    assert any(line.startswith("data.target priors estimated_fractions, "
                               "estimated_cell_fractions from") for line in lines)
    rows = list(csv.DictReader(open(tmp_path / "ref" / "log.csv")))
    assert {"train_label_distribution_target", "train_label_distribution_target_global",
            "train_label_distribution_target_cells"} <= set(rows[0])
    assert all(float(r["train_label_distribution_target"]) >= 0 for r in rows)
    assert len(load_checkpoint(tmp_path / "ref" / "last.pt")["estimates_sha256"]
               ["data.target"]) == 64

    train(cfg, tmp_path / "cut", progress=False, log=_quiet, stop_after_epoch=1)
    train(cfg, tmp_path / "cut", resume=True, progress=False, log=_quiet)
    ref, cut = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("ref", "cut"))
    assert all(torch.equal(ref[k], cut[k]) for k in ref)

    # a resume refuses an estimates file replaced in between
    train(cfg, tmp_path / "changed", progress=False, log=_quiet, stop_after_epoch=1)
    assert main(["estimate-priors", "--checkpoint", str(source), "--config", str(cfg_path),
                 "--out", str(estimates), "--quiet", "--force", "--grid", "2"]) == 0
    with pytest.raises(WeaksegError, match="data.target.estimates changed since the run"):
        train(cfg, tmp_path / "changed", resume=True, progress=False, log=_quiet)


def test_estimator_reads_no_target_label(tmp_path: Path, monkeypatch):
    """The estimates come from the images alone: the target's label maps may be garbage."""
    import weakseg.adapt.curriculum as curriculum
    from weakseg.data import DATASETS

    source = _source_run(tmp_path)
    cfg = config_from_dict(_curriculum_config("unused.npz"))
    real = DATASETS.build

    def without_labels(name: str, **params: object):
        vset = real(name, **params)
        for vol in vset.volumes:
            vol.label = None
            vol.annotations.clear()
        return vset

    clean = estimate_priors(source, cfg)
    monkeypatch.setattr(curriculum.DATASETS, "build", without_labels)
    blind = estimate_priors(source, cfg)
    assert np.array_equal(clean.fractions, blind.fractions)


def test_build_slices_refuses_estimated_priors():
    from weakseg.data import DATASETS

    vset = DATASETS.build("phantom", num_volumes=1, size=32, slices=2)
    with pytest.raises(WeaksegError, match="read from an estimates file"):
        build_slices(vset.volumes, annotation="full", num_classes=4, size=32,
                     priors=["estimated_fractions"])


def test_shipped_curriculum_config_matches_its_source_run():
    """configs/lge_curriculum.yaml is estimated with the best.pt of lge_source_only.yaml: the
    same network, source data, 2 mm grid and canvas (else estimate-priors refuses it), and
    whole canvases (the estimates describe whole slices)."""
    from weakseg.config import load_config

    from .conftest import REPO

    cur = load_config(REPO / "configs" / "lge_curriculum.yaml")
    src = load_config(REPO / "configs" / "lge_source_only.yaml")
    assert cur.model == src.model and cur.data.spacing == src.data.spacing == [2.0, 2.0]
    assert cur.data.size == src.data.size and cur.data.crop is None
    assert (cur.data.name, cur.data.train, cur.data.annotation) == (src.data.name,
                                                                    src.data.train, "full")
    assert cur.data.target is not None and src.data.target is not None
    assert cur.data.target.params == src.data.target.params and cur.data.target.train
    assert cur.data.target.priors == list(CURRICULUM_PRIORS)
    assert [(t.name, t.domain) for t in cur.loss] == [("ce_dice", "source"),
                                                      ("label_distribution", "target")]


def test_source_free_curriculum_estimates_the_data_itself(tmp_path: Path):
    """Without a target block the data: training slices are estimated and constrained
    (source-free: train.init names the source run, no source image is read)."""
    source = _source_run(tmp_path)
    raw = adapt_config(epochs=1)
    del raw["data"]["target"]
    raw["data"].update(name="phantom", annotation="none", train="0-1", val="2-3",
                       params={"num_volumes": 4, "size": 48, "slices": 4, "seed": 1,
                               "noise": 0.15})
    raw["train"]["init"] = str(source)
    raw["loss"] = [{"name": "entropy", "weight": 0.1},
                   {"name": "label_distribution", "params": {"cell_weight": 0.5}}]
    estimates = tmp_path / "self.npz"
    raw["data"].update(priors=list(CURRICULUM_PRIORS), estimates=str(estimates))
    cfg = config_from_dict(raw)
    save_estimates(estimate_priors(source, cfg, grid=2), estimates)
    assert load_estimates(estimates).keys[0] == "phantom_000"
    train(cfg, tmp_path / "free", progress=False, log=_quiet)
    rows = list(csv.DictReader(open(tmp_path / "free" / "log.csv")))
    assert "train_label_distribution_cells" in rows[0] and "val_dice_mean" in rows[0]
