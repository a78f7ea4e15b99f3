"""The two registries of weakseg.constrain — constraint families (what is constrained) and
objectives (how it is optimised) — and the one constraint loss that joins them: hand-computed
values of every family in 2D and 3D, errors with "did you mean", objective state through
state_dict, the new form equal to the old aliases, num_classes injected by the recipe."""

from __future__ import annotations

import pytest
import torch

from weakseg.config import config_from_dict
from weakseg.constrain import CONSTRAINTS, OBJECTIVES, apply
from weakseg.constrain.families import (
    box_constraints,
    centroid_constraints,
    size_constraints,
    tag_constraints,
)
from weakseg.errors import WeaksegError
from weakseg.losses import LOSSES
from weakseg.losses.constraints import ConstraintLoss, SizeConstraintLoss
from weakseg.losses.recipe import LossRecipe, LossTerm

INF = float("inf")
NEG = float("-inf")

# class-1 probabilities chosen by hand (class 0 = 1 - p): 2D 3x3 and 3D 2x2x2
P2D = [[0.5, 0.25, 0.1], [0.75, 0.5, 0.2], [0.1, 0.1, 0.1]]        # V1 = 2.6, |Ω| = 9
P3D = [[[0.5, 0.25], [0.75, 0.5]], [[0.1, 0.2], [0.3, 0.4]]]        # V1 = 3.0, |Ω| = 8


def _logits(p1: list) -> torch.Tensor:
    """Logits whose softmax is exactly (1 - p1, p1), float64, shape (1, 2, *spatial)."""
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([(1 - p).log(), p.log()])[None]


def _close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64))


# ------------------------------------------------------------ families: hand values


def test_size_hand_values_2d_and_3d():
    # 2D: V = (6.4, 2.6); class 0 unbounded (inactive), class 1 in [3, 4]
    c = size_constraints(_logits(P2D), torch.tensor([[0.0, INF], [3.0, 4.0]]))
    _close(c.g, [[[NEG, NEG], [0.4 / 9, -1.4 / 9]]])
    assert c.active.tolist() == [[[False, False], [True, True]]]
    # 3D: V = (5, 3); class 0 at most 4 (lower 0 inactive), class 1 in [3.5, 8] (upper = |Ω|)
    c = size_constraints(_logits(P3D), torch.tensor([[0.0, 4.0], [3.5, 8.0]]))
    _close(c.g, [[[NEG, 1.0 / 8], [0.5 / 8, NEG]]])


def test_tags_hand_values_2d_and_3d():
    c = tag_constraints(_logits(P2D), torch.tensor([[True, False]]), min_size=1.0)
    _close(c.g, [[(1.0 - 6.4) / 9, 2.6 / 9]])
    c = tag_constraints(_logits(P3D), torch.tensor([[False, True]]), min_size=4.0)
    _close(c.g, [[5.0 / 8, (4.0 - 3.0) / 8]])
    assert c.active.all()


def test_box_hand_values_2d():
    boxes = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    boxes[0, 1, :2, :2] = True                              # inside mass 2.0 of V1 = 2.6
    out = box_constraints(_logits(P2D), boxes, size_fraction=(0.5, 0.9))
    _close(out["outside"].g, [[NEG, 0.6 / 9]])
    # bands: rows 0..2 then columns 0..2; rows 0, 1 and columns 0, 1 cross the box
    row_mass, col_mass = [0.75, 1.25], [1.25, 0.75]
    expected = [(1 - m) / 9 for m in row_mass] + [NEG] + [(1 - m) / 9 for m in col_mass] + [NEG]
    _close(out["tightness"].g, [[[NEG] * 6, expected]])
    _close(out["size"].g, [[[NEG, NEG], [(0.5 * 4 - 2.0) / 9, (2.0 - 0.9 * 4) / 9]]])


