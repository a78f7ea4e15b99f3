"""Dense CRF and normalized cut losses (R3, R4): the loss checklist of STYLE.md.

Hand values, an explicit-matrix reference, fast (grid) ≈ exact, range [0, 1] and size
invariance of the normalised value, float64 gradcheck, reductions, errors, module ==
function, 1D/2D/3D smoke.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.filtering import bilateral_features
from weakseg.losses.base import LOSSES
from weakseg.losses.crf import (
    DenseCRFLoss,
    NormalizedCutLoss,
    dense_crf_loss,
    normalized_cut_loss,
)

from .conftest import disc_phantom

LOSS_FNS = [dense_crf_loss, normalized_cut_loss]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


phantom = disc_phantom


def _affinity(f: torch.Tensor) -> torch.Tensor:
    """``exp(-½‖f_i − f_j‖²)`` from explicit differences, ``f (B, N, F)`` → ``(B, N, N)``."""
    return torch.exp(-0.5 * (f[:, :, None] - f[:, None]).square().sum(-1))


def reference(logits: torch.Tensor, image: torch.Tensor, sigma_xy: float, sigma_i: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both losses per image from the explicit affinity matrix (float64)."""
    probs = logits.double().softmax(1).flatten(2)  # (B, C, N)
    f = bilateral_features(image.double(), sigma_xy=sigma_xy, sigma_intensity=sigma_i)
    f = f.flatten(2).transpose(1, 2)  # (B, N, F)
    w = _affinity(f)
    cut = torch.einsum("bkn,bnm,bkm->bk", probs, w, 1 - probs)
    degree = w.sum(2)  # (B, N)
    assoc = torch.einsum("bkn,bn->bk", probs, degree)
    return cut.sum(1) / degree.sum(1), (cut / assoc).mean(1)


# ---------------------------------------------------------------- values


def test_two_pixels_by_hand():
    image = torch.tensor([0.2, 0.5]).view(1, 1, 1, 2)
    logits = torch.tensor([[0.3, -1.0], [0.1, 0.8]]).view(1, 2, 1, 2)  # (B, C, H, W)
    s = logits.softmax(1)[0, :, 0]  # s[k, pixel]
    w = math.exp(-0.5 * ((1 / 2.0) ** 2 + (0.3 / 0.3) ** 2))  # σ_xy = 2, σ_I = 0.3
    weights = [[1.0, w], [w, 1.0]]
    cut = [sum(float(s[k, i]) * weights[i][j] * (1 - float(s[k, j]))
               for i in range(2) for j in range(2)) for k in range(2)]
    assoc = [sum(float(s[k, i]) * (1 + w) for i in range(2)) for k in range(2)]
    kw = {"sigma_xy": 2.0, "sigma_intensity": 0.3, "backend": "exact"}
    crf = dense_crf_loss(logits, image, **kw)
    ncut = normalized_cut_loss(logits, image, **kw)
    assert math.isclose(float(crf), sum(cut) / (2 + 2 * w), rel_tol=1e-5)
    assert math.isclose(float(ncut), (cut[0] / assoc[0] + cut[1] / assoc[1]) / 2, rel_tol=1e-5)
    # the grid approximates the same numbers
    grid = dense_crf_loss(logits, image, **{**kw, "backend": "grid"})
    assert math.isclose(float(grid), float(crf), rel_tol=0.05)


@pytest.mark.parametrize("shape", [(2, 10, 12), (1, 4, 6, 5)])
def test_matches_explicit_matrix(shape):
    gen = torch.Generator().manual_seed(0)
    image, logits = phantom(shape, gen)
    crf_ref, ncut_ref = reference(logits, image, 3.0, 0.2)
    kw = {"sigma_xy": 3.0, "sigma_intensity": 0.2, "backend": "exact", "reduction": "none"}
    assert torch.allclose(dense_crf_loss(logits, image, **kw).double(), crf_ref, rtol=1e-5)
    # 1e-4: the denominator guard ε·1ᵀW1 (ε = 1e-6) shifts a small class's term
    assert torch.allclose(normalized_cut_loss(logits, image, **kw).double(), ncut_ref,
                          rtol=1e-4)


@pytest.mark.parametrize("fn", LOSS_FNS)
def test_zero_for_constant_one_hot_prediction(fn):
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 1, 12, 12, generator=gen)
    logits = torch.zeros(2, 3, 12, 12)
    logits[:, 1] = 30.0
    for backend in ("exact", "grid"):
        assert float(fn(logits, image, backend=backend)) < 1e-6


