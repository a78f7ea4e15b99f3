"""Knowledge priors (METHODS.md C14): relative sizes between structures and one connected
component per structure, as constraint families — hand values and naive references (value
and gradient, 2D and 3D), float64 gradcheck, errors at build time with did-you-mean, the
families through the ``constraint`` loss with several objectives, class names and tags
from the recipe, inputs never modified."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from weakseg.constrain import CONSTRAINTS, apply
from weakseg.constrain.knowledge import (
    largest_components,
    one_component_constraints,
    relative_size_constraints,
)
from weakseg.errors import WeaksegError
from weakseg.losses.constraints import ConstraintLoss
from weakseg.losses.recipe import LossRecipe, LossTerm

NAMES = ["background", "RV", "Myo", "LV"]
NEG = float("-inf")
SHAPES = [(2, 4, 6, 5), (2, 4, 3, 4, 5)]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: one thread (see conftest)."""


def _logits_from_probs(p: list) -> torch.Tensor:
    """Logits whose softmax is exactly ``p`` ``(C, *spatial)``, float64, batch of one."""
    return torch.tensor(p, dtype=torch.float64).log()[None]


def _random_logits(shape, seed=0, scale=3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()


# ------------------------------------------------------------- relative sizes: values


def test_relative_size_hand_values_2d():
    # 2x2 image, 3 classes; V = (1.2, 1.6, 1.2), |Ω| = 4
    p = [[[0.2, 0.4], [0.3, 0.3]],
         [[0.5, 0.4], [0.3, 0.4]],
         [[0.3, 0.2], [0.4, 0.3]]]
    c = relative_size_constraints(_logits_from_probs(p),
                                  pairs=[[1, 2, 1.5, 2.0], [2, 1, 0.0, 0.5]])
    # pair 0: 1.5·1.2 − 1.6 = 0.2 (violated), 1.6 − 2·1.2 = −0.8; pair 1: lower off,
    # 1.2 − 0.5·1.6 = 0.4 (violated)
    torch.testing.assert_close(c.g, torch.tensor([[[0.2 / 4, -0.8 / 4], [NEG, 0.4 / 4]]],
                                                 dtype=torch.float64))
    assert c.active.tolist() == [[[True, True], [False, True]]]


def test_relative_size_hand_values_3d_with_names_and_infinite_upper():
    # 2x1x2 volume, 4 classes; V_LV = 0.8, V_Myo = 1.5, |Ω| = 4
    p = [[[[0.1, 0.3]], [[0.2, 0.4]]],      # background
         [[[0.2, 0.2]], [[0.2, 0.1]]],      # RV
         [[[0.4, 0.3]], [[0.5, 0.3]]],      # Myo
         [[[0.3, 0.2]], [[0.1, 0.2]]]]      # LV
    logits = _logits_from_probs(p)
    c = relative_size_constraints(logits, pairs=[("LV", "Myo", 0.5, math.inf)],
                                  class_names=NAMES)
    torch.testing.assert_close(c.g, torch.tensor([[[(0.75 - 0.8) / 4, NEG]]],
                                                 dtype=torch.float64))
    assert c.active.tolist() == [[[True, False]]]


def _relative_reference(logits: torch.Tensor, pairs) -> list:
    """The active values in (image, pair, side) order: sizes by a loop over the pixels."""
    probs = logits.softmax(1)
    n = math.prod(logits.shape[2:])
    values = []
    for i in range(logits.shape[0]):
        for a, b, lo, hi in pairs:
            va = sum(probs[i, a].flatten()[k] for k in range(n))
            vb = sum(probs[i, b].flatten()[k] for k in range(n))
            if lo > 0:
                values.append((lo * vb - va) / n)
            if hi < math.inf:
                values.append((va - hi * vb) / n)
    return values


@pytest.mark.parametrize("shape", SHAPES)
def test_relative_size_value_and_gradient_match_a_loop_reference(shape):
    pairs = [(3, 2, 0.5, 2.0), (1, 3, 0.0, 1.2), (2, 1, 0.8, math.inf)]
    logits = _random_logits(shape, 1)
    c = relative_size_constraints(logits, pairs=pairs)
    got = c.g[c.active]
    expected = _relative_reference(logits, pairs)
    torch.testing.assert_close(got, torch.stack(expected))
    (grad,) = torch.autograd.grad(got.sum(), logits)
    (ref,) = torch.autograd.grad(torch.stack(expected).sum(), logits)
    torch.testing.assert_close(grad, ref)


def test_relative_size_tags_switch_pairs_off_where_a_structure_is_absent():
    logits = _random_logits((3, 4, 5, 5), 2)
    tags = torch.tensor([[True, True, True, True], [True, True, False, True],
                         [True, False, True, True]])
    pairs = [("LV", "Myo", 0.5, 2.0), ("RV", "LV", 0.2, 3.0)]
    with_tags = relative_size_constraints(logits, tags, pairs=pairs, class_names=NAMES)
    assert with_tags.active.tolist() == [[[True, True], [True, True]],
                                         [[False, False], [True, True]],
                                         [[True, True], [False, False]]]
    assert torch.isneginf(with_tags.g[~with_tags.active]).all()
    without = relative_size_constraints(logits, pairs=pairs, class_names=NAMES)
    assert without.active.all()
    torch.testing.assert_close(without.g[with_tags.active], with_tags.g[with_tags.active])


def test_relative_size_gradcheck_float64_2d_and_3d():
    pairs = [(1, 2, 0.5, 2.0), (3, 1, 0.3, math.inf)]
    for shape in [(1, 4, 3, 3), (1, 4, 2, 2, 3)]:
        logits = _random_logits(shape, 3, scale=1.0)
        assert torch.autograd.gradcheck(
            lambda z: relative_size_constraints(z, pairs=pairs).g.clamp_min(-1e3), (logits,))


def test_relative_size_gradient_is_finite_with_an_infinite_upper_bound():
    logits = _random_logits((2, 3, 4, 4), 4)
    c = relative_size_constraints(logits, pairs=[(1, 2, 0.5, math.inf)])
    loss = apply("penalty", c.g, mask=c.active) + apply("log_barrier", c.g, t=5.0,
                                                       mask=c.active)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------ relative sizes: errors


@pytest.mark.parametrize(("pairs", "match"), [
    ([["LVV", "Myo", 0.5, 2.0]], r"unknown class 'LVV' \(did you mean 'LV'\?\); classes: "
                                 "background, RV, Myo, LV"),
    ([["LV", "Myo", 2.0, 0.5]], r"lo = 2.0 > hi = 0.5"),
    ([["LV", "Myo", -0.5, 2.0]], r"must be >= 0"),
    ([["LV", "Myo", 0.5, -2.0]], r"must be >= 0"),
    ([["LV", "LV", 0.5, 2.0]], r"the two classes must differ"),
    ([[3, 4, 0.5, 2.0]], r"class index 4 does not exist \(classes 0-3\)"),
    ([[True, 2, 0.5, 2.0]], r"a class is an index or a name"),
    ([["LV", "Myo", 0.5]], r"must be a list of \[a, b, lo, hi\]"),
    ([], r"must be a list of \[a, b, lo, hi\]"),
    ([["LV", "Myo", "1", 2.0]], r"lo must be a number"),
    ([["LV", "Myo", float("nan"), 2.0]], r"lo must be a number"),
])
def test_relative_size_bad_pairs_fail_when_the_loss_is_built(pairs, match):
    with pytest.raises(ValueError, match=match) as info:
        ConstraintLoss({"family": "relative_size", "pairs": pairs}, "penalty",
                       num_classes=4, class_names=NAMES)
    assert "\n" not in str(info.value)


def test_relative_size_needs_pairs_and_names_need_class_names():
    with pytest.raises(ValueError, match="needs pairs"):
        ConstraintLoss("relative_size", "penalty")
    loss = ConstraintLoss({"family": "relative_size", "pairs": [["LV", "Myo", 0.5, 2.0]]},
                          "penalty")                        # names: checked once known
    with pytest.raises(ValueError, match="given by name but the class names are unknown"):
        loss(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="unknown parameter 'class_names'"):
        ConstraintLoss({"family": "relative_size", "pairs": [[1, 2, 0.5, 2.0]],
                        "class_names": NAMES}, "penalty")
    with pytest.raises(ValueError, match="3 class names"):
        ConstraintLoss({"family": "relative_size", "pairs": [[1, 2, 0.5, 2.0]]}, "penalty",
                       num_classes=4, class_names=NAMES[:3])


def test_relative_size_errors_in_a_config_are_one_line():
    """lo > hi fails when the config is loaded (its recipe is built without the data); an
    unknown class name when the trainer builds the recipe with the data's class names,
    before any training step."""
    params = {"constraint": {"family": "relative_size", "pairs": [["LV", "Myo", 2.0, 0.5]]},
              "objective": {"method": "log_barrier"}}
    with pytest.raises(WeaksegError, match="loss 'constraint'.*lo = 2.0 > hi = 0.5") as info:
        LossRecipe([LossTerm("constraint", params=params)])       # as config_from_dict does
    assert "\n" not in str(info.value)
    params["constraint"]["pairs"] = [["lv", "Myo", 0.5, 2.0]]
    terms = [LossTerm("constraint", params=params)]
    LossRecipe(terms)                                             # names not known yet
    with pytest.raises(WeaksegError, match=r"loss 'constraint'.*unknown class 'lv' "
                                           r"\(did you mean 'LV'\?\)") as info:
        LossRecipe(terms, num_classes=4, class_names=NAMES)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------- one component: helper


def _offsets(ndim: int, connectivity: int) -> list[tuple[int, ...]]:
    return [d for d in itertools.product((-1, 0, 1), repeat=ndim)
            if 0 < sum(map(abs, d)) <= connectivity]


def _neighbours(p, shape, offsets):
    for d in offsets:
        q = tuple(a + b for a, b in zip(p, d, strict=True))
        if all(0 <= a < n for a, n in zip(q, shape, strict=True)):
            yield q


def _naive_largest(mask: np.ndarray, connectivity: int, dilation: int) -> np.ndarray:
    """Flood fill in raster order; the first largest component; dilation step by step."""
    offsets = _offsets(mask.ndim, connectivity)
    seen = np.zeros(mask.shape, bool)
    best: list = []
    for start in itertools.product(*map(range, mask.shape)):
        if not mask[start] or seen[start]:
            continue
        seen[start] = True
        comp, todo = [start], [start]
        while todo:
            for q in _neighbours(todo.pop(), mask.shape, offsets):
                if mask[q] and not seen[q]:
                    seen[q] = True
                    comp.append(q)
                    todo.append(q)
        if len(comp) > len(best):
            best = comp
    keep = np.zeros(mask.shape, bool)
    for q in best:
        keep[q] = True
    for _ in range(dilation):
        grown = keep.copy()
        for p in zip(*np.nonzero(keep), strict=True):
            for q in _neighbours(p, mask.shape, offsets):
                grown[q] = True
        keep = grown
    return keep


@pytest.mark.parametrize("spatial", [(7, 6), (4, 5, 6)])
@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("dilation", [0, 1, 2])
def test_largest_components_matches_a_flood_fill(spatial, connectivity, dilation):
    rng = np.random.default_rng(len(spatial) * 10 + connectivity + dilation)
    masks = rng.random((5, *spatial)) < 0.35
    masks[2] = False                                                # an empty mask
    got = largest_components(masks, connectivity=connectivity, dilation=dilation)
    for mask, keep in zip(masks, got, strict=True):
        np.testing.assert_array_equal(keep, _naive_largest(mask, connectivity, dilation))
    assert not got[2].any()


def test_largest_components_ties_first_and_never_across_the_stack():
    masks = np.zeros((2, 3, 5), bool)
    masks[0, 0, :2] = masks[0, 2, 3:] = True                        # two blobs of 2
    masks[1, 0, :2] = True                                          # touches item 0 only
    masks[1, 1, 2:] = True                                          # across the stack
    keep = largest_components(masks)
    assert keep[0].sum() == 2 and keep[0, 0, :2].all()
    assert keep[1].sum() == 3 and keep[1, 1, 2:].all()
    assert masks[0].sum() == 4                                      # input untouched
    with pytest.raises(ValueError, match="connectivity"):
        largest_components(masks, connectivity=3)
    with pytest.raises(ValueError, match="dilation"):
        largest_components(masks, dilation=-1)


# ------------------------------------------------------------- one component: values


def test_one_component_hand_values_2d_and_3d():
    # 2D: one row of 6; class 1 holds pixels 0, 1 (blob) and 4 (stray), p = 0.8 there, 0.3
    # elsewhere; dilation 1 keeps pixels 0-2 → mass outside = 0.3 + 0.8 + 0.3 = 1.4
    p1 = torch.tensor([0.8, 0.8, 0.3, 0.3, 0.8, 0.3], dtype=torch.float64)
    logits = torch.stack([(1 - p1).log(), p1.log()])[None, :, None]      # (1, 2, 1, 6)
    c = one_component_constraints(logits, dilation=1)
    torch.testing.assert_close(c.g, torch.tensor([[NEG, 1.4 / 6]], dtype=torch.float64))
    c = one_component_constraints(logits, dilation=0, tolerance=0.5)      # + pixel 2, − τ
    torch.testing.assert_close(c.g[0, 1], torch.tensor((1.7 - 0.5) / 6, dtype=torch.float64))
    c = one_component_constraints(logits, dilation=0, tolerance=0.5 / 6, fraction=True)
    torch.testing.assert_close(c.g[0, 1], torch.tensor((1.7 - 0.5) / 6, dtype=torch.float64))
    # 3D 2x2x2: class 1 at (0,0,0) and (1,1,1) (p = 0.9; 0.2 elsewhere): two blobs of 1
    # with face neighbours, the first kept; one blob of 2 with 26-neighbours
    p1 = torch.full((2, 2, 2), 0.2, dtype=torch.float64)
    p1[0, 0, 0] = p1[1, 1, 1] = 0.9
    logits = torch.stack([(1 - p1).log(), p1.log()])[None]
    c = one_component_constraints(logits, dilation=0)
    torch.testing.assert_close(c.g[0, 1], torch.tensor((0.9 + 6 * 0.2) / 8, dtype=torch.float64))
    c = one_component_constraints(logits, dilation=1)            # (0,0,0) and 3 neighbours
    torch.testing.assert_close(c.g[0, 1], torch.tensor((0.9 + 3 * 0.2) / 8, dtype=torch.float64))
    c = one_component_constraints(logits, dilation=0, connectivity=3)
    torch.testing.assert_close(c.g[0, 1], torch.tensor(6 * 0.2 / 8, dtype=torch.float64))


def _component_reference(logits: torch.Tensor, classes, dilation, connectivity, tolerance):
    """Per image and class: naive components of the arg-max, a loop over the pixels."""
    probs = logits.softmax(1)
    hard = logits.detach().argmax(1).numpy()
    g = torch.full(logits.shape[:2], NEG, dtype=logits.dtype)
    n = math.prod(logits.shape[2:])
    rows = []
    for i in range(logits.shape[0]):
        for k in classes:
            mask = hard[i] == k
            if not mask.any():
                continue
            near = _naive_largest(mask, connectivity, dilation)
            outside = sum(probs[i, k][p] for p in zip(*np.nonzero(~near), strict=True))
            rows.append(((i, k), (outside - tolerance) / n))
    for (i, k), value in rows:
        g = g.index_put((torch.tensor(i), torch.tensor(k)), value)
    return g


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("connectivity", "dilation"), [(1, 1), (2, 0)])
def test_one_component_value_and_gradient_match_a_naive_reference(shape, connectivity,
                                                                  dilation):
    logits = _random_logits(shape, 5)
    c = one_component_constraints(logits, dilation=dilation, connectivity=connectivity,
                                  tolerance=0.25)
    ref = _component_reference(logits, range(1, shape[1]), dilation, connectivity, 0.25)
    torch.testing.assert_close(c.g, ref)
    assert c.active.tolist() == torch.isfinite(ref).tolist()
    assert c.active.any() and not c.active[:, 0].any()             # background not constrained
    (grad,) = torch.autograd.grad(c.g[c.active].sum(), logits)
    (expected,) = torch.autograd.grad(ref[torch.isfinite(ref)].sum(), logits)
    torch.testing.assert_close(grad, expected)


