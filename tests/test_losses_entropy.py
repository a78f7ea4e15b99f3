"""Entropy (R6), mutual information (R7) and marginal prior (R8) losses: identities, hand
values, references, ignore mask, 2D/3D, reductions, errors, gradcheck, module == function."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from weakseg.data.base import IGNORE_INDEX
from weakseg.errors import WeaksegError
from weakseg.losses.base import LOSSES
from weakseg.losses.entropy import (
    EntropyLoss,
    MarginalPriorLoss,
    MutualInformationLoss,
    check_prior,
    entropy_loss,
    marginal_prior_loss,
    mutual_information_loss,
    named_prior,
)
from weakseg.losses.recipe import LossRecipe, LossTerm

SHAPES = [(2, 3, 6, 5), (2, 3, 4, 5, 3)]  # 2D and 3D


def _logits(shape, seed, scale=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype) * scale


def _weak(shape, seed, frac=0.3):
    gen = torch.Generator().manual_seed(seed)
    b, c, *sp = shape
    target = torch.randint(0, c, (b, *sp), generator=gen)
    return target.masked_fill(torch.rand((b, *sp), generator=gen) > frac, IGNORE_INDEX)


def _pixel_entropy(logits):
    """Reference per-pixel entropy ``(B, *spatial)`` from torch.distributions."""
    return Categorical(logits=logits.movedim(1, -1)).entropy()


def _onehot_logits(labels, num_classes, dtype=torch.float64):
    return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).to(dtype) * 1000


# ------------------------------------------------------------------ entropy (R6)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_entropy_uniform_and_onehot(num_classes):
    uniform = torch.zeros(2, num_classes, 4, 4)
    assert math.isclose(float(entropy_loss(uniform)), 1.0, rel_tol=1e-6)
    assert math.isclose(float(entropy_loss(uniform, normalize=False)), math.log(num_classes),
                        rel_tol=1e-6)
    labels = torch.randint(0, num_classes, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    assert float(entropy_loss(_onehot_logits(labels, num_classes))) == 0.0


def test_entropy_hand_value():
    logits = torch.tensor([math.log(3), 0.0], dtype=torch.float64).view(1, 2, 1, 1)  # (¾, ¼)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(float(entropy_loss(logits, normalize=False)), h, rel_tol=1e-12)
    assert math.isclose(float(entropy_loss(logits)), h / math.log(2), rel_tol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_entropy_reference_and_unlabelled_only(shape):
    logits = _logits(shape, 1, scale=2.0)
    target = _weak(shape, 2)
    unl = target == IGNORE_INDEX
    ref = _pixel_entropy(logits) / math.log(shape[1])
    assert torch.allclose(entropy_loss(logits, target), ref[unl].mean(), atol=1e-6)
    assert torch.allclose(entropy_loss(logits), ref.mean(), atol=1e-6)
    assert torch.allclose(entropy_loss(logits, target, only_unlabelled=False), ref.mean(),
                          atol=1e-6)
    # changing logits on labelled pixels does not change the unlabelled entropy
    noise = _logits(shape, 3, scale=5.0) * (~unl).unsqueeze(1)
    assert torch.allclose(entropy_loss(logits + noise, target), entropy_loss(logits, target))
    # ... and they get no gradient
    z = logits.clone().requires_grad_(True)
    entropy_loss(z, target).backward()
    assert torch.count_nonzero(z.grad.movedim(1, -1)[~unl]) == 0


def test_entropy_custom_ignore_index():
    shape = (2, 3, 5, 5)
    logits = _logits(shape, 4)
    target = _weak(shape, 5)
    other = target.masked_fill(target == IGNORE_INDEX, 255)
    assert torch.equal(entropy_loss(logits, other, ignore_index=255), entropy_loss(logits, target))


def test_entropy_no_unlabelled_pixel_zero_loss_zero_grad():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))  # fully labelled
    loss = entropy_loss(logits, target)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_entropy_reductions():
    shape = (2, 3, 4, 5)
    logits = _logits(shape, 6)
    target = _weak(shape, 7)
    none = entropy_loss(logits, target, reduction="none")
    assert none.shape == (2, 4, 5)
    assert torch.all(none[target != IGNORE_INDEX] == 0)
    assert torch.allclose(entropy_loss(logits, target, reduction="sum"), none.sum())
    assert torch.allclose(entropy_loss(logits, target),
                          none.sum() / (target == IGNORE_INDEX).sum())
    assert entropy_loss(logits, reduction="none").shape == (2, 4, 5)


# ----------------------------------------------------- class-balanced entropy (ADVENT)


def _ref_balanced(logits, target=None, power=1.0):
    """Loop reference: per-pixel normalised entropy weighted by f_k^-power, f_k the fraction
    of the selected pixels (unlabelled ones, or all) whose arg-max is k; weights scaled to
    mean 1 over the selected pixels; returns (mean, per-pixel)."""
    ent = _pixel_entropy(logits) / math.log(logits.shape[1])
    selected = torch.ones_like(ent, dtype=torch.bool) if target is None \
        else target == IGNORE_INDEX
    k = logits.argmax(1)
    n = int(selected.sum())
    freq = {c: int((selected & (k == c)).sum()) / n for c in range(logits.shape[1])}
    weights = torch.zeros_like(ent)
    for idx in zip(*torch.nonzero(selected, as_tuple=True), strict=True):
        weights[idx] = freq[int(k[idx])] ** -power
    weights = weights * n / weights.sum()
    per_pixel = ent * weights
    return per_pixel.sum() / n, per_pixel


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("power", [1.0, 0.5, 0.2])
def test_class_balanced_entropy_equals_the_loop_reference(shape, power):
    logits = _logits(shape, 30, scale=2.0, dtype=torch.float64)
    target = _weak(shape, 31, frac=0.4)
    for t in (None, target):
        ref, ref_pixels = _ref_balanced(logits, t, power)
        got = entropy_loss(logits, t, class_balanced=True, balance_power=power)
        assert torch.allclose(got, ref)
        none = entropy_loss(logits, t, class_balanced=True, balance_power=power,
                            reduction="none")
        assert none.shape == (shape[0], *shape[2:]) and torch.allclose(none, ref_pixels)
        assert torch.allclose(entropy_loss(logits, t, class_balanced=True, balance_power=power,
                                           reduction="sum"), ref_pixels.sum())


def test_class_balanced_power_one_is_the_mean_over_predicted_classes():
    """α = 1: every predicted class weighs the same, whatever its number of pixels."""
    logits = _logits((2, 3, 6, 5), 32, scale=3.0, dtype=torch.float64)
    ent = _pixel_entropy(logits) / math.log(3)
    k = logits.argmax(1)
    per_class = [ent[k == c].mean() for c in range(3) if (k == c).any()]
    expected = sum(per_class) / len(per_class)
    assert torch.allclose(entropy_loss(logits, class_balanced=True), expected)


def test_class_balanced_defaults_unchanged_and_power_zero_is_plain():
    logits = _logits((2, 3, 6, 5), 33)
    target = _weak((2, 3, 6, 5), 34)
    plain = entropy_loss(logits, target)
    assert torch.equal(EntropyLoss()(logits, target), plain)
    assert EntropyLoss().class_balanced is False
    assert torch.allclose(entropy_loss(logits, target, class_balanced=True, balance_power=0.0),
                          plain)
    uniform = torch.zeros(2, 4, 3, 3)
    assert float(entropy_loss(uniform, class_balanced=True)) == pytest.approx(1.0)


def test_class_balanced_weights_are_detached():
    """Gradient = that of the weighted entropy with the weights held constant."""
    logits = _logits((1, 3, 3, 4), 35, scale=2.0, dtype=torch.float64)
    target = _weak((1, 3, 3, 4), 36, frac=0.3)
    _, ref_pixels = _ref_balanced(logits, target, 0.5)
    weights = ref_pixels / (_pixel_entropy(logits) / math.log(3)).clamp_min(1e-300)
    z = logits.clone().requires_grad_(True)
    r = logits.clone().requires_grad_(True)
    entropy_loss(z, target, class_balanced=True, balance_power=0.5).backward()
    n = int((target == IGNORE_INDEX).sum())
    ((_pixel_entropy(r) / math.log(3)) * weights.detach()).sum().div(n).backward()
    assert torch.allclose(z.grad, r.grad)
    small = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: entropy_loss(x, target, class_balanced=True, balance_power=0.5), (small,))


def test_class_balanced_options_checked_and_module_equals_function():
    logits = _logits((2, 3, 4, 4), 37)
    loss = LOSSES.build("entropy", class_balanced=True, balance_power=0.2)
    assert torch.equal(loss(logits), entropy_loss(logits, class_balanced=True,
                                                  balance_power=0.2))
    copy = logits.clone()
    entropy_loss(logits, class_balanced=True)
    assert torch.equal(logits, copy)
    for bad in (-1.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="balance_power") as info:
            EntropyLoss(class_balanced=True, balance_power=bad)
        assert "\n" not in str(info.value)
    with pytest.raises(WeaksegError, match="balance_power"):
        LossRecipe([LossTerm("entropy", params={"balance_power": -2.0})])
    no_pixel = entropy_loss(logits.requires_grad_(True), torch.zeros(2, 4, 4, dtype=torch.long),
                            class_balanced=True)
    no_pixel.backward()
    assert float(no_pixel.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0


# ------------------------------------------------------------------ MI (R7)


def _ref_mi(logits, marginal="image"):
    """MI = H(Ŝ) − mean_p H(s_p) per image, from torch.distributions."""
    probs = logits.softmax(1)
    spatial = tuple(range(2, logits.ndim))
    if marginal == "image":
        hat = probs.mean(spatial)
    else:
        hat = probs.mean((0, *spatial)).expand(logits.shape[0], -1)
    return Categorical(probs=hat).entropy() - _pixel_entropy(logits).flatten(1).mean(1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("marginal", ["image", "batch"])
def test_mi_identity_and_nonnegative(shape, marginal):
    logits = _logits(shape, 8, scale=3.0, dtype=torch.float64)
    mi = _ref_mi(logits, marginal)
    assert torch.all(mi >= 0)
    got = mutual_information_loss(logits, marginal=marginal, normalize=False, reduction="none")
    assert got.shape == (shape[0],)
    assert torch.allclose(got, -mi, rtol=1e-10)
    normalised = mutual_information_loss(logits, marginal=marginal)
    assert torch.allclose(normalised, -mi.mean() / math.log(shape[1]), rtol=1e-10)
    assert -1 <= float(normalised) <= 0


def test_mi_zero_for_uniform_and_constant_predictions():
    assert float(mutual_information_loss(torch.zeros(2, 4, 5, 5))) == pytest.approx(0, abs=1e-7)
    constant = torch.randn(2, 4, 1, 1).expand(2, 4, 5, 5)
    assert float(mutual_information_loss(constant)) == pytest.approx(0, abs=1e-6)


def test_mi_maximal_for_confident_balanced_predictions():
    labels = torch.arange(4).repeat_interleave(4).view(1, 4, 4)  # 4 classes, 4 pixels each
    best = mutual_information_loss(_onehot_logits(labels, 4))
    assert float(best) == pytest.approx(-1.0, abs=1e-12)  # −MI = −log C, normalised
    # confident but unbalanced: lower MI; any random prediction: lower MI
    unbalanced = labels.clamp_max(1)
    assert float(mutual_information_loss(_onehot_logits(unbalanced, 4))) > -0.5
    for seed in range(3):
        assert float(mutual_information_loss(_logits((1, 4, 4, 4), seed, 3.0))) > -1.0


def test_mi_image_vs_batch_marginal():
    # image 0 confidently all class 0, image 1 all class 1: no information within an image,
    # but the batch marginal is balanced
    labels = torch.stack([torch.zeros(3, 3), torch.ones(3, 3)]).long()
    logits = _onehot_logits(labels, 2)
    assert float(mutual_information_loss(logits, marginal="image")) == pytest.approx(0)
    assert float(mutual_information_loss(logits, marginal="batch")) == pytest.approx(-1.0)


def test_mi_marginal_weight():
    shape = (2, 3, 5, 4)
    logits = _logits(shape, 9, dtype=torch.float64)
    # λ = 0: the plain entropy of all pixels
    assert torch.allclose(mutual_information_loss(logits, marginal_weight=0.0),
                          entropy_loss(logits))
    a = mutual_information_loss(logits, marginal_weight=1.0, reduction="none")
    b = mutual_information_loss(logits, marginal_weight=2.0, reduction="none")
    h_marg = Categorical(probs=logits.softmax(1).mean((2, 3))).entropy() / math.log(3)
    assert torch.allclose(a - b, h_marg, rtol=1e-10)


# ------------------------------------------------------------------ marginal prior (R8)


def _proportions_logits(q, spatial=(4, 4), batch=2):
    """Logits whose softmax is ``q`` at every pixel, so Ŝ = q."""
    q = torch.as_tensor(q, dtype=torch.float64)
    return q.log().view(1, -1, *([1] * len(spatial))).expand(batch, -1, *spatial).clone()


def test_prior_zero_when_marginal_equals_prior():
    q = [0.7, 0.2, 0.1]
    logits = _proportions_logits(q)
    for distance in ("kl", "l2", "hinge"):
        got = marginal_prior_loss(logits, prior=q, distance=distance)
        assert float(got) == pytest.approx(0, abs=1e-12)
    # uniform default
    assert float(marginal_prior_loss(torch.zeros(2, 4, 3, 3))) == pytest.approx(0, abs=1e-7)


def test_prior_hand_values():
    logits = _proportions_logits([0.75, 0.25])
    q = [0.5, 0.5]
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(marginal_prior_loss(logits, prior=q)) == pytest.approx(kl, rel=1e-12)
    assert float(marginal_prior_loss(logits, prior=q, distance="l2")) == pytest.approx(0.125)
    hinge = marginal_prior_loss(logits, prior=q, distance="hinge", margin=0.1)
    assert float(hinge) == pytest.approx(2 * 0.15**2, rel=1e-12)
    assert float(marginal_prior_loss(logits, prior=q, distance="hinge", margin=0.3)) == 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_prior_kl_reference_and_identities(shape):
    logits = _logits(shape, 10, scale=2.0, dtype=torch.float64)
    q = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    hat = logits.softmax(1).mean(tuple(range(2, logits.ndim)))
    ref = (hat * (hat.log() - q.log())).sum(1)  # KL(Ŝ ‖ q), the direction documented
    got = marginal_prior_loss(logits, prior=q, reduction="none")
    assert got.shape == (shape[0],) and torch.allclose(got, ref, rtol=1e-10)
    assert torch.all(got >= 0)
    # uniform q: KL(Ŝ ‖ u) = log C − H(Ŝ)
    uniform = marginal_prior_loss(logits, reduction="none")
    assert torch.allclose(uniform, math.log(3) - Categorical(probs=hat).entropy(), rtol=1e-10)
    # hinge with margin 0 equals l2
    assert torch.allclose(marginal_prior_loss(logits, prior=q, distance="hinge"),
                          marginal_prior_loss(logits, prior=q, distance="l2"))


def test_prior_reductions():
    logits = _logits((3, 2, 4, 4), 11)
    none = marginal_prior_loss(logits, prior=[0.8, 0.2], distance="l2", reduction="none")
    assert none.shape == (3,)
    assert torch.allclose(marginal_prior_loss(logits, prior=[0.8, 0.2], distance="l2"),
                          none.mean())
    assert torch.allclose(
        marginal_prior_loss(logits, prior=[0.8, 0.2], distance="l2", reduction="sum"), none.sum()
    )


def test_prior_module_buffer():
    loss = MarginalPriorLoss(prior=[0.9, 0.0999, 0.0001 + 0.0005])  # sums to 1.0005: renormalised
    assert "prior" in dict(loss.named_buffers())
    assert float(loss.prior.sum()) == pytest.approx(1.0, abs=1e-12)
    assert "prior" in loss.state_dict()
    assert MarginalPriorLoss().prior is None


@pytest.mark.parametrize(
    "prior",
    [
        [0.5, 0.6],  # sums to 1.1
        [-0.1, 0.6, 0.5],  # negative
        [1.0],  # single class
        [[0.5, 0.5]],  # 2D
        [float("nan"), 1.0],
        "0.5,0.5",
    ],
)
def test_bad_prior_raises(prior):
    with pytest.raises(ValueError, match="prior"):
        check_prior(prior)
    with pytest.raises(ValueError, match="prior"):
        MarginalPriorLoss(prior=prior)
    with pytest.raises(ValueError, match="prior"):
        marginal_prior_loss(torch.randn(1, 2, 3, 3), prior=prior)


def test_prior_other_errors():
    logits = torch.randn(1, 3, 3, 3)
    with pytest.raises(ValueError, match="classes"):
        marginal_prior_loss(logits, prior=[0.5, 0.5])  # wrong length
    with pytest.raises(ValueError, match="infinite"):
        MarginalPriorLoss(prior=[1.0, 0.0])  # KL with a zero class
    MarginalPriorLoss(prior=[1.0, 0.0], distance="l2")  # fine for l2 / hinge
    with pytest.raises(ValueError, match="margin"):
        MarginalPriorLoss(margin=0.1)  # margin without hinge
    with pytest.raises(ValueError, match="margin"):
        MarginalPriorLoss(distance="hinge", margin=-0.1)
    with pytest.raises(ValueError, match="distance"):
        MarginalPriorLoss(distance="js")


# ------------------------------------------------------------------ checklist (all three)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["entropy", "mutual_information", "marginal_prior"])
def test_smoke_registered(shape, name):
    logits = _logits(shape, 12).requires_grad_(True)
    batch = {"target": _weak(shape, 13)}
    loss = LOSSES.build(name)
    value = loss(logits, **{k: batch[k] for k in loss.inputs})
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_module_equals_function():
    shape = (2, 3, 5, 4)
    logits = _logits(shape, 14)
    target = _weak(shape, 15)
    assert torch.equal(EntropyLoss(normalize=False, reduction="sum")(logits, target),
                       entropy_loss(logits, target, normalize=False, reduction="sum"))
    assert torch.equal(EntropyLoss()(logits), entropy_loss(logits))
    assert torch.equal(
        MutualInformationLoss(marginal="batch", marginal_weight=0.5)(logits),
        mutual_information_loss(logits, marginal="batch", marginal_weight=0.5),
    )
    q = [0.5, 0.3, 0.2]
    for kw in ({"distance": "kl"}, {"distance": "hinge", "margin": 0.05}):
        assert torch.equal(MarginalPriorLoss(prior=q, **kw)(logits),
                           marginal_prior_loss(logits, prior=q, **kw))


def test_gradcheck_float64():
    logits = _logits((2, 3, 2, 3), 16, dtype=torch.float64).requires_grad_(True)
    target = _weak((2, 3, 2, 3), 17, frac=0.5)
    target[0, 0, 0] = IGNORE_INDEX
    fns = [
        lambda z: entropy_loss(z, target),
        lambda z: mutual_information_loss(z),
        lambda z: mutual_information_loss(z, marginal="batch", marginal_weight=0.7),
        lambda z: marginal_prior_loss(z, prior=[0.5, 0.3, 0.2]),
        lambda z: marginal_prior_loss(z, prior=[0.5, 0.3, 0.2], distance="l2"),
        lambda z: marginal_prior_loss(z, prior=[0.5, 0.3, 0.2], distance="hinge", margin=0.01),
    ]
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (logits,), fast_mode=True)


def test_common_errors():
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="reduction"):
        entropy_loss(logits, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        MutualInformationLoss(reduction="avg")
    with pytest.raises(ValueError, match="target"):
        entropy_loss(logits, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="2 classes"):
        entropy_loss(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="marginal"):
        mutual_information_loss(logits, marginal="volume")
    for bad in (-1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="marginal_weight"):
            MutualInformationLoss(marginal_weight=bad)
    with pytest.raises(ValueError, match="logits"):
        mutual_information_loss(torch.randn(2, 3))


CLASSES = ["background", "RV", "Myo", "LV"]


def test_named_prior_gives_the_remainder_to_the_classes_left_out():
    assert named_prior({"RV": 0.1, "LV": 0.2}, CLASSES) == pytest.approx([0.35, 0.1, 0.35, 0.2])
    assert named_prior({"RV": 0.1, "Myo": 0.2, "LV": 0.3}, CLASSES) == pytest.approx(
        [0.4, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="names class 'rv'.*did you mean 'RV'"):
        named_prior({"rv": 0.1}, CLASSES)
    with pytest.raises(ValueError, match="must sum to ≤ 1, got sum 1.1"):
        named_prior({"RV": 0.5, "LV": 0.6}, CLASSES)
    with pytest.raises(ValueError, match="names every class, so its proportions must sum to 1"):
        named_prior({"background": 0.5, "RV": 0.1, "Myo": 0.1, "LV": 0.1}, CLASSES)
    with pytest.raises(ValueError, match="prior of class 'RV' must be a finite number"):
        named_prior({"RV": -0.1}, CLASSES)


def test_marginal_prior_takes_class_names_from_the_recipe():
    term = LossTerm("marginal_prior", params={"prior": {"RV": 0.1, "Myo": 0.1, "LV": 0.1}})
    recipe = LossRecipe([term], num_classes=4, class_names=CLASSES)
    assert recipe.losses[0].prior.tolist() == pytest.approx([0.7, 0.1, 0.1, 0.1])
    with pytest.raises(WeaksegError, match="prior has 3 values but the data has 4 classes"):
        LossRecipe([LossTerm("marginal_prior", params={"prior": [0.5, 0.3, 0.2]})],
                   class_names=CLASSES)
    unresolved = MarginalPriorLoss(prior={"RV": 0.1})  # only checked without class names
    with pytest.raises(ValueError, match="build the loss with class_names"):
        unresolved(torch.zeros(1, 4, 4, 4))