def test_box_hand_values_3d():
    boxes = torch.zeros(1, 2, 2, 2, 2, dtype=torch.bool)
    boxes[0, 1, 0] = True                                   # the first z slice: mass 2.0
    out = box_constraints(_logits(P3D), boxes, size_fraction=(0.5, 0.9))
    _close(out["outside"].g, [[NEG, 1.0 / 8]])
    # z: slice 0 in the box (slice 1 not); y rows 0, 1; x columns 0, 1
    expected = [(1 - 2.0) / 8, NEG, (1 - 0.75) / 8, (1 - 1.25) / 8, (1 - 1.25) / 8,
                (1 - 0.75) / 8]
    _close(out["tightness"].g[0, 1], expected)
    _close(out["size"].g[0, 1], [(2.0 - 2.0) / 8, (2.0 - 3.6) / 8])


def test_centroid_hand_values_2d_and_3d():
    # 2D: class 1 centroid (row, col) = (2.05, 1.65) / 2.6; row in [1, 2] (upper inactive:
    # the last row), col in [0, 0.5] (lower inactive: the first column)
    bounds = torch.tensor([[[0.0, 2.0], [0.0, 2.0]], [[1.0, 2.0], [0.0, 0.5]]])
    c = centroid_constraints(_logits(P2D), bounds)
    _close(c.g[0, 1], [[(1.0 - 2.05 / 2.6) / 3, NEG], [NEG, (1.65 / 2.6 - 0.5) / 3]])
    assert not c.active[0, 0].any()
    # 3D: class 1 centroid along z = (0 * 2.0 + 1 * 1.0) / 3 = 1/3, z in [0.5, inf)
    bounds = torch.tensor([[[-INF, INF]] * 3, [[0.5, INF], [-INF, INF], [-INF, INF]]])
    c = centroid_constraints(_logits(P3D), bounds)
    _close(c.g[0, 1, 0], [(0.5 - 1.0 / 3) / 2, NEG])
    assert int(c.active.sum()) == 1


def test_registry_lists_the_families_with_their_inputs():
    assert CONSTRAINTS.names() == ["box", "centroid", "class_fraction", "one_component",
                                   "relative_size", "size", "tags"]
    assert OBJECTIVES.names() == ["lagrangian", "log_barrier", "penalty", "proposal"]
    assert dict(CONSTRAINTS.get("centroid").inputs) == {"bounds": "centroid_bounds"}
    assert not CONSTRAINTS.get("centroid").affine and CONSTRAINTS.get("box").affine
    assert set(CONSTRAINTS.get("box").parts) == {"outside", "tightness", "size"}


# ---------------------------------------------------------------- errors, one line


@pytest.mark.parametrize(("constraint", "objective", "match"), [
    ("size", {"method": "log_barier"},
     r"^unknown objective method 'log_barier' \(did you mean 'log_barrier'\?\)"),
    ({"family": "tag"}, "penalty", r"^unknown constraint 'tag' \(did you mean 'tags'\?\)"),
    ({"family": "size", "fractoin": True}, "penalty",
     r"unknown parameter 'fractoin' for constraint 'size' \(did you mean 'fraction'\?\)"),
    ("size", {"method": "log_barrier", "t_mul": 1.1},
     r"unknown parameter 't_mul' for objective 'log_barrier' \(did you mean 't_mult'\?\)"),
    ({"family": "box", "boxes_mask": [[0]]}, "penalty",
     r"unknown parameter 'boxes_mask' for constraint 'box'; allowed: band_width"),
    ({"family": "centroid"}, "proposal", "affine"),
    ({"size": 1}, "penalty", "family: <name>"),
])
def test_bad_constraint_or_objective_is_one_line(constraint, objective, match):
    with pytest.raises(ValueError, match=match) as info:
        ConstraintLoss(constraint, objective)
    assert "\n" not in str(info.value)


def test_unknown_objective_in_a_config_is_one_line_error():
    raw = {"data": {"priors": ["tags", "bounds_from_tags"]},
           "loss": [{"name": "constraint", "params": {"constraint": {"family": "size"},
                                                       "objective": {"method": "lagrangain"}}}]}
    with pytest.raises(WeaksegError, match="did you mean 'lagrangian'") as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value) and "loss 'constraint'" in str(info.value)


# ------------------------------------------------------------- the new form = aliases


