"""Constraint → objective (weakseg.constrain): penalty, extended log-barrier and its t schedule,
Lagrangian multipliers, Pathak proposals, the dispatcher and the stateful module."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.constrain import (
    METHODS,
    ConstraintObjective,
    LagrangianMultipliers,
    LogBarrierSchedule,
    apply,
    log_barrier_extension,
    pathak_proposal,
    quadratic_penalty,
)
from weakseg.losses.constraints import size_constraints

INF = float("inf")


def _lb_reference(z: float, t: float) -> float:
    if z <= -1 / t**2:
        return -math.log(-z) / t
    return t * z - math.log(1 / t**2) / t + 1 / t


# ------------------------------------------------------------------ quadratic penalty


def test_penalty_zero_inside_and_closed_form_outside():
    g = torch.tensor([-2.0, -0.1, 0.0, 0.3, 2.0], requires_grad=True)
    value = quadratic_penalty(g)
    assert torch.equal(value.detach(), torch.tensor([0.0, 0.0, 0.0, 0.09, 4.0]))
    value.sum().backward()
    assert torch.allclose(g.grad, torch.tensor([0.0, 0.0, 0.0, 0.6, 4.0]))


def test_penalty_inactive_and_masked_entries_give_zero_and_no_nan():
    g = torch.tensor([-INF, 0.5, 0.5], requires_grad=True)
    value = quadratic_penalty(g, mask=torch.tensor([True, True, False]))
    assert torch.equal(value.detach(), torch.tensor([0.0, 0.25, 0.0]))
    value.sum().backward()
    assert torch.equal(g.grad, torch.tensor([0.0, 1.0, 0.0]))


# ---------------------------------------------------------------- extended log-barrier


@pytest.mark.parametrize("t", [0.5, 1.0, 5.0, 40.0])
def test_log_barrier_both_branches_hand_values(t):
    zs = [-3.0, -1.5 / t**2, -1 / t**2, -0.5 / t**2, 0.0, 0.7, 50.0]
    got = log_barrier_extension(torch.tensor(zs, dtype=torch.float64), t)
    assert torch.allclose(got, torch.tensor([_lb_reference(z, t) for z in zs],
                                            dtype=torch.float64))


@pytest.mark.parametrize("t", [0.5, 5.0, 40.0])
def test_log_barrier_value_and_derivative_continuous_at_switch(t):
    switch = -1.0 / t**2
    h = 1e-9 * abs(switch)
    z = torch.tensor([switch - h, switch, switch + h], dtype=torch.float64, requires_grad=True)
    value = log_barrier_extension(z, t)
    value.sum().backward()
    assert torch.allclose(value[0], value[2], atol=1e-7)
    assert math.isclose(float(value[1].detach()), 2 * math.log(t) / t, rel_tol=1e-12, abs_tol=1e-12)
    # the barrier's slope -1/(t z) equals the extension's slope t at the switch
    assert torch.allclose(z.grad, torch.full((3,), t, dtype=torch.float64), rtol=1e-6)


@pytest.mark.parametrize("t", [1.0, 5.0, 20.0])
def test_log_barrier_convex_finite_everywhere(t):
    z = torch.linspace(-2.0, 2.0, 4001, dtype=torch.float64)
    value = log_barrier_extension(z, t)
    assert torch.isfinite(value).all()
    second_difference = value[:-2] - 2 * value[1:-1] + value[2:]
    assert (second_difference >= -1e-12).all()
    # strictly convex on the barrier branch, where the curvature 1/(t z^2) > 0
    barrier = z[1:-1] < -1 / t**2 - 1e-3
    assert (second_difference[barrier] > 0).all()
    # finite value and gradient for huge violations and right at 0
    huge = torch.tensor([0.0, 1e6, -1e-30], dtype=torch.float64, requires_grad=True)
    out = log_barrier_extension(huge, t)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(huge.grad).all()


def test_log_barrier_inactive_and_bad_t():
    g = torch.tensor([-INF, -INF, 0.1], requires_grad=True)
    value = log_barrier_extension(g, 5.0)
    value.sum().backward()
    assert torch.equal(value.detach()[:2], torch.zeros(2))
    assert torch.isfinite(g.grad).all() and torch.equal(g.grad[:2], torch.zeros(2))
    for bad in [0.0, -1.0, INF, float("nan")]:
        with pytest.raises(ValueError, match="t must be"):
            log_barrier_extension(g, bad)


def test_log_barrier_vectorised_over_many_constraints():
    g = torch.randn(64, 8, 2, 50, generator=torch.Generator().manual_seed(0))
    value = log_barrier_extension(g, 5.0)
    assert value.shape == g.shape
    assert math.isclose(float(value[3, 2, 1, 7]), _lb_reference(float(g[3, 2, 1, 7]), 5.0),
                        rel_tol=1e-5)


def test_penalty_and_log_barrier_gradcheck_float64():
    z = torch.tensor([-1.2, -0.3, -0.01, 0.0, 0.4, -INF], dtype=torch.float64,
                     requires_grad=True)
    mask = torch.tensor([True, True, True, True, True, False])
    assert torch.autograd.gradcheck(lambda x: quadratic_penalty(x, mask=mask), (z,))
    assert torch.autograd.gradcheck(lambda x: log_barrier_extension(x, 3.0), (z,))


# ---------------------------------------------------------------------- t schedule


def test_schedule_grows_caps_and_round_trips():
    schedule = LogBarrierSchedule(t0=5.0, mult=2.0, t_max=30.0)
    assert schedule.t == 5.0
    assert [schedule.step() for _ in range(4)] == [10.0, 20.0, 30.0, 30.0]
    state = schedule.state_dict()
    fresh = LogBarrierSchedule()
    fresh.load_state_dict(state)
    assert (fresh.t, fresh.epoch, fresh.mult, fresh.t_max) == (30.0, 4, 2.0, 30.0)
    assert LogBarrierSchedule(t0=5.0, mult=1.1).step() == pytest.approx(5.5)


@pytest.mark.parametrize("kwargs", [{"t0": 0.0}, {"mult": 0.9}, {"t0": 5.0, "t_max": 1.0}])
def test_schedule_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        LogBarrierSchedule(**kwargs)
    with pytest.raises(ValueError, match="lacks"):
        LogBarrierSchedule().load_state_dict({"t": 3.0})


# ------------------------------------------------------------------------ dispatcher


def test_apply_methods_and_reductions():
    g = torch.tensor([[-0.2, 0.1], [-INF, 0.3]])
    assert torch.allclose(apply("penalty", g, reduction="sum"), torch.tensor(0.1))
    assert torch.allclose(apply("penalty", g), torch.tensor(0.1 / 3))  # mean over 3 active
    assert apply("penalty", g, reduction="none").shape == (2, 2)
    schedule = LogBarrierSchedule(t0=4.0)
    assert torch.equal(apply("log_barrier", g, t=schedule),
                       apply("log_barrier", g, t=4.0))
    lam = LagrangianMultipliers((2,), init=2.0)
    assert torch.allclose(apply("lagrangian", g, lagrangian=lam, reduction="sum"),
                          torch.tensor(2 * (-0.2 + 0.1 + 0.3)))


def test_apply_errors_name_allowed_methods():
    g = torch.zeros(3)
    with pytest.raises(ValueError, match="penalty.*log_barrier.*lagrangian"):
        apply("barrier", g)
    with pytest.raises(ValueError, match="needs t"):
        apply("log_barrier", g)
    with pytest.raises(ValueError, match="needs lagrangian"):
        apply("lagrangian", g)
    with pytest.raises(ValueError, match="reduction"):
        apply("penalty", g, reduction="avg")


@pytest.mark.parametrize("name", METHODS)
def test_apply_all_inactive_is_zero_with_zero_grad(name):
    raw = torch.tensor([0.3, -0.1], requires_grad=True)
    g = torch.where(torch.tensor([False, False]), raw, -INF)
    value = apply(name, g, t=5.0, lagrangian=LagrangianMultipliers(init=1.0))
    value.backward()
    assert float(value.detach()) == 0.0 and torch.equal(raw.grad, torch.zeros(2))


# ------------------------------------------------------------------------ Lagrangian


def test_dual_steps_keep_multipliers_nonnegative():
    gen = torch.Generator().manual_seed(1)
    lam = LagrangianMultipliers((3, 2), lr=0.7)
    for _ in range(50):
        lam.dual_step(torch.randn(4, 3, 2, generator=gen) - 0.3)
        assert (lam.lam >= 0).all()
    # satisfied constraints drive λ to exactly 0; violated ones make it grow
    lam.dual_step(torch.full((3, 2), -1e3))
    assert torch.equal(lam.lam, torch.zeros(3, 2))
    lam.dual_step(torch.full((5, 3, 2), 0.5))
    assert torch.allclose(lam.lam, torch.full((3, 2), 0.35))


def test_dual_step_averages_active_entries_only():
    lam = LagrangianMultipliers((2,), lr=1.0, init=1.0)
    g = torch.tensor([[0.4, -INF], [0.2, -INF]])
    lam.dual_step(g)
    assert torch.allclose(lam.lam, torch.tensor([1.3, 1.0]))  # mean 0.3; no active: kept
    lam.dual_step(torch.tensor([[1.0, 1.0]]), mask=torch.tensor([[False, True]]))
    assert torch.allclose(lam.lam, torch.tensor([1.3, 2.0]))


def test_per_image_multipliers_with_index():
    lam = LagrangianMultipliers((5, 2), lr=1.0)
    index = torch.tensor([3, 0])
    lam.dual_step(torch.tensor([[0.5, -0.5], [0.25, 0.1]]), index=index)
    expected = torch.zeros(5, 2)
    expected[3] = torch.tensor([0.5, 0.0])
    expected[0] = torch.tensor([0.25, 0.1])
    assert torch.allclose(lam.lam, expected)
    g = torch.ones(2, 2, requires_grad=True)
    lam.objective(g, index=index).backward()
    assert torch.allclose(g.grad, expected[index])


def test_objective_detaches_lambda_and_survives_a_dual_step_before_backward():
    lam = LagrangianMultipliers((2,), init=0.5)
    raw = torch.tensor([0.2, -0.4], requires_grad=True)
    g = raw * 2
    value = lam.objective(g)
    lam.dual_step(g)  # replaces λ, does not modify the tensor saved for backward
    value.backward()
    assert torch.allclose(raw.grad, torch.tensor([1.0, 1.0]))
    assert not lam.lam.requires_grad


def test_multipliers_state_dict_and_errors():
    lam = LagrangianMultipliers((2, 2), init=0.3)
    lam.dual_step(torch.ones(2, 2))
    other = LagrangianMultipliers((2, 2))
    other.load_state_dict(lam.state_dict())
    assert torch.equal(other.lam, lam.lam)
    with pytest.raises(ValueError, match="init"):
        LagrangianMultipliers(2, init=-1.0)
    with pytest.raises(ValueError, match="broadcast"):
        lam.objective(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="averaged"):
        lam.dual_step(torch.zeros(3, 3))


# ------------------------------------------------------------------ stateful module


def test_constraint_objective_log_barrier_state_in_state_dict():
    objective = ConstraintObjective("log_barrier", t0=2.0, t_mult=1.5)
    g = torch.tensor([[0.1, -0.3]])
    assert torch.equal(objective(g), apply("log_barrier", g, t=2.0))
    assert objective.epoch_step() == 3.0
    restored = ConstraintObjective("log_barrier")
    restored.load_state_dict(objective.state_dict())
    assert restored.schedule.t == 3.0 and restored.schedule.epoch == 1


def test_constraint_objective_lagrangian_updates_in_training_only():
    objective = ConstraintObjective("lagrangian", slots=(2,), dual_lr=1.0)
    g = torch.tensor([[0.5, -0.2], [0.3, -0.2]])
    assert float(objective(g)) == 0.0  # λ = 0 at first; updated after the value
    assert torch.allclose(objective.multipliers.lam, torch.tensor([0.4, 0.0]))
    objective.eval()
    objective(g)
    assert torch.allclose(objective.multipliers.lam, torch.tensor([0.4, 0.0]))
    assert "multipliers.lam" in objective.state_dict()
    with pytest.raises(ValueError, match="penalty"):
        ConstraintObjective("hinge")


def test_constraint_objective_per_image_multipliers_grow_update_and_restore():
    objective = ConstraintObjective("lagrangian", slots=(2,), dual_lr=1.0, per_image=True,
                                    reduction="sum")
    assert objective.multipliers.lam.shape == (0, 2)
    g = torch.tensor([[0.5, -0.2], [0.3, float("-inf")]], requires_grad=True)
    assert float(objective(g, index=torch.tensor([4, 1])).detach()) == 0.0  # new rows: 0
    expected = torch.zeros(5, 2)
    expected[4] = torch.tensor([0.5, 0.0])
    expected[1] = torch.tensor([0.3, 0.0])  # inactive entry: unchanged
    assert torch.allclose(objective.multipliers.lam, expected)
    value = objective(g, index=torch.tensor([4, 1]))  # now λ[index] · g
    value.backward()
    assert torch.allclose(value, torch.tensor(0.5 * 0.5 + 0.3 * 0.3))
    assert torch.allclose(g.grad, expected[[4, 1]])  # d(λ·g)/dg = λ
    assert bool((objective.multipliers.lam >= 0).all())
    restored = ConstraintObjective("lagrangian", slots=(2,), per_image=True)
    restored.load_state_dict(objective.state_dict())  # grows to the checkpoint's images
    assert torch.equal(restored.multipliers.lam, objective.multipliers.lam)
    before = objective.multipliers.lam.clone()
    objective.eval()
    assert float(objective(g, index=torch.tensor([4, 1])).detach()) == 0.0
    assert torch.equal(objective.multipliers.lam, before)  # no dual step in eval
    objective.train()
    with pytest.raises(ValueError, match="index"):
        objective(g)
    with pytest.raises(ValueError, match="lagrangian"):
        ConstraintObjective("log_barrier", per_image=True)


# -------------------------------------------------------------------- Pathak proposal


def test_pathak_proposal_satisfies_a_bound_the_network_violates():
    logits = torch.zeros(2, 2, 8, 8)
    logits[:, 0] = 3.0  # foreground ≈ 3 of 64 pixels
    logits[1, 1, :2] = 4.0  # second image: foreground ≈ 16 pixels
    bounds = torch.tensor([[0.0, INF], [20.0, 40.0]])
    fn = lambda z: size_constraints(z, bounds).g  # noqa: E731
    assert (fn(logits)[:, 1, 0] > 0.05).all()  # lower bound violated by the network
    proposal = pathak_proposal(logits, fn)
    assert proposal.g[:, 1, 0].max() < 1e-3
    assert (proposal.beta >= 0).all() and proposal.beta[:, 1, 0].min() > 0
    assert torch.allclose(proposal.probs.sum(1), torch.ones(2, 8, 8))
    # the proposal keeps the network's ranking: pixels the network favours stay favoured
    assert (proposal.probs[1, 1, :2] > proposal.probs[1, 1, 2:].max()).all()
    # cross-entropy to the proposal pushes the network's foreground up
    student = logits.clone().requires_grad_()
    F.cross_entropy(student, proposal.probs).backward()
    assert student.grad[:, 1].sum() < 0


def test_pathak_proposal_upper_bound_and_satisfied_case_3d():
    logits = torch.zeros(1, 2, 4, 4, 4)
    logits[:, 1] = 2.0  # foreground ≈ 56 of 64 voxels
    fn = lambda z: size_constraints(z, torch.tensor([[0.0, INF], [0.0, 32.0]])).g  # noqa: E731
    proposal = pathak_proposal(logits, fn, iterations=100)
    assert proposal.g[0, 1, 1] < 1e-3 < fn(logits)[0, 1, 1]
    loose = lambda z: size_constraints(z, torch.tensor([[0.0, INF], [10.0, 60.0]])).g  # noqa: E731
    unchanged = pathak_proposal(logits, loose)
    assert torch.allclose(unchanged.probs, logits.softmax(1))
    assert torch.equal(unchanged.beta, torch.zeros_like(unchanged.beta))