def test_one_component_classes_by_name_and_absent_classes_inactive():
    logits = torch.zeros(2, 4, 5, 5, dtype=torch.float64)
    logits[0, 3, :2, :2] = 5.0                                      # LV in image 0 only
    logits[:, 2, 3:, 3:] = 5.0                                      # Myo in both
    c = one_component_constraints(logits, classes=["LV", "Myo"], class_names=NAMES)
    assert c.active.tolist() == [[False, False, True, True], [False, False, True, False]]
    with pytest.raises(ValueError, match="given by name"):
        one_component_constraints(logits, classes=["LV"])


def test_one_component_gradcheck_float64_2d_and_3d():
    for shape in [(1, 3, 4, 4), (1, 3, 2, 3, 3)]:
        logits = _random_logits(shape, 6)
        assert torch.autograd.gradcheck(
            lambda z: one_component_constraints(z, dilation=0).g.clamp_min(-1e3), (logits,))


@pytest.mark.parametrize(("params", "match"), [
    ({"classes": ["LVV"]}, r"unknown class 'LVV' \(did you mean 'LV'\?\)"),
    ({"classes": [7]}, r"class index 7 does not exist"),
    ({"classes": "LV"}, r"classes must be a list"),
    ({"dilation": -1}, r"dilation must be an integer >= 0"),
    ({"connectivity": 4}, r"connectivity must be 1, 2 or 3"),
    ({"tolerance": -1.0}, r"tolerance must be a finite number >= 0"),
])
def test_one_component_bad_parameters_fail_when_the_loss_is_built(params, match):
    with pytest.raises(ValueError, match=match) as info:
        ConstraintLoss({"family": "one_component", **params}, "penalty", num_classes=4,
                       class_names=NAMES)
    assert "\n" not in str(info.value)


