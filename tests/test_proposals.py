"""Proposals: graph cut (exhaustive references), mean-field (naive O(N²) reference), Pathak
(equal to the constraint loss's proposal), CBST (hand-built maps)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.constrain.lagrangian import pathak_proposal
from weakseg.errors import WeaksegError
from weakseg.filtering import bilateral_features
from weakseg.losses import LOSSES
from weakseg.losses.constraints import ConstraintLoss, size_constraints
from weakseg.losses.proposals import (
    PROPOSALS,
    CBSTProposal,
    GraphCutProposal,
    PathakProposal,
    RoundSchedule,
    alpha_expansion,
    class_balanced_labels,
    graphcut_labels,
    grid_edges,
    mean_field,
    potts_energy,
)
from weakseg.losses.proposals import graphcut as graphcut_module
from weakseg.losses.proposals.graphcut import _expansion_move, neighbour_offsets

pytest.importorskip("maxflow")

IGNORE = -100


def _case(rng: np.random.Generator, shape: tuple[int, ...], c: int, labelled: int = 0,
          sharp: float = 1.0):
    log_p = np.log(rng.dirichlet(np.ones(c) * sharp, size=shape)).transpose(
        (len(shape), *range(len(shape))))
    image = rng.random((1, *shape))
    target = np.full(shape, IGNORE)
    flat = target.reshape(-1)
    for p in rng.choice(flat.size, size=labelled, replace=False):
        flat[p] = rng.integers(c)
    return log_p, image, target


def _brute(unary: np.ndarray, edges, lam: float, target: np.ndarray | None = None):
    """The exhaustive minimum (over labellings that keep the weak labels)."""
    c, n = unary.shape
    labs = np.array(list(itertools.product(range(c), repeat=n)))
    if target is not None:
        keep = ((target == IGNORE) | (labs == target)).all(1)
        labs = labs[keep]
    i, j, w = edges
    data = unary[labs, np.arange(n)].sum(1)
    pair = ((labs[:, i] != labs[:, j]) * w).sum(1)
    return float((data + lam * pair).min())


# ------------------------------------------------------------------------------ graph cut


def test_neighbourhoods_and_weights():
    assert len(neighbour_offsets(2)) == 4 and len(neighbour_offsets(3)) == 13
    image = np.zeros((1, 3, 4))
    i, j, w = grid_edges(image, sigma=0.1)
    # 8-neighbour on 3×4: 9 horizontal + 8 vertical + 12 diagonal pairs, each once
    assert len(i) == 29 and len({(a, b) for a, b in zip(i, j, strict=True)}) == 29
    assert sorted(set(np.round(w, 6))) == [round(1 / math.sqrt(2), 6), 1.0]
    i3, _, w3 = grid_edges(np.zeros((1, 2, 2, 2)), sigma=0.1)
    assert len(i3) == 28  # 26-neighbour on 2×2×2: every pair of the 8 voxels
    assert sorted(set(np.round(w3, 6))) == sorted(
        {round(1 / math.sqrt(k), 6) for k in (1, 2, 3)}, reverse=False)
    image = np.zeros((1, 1, 2))
    image[0, 0, 1] = 0.2
    _, _, w = grid_edges(image, sigma=0.1)
    assert w[0] == pytest.approx(math.exp(-0.04 / 0.02))


@pytest.mark.parametrize("shape", [(3, 4), (2, 2, 3)])
@pytest.mark.parametrize("labelled", [0, 2])
def test_binary_graph_cut_is_the_exhaustive_minimum(shape, labelled):
    rng = np.random.default_rng(sum(shape) + labelled)
    for lam in (0.3, 1.0, 3.0):
        for _ in range(4):
            log_p, image, target = _case(rng, shape, 2, labelled)
            labels = graphcut_labels(log_p, image, target, lam=lam, sigma=0.3)
            edges = grid_edges(image, sigma=0.3)
            unary = -log_p.reshape(2, -1)
            energy = potts_energy(unary, labels.ravel(), edges, lam)
            assert energy == pytest.approx(_brute(unary, edges, lam, target.ravel()), abs=1e-9)
            kept = target != IGNORE
            assert (labels[kept] == target[kept]).all()


@pytest.mark.parametrize("shape", [(3, 3), (2, 2, 2)])
def test_alpha_expansion_three_labels_bound_and_local_minimum(shape):
    """α-expansion: within the factor-2 Potts bound of the exhaustive minimum, and no single
    pixel change improves it. (It is not guaranteed to be exact; we count how often it is.)"""
    rng = np.random.default_rng(len(shape))
    exact = 0
    trials = 12
    for trial in range(trials):
        log_p, image, target = _case(rng, shape, 3, labelled=trial % 3, sharp=0.7)
        lam = (0.5, 1.5, 4.0)[trial % 3]
        labels = graphcut_labels(log_p, image, target, lam=lam, sigma=0.3).ravel()
        edges = grid_edges(image, sigma=0.3)
        unary = -log_p.reshape(3, -1)
        energy = potts_energy(unary, labels, edges, lam)
        best = _brute(unary, edges, lam, target.ravel())
        assert best - 1e-9 <= energy <= 2 * best + 1e-9
        exact += energy <= best + 1e-9
        flat_t = target.ravel()
        assert (labels[flat_t != IGNORE] == flat_t[flat_t != IGNORE]).all()
        for p in np.flatnonzero(flat_t == IGNORE):  # ICM cannot improve it
            for lab in range(3):
                other = labels.copy()
                other[p] = lab
                assert potts_energy(unary, other, edges, lam) >= energy - 1e-9
    assert exact >= trials // 2  # in practice nearly always exact on these tiny grids


def test_expansion_move_is_the_best_move():
    """Each move is the exact minimum over 'keep y_p or switch to α' (2^9 candidates)."""
    rng = np.random.default_rng(3)
    for alpha in range(3):
        log_p, image, _ = _case(rng, (3, 3), 3)
        unary = -log_p.reshape(3, -1)
        edges = grid_edges(image, sigma=0.3)
        labels = rng.integers(0, 3, 9)
        move = _expansion_move(unary, labels, alpha, edges, 1.3)
        assert ((move == labels) | (move == alpha)).all()
        best = min(potts_energy(unary, np.where(np.array(x, bool), alpha, labels), edges, 1.3)
                   for x in itertools.product((0, 1), repeat=9))
        assert potts_energy(unary, move, edges, 1.3) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("shape", [(12, 12), (4, 6, 6)])
def test_alpha_expansion_energy_never_increases(shape):
    rng = np.random.default_rng(5)
    log_p, image, _ = _case(rng, shape, 4)
    unary = -log_p.reshape(4, -1)
    edges = grid_edges(image, sigma=0.2)
    init = rng.integers(0, 4, unary.shape[1])
    labels, energies = alpha_expansion(unary, edges, 2.0, init, max_cycles=10)
    assert len(energies) > 2
    assert all(b < a for a, b in zip(energies, energies[1:], strict=False))
    assert potts_energy(unary, labels, edges, 2.0) == pytest.approx(energies[-1])
    assert energies[-1] < potts_energy(unary, unary.argmin(0), edges, 2.0)


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("spatial", [(10, 9), (4, 5, 6)])
def test_graphcut_proposal_keeps_hard_constraints(classes, spatial):
    """Even against a confident prediction and a strong smoothness weight (2D and 3D)."""
    gen = torch.Generator().manual_seed(classes)
    logits = 8 * torch.randn(2, classes, *spatial, generator=gen)
    target = torch.full((2, *spatial), IGNORE)
    mask = torch.rand(target.shape, generator=gen) < 0.2
    target[mask] = torch.randint(0, classes, (int(mask.sum()),), generator=gen)
    batch = {"image": torch.rand(2, 1, *spatial, generator=gen), "target": target}
    out = GraphCutProposal(lam=50.0, sigma=0.5)(logits, batch)
    assert out.shape == target.shape and out.dtype == torch.long
    assert (out[mask] == target[mask]).all()
    assert ((out >= 0) & (out < classes)).all()
    # λ = 0: the arg-max of the prediction with the weak labels imposed
    free = GraphCutProposal(lam=0.0)(logits, batch)
    assert torch.equal(free, torch.where(mask, target, logits.argmax(1)))


@pytest.mark.parametrize("classes", [2, 3])
def test_graphcut_allowed_labels_exhaustive(classes):
    """``allowed`` is a hard constraint: the result is the exhaustive minimum over the
    labellings that respect it (binary exact; 3 labels within the Potts bound), 2D and 3D."""
    rng = np.random.default_rng(classes)
    for shape in ((3, 3), (2, 2, 2)):
        for trial in range(4):
            log_p, image, target = _case(rng, shape, classes, labelled=trial % 2)
            allowed = rng.random((classes, *shape)) < 0.6
            allowed[0] = True  # a label every pixel may take
            flat_t = target.reshape(-1)
            allowed.reshape(classes, -1)[flat_t[flat_t != IGNORE], flat_t != IGNORE] = True
            labels = graphcut_labels(log_p, image, target, lam=1.0, sigma=0.3,
                                     allowed=allowed).ravel()
            assert allowed.reshape(classes, -1)[labels, np.arange(labels.size)].all()
            unary = -log_p.reshape(classes, -1)
            edges = grid_edges(image, sigma=0.3)
            n = unary.shape[1]
            labs = np.array(list(itertools.product(range(classes), repeat=n)))
            ok = allowed.reshape(classes, -1)[labs, np.arange(n)].all(1)
            ok &= ((flat_t == IGNORE) | (labs == flat_t)).all(1)
            i, j, w = edges
            best = float((unary[labs[ok], np.arange(n)].sum(1)
                          + ((labs[ok][:, i] != labs[ok][:, j]) * w).sum(1)).min())
            energy = potts_energy(unary, labels, edges, 1.0)
            if classes == 2:
                assert energy == pytest.approx(best, abs=1e-9)
            else:
                assert best - 1e-9 <= energy <= 2 * best + 1e-9


def test_graphcut_inside_the_boxes():
    """``boxes: true``: a foreground class never leaves its box, the background goes
    anywhere; the input batch is not modified; without the prior it is a clear error."""
    gen = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(2, 3, 12, 12, generator=gen)
    boxes = torch.zeros(2, 3, 12, 12, dtype=torch.bool)
    boxes[:, 1, 2:6, 2:7] = True
    boxes[0, 2, 5:11, 4:10] = True  # image 1 has no class-2 box
    batch = {"image": torch.rand(2, 1, 12, 12, generator=gen),
             "target": torch.full((2, 12, 12), IGNORE), "boxes": boxes}
    before = boxes.clone()
    prop = PROPOSALS.build("graphcut", lam=0.5, sigma=0.2, boxes=True)
    assert prop.inputs == ("target", "image", "boxes")
    out = prop(logits, batch)
    assert torch.equal(boxes, before)
    for c in (1, 2):
        assert not ((out == c) & ~boxes[:, c]).any()
    assert not (out[1] == 2).any()
    free = PROPOSALS.build("graphcut", lam=0.5, sigma=0.2)(logits, batch)
    assert ((free == 1) & ~boxes[:, 1]).any()  # the constraint is what keeps it inside
    with pytest.raises(ValueError, match="boxes"):
        prop(logits, {"image": batch["image"], "target": batch["target"]})


def test_graphcut_smooths_a_noisy_prediction():
    gen = torch.Generator().manual_seed(0)
    truth = torch.zeros(1, 16, 16, dtype=torch.long)
    truth[:, 4:12, 4:12] = 1
    image = truth[:, None].float() * 0.6 + 0.2
    logits = 3 * F.one_hot(truth, 2).movedim(-1, 1).float() + 2.5 * torch.randn(
        1, 2, 16, 16, generator=gen)
    noisy = (logits.argmax(1) != truth).float().mean()
    out = GraphCutProposal(lam=2.0, sigma=0.1)(logits, {"image": image,
                                                       "target": torch.full_like(truth, -100)})
    assert (out != truth).float().mean() < noisy / 3


def test_graphcut_without_pymaxflow_is_one_line(monkeypatch):
    monkeypatch.setattr(graphcut_module, "maxflow", None)
    with pytest.raises(WeaksegError, match=r"pip install 'weakseg\[graphcut\]'") as info:
        PROPOSALS.build("graphcut")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("params", [{"lam": -1.0}, {"sigma": 0.0}, {"max_cycles": 0},
                                    {"boxes": "yes"}])
def test_graphcut_bad_parameters(params):
    with pytest.raises(WeaksegError, match=next(iter(params))):
        PROPOSALS.build("graphcut", **params)


# ----------------------------------------------------------------------------- mean-field


def _naive_mean_field(logits, image, target, *, lam, sigma_xy, sigma_intensity, iterations):
    """O(N²) reference: explicit kernel matrix without the diagonal, Potts, clamped labels."""
    b, c = logits.shape[:2]
    f = bilateral_features(image, sigma_xy=sigma_xy, sigma_intensity=sigma_intensity)
    out = []
    for i in range(b):
        feats = f[i].reshape(f.shape[1], -1).T.double()
        k = torch.exp(-0.5 * torch.cdist(feats, feats).square())
        k.fill_diagonal_(0)
        log_s = logits[i].reshape(c, -1).double().log_softmax(0)
        t = target[i].reshape(-1)
        lab = t != IGNORE
        onehot = F.one_hot(t.clamp_min(0), c).T.double()
        q = log_s.exp()
        q[:, lab] = onehot[:, lab]
        for _ in range(iterations):
            q = (log_s + lam * (q @ k.T)).softmax(0)
            q[:, lab] = onehot[:, lab]
        out.append(q.reshape(logits[i].shape))
    return torch.stack(out)


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 4)])
def test_mean_field_matches_naive_reference(spatial):
    gen = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(2, 3, *spatial, generator=gen, dtype=torch.float64)
    image = torch.rand(2, 1, *spatial, generator=gen, dtype=torch.float64)
    target = torch.full((2, *spatial), IGNORE)
    target.view(2, -1)[:, :3] = torch.tensor([0, 2, 1])
    kw = {"lam": 0.4, "sigma_xy": 2.0, "sigma_intensity": 0.3, "iterations": 4}
    fast = mean_field(logits, image, target, backend="exact", **kw)
    naive = _naive_mean_field(logits, image, target, **kw)
    torch.testing.assert_close(fast, naive, atol=1e-10, rtol=1e-10)
    assert torch.equal(fast.view(2, 3, -1)[0, :, 0], torch.tensor([1.0, 0, 0],
                                                                   dtype=torch.float64))


def test_mean_field_grid_backend_close_to_naive():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 20, 20, generator=gen, dtype=torch.float64)
    image = torch.rand(1, 1, 20, 20, generator=gen, dtype=torch.float64)
    target = torch.full((1, 20, 20), IGNORE)
    kw = {"lam": 0.05, "sigma_xy": 3.0, "sigma_intensity": 0.2, "iterations": 3}
    fast = mean_field(logits, image, target, backend="grid", **kw)
    naive = _naive_mean_field(logits, image, target, **kw)
    assert (fast - naive).abs().max() < 0.05
    assert (fast.argmax(1) == naive.argmax(1)).float().mean() > 0.97


def test_meanfield_proposal_hard_and_soft():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 6, 6, generator=gen)
    target = torch.full((2, 6, 6), IGNORE)
    target[:, 0, 0] = 3
    batch = {"image": torch.rand(2, 1, 6, 6, generator=gen), "target": target}
    hard = PROPOSALS.build("meanfield", lam=0.1, iterations=2)(logits, batch)
    soft = PROPOSALS.build("meanfield", lam=0.1, iterations=2, hard=False)(logits, batch)
    assert hard.dtype == torch.long and (hard[:, 0, 0] == 3).all()
    assert soft.shape == logits.shape and torch.equal(soft.argmax(1)[:, 1:], hard[:, 1:])
    with pytest.raises(WeaksegError, match="lam"):
        PROPOSALS.build("meanfield", lam=-0.5)


# --------------------------------------------------------------------------------- Pathak


def test_pathak_proposal_equals_the_constraint_loss_proposal():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    bounds = torch.tensor([[0.0, 64.0], [20.0, 30.0], [0.0, 5.0]]).expand(2, 3, 2)
    prop = PathakProposal(constraint={"family": "size"}, iterations=25, lr=3.0, num_classes=3)
    target = prop(logits, {"bounds": bounds})
    direct = pathak_proposal(logits, lambda z: size_constraints(z, bounds).g.flatten(1),
                             iterations=25, lr=3.0).probs
    assert torch.equal(target, direct)
    # the 'proposal' loss with it = the constraint loss with objective 'proposal'
    loss = LOSSES.build("proposal", proposal={"name": "pathak", "constraint": "size",
                                              "iterations": 25, "lr": 3.0}, num_classes=3)
    old = ConstraintLoss("size", {"method": "proposal", "iterations": 25, "lr": 3.0},
                         num_classes=3)
    assert loss.inputs == ("bounds",)
    assert torch.equal(loss(logits, bounds=bounds), old(logits, bounds=bounds))


def test_pathak_needs_an_affine_family():
    with pytest.raises(WeaksegError, match="affine"):
        LOSSES.build("proposal", proposal={"name": "pathak", "constraint": "centroid"})


# ----------------------------------------------------------------------------------- CBST


def test_cbst_keeps_the_fraction_of_each_class_binary():
    """Two classes: 10 pixels predicted 0 (conf .95….5), 4 predicted 1; p = 0.5 keeps the
    top 5 and top 2 (both rules agree with two classes)."""
    s0 = torch.tensor([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.51,
                       0.4, 0.3, 0.2, 0.1])
    probs = torch.stack([s0, 1 - s0])[None, :, None, :]                       # (1, 2, 1, 14)
    for normalize in (True, False):
        labels = class_balanced_labels(probs, 0.5, normalize=normalize)[0, 0]
        assert labels.tolist() == [0] * 5 + [IGNORE] * 5 + [IGNORE] * 2 + [1] * 2
    assert (class_balanced_labels(probs, 1.0)[0, 0] == probs.argmax(1)[0, 0]).all()
    assert (class_balanced_labels(probs, 0.0) == IGNORE).all()


def test_cbst_per_class_fraction_three_classes():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 10, 10, generator=gen)
    logits[:, 2] -= 2.0  # a rare class
    probs = logits.softmax(1)
    pred = probs.argmax(1)
    labels = class_balanced_labels(probs, 0.3, normalize=False)
    for c in range(3):
        n_c = int((pred == c).sum())
        assert int((labels == c).sum()) == math.ceil(0.3 * n_c)   # no ties in random maps
        assert ((labels == c) <= (pred == c)).all()
    # Zou's normalised rule keeps about the same number, per class of its arg-max
    norm = class_balanced_labels(probs, 0.3)
    assert abs(int((norm != IGNORE).sum()) - int((labels != IGNORE).sum())) <= 10


def test_round_schedule_is_monotone_and_validated():
    s = RoundSchedule(p0=0.2, p_step=0.1, p_max=0.5, epochs_per_round=2)
    ps = [s.p] + [s.step() for _ in range(8)]
    assert ps == sorted(ps) and ps[0] == 0.2 and ps[-1] == 0.5 and ps[1] == 0.2
    restored = RoundSchedule(p0=0.2, p_step=0.1, p_max=0.5, epochs_per_round=2)
    restored.load_state_dict(s.state_dict())
    assert restored.p == s.p and restored.round == 4
    with pytest.raises(ValueError, match="never keeps a pixel"):
        RoundSchedule(p0=0.0, p_step=0.0)
    with pytest.raises(ValueError, match="never keeps a pixel"):
        RoundSchedule(p0=0.2, p_max=0.0)
    with pytest.raises(ValueError, match="p_max"):
        RoundSchedule(p0=0.6, p_max=0.5)


def test_cbst_round_in_the_state_dict_and_weak_labels_win():
    prop = CBSTProposal(p0=0.2, p_step=0.1, p_max=0.5)
    prop.epoch_step()
    prop.epoch_step()
    fresh = CBSTProposal(p0=0.2, p_step=0.1, p_max=0.5)
    fresh.load_state_dict(prop.state_dict())
    assert fresh.schedule.round == 2 and fresh.schedule.p == pytest.approx(0.4)
    target = torch.full((1, 4, 4), IGNORE)
    target[0, 0, 0] = 2
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 5.0
    assert fresh(logits, {"target": target})[0, 0, 0] == 2


def test_cbst_spatial_prior_from_labelled_pixels():
    prop = CBSTProposal(p0=1.0, p_max=1.0, spatial_prior=True, prior_grid=2, num_classes=2)
    target = torch.full((1, 8, 8), IGNORE)
    target[0, :4, :4] = 1        # class 1 labelled in the top-left cell only
    target[0, 4:, 4:] = 0
    logits = torch.zeros(1, 2, 8, 8)  # undecided everywhere
    prop.train()
    out = prop(logits, {"target": target})
    prior = prop.prior((8, 8))
    assert prior is not None and prior.shape == (2, 8, 8)
    assert prior[1, 0, 0] > 0.9 and prior[0, 7, 7] > 0.9
    assert (out[0, :4, :4] == 1).all()
    state = prop.state_dict()
    again = CBSTProposal(p0=1.0, p_max=1.0, spatial_prior=True, prior_grid=2, num_classes=2)
    again.load_state_dict(state)
    assert torch.equal(again.counts, prop.counts)
    with pytest.raises(WeaksegError, match="num_classes"):
        PROPOSALS.build("cbst", spatial_prior=True)