def _batch(shape=(3, 4, 8, 8), seed=0):
    gen = torch.Generator().manual_seed(seed)
    full = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    onehot = torch.nn.functional.one_hot(full, shape[1]).movedim(-1, 1).bool()
    sizes = onehot.flatten(2).sum(-1).float()
    boxes = onehot.clone()
    boxes[:, 0] = False
    return {"bounds": torch.stack([0.5 * sizes, 1.5 * sizes], -1), "tags": sizes > 0,
            "boxes": boxes, "index": torch.arange(shape[0]) * 2}


@pytest.mark.parametrize(("alias", "params", "family", "objective"), [
    ("size", {"method": "log_barrier", "t0": 3.0, "units": "pixels"}, {"family": "size"},
     {"method": "log_barrier", "t0": 3.0, "units": "pixels"}),
    ("size", {"method": "lagrangian", "num_classes": 4, "dual_lr": 5.0, "per_image": True},
     {"family": "size"}, {"method": "lagrangian", "dual_lr": 5.0, "per_image": True}),
    ("tags", {"method": "penalty", "min_size": 2.0}, {"family": "tags", "min_size": 2.0},
     {"method": "penalty"}),
    ("box", {"method": "log_barrier", "emptiness": "ce", "emptiness_weight": 10.0},
     {"family": "box", "emptiness": "ce", "emptiness_weight": 10.0}, {"method": "log_barrier"}),
    ("size", {"method": "proposal", "proposal_iterations": 5},
     {"family": "size"}, {"method": "proposal", "iterations": 5}),
])
def test_new_form_equals_the_old_alias(alias, params, family, objective):
    old = LOSSES.build(alias, **params)
    new = LOSSES.build("constraint", constraint=family, objective=objective,
                       num_classes=params.get("num_classes"))
    assert old.inputs == new.inputs and old.label == new.label == family["family"]
    batch = _batch()
    for step in range(3):
        logits = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(step))
        a = old(logits, **{k: batch[k] for k in old.inputs})
        b = new(logits, **{k: batch[k] for k in new.inputs})
        assert torch.equal(a, b)
        assert old.last_stats.keys() == new.last_stats.keys()
        old.epoch_step()
        new.epoch_step()
    assert str(old.state_dict()) == str(new.state_dict())


#: Parameters a family cannot do without (the knowledge priors' pairs of classes).
REQUIRED = {"relative_size": {"pairs": [[1, 2, 0.5, 2.0], [2, 0, 0.01, 5.0]]},
            "class_fraction": {"prior": {1: 0.2, 2: 0.3}}}


@pytest.mark.parametrize("method", OBJECTIVES.names())
@pytest.mark.parametrize("family", CONSTRAINTS.names())
@pytest.mark.parametrize("shape", [(2, 3, 6, 5), (2, 3, 4, 5, 3)])
def test_contract_every_family_with_every_objective(family, method, shape):
    if method == "proposal" and not CONSTRAINTS.get(family).affine:
        pytest.skip("the proposal needs affine constraints")
    gen = torch.Generator().manual_seed(1)
    full = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    onehot = torch.nn.functional.one_hot(full, shape[1]).movedim(-1, 1).bool()
    sizes = onehot.flatten(2).sum(-1).float()
    free = torch.tensor([-INF, INF]).expand(shape[0], shape[1], len(shape) - 2, 2)
    batch = {"bounds": torch.stack([0.5 * sizes, 1.5 * sizes], -1), "tags": sizes > 0,
             "boxes": onehot, "centroid_bounds": free.clone(), "index": torch.arange(2),
             "labelled_classes": torch.tensor([[True, False, True], [True, True, False]])}
    batch["centroid_bounds"][:, 1, 0] = torch.tensor([1.0, 2.0])
    loss = ConstraintLoss({"family": family, **REQUIRED.get(family, {})}, method,
                          num_classes=shape[1])
    logits = torch.randn(shape, generator=gen, requires_grad=True)
    value = loss(logits, **{k: batch[k] for k in (*loss.inputs, *loss.optional_inputs)})
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert 0 <= float(loss.last_stats["violated"]) <= 1


# ---------------------------------------------------- objective state in state_dict