@pytest.mark.parametrize("fn", LOSS_FNS)
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 100.0])
def test_in_unit_interval(fn, scale):
    gen = torch.Generator().manual_seed(2)
    logits = scale * torch.randn(3, 4, 16, 16, generator=gen)
    image = torch.rand(3, 1, 16, 16, generator=gen)
    for backend in ("exact", "grid"):
        values = fn(logits, image, backend=backend, reduction="none")
        assert torch.all(values >= 0) and torch.all(values <= 1)


def test_normalised_value_is_size_invariant():
    """The same content at 32² and at 64² (σ_xy doubled): within 10 %."""
    gen = torch.Generator().manual_seed(3)
    image, logits = phantom((1, 32, 32), gen)
    logits = F.avg_pool2d(logits, 3, 1, 1)  # a smooth prediction
    big_image = F.interpolate(image, scale_factor=2, mode="bilinear")
    big_logits = F.interpolate(logits, scale_factor=2, mode="bilinear")
    for fn in LOSS_FNS:
        small = fn(logits, image, sigma_xy=3.0, backend="exact")
        big = fn(big_logits, big_image, sigma_xy=6.0, backend="exact")
        assert math.isclose(float(small), float(big), rel_tol=0.10), (fn.__name__, small, big)
        fast = fn(big_logits, big_image, sigma_xy=6.0, backend="grid")
        assert math.isclose(float(fast), float(big), rel_tol=0.05)


# ---------------------------------------------------------------- fast ≈ exact

CASES = [((2, 32, 32), 1), ((1, 6, 16, 16), 1), ((2, 24, 24), 2)]


@pytest.mark.parametrize("fn", LOSS_FNS)
@pytest.mark.parametrize(("shape", "channels"), CASES)
def test_grid_matches_exact(fn, shape, channels):
    gen = torch.Generator().manual_seed(4)
    image, logits = phantom(shape, gen, channels=channels)
    logits.requires_grad_()
    exact = fn(logits, image, backend="exact")
    grid = fn(logits, image, backend="grid")
    assert math.isclose(float(grid.detach()), float(exact.detach()), rel_tol=0.05)
    (g_exact,) = torch.autograd.grad(exact, logits)
    (g_grid,) = torch.autograd.grad(grid, logits)
    assert F.cosine_similarity(g_grid.flatten(), g_exact.flatten(), dim=0) >= 0.99


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("fn", LOSS_FNS)
@pytest.mark.parametrize("backend", ["exact", "grid"])
def test_gradcheck_float64(fn, backend):
    gen = torch.Generator().manual_seed(5)
    image, logits = phantom((1, 4, 5), gen)
    image, logits = image.double(), logits.double().requires_grad_()
    kw = {"sigma_xy": 2.0, "sigma_intensity": 0.3, "backend": backend}
    assert torch.autograd.gradcheck(lambda z: fn(z, image, **kw), (logits,))
    assert torch.autograd.gradcheck(
        lambda z: fn(z, image, downsample=2, ignore_background=True, reduction="sum", **kw),
        (logits,),
    )


def test_no_gradient_into_the_image():
    gen = torch.Generator().manual_seed(6)
    image, logits = phantom((1, 8, 8), gen)
    image.requires_grad_()
    logits.requires_grad_()
    dense_crf_loss(logits, image).backward()
    assert image.grad is None and logits.grad is not None


# ---------------------------------------------------------------- options


def test_downsample_pools_then_filters():
    gen = torch.Generator().manual_seed(7)
    image, logits = phantom((2, 32, 32), gen)
    got = dense_crf_loss(logits, image, sigma_xy=4.0, backend="exact", downsample=2,
                         reduction="none")
    probs = F.avg_pool2d(logits.softmax(1), 2).double()
    pooled = F.avg_pool2d(image, 2)
    f = bilateral_features(pooled.double(), sigma_xy=4.0, sigma_intensity=0.1,
                           spacing=(2.0, 2.0)).flatten(2).transpose(1, 2)
    w = _affinity(f)
    p = probs.flatten(2)
    expected = torch.einsum("bkn,bnm,bkm->b", p, w, 1 - p) / w.sum((1, 2))
    assert torch.allclose(got.double(), expected, rtol=1e-5)
    full = dense_crf_loss(F.avg_pool2d(logits, 5, 1, 2), image, sigma_xy=4.0, backend="exact")
    coarse = dense_crf_loss(F.avg_pool2d(logits, 5, 1, 2), image, sigma_xy=4.0,
                            backend="exact", downsample=2)
    assert math.isclose(float(coarse), float(full), rel_tol=0.15)
    # odd sizes and one factor per dim
    odd = dense_crf_loss(logits[..., :31, :29], image[..., :31, :29], downsample=(1, 3))
    assert torch.isfinite(odd)


