"""Constraint values (weakseg.losses.constraints): sizes, tags, boxes, centroids, size
equalities, area by sorting — hand values, 2D/3D, inactive entries, errors, the METHODS.md
pitfalls, vectorisation, float64 gradcheck, module == function."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from weakseg.constrain import apply, log_barrier_extension
from weakseg.errors import WeaksegError
from weakseg.losses.constraints import (
    AreaBySortingLoss,
    BoxConstraintLoss,
    CentroidConstraintLoss,
    SizeConstraintLoss,
    SizeEqualityLoss,
    TagConstraintLoss,
    area_by_sorting,
    box_constraints,
    box_emptiness_ce,
    centroid_constraints,
    size_constraints,
    size_equality_kl,
    size_equality_l2,
    soft_size,
    tag_constraints,
)

INF = float("inf")
SHAPES = [(2, 3, 6, 5), (2, 3, 4, 5, 3)]  # 2D and 3D


def _logits(shape, seed=0, dtype=torch.float32, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)


def _onehot_logits(labels, num_classes, scale=50.0):
    return F.one_hot(labels, num_classes).movedim(-1, 1).float() * scale


# ------------------------------------------------------------------------ sizes


@pytest.mark.parametrize("shape", SHAPES)
def test_soft_size_2d_3d(shape):
    logits = _logits(shape)
    dims = tuple(range(2, len(shape)))
    assert torch.allclose(soft_size(logits), logits.softmax(1).sum(dims))
    n = math.prod(shape[2:])
    assert torch.allclose(soft_size(logits, fraction=True), soft_size(logits) / n)


@pytest.mark.parametrize("shape", SHAPES)
def test_size_constraints_values_and_inactive_entries(shape):
    logits = _logits(shape, 1)
    b, c = shape[:2]
    n = math.prod(shape[2:])
    bounds = torch.tensor([[0.0, INF], [2.0, 10.0], [0.0, 0.0]]).expand(b, c, 2)
    g, active = size_constraints(logits, bounds)
    assert g.shape == active.shape == (b, c, 2)
    v = soft_size(logits)
    expected_active = torch.tensor([[False, False], [True, True], [False, True]])
    assert torch.equal(active, expected_active.expand(b, c, 2))
    assert torch.isneginf(g[~active]).all()
    assert torch.allclose(g[:, 1, 0], (2.0 - v[:, 1]) / n)
    assert torch.allclose(g[:, 1, 1], (v[:, 1] - 10.0) / n)
    assert torch.allclose(g[:, 2, 1], v[:, 2] / n)
    # (C, 2) bounds broadcast to every image; fractions give the same values
    assert torch.equal(size_constraints(logits, bounds[0]).g, g)
    frac = size_constraints(logits, bounds / n, fraction=True).g
    assert torch.allclose(frac[active], g[active])


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ([[0.0, 5.0], [8.0, 3.0]], r"class 1: \(lower, upper\) = \(8.0, 3.0\) is infeasible"),
        ([[0.0, 5.0], [31.0, 40.0]], "lower above the image size 30"),
        ([[-1.0, 5.0], [1.0, 3.0]], r"class 0: \(lower, upper\) = \(-1.0, 5.0\) is negative"),
        ([[0.0, float("nan")], [1.0, 3.0]], "is NaN"),
    ],
)
def test_size_bounds_rejected_with_clear_message(bounds, message):
    logits = _logits((2, 2, 6, 5))
    with pytest.raises(WeaksegError, match=message):
        size_constraints(logits, torch.tensor(bounds))
    size_constraints(logits, torch.tensor(bounds), check=False)  # checks can be switched off


def test_size_bounds_message_names_the_image_and_bad_shapes():
    bounds = torch.tensor([[[0.0, 5.0], [1.0, 3.0]], [[0.0, 5.0], [4.0, 3.0]]])
    with pytest.raises(WeaksegError, match="image 1, class 1"):
        size_constraints(_logits((2, 2, 6, 5)), bounds)
    with pytest.raises(WeaksegError, match=r"image size 1 \(fraction\)"):
        size_constraints(_logits((2, 2, 6, 5)), torch.tensor([[0.0, 1.0], [1.5, 2.0]]),
                         fraction=True)
    with pytest.raises(ValueError, match=r"\(B, C, 2\)"):
        size_constraints(_logits((2, 2, 6, 5)), torch.zeros(2, 3, 2))


@pytest.mark.parametrize("method", ["penalty", "log_barrier", "lagrangian"])
def test_pitfall_violated_lower_bound_gives_positive_loss_and_gradient(method):
    """METHODS.md pitfall: a lower bound sliced to an empty tensor makes the loss always 0."""
    logits = torch.zeros(2, 2, 8, 8)
    logits[:, 0] = 4.0  # the foreground is almost empty
    logits.requires_grad_()
    bounds = torch.tensor([[0.0, INF], [20.0, INF]])  # only lower bounds are active
    constraint = size_constraints(logits, bounds)
    assert constraint.active[:, 1, 0].all() and (constraint.g[:, 1, 0] > 0).all()
    from weakseg.constrain import LagrangianMultipliers

    loss = apply(method, constraint.g, t=5.0, lagrangian=LagrangianMultipliers(init=1.0))
    assert float(loss.detach()) > 0
    loss.backward()
    assert logits.grad.abs().sum() > 0
    assert (logits.grad[:, 1] < 0).all()  # descending the loss grows the foreground


def test_size_module_equals_function_and_steps_schedule():
    logits = _logits((2, 3, 6, 5), 2)
    bounds = torch.tensor([[0.0, INF], [2.0, 10.0], [0.0, 0.0]])
    module = SizeConstraintLoss("log_barrier", t0=3.0, t_mult=2.0)
    g = size_constraints(logits, bounds).g
    assert torch.equal(module(logits, bounds), apply("log_barrier", g, t=3.0))
    module.epoch_step()
    assert torch.equal(module(logits, bounds), apply("log_barrier", g, t=6.0))
    lagrangian = SizeConstraintLoss("lagrangian", num_classes=3)
    lagrangian(logits, bounds)
    assert lagrangian.objective.terms["size"].multipliers.lam.shape == (3, 2)
    assert SizeConstraintLoss.inputs == ("bounds",)


# ------------------------------------------------------------------------- tags


@pytest.mark.parametrize("shape", SHAPES)
def test_tags_suppression_and_inclusion_signs(shape):
    b, c, *spatial = shape
    labels = torch.zeros((b, *spatial), dtype=torch.long)
    labels[:, :2] = 1  # class 1 present, class 2 absent
    logits = _onehot_logits(labels, c, scale=20.0)
    tags = torch.tensor([True, True, False]).expand(b, c)
    g, active = tag_constraints(logits, tags, min_size=2.0)
    assert g.shape == (b, c) and active.all()
    assert (g[:, :2] < 0).all()  # present and big enough: inclusion satisfied
    assert (g[:, 2] > 0).all() and (g[:, 2] < 1e-6).all()  # absent: tiny but violated
    # a present class that is not predicted violates inclusion; an absent one predicted
    # everywhere violates suppression by its full size
    wrong = tag_constraints(logits, torch.tensor([True, False, True]).expand(b, c)).g
    n = math.prod(spatial)
    assert (wrong[:, 2] > 0).all()
    assert torch.allclose(wrong[:, 1], soft_size(logits)[:, 1] / n)


def test_tags_gradient_pushes_absent_class_down_and_errors():
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    tags = torch.tensor([[True, False]])
    apply("log_barrier", tag_constraints(logits, tags).g, t=5.0).backward()
    assert (logits.grad[:, 1] > 0).all()
    with pytest.raises(ValueError, match="bool"):
        tag_constraints(logits, torch.ones(1, 2))
    with pytest.raises(ValueError, match="min_size"):
        tag_constraints(logits, tags, min_size=0.0)
    module = TagConstraintLoss("penalty")
    g = tag_constraints(logits, tags).g
    assert torch.equal(module(logits, tags), apply("penalty", g))


# ------------------------------------------------------------------------ boxes


def _box_mask(shape, cls, box):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[(slice(None), cls, *[slice(a, b) for a, b in box])] = True
    return mask


def _tightness_reference(probs, box, band_width, total):
    """Loop reference: the bands of every axis of one box, (w - mass in band) / total."""
    values = []
    for axis, (a, b) in enumerate(box):
        for start in range(a, b - band_width + 1, band_width):
            index = [slice(lo, hi) for lo, hi in box]
            index[axis] = slice(start, start + band_width)
            values.append((band_width - probs[tuple(index)].sum()) / total)
    return torch.stack(values)


@pytest.mark.parametrize(("spatial", "box"), [((8, 7), [(2, 6), (1, 6)]),
                                              ((6, 5, 4), [(1, 5), (0, 3), (1, 4)])])
@pytest.mark.parametrize("band_width", [1, 2])
def test_box_tightness_matches_loop_reference(spatial, box, band_width):
    shape = (1, 2, *spatial)
    logits = _logits(shape, 3)
    boxes = _box_mask(shape, 1, box)
    out = box_constraints(logits, boxes, band_width=band_width)
    g, active = out["tightness"]
    assert g.shape == (1, 2, sum(n - band_width + 1 for n in spatial))
    assert not active[:, 0].any()  # no box for class 0
    reference = _tightness_reference(logits.softmax(1)[0, 1], box, band_width,
                                     math.prod(spatial))
    got = g[0, 1][active[0, 1]]
    assert torch.allclose(got, reference, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 2, 9, 8), (2, 2, 6, 7, 5)])
def test_box_filled_prediction_satisfies_empty_prediction_violates(shape):
    box = [(2, 6), (1, 5)] + ([(1, 4)] if len(shape) == 5 else [])
    boxes = _box_mask(shape, 1, box)
    labels = boxes[:, 1].long()
    filled = box_constraints(_onehot_logits(labels, 2), boxes, size_fraction=(0.5, 1.0))
    for name in ("outside", "tightness", "size"):
        g, active = filled[name]
        assert active[:, 1].any() and not active[:, 0].any()
        assert (g[active] <= 1e-12).all(), name
    empty = box_constraints(_onehot_logits(torch.zeros_like(labels), 2), boxes)
    g, active = empty["tightness"]
    assert active.sum() == 2 * sum(b - a for a, b in box)  # every slice of every axis
    assert (g[active] > 0).all()  # every band violated
    assert (empty["size"].g[:, 1, 0] > 0).all()  # lower size bound violated
    outside = box_constraints(_onehot_logits(torch.ones_like(labels), 2), boxes)["outside"]
    assert (outside.g[:, 1] > 0).all()  # foreground outside the box


def test_box_size_bounds_and_errors():
    shape = (1, 2, 8, 8)
    boxes = _box_mask(shape, 1, [(0, 4), (0, 5)])  # area 20
    logits = _logits(shape, 4)
    g = box_constraints(logits, boxes, size_fraction=(0.5, 0.9))["size"].g
    v = (logits.softmax(1)[0, 1] * boxes[0, 1]).sum()  # the mass inside the box
    assert torch.allclose(g[0, 1], torch.stack([10 - v, v - 18]) / 64)
    with pytest.raises(ValueError, match="band_width"):
        box_constraints(logits, boxes, band_width=0)
    with pytest.raises(ValueError, match="size_fraction"):
        box_constraints(logits, boxes, size_fraction=(0.9, 0.5))
    with pytest.raises(ValueError, match="bool"):
        box_constraints(logits, boxes.float())


def test_box_size_fraction_per_class():
    shape = (1, 3, 8, 8)
    boxes = _box_mask(shape, 1, [(0, 4), (0, 5)]) | _box_mask(shape, 2, [(4, 8), (0, 8)])
    logits = _logits(shape, 5)
    g = box_constraints(logits, boxes, size_fraction=[(0, 1), (0.2, 0.4), (0.5, 0.9)])["size"].g
    v = (logits.softmax(1) * boxes).sum((2, 3))[0]  # the mass inside each box
    assert torch.allclose(g[0, 1], torch.stack([0.2 * 20 - v[1], v[1] - 0.4 * 20]) / 64)
    assert torch.allclose(g[0, 2], torch.stack([0.5 * 32 - v[2], v[2] - 0.9 * 32]) / 64)
    with pytest.raises(ValueError, match="3 \\(lo, hi\\) pairs"):
        box_constraints(logits, boxes, size_fraction=[(0, 1), (0.2, 0.4)])
    with pytest.raises(ValueError, match="size_fraction"):
        BoxConstraintLoss(size_fraction=[(0, 1), (0.5, 0.2)])


def test_box_500_bands_in_one_call_fast():
    shape = (2, 3, 250, 250)
    boxes = _box_mask(shape, 1, [(0, 250), (0, 250)])
    logits = _logits(shape, 5)
    start = time.perf_counter()
    g, active = box_constraints(logits, boxes)["tightness"]
    elapsed = time.perf_counter() - start
    assert g.shape == (2, 3, 500) and int(active[0, 1].sum()) == 500
    assert elapsed < 1.0


def test_box_module_sums_the_three_terms():
    shape = (2, 2, 6, 6)
    boxes = _box_mask(shape, 1, [(1, 5), (2, 6)])
    logits = _logits(shape, 6)
    module = BoxConstraintLoss("penalty", reduction="sum")
    expected = sum(apply("penalty", c.g, reduction="sum")
                   for c in box_constraints(logits, boxes).values())
    assert torch.allclose(module(logits, boxes), expected)
    lagrangian = BoxConstraintLoss("lagrangian", num_classes=2)
    lagrangian(_onehot_logits(torch.zeros(2, 6, 6, dtype=torch.long), 2), boxes)  # empty
    assert (lagrangian.objective.terms["tightness"].multipliers.lam[1] > 0).all()
    with pytest.raises(ValueError, match="reduction"):
        BoxConstraintLoss(reduction="none")


@pytest.mark.parametrize("shape", SHAPES)
def test_box_emptiness_ce_matches_loop_reference(shape):
    b, c = shape[:2]
    logits = _logits(shape, 7, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    boxes = torch.rand(shape, generator=gen) < 0.4
    loss = box_emptiness_ce(logits, boxes, background=1)
    probs = logits.softmax(1).detach()
    flat_p, flat_box = probs.movedim(1, -1).reshape(-1, c), boxes.movedim(1, -1).reshape(-1, c)
    terms = []
    for p, allowed in zip(flat_p, flat_box, strict=True):
        allowed = allowed.clone()
        allowed[1] = True  # the background class is allowed everywhere
        terms.append(-torch.log(p[allowed].sum()))
    assert torch.allclose(loss.detach(), torch.stack(terms).mean())
    loss.backward()
    everything = boxes.clone()
    everything[:, 1] = True
    free = everything.all(1, keepdim=True).expand(shape)  # every class allowed: no gradient
    assert free.any() and (logits.grad[free].abs() < 1e-12).all()
    assert (logits.grad[~free] != 0).any()
    assert box_emptiness_ce(logits, boxes, background=1, reduction="none").shape == \
        (b, *shape[2:])


def test_box_emptiness_ce_vanishes_on_a_prediction_inside_the_boxes():
    shape = (1, 3, 8, 8)
    boxes = _box_mask(shape, 1, [(1, 5), (1, 5)]) | _box_mask(shape, 2, [(3, 8), (3, 8)])
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:4, 2:4] = 1
    labels[0, 5:7, 5:7] = 2
    assert float(box_emptiness_ce(_onehot_logits(labels, 3, scale=40.0), boxes)) < 1e-12
    labels[0, 0, 0] = 2  # class 2 outside its box
    assert float(box_emptiness_ce(_onehot_logits(labels, 3, scale=40.0), boxes)) > 0.5
    with pytest.raises(ValueError, match="background class 3"):
        box_emptiness_ce(_logits(shape), boxes, background=3)
    with pytest.raises(ValueError, match="bool"):
        box_emptiness_ce(_logits(shape), boxes.float())
    with pytest.raises(ValueError, match="reduction"):
        box_emptiness_ce(_logits(shape), boxes, reduction="max")


def test_box_module_ce_emptiness_and_pixel_units():
    shape = (2, 3, 8, 8)
    boxes = _box_mask(shape, 1, [(1, 5), (2, 6)]) | _box_mask(shape, 2, [(4, 8), (0, 8)])
    logits = _logits(shape, 8)
    module = BoxConstraintLoss("log_barrier", emptiness="ce", units="pixels", t0=5.0,
                               size_fraction=(0.2, 0.9))
    parts = box_constraints(logits, boxes, size_fraction=(0.2, 0.9))
    expected = box_emptiness_ce(logits, boxes) + sum(
        apply("log_barrier", parts[name].g * 64, t=5.0) for name in ("tightness", "size"))
    assert torch.allclose(module(logits, boxes), expected)
    assert set(module.last_stats) == {"violated", "outside_violated", "tightness_violated",
                                      "size_violated"}
    assert float(module.last_stats["outside_violated"]) == 1.0  # soft mass is never 0
    optimised = [c for name, c in parts.items() if name != "outside"]
    violated = sum(int(((c.g > 0.5 / 64) & c.active).sum()) for c in optimised)
    active = sum(int(c.active.sum()) for c in optimised)
    assert float(module.last_stats["violated"]) == pytest.approx(violated / active)
    with pytest.raises(ValueError, match="emptiness"):
        BoxConstraintLoss(emptiness="hard")
    with pytest.raises(ValueError, match="background"):
        BoxConstraintLoss(background=-1)
    with pytest.raises(ValueError, match="units"):
        BoxConstraintLoss(units="voxels")


def test_size_loss_pixel_units_scale_the_barrier():
    logits = _logits((2, 3, 6, 5), 9)
    bounds = torch.tensor([[0.0, 30.0], [5.0, 12.0], [0.0, 0.0]]).expand(2, 3, 2)
    g = size_constraints(logits, bounds)
    fraction = SizeConstraintLoss("log_barrier", t0=5.0)(logits, bounds)
    pixels = SizeConstraintLoss("log_barrier", t0=5.0, units="pixels")(logits, bounds)
    assert torch.allclose(fraction, apply("log_barrier", g.g, t=5.0))
    assert torch.allclose(pixels, apply("log_barrier", g.g * 30, t=5.0))
    # in pixels, a constraint with 1 pixel of slack is on the barrier's log branch
    assert float(log_barrier_extension(torch.tensor(-1.0), 5.0)) == 0.0
    assert not torch.allclose(fraction, pixels)


# --------------------------------------------------------------------- centroid


@pytest.mark.parametrize(("spatial", "centre"), [((9, 11), (3, 6)), ((7, 9, 8), (2, 4, 5))])
def test_centroid_of_symmetric_blob_is_its_centre(spatial, centre):
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in spatial],
                          indexing="ij")
    dist2 = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True))
    blob = (dist2 <= 2.5**2).long()[None]
    logits = _onehot_logits(blob, 2, scale=50.0).double()
    bounds = torch.tensor(centre, dtype=torch.float64)[:, None].expand(len(spatial), 2)
    g, active = centroid_constraints(logits, bounds.expand(1, 2, len(spatial), 2))
    assert g.shape == (1, 2, len(spatial), 2) and active[0, 1].all()
    assert torch.allclose(g[0, 1], torch.zeros_like(g[0, 1]), atol=1e-12)
    # normalised coordinates: the centre pixel's (i + 0.5) / n
    frac = (torch.tensor(centre, dtype=torch.float64) + 0.5) / torch.tensor(spatial)
    g_frac = centroid_constraints(logits, frac[:, None].expand(1, 2, len(spatial), 2),
                                  fraction=True).g
    assert torch.allclose(g_frac[0, 1], torch.zeros_like(g_frac[0, 1]), atol=1e-12)


def test_centroid_hand_values_inactive_and_errors():
    logits = torch.zeros(1, 1, 5, 5)  # uniform: centroid (2, 2)
    g, active = centroid_constraints(logits, torch.tensor([[3.0, 4.0], [-INF, 1.0]]))
    assert torch.equal(active[0, 0], torch.tensor([[True, False], [False, True]]))
    assert torch.allclose(g[0, 0][active[0, 0]], torch.tensor([0.2, 0.2]))
    with pytest.raises(WeaksegError, match="axis 1"):
        centroid_constraints(logits, torch.tensor([[0.0, 4.0], [3.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(B, C, D, 2\)"):
        centroid_constraints(logits, torch.zeros(3, 2))
    module = CentroidConstraintLoss("penalty")
    bounds = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert torch.equal(module(logits, bounds),
                       apply("penalty", centroid_constraints(logits, bounds).g))


# ------------------------------------------------------------- size equalities


@pytest.mark.parametrize("shape", SHAPES)
def test_size_equality_l2_hand_value_and_reductions(shape):
    logits = _logits(shape, 7)
    n = math.prod(shape[2:])
    v = soft_size(logits)
    target = torch.rand(shape[:2], generator=torch.Generator().manual_seed(0)) * n
    per = ((v - target) / n) ** 2
    assert torch.allclose(size_equality_l2(logits, target, reduction="none"), per)
    assert torch.allclose(size_equality_l2(logits, target), per.sum(1).mean())
    assert torch.allclose(size_equality_l2(logits, target / n, fraction=True), per.sum(1).mean())
    exact = size_equality_l2(logits, v)
    assert float(exact) < 1e-12


def test_size_equality_kl_hand_value_and_minimum():
    logits = torch.zeros(2, 2, 4, 4)  # V̂ = (0.5, 0.5)
    q = torch.tensor([0.2, 0.8])
    expected = -(0.2 * math.log(0.5) + 0.8 * math.log(0.5)) * 2
    assert math.isclose(float(size_equality_kl(logits, q)), expected, rel_tol=1e-6)
    assert size_equality_kl(logits, q, reduction="none").shape == (2, 2)
    # the minimum over V̂ is at V̂ = q (gradient zero there)
    target = torch.tensor([0.25, 0.75])
    at_q = torch.stack([torch.full((4, 4), math.log(0.25)), torch.full((4, 4), math.log(0.75))])
    z = at_q[None].clone().requires_grad_()
    size_equality_kl(z, target).backward()
    assert z.grad.abs().max() < 1e-6
    module = SizeEqualityLoss("kl")
    assert torch.equal(module(logits, q), size_equality_kl(logits, q))
    with pytest.raises(ValueError, match="kind"):
        SizeEqualityLoss("l1")


# -------------------------------------------------------------- area by sorting


@pytest.mark.parametrize("shape", [(2, 1, 6, 5), (1, 1, 4, 3, 5)])
def test_area_by_sorting_exact_area_is_zero(shape):
    n = math.prod(shape[2:])
    mask = torch.zeros(shape)
    mask.view(shape[0], -1)[:, : n // 3] = 1.0
    mask = mask.view(shape)
    zero = area_by_sorting(mask, (n // 3) / n, activation="none")
    assert float(zero) == 0.0
    wrong = area_by_sorting(mask, 0.9, activation="none", reduction="none")
    assert wrong.shape == shape[:2] and (wrong > 0).all()


def test_area_by_sorting_hand_value_and_activations():
    mask = torch.tensor([[[[0.2, 0.9], [0.4, 0.6]]]])  # sorted 0.2 0.4 0.6 0.9, r = 0 0 1 1
    expected = (0.2**2 + 0.4**2 + 0.4**2 + 0.1**2) / 4
    assert math.isclose(float(area_by_sorting(mask, 0.5, activation="none")), expected,
                        rel_tol=1e-6)
    logits = torch.logit(mask)
    assert torch.allclose(area_by_sorting(logits, 0.5, activation="sigmoid"),
                          torch.tensor(expected))
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)  # softmax ch. 1 = sigmoid
    per = area_by_sorting(two, torch.tensor([0.5, 0.5]), reduction="none")
    assert torch.allclose(per[0, 1], torch.tensor(expected))
    assert torch.equal(AreaBySortingLoss(0.5)(two), area_by_sorting(two, 0.5))
    with pytest.raises(ValueError, match="activation"):
        area_by_sorting(two, 0.5, activation="relu")


# ---------------------------------------------------------------- gradcheck


def test_gradcheck_float64_all_constraints():
    logits = _logits((1, 3, 4, 3), 8, dtype=torch.float64, requires_grad=True)
    bounds = torch.tensor([[0.0, INF], [2.0, 6.0], [1.0, 3.0]], dtype=torch.float64)
    tags = torch.tensor([[True, True, False]])
    boxes = _box_mask((1, 3, 4, 3), 1, [(1, 4), (0, 2)])
    cbounds = torch.tensor([[1.0, 2.0], [0.5, 1.5]], dtype=torch.float64)

    def finite(g):
        return g[torch.isfinite(g)]

    checks = [
        lambda z: finite(size_constraints(z, bounds).g),
        lambda z: tag_constraints(z, tags).g,
        lambda z: torch.cat([finite(c.g).flatten() for c in box_constraints(z, boxes).values()]),
        lambda z: finite(centroid_constraints(z, cbounds).g),
        lambda z: size_equality_l2(z, torch.tensor([[4.0, 5.0, 3.0]], dtype=torch.float64)),
        lambda z: size_equality_kl(z, torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)),
        lambda z: area_by_sorting(z, 0.25),
        lambda z: box_emptiness_ce(z, boxes, reduction="none"),
    ]
    for fn in checks:
        assert torch.autograd.gradcheck(fn, (logits,))
    logits3d = _logits((1, 2, 3, 2, 2), 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: apply("log_barrier", size_constraints(z, torch.tensor([[0.0, 12.0],
                                                                         [3.0, 6.0]])).g,
                        t=5.0),
        (logits3d,),
    )


def test_registered_centroid_with_fixed_bounds_and_area_sort():
    from weakseg.config import config_from_dict
    from weakseg.losses import LOSSES

    logits = _logits((2, 2, 8, 8), 11)
    fixed = [[[0.0, 1.0], [0.0, 1.0]], [[0.25, 0.75], [0.4, 0.6]]]
    loss = LOSSES.build("centroid", method="penalty", bounds=fixed, fraction=True)
    assert loss.inputs == ()
    expected = apply("penalty", centroid_constraints(
        logits, torch.tensor(fixed).expand(2, 2, 2, 2), fraction=True).g)
    torch.testing.assert_close(loss(logits), expected)
    with pytest.raises(ValueError, match="shape \\(C, D, 2\\)"):  # past the registry's type check
        CentroidConstraintLoss(bounds=[[0.0, 1.0]])
    with pytest.raises(ValueError, match="bounds"):
        LOSSES.build("centroid", bounds=[[0.0, 1.0]])
    with pytest.raises(ValueError, match="lo <= hi"):
        LOSSES.build("centroid", bounds=[[[0.6, 0.4]], [[0.0, 1.0]]])
    with pytest.raises(ValueError, match="logits need"):
        loss(_logits((2, 3, 8, 8), 1))
    area = LOSSES.build("area_sort", area_fraction=[0.75, 0.25])
    torch.testing.assert_close(area(logits), area_by_sorting(logits, torch.tensor([0.75, 0.25])))
    cfg = config_from_dict({"loss": [
        {"name": "partial_ce"},
        {"name": "centroid", "params": {"bounds": [[[0, 1], [0, 1]]] * 4, "fraction": True}},
        {"name": "area_sort", "weight": 0.1, "params": {"area_fraction": 0.25}},
    ]})
    assert [t.name for t in cfg.loss] == ["partial_ce", "centroid", "area_sort"]


def test_proposal_method_pulls_towards_the_constrained_proposal():
    """method='proposal': soft-target CE to Pathak's proposal, whose size meets the bound
    the prediction violates; its gradient raises the foreground where it is most likely."""
    from weakseg.constrain import pathak_proposal
    from weakseg.losses import LOSSES

    logits = _logits((2, 2, 8, 8), 21).requires_grad_()
    logits.data[:, 0] += 3.0                                   # predicts background
    bounds = torch.tensor([[0.0, 64.0], [20.0, 40.0]]).expand(2, 2, 2)
    loss = LOSSES.build("size", method="proposal", proposal_iterations=40)
    value = loss(logits, bounds)
    prop = pathak_proposal(logits, lambda z: size_constraints(z, bounds).g, iterations=40)
    assert (prop.probs[:, 1].sum((1, 2)) >= 19.0).all()
    expected = -(prop.probs * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(value, expected)
    assert float(loss.last_stats["violated"]) > 0            # the prediction violates it
    value.backward()
    assert (logits.grad[:, 1] < 0).all()                      # raise the foreground logits
    boxes = _box_mask((2, 2, 8, 8), 1, [(1, 5), (2, 6)])
    box = LOSSES.build("box", method="proposal")(logits.detach(), boxes)
    assert torch.isfinite(box)
    with pytest.raises(ValueError, match="affine"):
        LOSSES.build("centroid", method="proposal")
    with pytest.raises(ValueError, match="proposal_iterations"):
        LOSSES.build("tags", method="proposal", proposal_iterations=0)
    with pytest.raises(WeaksegError, match="unknown objective method 'barrier' "
                       r"\(did you mean 'log_barrier'\?\)"):
        LOSSES.build("size", method="barrier")