def _run(loss: ConstraintLoss, steps: range, batch: dict) -> list[torch.Tensor]:
    out = []
    for step in steps:
        logits = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(step))
        out.append(loss(logits, **{k: batch[k] for k in loss.inputs}))
        loss.epoch_step()
    return out


@pytest.mark.parametrize("objective", [
    {"method": "log_barrier", "t0": 2.0, "t_mult": 1.5},
    {"method": "lagrangian", "dual_lr": 3.0},
    {"method": "lagrangian", "dual_lr": 3.0, "per_image": True},
    {"method": "penalty"},
])
def test_objective_state_round_trips_through_state_dict(objective):
    """Stopped after 3 steps, restored into a fresh loss, continued = uninterrupted."""
    batch = _batch()
    batch["bounds"][:, 1] = torch.tensor([40.0, 64.0])       # violated: the duals move
    ref = ConstraintLoss("size", objective, num_classes=4)
    expected = _run(ref, range(6), batch)
    cut = ConstraintLoss("size", objective, num_classes=4)
    _run(cut, range(3), batch)
    state = cut.state_dict()
    resumed = ConstraintLoss("size", objective, num_classes=4)
    resumed.load_state_dict(state)
    assert str(resumed.state_dict()) == str(state)
    assert all(torch.equal(a, b) for a, b in zip(_run(resumed, range(3, 6), batch),
                                                 expected[3:], strict=True))
    assert str(resumed.state_dict()) == str(ref.state_dict())
    if objective["method"] == "log_barrier":
        assert state["objective._extra_state"]["schedule"]["t"] == pytest.approx(2.0 * 1.5**3)
    if objective["method"] == "lagrangian":
        lam = state["objective.terms.size.multipliers.lam"]
        assert lam.shape == ((5, 4, 2) if objective.get("per_image") else (4, 2))
        assert (lam > 0).any()


# ---------------------------------------------------------- injection by the recipe


def test_recipe_injects_num_classes_and_names_terms_by_family():
    terms = [LossTerm("constraint", params={"constraint": "size",
                                            "objective": {"method": "lagrangian"}}),
             LossTerm("constraint", params={"constraint": "tags", "objective": "penalty"}),
             LossTerm("size", params={"method": "lagrangian"})]
    recipe = LossRecipe(terms, num_classes=4)
    assert recipe.names == ["size", "tags", "size_1"]
    assert recipe.losses[0].objective.terms["size"].multipliers.lam.shape == (4, 2)
    assert recipe.losses[2].objective.terms["size"].multipliers.lam.shape == (4, 2)
    assert LossRecipe(terms[:1]).losses[0].objective.terms["size"].multipliers.lam.shape == ()
    batch = _batch()
    _, parts = recipe(torch.zeros(3, 4, 8, 8), batch)
    assert list(parts) == ["size", "tags", "size_1"]
    assert set(recipe.last_stats) == {"size_violated", "tags_violated", "size_1_violated"}
    with pytest.raises(WeaksegError, match="num_classes = 3 in the config but the data has 4"):
        LossRecipe([LossTerm("size", params={"num_classes": 3})], num_classes=4)
    same = LossRecipe([LossTerm("size", params={"num_classes": 4})], num_classes=4)
    assert same.losses[0].num_classes == 4


def test_fixed_inputs_are_read_from_the_config_not_the_batch():
    fixed = [[0.0, 64.0], [4.0, 20.0], [0.0, 64.0], [0.0, 64.0]]
    loss = ConstraintLoss({"family": "size", "bounds": fixed}, "penalty")
    assert loss.inputs == () and "fixed" in repr(loss)
    logits = torch.randn(3, 4, 8, 8)
    expected = apply("penalty", size_constraints(logits, torch.tensor(fixed)).g)
    torch.testing.assert_close(loss(logits), expected)
    with pytest.raises(ValueError, match="logits need \\(3, 2\\)"):
        loss(torch.randn(3, 3, 8, 8))
    with pytest.raises(WeaksegError, match="negative"):
        ConstraintLoss({"family": "size", "bounds": [[0.0, 1.0], [-1.0, 2.0]]}, "penalty")
    assert SizeConstraintLoss(bounds=fixed).inputs == ()