def test_one_component_removing_the_stray_blob_satisfies_it():
    """A single blob with saturated probabilities meets the constraint; a stray blob of the
    same class violates it by about its size."""
    logits = torch.full((1, 2, 8, 8), -8.0)
    logits[0, 0] = 8.0
    logits[0, 1, 1:4, 1:4], logits[0, 0, 1:4, 1:4] = 8.0, -8.0
    clean = one_component_constraints(logits, tolerance=0.5)
    assert float(clean.g[0, 1]) < 0
    logits[0, 1, 6:8, 6:8], logits[0, 0, 6:8, 6:8] = 8.0, -8.0    # 4 stray pixels
    stray = one_component_constraints(logits, tolerance=0.5)
    assert float(stray.g[0, 1]) * 64 == pytest.approx(4 - 0.5, abs=1e-3)


# ------------------------------------------------- through the constraint loss


def _batch(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    full = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    tags = torch.nn.functional.one_hot(full, shape[1]).movedim(-1, 1).flatten(2).any(-1)
    tags[0, 3] = False
    return {"tags": tags, "index": torch.arange(shape[0])}


FAMILIES = [
    {"family": "relative_size", "pairs": [["LV", "Myo", 0.5, 2.0], [1, "LV", 0.0, 1.5]]},
    {"family": "one_component", "dilation": 1, "tolerance": 1.0},
]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f["family"])
@pytest.mark.parametrize("method", ["penalty", "log_barrier", "lagrangian"])
@pytest.mark.parametrize("shape", SHAPES)
def test_families_through_the_constraint_loss(family, method, shape):
    loss = ConstraintLoss(family, {"method": method}, num_classes=4, class_names=NAMES)
    logits = _random_logits(shape, 7).detach().float().requires_grad_()
    batch = _batch(shape)
    kept = {k: v.clone() for k, v in batch.items()}
    before = logits.detach().clone()
    value = loss(logits, **batch)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert torch.equal(logits.detach(), before)                     # inputs never modified
    assert all(torch.equal(batch[k], kept[k]) for k in batch)
    assert 0 <= float(loss.last_stats["violated"]) <= 1
    fn = CONSTRAINTS.get(family["family"]).fn
    params = {k: v for k, v in family.items() if k != "family"}
    tags = {"tags": batch["tags"]} if family["family"] == "relative_size" else {}
    c = fn(logits.detach(), **tags, **params, class_names=NAMES)
    if method != "lagrangian":                                      # λ = 0 at first
        settings = {"t": 5.0} if method == "log_barrier" else {}
        torch.testing.assert_close(value, apply(method, c.g, mask=c.active, **settings))