@pytest.mark.parametrize("fn", LOSS_FNS)
def test_ignore_background(fn):
    gen = torch.Generator().manual_seed(8)
    image, logits = phantom((2, 12, 12), gen)
    with_bg = fn(logits, image, backend="exact", reduction="none")
    without = fn(logits, image, backend="exact", reduction="none", ignore_background=True)
    assert torch.all(without >= 0) and not torch.allclose(with_bg, without)
    if fn is dense_crf_loss:  # one non-negative term fewer in the same normalised sum
        assert torch.all(without <= with_bg)
    # with 2 classes both cut terms are equal, so dropping the background halves the loss
    two = logits[:, :2]
    if fn is dense_crf_loss:
        assert torch.allclose(fn(two, image, backend="exact", ignore_background=True),
                              fn(two, image, backend="exact") / 2, rtol=1e-5)


@pytest.mark.parametrize("fn", LOSS_FNS)
def test_reductions(fn):
    gen = torch.Generator().manual_seed(9)
    image, logits = phantom((3, 10, 10), gen)
    none = fn(logits, image, reduction="none")
    assert none.shape == (3,)
    assert torch.allclose(fn(logits, image, reduction="mean"), none.mean())
    assert torch.allclose(fn(logits, image, reduction="sum"), none.sum())


@pytest.mark.parametrize(("fn", "module"), [(dense_crf_loss, DenseCRFLoss),
                                            (normalized_cut_loss, NormalizedCutLoss)])
def test_module_equals_function_and_registry(fn, module):
    gen = torch.Generator().manual_seed(10)
    image, logits = phantom((2, 12, 12), gen)
    kw = {"sigma_xy": 3.0, "sigma_intensity": 0.2, "backend": "grid", "downsample": 1,
          "ignore_background": True, "reduction": "sum"}
    assert torch.equal(module(**kw)(logits, image=image), fn(logits, image, **kw))
    name = "dense_crf" if module is DenseCRFLoss else "normalized_cut"
    built = LOSSES.build(name, sigma_xy=3.0)
    assert isinstance(built, module) and built.inputs == ("image",)
    assert "sigma_xy=3.0" in repr(built)


@pytest.mark.parametrize("fn", LOSS_FNS)
def test_errors(fn):
    logits, image = torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    bad_options = [
        {"sigma_xy": 0.0}, {"sigma_xy": -1.0}, {"sigma_intensity": float("nan")},
        {"sigma_intensity": True}, {"backend": "fast"}, {"reduction": "avg"},
        {"downsample": 0}, {"downsample": 1.5}, {"downsample": (2, 2, 2)},
    ]
    for options in bad_options:
        with pytest.raises(ValueError):
            fn(logits, image, **options)
    for options in bad_options[:-1]:  # the per-dim count is only known from the input
        with pytest.raises(ValueError):
            (DenseCRFLoss if fn is dense_crf_loss else NormalizedCutLoss)(**options)
    with pytest.raises(ValueError, match="spacing"):
        fn(logits, image, spacing=(1.0,), downsample=2)
    with pytest.raises(ValueError, match="image"):
        fn(logits, torch.rand(2, 1, 8, 7))
    with pytest.raises(ValueError, match="logits"):
        fn(torch.randn(2, 3), image)


@pytest.mark.parametrize("fn", LOSS_FNS)
@pytest.mark.parametrize("shape", [(2, 3, 40), (2, 3, 6, 5), (2, 3, 4, 5, 3), (1, 2, 3, 40, 40)])
def test_smoke_1d_2d_3d(fn, shape):
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(shape, generator=gen, requires_grad=True)
    image = torch.rand((shape[0], 1, *shape[2:]), generator=gen)
    value = fn(logits, image)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and 0 <= float(value.detach()) <= 1
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
