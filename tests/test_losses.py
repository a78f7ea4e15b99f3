"""Loss checklist (STYLE.md): smoke 2D/3D, reductions, errors, hand values, references,
ignore_index incl. no labelled pixel, float64 gradcheck, module == function, and a contract
test over every registered loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.data.base import IGNORE_INDEX
from weakseg.errors import WeaksegError
from weakseg.losses import (
    LOSSES,
    CEDiceLoss,
    PartialCrossEntropyLoss,
    ce_dice_loss,
    entropy_loss,
    partial_cross_entropy,
    soft_dice_loss,
)
from weakseg.losses.recipe import LossRecipe, LossTerm

SHAPES = [(2, 3, 6, 5), (2, 3, 4, 5, 3)]  # 2D and 3D


def _weak(shape: tuple[int, ...], gen: torch.Generator, frac: float = 0.3) -> torch.Tensor:
    b, c, *sp = shape
    target = torch.randint(0, c, (b, *sp), generator=gen)
    drop = torch.rand((b, *sp), generator=gen) > frac
    return target.masked_fill(drop, IGNORE_INDEX)


@pytest.mark.parametrize("shape", SHAPES)
def test_partial_ce_equals_cross_entropy_when_all_labelled(shape):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=gen)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    assert torch.allclose(partial_cross_entropy(logits, target), F.cross_entropy(logits, target))


@pytest.mark.parametrize("shape", SHAPES)
def test_partial_ce_only_labelled_pixels(shape):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(shape, generator=gen)
    target = _weak(shape, gen)
    mask = target != IGNORE_INDEX
    logp = logits.log_softmax(1).movedim(1, -1)[mask]
    expected = -logp.gather(1, target[mask][:, None]).mean()
    assert torch.allclose(partial_cross_entropy(logits, target), expected)
    # changing logits at unlabelled pixels does not change the loss
    noise = torch.randn(shape, generator=gen) * (~mask).unsqueeze(1)
    assert torch.allclose(partial_cross_entropy(logits + noise, target), expected)


def test_partial_ce_hand_value():
    logits = torch.zeros(1, 2, 1, 2)  # uniform: -log(1/2) per labelled pixel
    target = torch.tensor([[[1, IGNORE_INDEX]]])
    assert math.isclose(float(partial_cross_entropy(logits, target)), math.log(2), rel_tol=1e-6)
    assert math.isclose(
        float(partial_cross_entropy(logits, target, reduction="sum")), math.log(2), rel_tol=1e-6
    )


def test_partial_ce_no_labelled_pixel_zero_loss_zero_grad():
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = torch.full((2, 5, 5), IGNORE_INDEX)
    loss = partial_cross_entropy(logits, target)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_partial_ce_reduction_none_shape_and_zeros():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=gen)
    target = _weak((2, 3, 4, 4), gen)
    out = partial_cross_entropy(logits, target, reduction="none")
    assert out.shape == (2, 4, 4)
    assert torch.all(out[target == IGNORE_INDEX] == 0)


@pytest.mark.parametrize("bad", [torch.zeros(2, 4, 4), torch.zeros(2, 5, 4, dtype=torch.long)])
def test_partial_ce_errors(bad):
    with pytest.raises(ValueError):
        partial_cross_entropy(torch.randn(2, 3, 4, 4), bad)
    with pytest.raises(ValueError, match="reduction"):
        partial_cross_entropy(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4).long(),
                              reduction="avg")


def test_soft_dice_perfect_and_reference():
    target = torch.tensor([[[0, 1], [2, 2]]])
    logits = F.one_hot(target, 3).movedim(-1, 1).float() * 50
    assert float(soft_dice_loss(logits, target)) < 1e-6
    # reference: MONAI DiceLoss with the same batch-wise definition
    from monai.losses import DiceLoss

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 6, 6, generator=gen)
    target = torch.randint(0, 4, (2, 6, 6), generator=gen)
    ref = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                   smooth_nr=1e-5, smooth_dr=1e-5)(logits, target[:, None])
    assert torch.allclose(soft_dice_loss(logits, target), ref, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_ce_dice_combines_terms(shape):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(shape, generator=gen)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    expected = 0.5 * F.cross_entropy(logits, target) + 2.0 * soft_dice_loss(logits, target)
    got = ce_dice_loss(logits, target, ce_weight=0.5, dice_weight=2.0)
    assert torch.allclose(got, expected)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    target = _weak((1, 3, 3, 3), gen, frac=0.6)
    target[0, 0, 0] = 1
    assert torch.autograd.gradcheck(lambda z: partial_cross_entropy(z, target), (logits,))
    full = torch.randint(0, 3, (1, 3, 3), generator=gen)
    assert torch.autograd.gradcheck(lambda z: ce_dice_loss(z, full), (logits,))


def test_module_equals_function():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 5, 5, generator=gen)
    target = _weak((2, 3, 5, 5), gen)
    assert torch.equal(PartialCrossEntropyLoss()(logits, target),
                       partial_cross_entropy(logits, target))
    full = torch.randint(0, 3, (2, 5, 5), generator=gen)
    assert torch.equal(CEDiceLoss(dice_weight=0.3)(logits, full),
                       ce_dice_loss(logits, full, dice_weight=0.3))


def _priors(full: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Valid constraint inputs from a full label map ``(B, *spatial)``, in 2D and 3D:
    ``tags`` (B, C), ``bounds`` (B, C, 2) around the true sizes, ``boxes`` (B, C, *spatial)
    the bounding box of every foreground class, ``fractions`` (B, C) and ``cell_fractions``
    (B, C, *grid) the class fractions of the map and of grid cells."""
    onehot = F.one_hot(full, num_classes).movedim(-1, 1).bool()          # (B, C, *spatial)
    dims = tuple(range(2, onehot.ndim))
    sizes = onehot.sum(dims).float()
    boxes = torch.ones_like(onehot)
    for axis in dims:
        other = tuple(d for d in dims if d != axis)
        hit = onehot.any(other) if other else onehot                      # (B, C, n)
        pos = torch.arange(hit.shape[-1])
        first = torch.where(hit, pos, hit.shape[-1]).min(-1).values
        last = torch.where(hit, pos, -1).max(-1).values
        inside = (pos >= first[..., None]) & (pos <= last[..., None])    # (B, C, n)
        view = [*inside.shape[:2]] + [1] * len(dims)
        view[axis] = inside.shape[-1]
        boxes = boxes & inside.view(view)
    boxes[:, 0] = False                                                   # no background box
    centres = []
    for axis in dims:                                                     # true centroids
        shape = [1] * onehot.ndim
        shape[axis] = onehot.shape[axis]
        coord = torch.arange(onehot.shape[axis], dtype=torch.float).view(shape)
        centres.append((onehot * coord).sum(dims) / sizes.clamp_min(1))
    centre = torch.stack(centres, -1)                                     # (B, C, D)
    free = torch.tensor([-math.inf, math.inf]).expand(*centre.shape, 2)
    centroid_bounds = torch.where((sizes > 0)[..., None, None],
                                  torch.stack([centre - 1, centre + 1], -1), free)
    # class fractions of the whole map and of grid cells (2 pixels wide along even sizes)
    grid = tuple(n // 2 if n % 2 == 0 else 1 for n in full.shape[1:])
    cells = onehot.float().reshape(onehot.shape[:2] + tuple(
        s for n, g in zip(full.shape[1:], grid, strict=True) for s in (g, n // g)))
    cells = cells.mean(dim=tuple(3 + 2 * i for i in range(len(grid))))
    return {"tags": sizes > 0, "bounds": torch.stack([0.8 * sizes, 1.2 * sizes], -1),
            "boxes": boxes, "centroid_bounds": centroid_bounds,
            "fractions": onehot.float().mean(dims), "cell_fractions": cells}


def test_contract_priors_are_valid():
    full = torch.zeros(1, 6, 7, dtype=torch.long)
    full[0, 1:3, 2:5] = 1
    full[0, 4, 6] = 1
    priors = _priors(full, 3)
    assert priors["tags"].tolist() == [[True, True, False]]
    assert priors["bounds"][0, 1].tolist() == pytest.approx([5.6, 8.4])
    assert priors["boxes"][0, 1].sum() == 4 * 5 and priors["boxes"][0, 1, 1:5, 2:7].all()
    assert not priors["boxes"][0, 0].any() and not priors["boxes"][0, 2].any()


#: Parameters a loss cannot do without (the constraint's family, the prior-aware prior).
REQUIRED = {"constraint": {"constraint": "size"}, "prior_aware": {"prior": {1: 0.2}}}


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("shape", SHAPES)
def test_contract_every_registered_loss(name, shape):
    """Every loss: finite scalar, gradient flows, works in 2D and 3D from logits."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(shape, generator=gen, requires_grad=True)
    target = _weak(shape, gen, frac=0.5)
    image = torch.rand((shape[0], 1, *shape[2:]), generator=gen)
    params = REQUIRED.get(name, {})
    loss = LOSSES.build(name, **params)
    full = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    batch = {"target": target, "image": image, **_priors(full, shape[1]),
             "labelled_classes": torch.rand(shape[:2], generator=gen) < 0.5,
             "pseudo_masks": target}
    assert set(loss.inputs) <= set(batch), f"the contract test cannot feed {loss.inputs}"
    keys = (*loss.inputs, *getattr(loss, "optional_inputs", ()))
    value = loss(logits, **{k: batch[k] for k in keys if k in batch})
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_recipe_total_and_parts():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 3, 4, 4, generator=gen)
    target = torch.randint(0, 3, (2, 4, 4), generator=gen)
    recipe = LossRecipe([LossTerm("partial_ce", 2.0), LossTerm("ce_dice", 0.5),
                         LossTerm("partial_ce", 0.0)])
    total, parts = recipe(logits, {"target": target})
    assert list(parts) == ["partial_ce", "ce_dice", "partial_ce_1"]
    assert torch.allclose(total, 2 * parts["partial_ce"] + 0.5 * parts["ce_dice"])


@pytest.mark.parametrize("weight", ["1-2", "0.5", None, True, -1.0, float("nan")])
def test_recipe_rejects_bad_weights(weight):
    with pytest.raises(WeaksegError, match="weight"):
        LossTerm("partial_ce", weight)


def test_recipe_epoch_step_and_stats():
    """epoch_step() reaches the terms that have one; constraint terms report violations."""
    recipe = LossRecipe([LossTerm("partial_ce"), LossTerm("size", params={"t0": 2.0,
                                                                          "t_mult": 1.5})])
    logits = torch.zeros(2, 3, 4, 4)                                  # soft sizes 16/3
    bounds = torch.tensor([[0.0, 16.0], [8.0, 10.0], [0.0, 16.0]]).expand(2, 3, 2)
    _, parts = recipe(logits, {"target": torch.zeros(2, 4, 4, dtype=torch.long),
                               "bounds": bounds})
    assert set(parts) == {"partial_ce", "size"}
    assert list(recipe.last_stats) == ["size_violated"]
    assert float(recipe.last_stats["size_violated"]) == 0.5   # 2 active bounds, lower violated
    recipe.epoch_step()
    recipe.epoch_step()
    state = recipe.state_dict()["losses.1.objective._extra_state"]["schedule"]
    assert state["t"] == pytest.approx(4.5) and state["epoch"] == 2


def test_recipe_unknown_loss_and_param():
    with pytest.raises(WeaksegError, match="did you mean 'partial_ce'"):
        LossRecipe([LossTerm("partial_cee")])
    with pytest.raises(WeaksegError, match="did you mean 'ignore_index'"):
        LossRecipe([LossTerm("partial_ce", params={"ignore_idx": 3})])


def test_each_term_sees_the_rows_of_its_domain():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 6, 6, generator=gen)
    target = torch.randint(0, 4, (5, 6, 6), generator=gen)
    target[3:] = -100  # target rows unlabelled
    recipe = LossRecipe([LossTerm("partial_ce"), LossTerm("entropy", domain="target"),
                         LossTerm("entropy", 0.5, domain="both")])
    assert recipe.names == ["partial_ce", "entropy_target", "entropy"]
    domains = {"source": slice(0, 3), "target": slice(3, 5)}
    total, parts = recipe(logits, {"target": target}, domains=domains)
    ref = {"partial_ce": partial_cross_entropy(logits[:3], target[:3]),
           "entropy_target": entropy_loss(logits[3:], target[3:]),
           "entropy": entropy_loss(logits, target)}
    for name, value in ref.items():
        assert torch.allclose(parts[name], value), name
    assert torch.allclose(total, ref["partial_ce"] + ref["entropy_target"] + 0.5 * ref["entropy"])
    # without domains (one data set: validation statistics, the config checks) every term
    # sees every row
    _, whole = recipe(logits, {"target": target})
    assert torch.allclose(whole["entropy_target"], entropy_loss(logits, target))