def test_lagrange_multipliers_per_pair_and_per_class_and_no_proposal():
    relative = ConstraintLoss(FAMILIES[0], "lagrangian", num_classes=4, class_names=NAMES)
    assert relative.objective.terms["relative_size"].multipliers.lam.shape == (2, 2)
    per_image = ConstraintLoss(FAMILIES[0], {"method": "lagrangian", "per_image": True},
                               num_classes=4, class_names=NAMES)
    per_image(torch.randn(2, 4, 6, 6), **_batch((2, 4, 6, 6)))
    assert per_image.objective.terms["relative_size"].multipliers.lam.shape == (2, 2, 2)
    component = ConstraintLoss(FAMILIES[1], "lagrangian", num_classes=4)
    assert component.objective.terms["one_component"].multipliers.lam.shape == (4,)
    proposal = ConstraintLoss(FAMILIES[0], "proposal", num_classes=4, class_names=NAMES)
    assert torch.isfinite(proposal(torch.randn(2, 4, 6, 6), **_batch((2, 4, 6, 6))))
    with pytest.raises(ValueError, match="affine"):
        ConstraintLoss(FAMILIES[1], "proposal")


def test_recipe_injects_class_names_and_passes_tags_when_the_batch_has_them():
    recipe = LossRecipe([LossTerm("partial_ce"),
                         LossTerm("constraint", params={"constraint": FAMILIES[0],
                                                        "objective": "penalty"}),
                         LossTerm("constraint", params={"constraint": FAMILIES[1],
                                                        "objective": "log_barrier"})],
                         num_classes=4, class_names=NAMES)
    assert recipe.names == ["partial_ce", "relative_size", "one_component"]
    assert recipe.losses[1].inputs == () and recipe.losses[1].optional_inputs == ("tags",)
    logits = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(8))
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    tags = torch.ones(2, 4, dtype=torch.bool)
    tags[:, 3] = False                                              # no LV: both pairs off
    _, with_tags = recipe(logits, {"target": target, "tags": tags})
    _, without = recipe(logits, {"target": target})
    assert float(with_tags["relative_size"]) == 0.0
    assert float(without["relative_size"]) > 0.0
    assert set(recipe.last_stats) == {"relative_size_violated", "one_component_violated"}


def test_registry_lists_the_knowledge_priors():
    assert {"relative_size", "one_component"} <= set(CONSTRAINTS.names())
    relative = CONSTRAINTS.get("relative_size")
    assert relative.affine and dict(relative.optional) == {"tags": "tags"}
    assert relative.parameters() == ["pairs"]
    assert not CONSTRAINTS.get("one_component").affine
    assert CONSTRAINTS.get("one_component").parameters() == [
        "classes", "dilation", "connectivity", "tolerance", "fraction"]
