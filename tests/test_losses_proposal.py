"""The ``proposal`` loss: CE toward a proposal, per-image cache, state, config errors, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from weakseg.cli import main
from weakseg.config import config_from_dict
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.trainer import train
from weakseg.errors import WeaksegError
from weakseg.losses import LOSSES, ProposalLoss, proposal_cross_entropy
from weakseg.losses.proposals import graphcut as graphcut_module
from weakseg.losses.recipe import LossRecipe, LossTerm

from .conftest import REPO, tiny_config

pytest.importorskip("maxflow")

IGNORE = -100


def _batch(b: int = 2, c: int = 3, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, n, n, generator=gen, requires_grad=True)
    target = torch.full((b, n, n), IGNORE)
    target[:, 0, :3] = torch.tensor([0, 1, 2])[:c] if c >= 3 else 0
    return logits, {"image": torch.rand(b, 1, n, n, generator=gen), "target": target,
                    "index": torch.arange(b)}


def test_cross_entropy_references():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    full = torch.randint(0, 3, (2, 4, 5), generator=gen)
    assert torch.allclose(proposal_cross_entropy(logits, full), F.cross_entropy(logits, full))
    soft = torch.rand(2, 3, 4, 5, generator=gen).softmax(1)
    assert torch.allclose(proposal_cross_entropy(logits, soft), F.cross_entropy(logits, soft))
    partial = full.clone()
    partial[:, :2] = IGNORE
    assert torch.allclose(proposal_cross_entropy(logits, partial),
                          F.cross_entropy(logits, partial, ignore_index=IGNORE))


@pytest.mark.parametrize("name", ["graphcut", "meanfield", "cbst"])
def test_loss_trains_toward_the_detached_proposal(name):
    logits, batch = _batch()
    loss = ProposalLoss(name)
    value = loss(logits, **{k: batch[k] for k in loss.inputs})
    target = loss.proposal(logits.detach(), batch)
    assert torch.equal(value, proposal_cross_entropy(logits, target))
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert set(loss.last_stats) == {"kept", "empty", "refreshed"}
    assert loss.label == name


def test_empty_proposal_is_logged_and_contributes_zero():
    """CBST in a round that keeps nothing (p0 = 0) on an unlabelled batch: 0, zero gradient."""
    logits, batch = _batch()
    batch["target"].fill_(IGNORE)
    recipe = LossRecipe([LossTerm("proposal", 1.0, {"proposal": {"name": "cbst", "p0": 0.0,
                                                                 "p_step": 0.2}})])
    total, parts = recipe(logits, batch)
    assert float(total.detach()) == 0.0 and float(parts["cbst"]) == 0.0
    total.backward()
    assert logits.grad is not None and (logits.grad == 0).all()
    assert float(recipe.last_stats["cbst_empty"]) == 1.0
    assert float(recipe.last_stats["cbst_kept"]) == 0.0
    recipe.epoch_step()  # round 1: p = 0.2
    total, _ = recipe(logits.detach(), batch)
    assert float(total) > 0 and float(recipe.last_stats["cbst_empty"]) == 0.0


def test_cache_refreshes_every_k_steps_and_on_a_new_geometry():
    logits, batch = _batch(seed=2)
    loss = ProposalLoss({"name": "graphcut", "lam": 1.0}, every=3)
    assert set(loss.inputs) == {"target", "image", "index"}
    refreshed = []
    for step in range(7):
        z = logits.detach() + 0.5 * step  # a moving prediction
        loss(z, **batch)
        refreshed.append(float(loss.last_stats["refreshed"]))
    assert refreshed == [1, 0, 0, 1, 0, 0, 1]
    first = loss.cache[0].target.long()
    loss(logits.detach() * 3, **batch)  # cached: the target does not follow the prediction
    assert float(loss.last_stats["refreshed"]) == 0
    assert torch.equal(loss.cache[0].target.long(), first)
    flipped = {**batch, "image": batch["image"].flip(-1), "target": batch["target"].flip(-1)}
    loss(logits.detach(), **flipped)   # an augmented view: recomputed
    assert float(loss.last_stats["refreshed"]) == 1
    one = {k: v[1:] for k, v in flipped.items()}
    loss(logits.detach()[1:], **one)   # image 1 alone: its fresh entry is reused
    assert float(loss.last_stats["refreshed"]) == 0
    loss.eval()
    before = (loss.step, dict(loss.cache))
    loss(logits.detach(), **batch)     # eval: fresh proposal, no state change
    assert loss.step == before[0] and loss.cache == before[1]


def test_state_dict_round_trip_gives_identical_continuation():
    logits, batch = _batch(seed=3)
    terms = [LossTerm("proposal", 1.0, {"proposal": {"name": "graphcut"}, "every": 2}),
             LossTerm("proposal", 0.5, {"proposal": {"name": "meanfield", "hard": False},
                                        "every": 3}),
             LossTerm("proposal", 0.5, {"proposal": {"name": "cbst"}})]
    recipe = LossRecipe(terms, num_classes=3)
    for step in range(3):
        recipe(logits.detach() + step, batch)
    recipe.epoch_step()
    state = recipe.state_dict()
    copy = LossRecipe(terms, num_classes=3)
    copy.load_state_dict(state)
    assert copy.losses[0].step == 3 and set(copy.losses[0].cache) == {0, 1}
    assert copy.losses[1].cache[0].target.is_floating_point()
    assert copy.losses[2].proposal.schedule.round == 1
    for step in range(3, 6):
        a, pa = recipe(logits.detach() + step, batch)
        b, pb = copy(logits.detach() + step, batch)
        assert torch.equal(a, b) and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.parametrize("params, message", [
    ({"proposal": {"name": "graphcut", "lam": -1.0}}, "lam"),
    ({"proposal": {"name": "meanfield", "lam": -0.1}}, "lam"),
    ({"proposal": {"name": "cbst", "p0": 0.0, "p_step": 0.0}}, "never keeps a pixel"),
    ({"proposal": {"name": "cbst", "p_max": 0.0}}, "never keeps a pixel"),
    ({"proposal": "grapcut"}, "did you mean 'graphcut'"),
    ({"proposal": {"name": "graphcut", "lamda": 1.0}}, "did you mean 'lam'"),
    ({"proposal": "cbst", "every": 0}, "every"),
    ({"proposal": {"lam": 1.0}}, "name"),
    ({"proposal": {"name": "cbst", "num_classes": 5}}, "num_classes"),
])
def test_config_errors_are_one_line(params, message):
    with pytest.raises(WeaksegError, match=message) as info:
        LossRecipe([LossTerm("proposal", 1.0, params)], num_classes=3)
    assert "\n" not in str(info.value) and "loss 'proposal'" in str(info.value)


def test_graphcut_without_pymaxflow_fails_at_config_time(monkeypatch):
    monkeypatch.setattr(graphcut_module, "maxflow", None)
    raw = tiny_config()
    raw["loss"].append({"name": "proposal", "params": {"proposal": "graphcut"}})
    with pytest.raises(WeaksegError, match=r"needs PyMaxflow: pip install") as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)
    LOSSES.build("proposal", proposal="cbst")  # the others do not need it


def _proposal_config(epochs: int) -> dict:
    raw = tiny_config(train__epochs=epochs)
    raw["train"]["augment"] = False  # so the per-image cache hits
    raw["loss"] = [
        {"name": "partial_ce", "weight": 1.0},
        {"name": "proposal", "weight": 0.5,
         "params": {"proposal": {"name": "graphcut", "lam": 1.0}, "every": 2}},
        {"name": "proposal", "weight": 0.5,
         "params": {"proposal": {"name": "cbst", "p0": 0.2, "p_step": 0.2}}},
    ]
    return raw


def test_resume_keeps_the_cache_step_and_round(tmp_path: Path):
    """Stopped after epoch 2 and resumed = uninterrupted: weights and proposal state."""
    cfg = config_from_dict(_proposal_config(epochs=4))
    train(cfg, tmp_path / "ref", progress=False, log=lambda s: None)
    train(cfg, tmp_path / "cut", progress=False, log=lambda s: None, stop_after_epoch=2)
    train(cfg, tmp_path / "cut", resume=True, progress=False, log=lambda s: None)
    ref, cut = (load_checkpoint(tmp_path / d / "last.pt") for d in ("ref", "cut"))
    assert ref["model"].keys() == cut["model"].keys()
    assert all(torch.equal(ref["model"][k], cut["model"][k]) for k in ref["model"])
    a, b = ref["recipe"]["losses.1._extra_state"], cut["recipe"]["losses.1._extra_state"]
    assert a["step"] == b["step"] > 0 and a["cache"].keys() == b["cache"].keys()
    assert all(torch.equal(a["cache"][k]["target"], b["cache"][k]["target"])
               for k in a["cache"])
    rounds = ref["recipe"]["losses.2.proposal._extra_state"]["schedule"]
    assert rounds == cut["recipe"]["losses.2.proposal._extra_state"]["schedule"]
    assert rounds["epoch"] == 4
    rows = list(csv.DictReader(open(tmp_path / "cut" / "log.csv")))
    ref_rows = list(csv.DictReader(open(tmp_path / "ref" / "log.csv")))
    assert {"train_graphcut", "train_graphcut_refreshed", "train_cbst_kept"} <= set(rows[0])
    assert [r["train_total"] for r in rows] == [r["train_total"] for r in ref_rows]
    # the cache was used: not every image was recomputed at every step
    assert min(float(r["train_graphcut_refreshed"]) for r in rows) < 1


def test_train_shipped_graphcut_config_tiny(tmp_path: Path):
    """configs/phantom_scribbles_graphcut.yaml (scribbles + graph-cut proposal), shrunk."""
    tiny = ["train.epochs=2", "train.threads=1", "data.params.num_volumes=4",
            "data.params.size=32", "data.params.slices=4", "data.size=32", "data.train=0-2",
            "data.val=3", "data.test=", "model.params.base_channels=4", "model.params.depth=2"]
    out = tmp_path / "run"
    argv = ["train", "--config", str(REPO / "configs" / "phantom_scribbles_graphcut.yaml"),
            "--out", str(out), "--quiet"]
    assert main(argv + [a for item in tiny for a in ("--set", item)]) == 0
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"train_partial_ce", "train_graphcut", "train_graphcut_empty",
            "train_graphcut_kept"} <= set(header)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 3, 2, 3, 4)])
def test_gradcheck_proposal_cross_entropy_hard_and_soft(shape):
    """float64 gradcheck in 2D and 3D, hard targets with unlabelled pixels and soft ones."""
    from weakseg.losses.proposal import proposal_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    hard = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    hard.view(-1)[::3] = -100
    soft = torch.rand(shape, generator=g, dtype=torch.float64).softmax(1)
    assert torch.autograd.gradcheck(lambda z: proposal_cross_entropy(z, hard), (logits,))
    assert torch.autograd.gradcheck(lambda z: proposal_cross_entropy(z, soft), (logits,))


def test_boxes_graphcut_and_self_training_from_init_tiny(tmp_path: Path):
    """A box run with the graph cut inside the boxes (``boxes: true`` reads the ``boxes``
    prior), then CBST self-training started from its best.pt (``train.init``); without the
    prior the graph cut with ``boxes: true`` fails at config time with one line."""
    raw = tiny_config(train__epochs=1, data__annotation="none")
    raw["data"]["priors"] = ["boxes"]
    raw["loss"] = [
        {"name": "constraint", "weight": 1.0,
         "params": {"constraint": {"family": "box", "emptiness": "ce"},
                    "objective": {"method": "log_barrier", "units": "pixels"}}},
        {"name": "proposal", "weight": 0.5,
         "params": {"proposal": {"name": "graphcut", "boxes": True}}},
    ]
    train(config_from_dict(raw), tmp_path / "boxes", progress=False, log=lambda s: None)
    header = (tmp_path / "boxes" / "log.csv").read_text().splitlines()[0].split(",")
    assert "train_graphcut_kept" in header
    tuned = tiny_config(train__epochs=1, train__init=str(tmp_path / "boxes" / "best.pt"))
    tuned["loss"].append({"name": "proposal", "params": {"proposal": {"name": "cbst"}}})
    train(config_from_dict(tuned), tmp_path / "cbst", progress=False, log=lambda s: None)
    assert (tmp_path / "cbst" / "best.pt").exists()
    raw["data"]["priors"] = []
    with pytest.raises(WeaksegError, match="boxes") as info:
        train(config_from_dict(raw), tmp_path / "no_prior", progress=False, log=lambda s: None)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "no_prior").exists()


def test_start_epoch_keeps_the_term_off_then_equals_a_fresh_loss(monkeypatch):
    """Before ``start_epoch`` the term is 0 with zero gradient and the proposal is not called;
    from it on, the loss equals one built without a delay (CBST's round starts there too)."""
    logits, batch = _batch(seed=4)
    late = ProposalLoss({"name": "cbst", "p0": 0.2, "p_step": 0.2}, start_epoch=2)
    fresh = ProposalLoss({"name": "cbst", "p0": 0.2, "p_step": 0.2})
    snapshot = {k: v.clone() for k, v in batch.items()}
    calls = []
    monkeypatch.setattr(late.proposal, "forward",
                        lambda *a, **k: calls.append(1) or pytest.fail("proposal computed"))
    for _ in range(2):
        value = late(logits, **batch)
        value.backward()
        assert float(value.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0
        assert float(late.last_stats["kept"]) == 0.0
        late.epoch_step()
    assert not calls and all(torch.equal(batch[k], snapshot[k]) for k in batch)
    monkeypatch.undo()
    assert late.proposal.schedule.round == 0 and late.epoch == 2
    assert torch.equal(late(logits, **batch), fresh(logits, **batch))
    late.epoch_step()
    fresh.epoch_step()
    assert late.proposal.schedule.round == fresh.proposal.schedule.round == 1
    assert late.get_extra_state()["epoch"] == 3


@pytest.mark.parametrize("start", [-1, 1.5, "2", True])
def test_start_epoch_must_be_a_non_negative_integer(start):
    with pytest.raises(WeaksegError, match="start_epoch") as info:
        LossRecipe([LossTerm("proposal", 1.0, {"proposal": "cbst", "start_epoch": start})],
                   num_classes=3)
    assert "\n" not in str(info.value)


def test_start_epoch_in_training_resume_and_a_never_active_term(tmp_path: Path):
    """A term that starts after the last epoch leaves the weights exactly as without it; one
    that starts at epoch 2 is 0 in the log before, active after, and resumes exactly."""
    raw = _proposal_config(epochs=3)
    raw["loss"] = raw["loss"][:2]
    without = dict(raw, loss=raw["loss"][:1])
    raw["loss"][1]["params"]["start_epoch"] = 3
    runs = {"never": raw, "without": without}
    for name, spec in runs.items():
        train(config_from_dict(spec), tmp_path / name, progress=False, log=lambda s: None)
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)

    raw["loss"][1]["params"]["start_epoch"] = 2
    cfg = config_from_dict(raw)
    train(cfg, tmp_path / "ref", progress=False, log=lambda s: None)
    train(cfg, tmp_path / "cut", progress=False, log=lambda s: None, stop_after_epoch=1)
    train(cfg, tmp_path / "cut", resume=True, progress=False, log=lambda s: None)
    ref, cut = (load_checkpoint(tmp_path / d / "last.pt") for d in ("ref", "cut"))
    assert all(torch.equal(ref["model"][k], cut["model"][k]) for k in ref["model"])
    assert ref["recipe"]["losses.1._extra_state"]["epoch"] == 3
    rows = list(csv.DictReader(open(tmp_path / "cut" / "log.csv")))
    graphcut = [float(r["train_graphcut"]) for r in rows]
    assert graphcut[:2] == [0.0, 0.0] and graphcut[2] > 0
