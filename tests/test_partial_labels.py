"""Partially labelled sites (C8): the annotator, the marginal CE, the class-fraction prior."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.annotate import ANNOTATORS
from weakseg.annotate.partial import (
    check_sites,
    labelled_classes,
    partial_sites_entries,
    resolve_sites,
    simulate_partial_sites,
    site_of,
)
from weakseg.constrain import CONSTRAINTS
from weakseg.constrain.fractions import (
    class_fraction_constraints,
    pooled_fractions,
    resolve_fraction_prior,
)
from weakseg.errors import WeaksegError
from weakseg.losses import LOSSES
from weakseg.losses.constraints import ConstraintLoss
from weakseg.losses.partial_labels import (
    MarginalCrossEntropyLoss,
    PriorAwareLoss,
    marginal_cross_entropy,
    prior_aware_loss,
)
from weakseg.losses.recipe import LossRecipe, LossTerm

NAMES = ["background", "RV", "Myo", "LV"]
SHAPES = [(3, 4, 5, 6), (2, 4, 3, 4, 5)]                      # 2D and 3D logits


# ------------------------------------------------------------------------ the annotator


def test_site_is_the_documented_hash_of_seed_and_group():
    for group in ("patient021", "patient022", "case_a"):
        for seed in (0, 7):
            digest = hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()
            assert site_of(group, 3, seed) == int(digest[:16], 16) % 3
    sites = [site_of(f"patient{i:03d}", 3) for i in range(21, 91)]
    assert set(sites) == {0, 1, 2}                             # every site gets patients
    assert [site_of(f"patient{i:03d}", 3, 1) for i in range(21, 91)] != sites   # the seed
    assert site_of("patient021", 1) == 0
    with pytest.raises(WeaksegError, match="number of sites"):
        site_of("patient021", 0)


def _label(shape=(2, 5, 6), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=shape)


@pytest.mark.parametrize("shape", [(5, 6), (2, 5, 6)])
def test_a_site_keeps_its_structures_and_zeroes_the_rest(shape):
    label = _label(shape)
    before = label.copy()
    sites = [["LV"], ["RV", "Myo"], ["Myo"]]
    for group in (f"patient{i:03d}" for i in range(21, 31)):
        site = site_of(group, 3, seed=4)
        keep = {"background": 0, "RV": 1, "Myo": 2, "LV": 3}
        kept = [keep[n] for n in sites[site]]
        out = simulate_partial_sites(label, num_classes=4, seed=123, sites=sites, group=group,
                                     annotation_seed=4, class_names=NAMES)
        assert out.shape == label.shape and out.dtype == np.int64
        expected = np.where(np.isin(label, kept), label, 0)
        assert np.array_equal(out, expected)
        assert not (out == -100).any()
        flags = partial_sites_entries(label, num_classes=4, seed=0, sites=sites, group=group,
                                      annotation_seed=4, class_names=NAMES)
        assert flags["labelled_classes"].tolist() == [c == 0 or c in kept for c in range(4)]
    assert np.array_equal(label, before)                       # input not modified


def test_names_and_indices_agree_and_the_per_volume_seed_is_unused():
    label = _label()
    by_name = simulate_partial_sites(label, num_classes=4, seed=0, sites=[["LV"], ["RV", "Myo"]],
                                     group="patient030", class_names=NAMES)
    by_index = simulate_partial_sites(label, num_classes=4, seed=99, sites=[[3], [1, 2]],
                                      group="patient030")
    assert np.array_equal(by_name, by_index)
    assert ANNOTATORS.get("partial_sites") is simulate_partial_sites
    assert labelled_classes("patient030", sites=[[3], [2, 1]], num_classes=4).dtype == bool
    assert resolve_sites([["LV"], [2, "RV"]], num_classes=4, class_names=NAMES) == [[3], [1, 2]]


@pytest.mark.parametrize(("sites", "match"), [
    ([], "non-empty list of sites"),
    ("LV", "non-empty list of sites"),
    ([["LV"], []], "site 1 is empty"),
    ([["LV"], "RV"], "site 1 must be a list"),
    ([[0]], "class 0 is the background"),
    ([[-1]], "indices are >= 1"),
    ([["LV", "LV"]], "site 0 lists LV twice"),
    ([[1.5]], "a structure is a class name or index"),
])
def test_bad_sites_are_one_line_errors_without_data(sites, match):
    with pytest.raises(WeaksegError, match=match) as info:
        check_sites(sites)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("sites", "names", "match"), [
    ([["LV"], ["Myocard"]], NAMES, r"site 1 names class 'Myocard'.*did you mean 'Myo'"),
    ([["lv"]], NAMES, r"did you mean 'LV'\?\); classes: background, RV, Myo, LV"),
    ([["background"]], NAMES, "lists the background"),
    ([[4]], NAMES, "class 4, outside 1..3"),
    ([["LV", 3]], NAMES, "lists class 3 .'3'. twice"),
    ([["LV"]], None, "class names are unknown"),
])
def test_sites_resolved_against_the_classes(sites, names, match):
    with pytest.raises(WeaksegError, match=match) as info:
        simulate_partial_sites(_label(), num_classes=4, seed=0, sites=sites, group="p1",
                               class_names=names)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("params", "match"), [
    ({"sites": [["LV"], []]}, r"annotator 'partial_sites' \(data.annotation_params\): site 1 "
                              "is empty"),
    ({"sites": [["RV"], [0]]}, "class 0 is the background"),
    ({}, "needs sites"),
    ({"sites": [["LV"]], "group": "patient001"}, "'group' of annotator 'partial_sites'.*is set "
                                                "by weakseg"),
    ({"sites": [["LV"]], "annotation_seed": 3}, "'annotation_seed'.*is set by weakseg"),
    ({"sites": [["LV"]], "site": 1}, r"unknown parameter 'site'.*did you mean 'sites'"),
])
def test_bad_sites_fail_when_the_config_is_read(params, match):
    from weakseg.config import config_from_dict

    raw = {"data": {"annotation": "sim:partial_sites", "annotation_params": params}}
    with pytest.raises(WeaksegError, match=match) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_the_annotator_needs_a_group_and_a_full_map():
    with pytest.raises(WeaksegError, match="needs the group"):
        simulate_partial_sites(_label(), num_classes=4, seed=0, sites=[[1]])
    with pytest.raises(WeaksegError, match="negative value"):
        simulate_partial_sites(np.full((3, 3), -100), num_classes=4, seed=0, sites=[[1]],
                               group="p1")


# ----------------------------------------------------------------------- marginal CE


def _reference_marginal(logits, target, labelled, ignore_index=-100):
    """Loop over pixels: -log(s_0 + sum of the unlabelled classes) for label 0, -log s_y
    otherwise; mean over the labelled pixels. Returns (mean, per-pixel)."""
    probs = logits.softmax(1)
    per_pixel = torch.zeros(target.shape, dtype=logits.dtype)
    flat = target.reshape(target.shape[0], -1)
    p = probs.reshape(*probs.shape[:2], -1)
    for b in range(target.shape[0]):
        for i in range(flat.shape[1]):
            y = int(flat[b, i])
            if y == ignore_index:
                continue
            if y == 0:
                mass = p[b, 0, i] + sum(p[b, c, i] for c in range(1, logits.shape[1])
                                        if labelled is not None and not labelled[b, c])
            else:
                mass = p[b, y, i]
            per_pixel.view(target.shape[0], -1)[b, i] = -torch.log(mass)
    count = int((target != ignore_index).sum())
    return per_pixel.sum() / max(count, 1), per_pixel


def _partial_batch(shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=dtype)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = -100
    labelled = torch.rand(shape[:2], generator=gen) < 0.5
    labelled[0, 1:] = False                                    # one image labels nothing
    labelled[-1] = True                                        # one image labels everything
    flags = labelled.view(*shape[:2], *[1] * (len(shape) - 2)).expand(shape)
    kept = flags.gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
    target = torch.where((target > 0) & ~kept, 0, target)       # unlabelled classes -> 0
    return logits, target, labelled


@pytest.mark.parametrize("shape", SHAPES)
def test_marginal_ce_equals_the_pixel_loop_reference(shape):
    logits, target, labelled = _partial_batch(shape, dtype=torch.float64)
    ref, ref_pixels = _reference_marginal(logits, target, labelled)
    got = marginal_cross_entropy(logits, target, labelled)
    assert torch.allclose(got, ref)
    none = marginal_cross_entropy(logits, target, labelled, reduction="none")
    assert none.shape == target.shape and torch.allclose(none, ref_pixels)
    assert torch.allclose(marginal_cross_entropy(logits, target, labelled, reduction="sum"),
                          ref_pixels.sum())


@pytest.mark.parametrize("shape", SHAPES)
def test_marginal_ce_gradient_equals_the_reference_gradient(shape):
    logits, target, labelled = _partial_batch(shape, seed=1, dtype=torch.float64)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    marginal_cross_entropy(a, target, labelled).backward()
    _reference_marginal(b, target, labelled)[0].backward()
    assert torch.allclose(a.grad, b.grad)
    small = logits[:2, :, :2, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: marginal_cross_entropy(z, target[:2, :2, :2], labelled[:2]), (small,))


@pytest.mark.parametrize("shape", SHAPES)
def test_all_classes_labelled_is_cross_entropy(shape):
    logits, target, _ = _partial_batch(shape, seed=2)
    ce = F.cross_entropy(logits, target, ignore_index=-100)
    assert torch.allclose(marginal_cross_entropy(logits, target), ce)
    everything = torch.ones(shape[:2], dtype=torch.bool)
    assert torch.allclose(marginal_cross_entropy(logits, target, everything), ce)
    background_flag = everything.clone()
    background_flag[:, 0] = False                              # column 0 is not read
    assert torch.equal(marginal_cross_entropy(logits, target, background_flag),
                       marginal_cross_entropy(logits, target, everything))


def test_marginal_ce_hand_values_and_no_labelled_pixel():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.2, 0.1])).view(1, 4, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    labelled = torch.tensor([[True, False, True, False]])      # RV and LV unlabelled
    assert float(marginal_cross_entropy(logits, target, labelled)) == pytest.approx(
        -math.log(0.5 + 0.2 + 0.1))
    target[:] = 2
    assert float(marginal_cross_entropy(logits, target, labelled)) == pytest.approx(
        -math.log(0.2))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    nothing = torch.full((2, 3, 3), -100)
    value = marginal_cross_entropy(z, nothing, torch.zeros(2, 4, dtype=torch.bool))
    value.backward()
    assert float(value.detach()) == 0 and not z.grad.any()


def test_marginal_ce_errors_are_one_line():
    z = torch.randn(2, 4, 3, 3)
    t = torch.zeros(2, 3, 3, dtype=torch.long)
    for bad, match in ((torch.ones(2, 3, dtype=torch.bool), r"shape \(2, 3\).*\(B, C\)"),
                       (torch.ones(2, 4), "bool tensor")):
        with pytest.raises(ValueError, match=match) as info:
            marginal_cross_entropy(z, t, bad)
        assert "\n" not in str(info.value)
    t[0, 0, 0] = 4
    with pytest.raises(ValueError, match="value 4 outside 0..3"):
        marginal_cross_entropy(z, t)
    with pytest.raises(ValueError, match="reduction"):
        MarginalCrossEntropyLoss(reduction="avg")


def test_marginal_ce_leaves_its_inputs_and_module_equals_function():
    logits, target, labelled = _partial_batch((3, 4, 5, 6), seed=3)
    copies = [x.clone() for x in (logits, target, labelled)]
    loss = LOSSES.build("marginal_ce")
    assert isinstance(loss, MarginalCrossEntropyLoss)
    assert loss.optional_inputs == ("labelled_classes",) and loss.needs_labels
    assert torch.equal(loss(logits, target, labelled),
                       marginal_cross_entropy(logits, target, labelled))
    for x, c in zip((logits, target, labelled), copies, strict=True):
        assert torch.equal(x, c)


def test_the_recipe_passes_labelled_classes_when_the_batch_has_it():
    logits, target, labelled = _partial_batch((3, 4, 5, 6), seed=4)
    recipe = LossRecipe([LossTerm("marginal_ce"), LossTerm("partial_ce")])
    _, parts = recipe(logits, {"target": target, "labelled_classes": labelled})
    assert torch.allclose(parts["marginal_ce"], marginal_cross_entropy(logits, target, labelled))
    assert torch.allclose(parts["partial_ce"], F.cross_entropy(logits, target))   # naive
    _, parts = recipe(logits, {"target": target})              # absent: all labelled
    assert torch.allclose(parts["marginal_ce"], parts["partial_ce"])


# --------------------------------------------------------- the prior-aware constraint


def _reference_fractions(logits, labelled, q):
    """Loop: for every class with a prior, the mean soft fraction over the images that do not
    label it; returns {class: (q - mean, mean - q)}."""
    probs = logits.softmax(1)
    out = {}
    for c, qc in q.items():
        rows = [b for b in range(logits.shape[0]) if labelled is None or not labelled[b, c]]
        if not rows:
            continue
        mean = sum(float(probs[b, c].mean()) for b in rows) / len(rows)
        out[c] = (qc - mean, mean - qc)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_labelled", [True, False])
def test_class_fraction_values_equal_the_loop_reference(shape, with_labelled):
    logits, _, labelled = _partial_batch(shape, seed=5)
    labelled = labelled if with_labelled else None
    q = {1: 0.1, 3: 0.25}
    c = class_fraction_constraints(logits, labelled, prior=q)
    assert c.g.shape == (1, shape[1], 2) and c.active.shape == c.g.shape
    ref = _reference_fractions(logits, labelled, q)
    for k in range(shape[1]):
        if k in ref:
            assert c.active[0, k].all()
            assert c.g[0, k].tolist() == pytest.approx(list(ref[k]), abs=1e-6)
        else:
            assert not c.active[0, k].any() and (c.g[0, k] == -math.inf).all()


def test_class_fraction_by_name_and_inactive_when_every_image_labels_the_class():
    logits = torch.zeros(2, 4, 3, 3)                            # every fraction 1/4
    labelled = torch.tensor([[True, True, True, False], [True, True, True, True]])
    c = class_fraction_constraints(logits, labelled, prior={"LV": 0.2, "RV": 0.1},
                                   class_names=NAMES)
    assert c.active[0, :, 0].tolist() == [False, False, False, True]
    assert c.g[0, 3].tolist() == pytest.approx([-0.05, 0.05])
    assert resolve_fraction_prior({"LV": 0.2}, 4, NAMES)[3] == pytest.approx(0.2)


def test_class_fraction_gradient_is_finite_and_inputs_untouched():
    logits, _, labelled = _partial_batch((3, 4, 5, 6), seed=6, dtype=torch.float64)
    copies = (logits.clone(), labelled.clone())
    z = logits.clone().requires_grad_(True)

    def f(x):
        g = class_fraction_constraints(x, labelled, prior={1: 0.1, 2: 0.3, 3: 0.2}).g
        return g[g != -math.inf]

    assert torch.autograd.gradcheck(f, (z,))
    assert torch.equal(logits, copies[0]) and torch.equal(labelled, copies[1])


@pytest.mark.parametrize(("constraint", "objective", "match"), [
    ({"family": "class_fraction"}, "lagrangian", "needs prior"),
    ({"family": "class_fraction", "prior": [0.1, 0.2]}, "lagrangian", "must map classes"),
    ({"family": "class_fraction", "prior": {"LV": 1.5}}, "lagrangian", r"fraction in \[0, 1\]"),
    ({"family": "class_fraction", "prior": {"LV": 0.7, "RV": 0.6}}, "lagrangian", "sum to 1.3"),
    ({"family": "class_fraction", "prior": {"Lv": 0.1}}, "lagrangian",
     r"unknown class 'Lv' \(did you mean 'LV'\?\)"),
    ({"family": "class_fraction", "prior": {7: 0.1}}, "lagrangian", "index 7 does not exist"),
    ({"family": "class_fraction", "prior": {"LV": 0.1}},
     {"method": "lagrangian", "per_image": True}, "per-image multipliers do not apply"),
    ({"family": "class_fraction", "prior": {"LV": 0.1}}, "proposal", "affine"),
])
def test_class_fraction_errors_are_one_line(constraint, objective, match):
    with pytest.raises(ValueError, match=match) as info:
        ConstraintLoss(constraint, objective, num_classes=4, class_names=NAMES)
    assert "\n" not in str(info.value)


def test_class_fraction_is_registered_per_batch():
    family = CONSTRAINTS.get("class_fraction")
    assert family.per_batch and not family.affine
    assert dict(family.optional) == {"labelled": "labelled_classes"}
    loss = ConstraintLoss({"family": "class_fraction", "prior": {"LV": 0.1}}, "lagrangian",
                          num_classes=4, class_names=NAMES)
    assert loss.inputs == () and loss.optional_inputs == ("labelled_classes",)


def test_lagrangian_dual_step_is_the_batch_violation():
    """Shared multipliers (C, 2): λ ← max(0, λ + η g) with the batch-level g; the primal term
    is the mean over the active entries of λ·g."""
    logits, _, labelled = _partial_batch((4, 4, 5, 6), seed=7)
    loss = ConstraintLoss({"family": "class_fraction", "prior": {"RV": 0.5, "LV": 0.05}},
                          {"method": "lagrangian", "dual_lr": 2.0}, num_classes=4,
                          class_names=NAMES)
    loss.train()
    c = class_fraction_constraints(logits, labelled, prior={1: 0.5, 3: 0.05})
    g0 = torch.where(c.active, c.g, torch.zeros(()))[0]
    assert float(loss(logits, labelled_classes=labelled)) == 0.0          # λ starts at 0
    lam = loss.objective.terms["class_fraction"].multipliers.lam
    assert torch.allclose(lam, (2.0 * g0).clamp_min(0))
    value = loss(logits, labelled_classes=labelled)
    assert float(value) == pytest.approx(float((lam * g0).sum() / c.active.sum()), rel=1e-6)
    assert 0 <= float(loss.last_stats["violated"]) <= 1


def test_class_fraction_multipliers_round_trip_through_state_dict():
    logits, _, labelled = _partial_batch((4, 4, 5, 6), seed=8)
    spec = ({"family": "class_fraction", "prior": {1: 0.5}}, {"method": "lagrangian"})
    a = ConstraintLoss(*spec, num_classes=4)
    for _ in range(3):
        a(logits, labelled_classes=labelled)
    b = ConstraintLoss(*spec, num_classes=4)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(logits, labelled_classes=labelled), b(logits, labelled_classes=labelled))


# ------------------------------------------------------------ the prior-aware KL (PaNN)


def _reference_kl(logits, labelled, q):
    """Loop: sum over the classes with a prior of KL(q_c || mean fraction over the images
    that do not label c), in autograd-friendly form."""
    probs = logits.softmax(1)
    total = logits.new_zeros(())
    for c, qc in q.items():
        rows = [b for b in range(logits.shape[0]) if labelled is None or not labelled[b, c]]
        if not rows:
            continue
        p = sum(probs[b, c].mean() for b in rows) / len(rows)
        total = total + qc * math.log(qc) - qc * torch.log(p) \
            + (1 - qc) * math.log(1 - qc) - (1 - qc) * torch.log(1 - p)
    return total


def _q(values: dict, num_classes: int = 4, dtype=torch.float64) -> torch.Tensor:
    return resolve_fraction_prior(values, num_classes).to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_labelled", [True, False])
def test_prior_aware_without_estimate_is_the_batch_kl(shape, with_labelled):
    logits, _, labelled = _partial_batch(shape, seed=9, dtype=torch.float64)
    labelled = labelled if with_labelled else None
    q = {1: 0.1, 2: 0.2, 3: 0.05}
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    got = prior_aware_loss(a, labelled, prior=_q(q))
    ref = _reference_kl(b, labelled, q)
    assert torch.allclose(got, ref)
    got.backward()
    ref.backward()
    assert torch.allclose(a.grad, b.grad)
    per_class = prior_aware_loss(logits, labelled, prior=_q(q), reduction="none")
    assert per_class.shape == (4,) and per_class[0] == 0
    assert torch.allclose(prior_aware_loss(logits, labelled, prior=_q(q), reduction="mean"),
                          per_class.sum() / int((per_class != 0).sum()))


@pytest.mark.parametrize("shape", SHAPES)
def test_prior_aware_at_an_estimate_is_linear_in_the_batch_fractions(shape):
    """Value KL(q||u) + KL'(q||u)(p̄ - u); gradient KL'(q||u) ∇p̄ (unbiased in the batch)."""
    logits, _, labelled = _partial_batch(shape, seed=10, dtype=torch.float64)
    q = {1: 0.1, 3: 0.3}
    u = torch.tensor([math.nan, 0.2, math.nan, 0.25], dtype=torch.float64)
    z = logits.clone().requires_grad_(True)
    value = prior_aware_loss(z, labelled, prior=_q(q), estimate=u)
    value.backward()
    r = logits.clone().requires_grad_(True)
    probs = r.softmax(1)
    expected = r.new_zeros(())
    for c, qc in q.items():
        rows = [b for b in range(shape[0]) if not labelled[b, c]]
        p = sum(probs[b, c].mean() for b in rows) / len(rows)
        uc = float(u[c])
        kl = qc * math.log(qc / uc) + (1 - qc) * math.log((1 - qc) / (1 - uc))
        expected = expected + kl + (-qc / uc + (1 - qc) / (1 - uc)) * (p - uc)
    expected.backward()
    assert torch.allclose(value, expected) and torch.allclose(z.grad, r.grad)
    small = logits[:2, :, :2, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: prior_aware_loss(x, labelled[:2], prior=_q(q), estimate=u), (small,))


def test_prior_aware_is_zero_at_the_prior_and_skips_inactive_classes():
    logits = torch.zeros(3, 4, 2, 2)                               # every fraction 1/4
    labelled = torch.tensor([[True, True, True, True]] * 3)
    assert float(prior_aware_loss(logits, labelled, prior=_q({1: 0.25}, dtype=torch.float32))) \
        == 0.0                                                      # every image labels it
    assert float(prior_aware_loss(logits, None, prior=_q({1: 0.25}, dtype=torch.float32))) \
        == pytest.approx(0.0, abs=1e-7)


def test_prior_aware_estimate_moves_in_training_only_and_round_trips():
    logits, _, labelled = _partial_batch((4, 4, 5, 6), seed=11)
    loss = PriorAwareLoss(prior={"RV": 0.1, "LV": 0.3}, dual_lr=0.25, class_names=NAMES,
                          num_classes=4)
    assert loss.estimate.isnan().all()
    mean, _ = pooled_fractions(logits, labelled)
    loss(logits, labelled_classes=labelled)
    first = loss.estimate.clone()
    for c in (1, 3):
        assert float(first[c]) == pytest.approx(float(mean[c]))   # first batch: its own mean
    assert first[[0, 2]].isnan().all()                            # no prior: never estimated
    other = logits.flip(0) * 2
    mean2, _ = pooled_fractions(other, labelled)
    loss(other, labelled_classes=labelled)
    for c in (1, 3):
        assert float(loss.estimate[c]) == pytest.approx(
            float(first[c] + 0.25 * (mean2[c] - first[c])), rel=1e-5)
    loss.eval()
    kept = loss.estimate.clone()
    loss(logits, labelled_classes=labelled)
    assert torch.allclose(loss.estimate, kept, equal_nan=True)
    assert 0 <= float(loss.last_stats["violated"]) <= 1
    loss.train()
    resumed = PriorAwareLoss(prior={"RV": 0.1, "LV": 0.3}, dual_lr=0.25, class_names=NAMES,
                             num_classes=4)
    resumed.load_state_dict(loss.state_dict())
    assert torch.equal(loss(logits, labelled_classes=labelled),
                       resumed(logits, labelled_classes=labelled))
    assert torch.allclose(loss.estimate, resumed.estimate, equal_nan=True)


def test_prior_aware_reaches_the_prior_on_a_free_toy_problem():
    """Free logits of 6 images, class 2 unlabelled everywhere and label 0 on every pixel:
    marginal CE is indifferent between background and class 2; the prior-aware term
    (running dual point) settles the average fraction of class 2 at its prior 0.3."""
    torch.manual_seed(0)
    z = torch.nn.Parameter(torch.randn(6, 3, 4, 4))
    target = torch.zeros(6, 4, 4, dtype=torch.long)
    labelled = torch.tensor([[True, True, False]] * 6)
    recipe = LossRecipe([LossTerm("marginal_ce"),
                         LossTerm("prior_aware", params={"prior": {2: 0.3}, "dual_lr": 0.2})],
                        num_classes=3)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(300):
        total, _ = recipe(z, {"target": target, "labelled_classes": labelled})
        opt.zero_grad()
        total.backward()
        opt.step()
    probs = z.detach().softmax(1)
    assert float(probs[:, 2].mean()) == pytest.approx(0.3, abs=0.01)
    assert float(probs[:, 1].mean()) < 0.05                    # the labelled class: absent
    estimate = recipe.losses[1].estimate
    assert float(estimate[2]) == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize(("params", "match"), [
    ({}, "needs prior"),
    ({"prior": {"LV": 0.1}, "dual_lr": 0.0}, r"dual_lr must be a number in \(0, 1\]"),
    ({"prior": {"LV": 0.1}, "dual_lr": 1.5}, "dual_lr"),
    ({"prior": {"LV": 0.1}, "eps": 0.7}, "eps"),
    ({"prior": {"LV": 0.1}, "reduction": "avg"}, "reduction"),
    ({"prior": {"LVV": 0.1}}, r"prior_aware prior: unknown class 'LVV' \(did you mean 'LV'\?\)"),
    ({"prior": {"LV": 0.9, "RV": 0.2}}, "prior_aware: prior fractions sum to 1.1"),
    ({"prior": {"LV": -0.1}}, r"prior of 'LV' must be a fraction in \[0, 1\]"),
])
def test_prior_aware_errors_are_one_line(params, match):
    with pytest.raises(ValueError, match=match) as info:
        PriorAwareLoss(**params, num_classes=4, class_names=NAMES)
    assert "\n" not in str(info.value)


def test_prior_aware_built_without_the_data_resolves_at_the_first_batch():
    loss = LOSSES.build("prior_aware", prior={3: 0.2})          # as the config checks build it
    value = loss(torch.zeros(2, 4, 3, 3))
    assert torch.isfinite(value) and loss.estimate.shape == (4,)
    named = LOSSES.build("prior_aware", prior={"LV": 0.2})
    with pytest.raises(ValueError, match="class names are unknown"):
        named(torch.zeros(2, 4, 3, 3))
    recipe = LossRecipe([LossTerm("prior_aware", params={"prior": {"LV": 0.2}})],
                        num_classes=4, class_names=NAMES)
    assert recipe.losses[0].prior_q[3] == pytest.approx(0.2)
    with pytest.raises(WeaksegError, match="loss 'prior_aware'.*unknown class 'Lv'"):
        LossRecipe([LossTerm("prior_aware", params={"prior": {"Lv": 0.2}})], num_classes=4,
                   class_names=NAMES)


def test_prior_aware_leaves_its_inputs():
    logits, _, labelled = _partial_batch((3, 4, 5, 6), seed=12)
    copies = (logits.clone(), labelled.clone())
    PriorAwareLoss(prior={1: 0.1}, num_classes=4)(logits, labelled)
    assert torch.equal(logits, copies[0]) and torch.equal(labelled, copies[1])


# ------------------------------------------------------------ data and training (phantom)


def _phantom(n=6):
    from weakseg.data import DATASETS

    return DATASETS.get("phantom")(num_volumes=n, size=32, slices=4, seed=0)


SITES = [["LV"], ["RV", "Myo"], ["Myo"]]


def test_slices_carry_their_site_and_keep_it_through_augmentation_and_crops():
    from weakseg.data.slices import augment_batch, build_slices, build_volumes, random_crop

    vset = _phantom()
    data = build_slices(vset.volumes, annotation="sim:partial_sites", num_classes=4, size=32,
                        seed=3, annotation_params={"sites": SITES},
                        class_names=vset.class_names, priors=["tags"])
    flags = data.extras["labelled_classes"]
    assert flags.dtype == torch.bool and flags.shape == (len(data), 4)
    assert "tags" in data.extras                            # travels beside the priors
    groups = {v.key: v.group for v in vset.volumes}
    for i, key in enumerate(data.keys):
        expected = labelled_classes(groups[key], sites=SITES, num_classes=4, annotation_seed=3,
                                    class_names=vset.class_names)
        assert flags[i].tolist() == expected.tolist()
        assert set(data.targets[i].unique().tolist()) <= {0, *np.flatnonzero(expected).tolist()}
    assert len({tuple(f.tolist()) for f in flags}) > 1        # several sites
    batch = data.entries(torch.arange(4))
    _, _, out = augment_batch(data.images[:4], data.targets[:4], torch.Generator(), batch)
    assert torch.equal(out["labelled_classes"], flags[:4])
    _, _, cut = random_crop(data.images[:4], data.targets[:4], torch.Generator(), 16, batch,
                            labels=data.crop_labels[:4])
    assert torch.equal(cut["labelled_classes"], flags[:4])
    windows = build_volumes(vset.volumes, annotation="sim:partial_sites", num_classes=4,
                            size=32, depth=2, seed=3, annotation_params={"sites": SITES},
                            class_names=vset.class_names)
    assert windows.extras["labelled_classes"].shape == (len(windows), 4)
    plain = build_slices(vset.volumes, annotation="sim:points", num_classes=4, size=32)
    assert "labelled_classes" not in plain.extras


def _partial_config(**train: object) -> dict:
    from .conftest import tiny_config

    raw = tiny_config()
    raw["data"]["params"]["num_volumes"] = 6
    raw["data"].update(annotation="sim:partial_sites", annotation_params={"sites": SITES},
                       train="0-4", val="5")
    raw["loss"] = [{"name": "marginal_ce"},
                   {"name": "prior_aware", "params": {"prior": {"RV": 0.05, "Myo": 0.05,
                                                                "LV": 0.05}, "dual_lr": 0.3}}]
    raw["train"].update(epochs=2, **train)
    return raw


def test_prior_aware_run_logs_its_terms_and_resumes_identically(tmp_path):
    """Two phantom epochs; stopped after the first and resumed = uninterrupted, the prior
    term's dual point included."""
    from weakseg.config import config_from_dict
    from weakseg.engine.checkpoint import load_checkpoint
    from weakseg.engine.trainer import train

    cfg = config_from_dict(_partial_config())
    train(cfg, tmp_path / "ref", progress=False, log=lambda s: None)
    train(cfg, tmp_path / "cut", progress=False, log=lambda s: None, stop_after_epoch=1)
    train(cfg, tmp_path / "cut", resume=True, progress=False, log=lambda s: None)
    ref = load_checkpoint(tmp_path / "ref" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(ref["model"][k], cut["model"][k]) for k in ref["model"])
    estimate = ref["recipe"]["losses.1.estimate"]
    assert estimate.shape == (4,) and estimate[1:].isfinite().all() and estimate[0].isnan()
    assert torch.equal(estimate.nan_to_num(-1), cut["recipe"]["losses.1.estimate"].nan_to_num(-1))
    import csv

    rows = list(csv.DictReader(open(tmp_path / "ref" / "log.csv")))
    assert {"train_marginal_ce", "train_prior_aware", "train_prior_aware_violated"} <= set(
        rows[0])


def test_a_site_naming_an_unknown_class_stops_the_run_before_training(tmp_path):
    from weakseg.config import config_from_dict
    from weakseg.engine.trainer import train

    raw = _partial_config()
    raw["data"]["annotation_params"] = {"sites": [["LV"], ["Myocardium"]]}
    cfg = config_from_dict(raw)                              # names are checked with the data
    with pytest.raises(WeaksegError, match=r"site 1 names class 'Myocardium'.*classes: "
                                           "background, RV, Myo, LV") as info:
        train(cfg, tmp_path, progress=False, log=lambda s: None)
    assert "\n" not in str(info.value) and not (tmp_path / "last.pt").exists()
