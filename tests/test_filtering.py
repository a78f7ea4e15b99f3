"""Dense Gaussian filtering: features, the exact reference, the bilateral grid, the dispatcher.

The grid is checked against the exact ``N × N`` kernel on small phantoms (2D, 3D, two
intensity channels), for symmetry (its backward is the same filter), and by gradcheck.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import weakseg.filtering.grid as grid_module
from weakseg.filtering import (
    BACKENDS,
    bilateral_features,
    dense_gaussian,
    dense_gaussian_exact,
    dense_gaussian_grid,
    resolve_backend,
)

from .conftest import disc_phantom

SIGMA_XY, SIGMA_I = 5.0, 0.1  # the loss defaults


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def phantom(shape: tuple[int, ...], gen: torch.Generator, classes: int = 3, channels: int = 1
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Discs/balls with noisy intensities in [0, 1] and soft predictions roughly aligned."""
    image, logits = disc_phantom(shape, gen, classes, channels)
    return image, logits.softmax(1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).norm() / b.detach().norm())


# ---------------------------------------------------------------- features


def test_bilateral_features_values_and_spacing():
    image = torch.rand(2, 1, 3, 4)
    f = bilateral_features(image, sigma_xy=2.0, sigma_intensity=0.5, spacing=(1.0, 3.0))
    assert f.shape == (2, 3, 3, 4)
    assert torch.allclose(f[:, 0], torch.arange(3.0).view(1, 3, 1).expand(2, 3, 4) / 2.0)
    assert torch.allclose(f[:, 1], torch.arange(4.0).view(1, 1, 4).expand(2, 3, 4) * 1.5)
    assert torch.allclose(f[:, 2], image[:, 0] / 0.5)
    f3 = bilateral_features(torch.rand(1, 2, 2, 3, 4), sigma_xy=1.0, sigma_intensity=1.0)
    assert f3.shape == (1, 5, 2, 3, 4)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "5"])
def test_bilateral_features_bad_sigma(bad):
    with pytest.raises(ValueError, match="sigma_xy"):
        bilateral_features(torch.rand(1, 1, 4, 4), sigma_xy=bad, sigma_intensity=0.1)
    with pytest.raises(ValueError, match="sigma_intensity"):
        bilateral_features(torch.rand(1, 1, 4, 4), sigma_xy=1.0, sigma_intensity=bad)


def test_bilateral_features_bad_spacing_and_shape():
    with pytest.raises(ValueError, match="spacing"):
        bilateral_features(torch.rand(1, 1, 4, 4), sigma_xy=1.0, sigma_intensity=0.1,
                           spacing=(1.0,))
    with pytest.raises(ValueError, match="spacing"):
        bilateral_features(torch.rand(1, 1, 4, 4), sigma_xy=1.0, sigma_intensity=0.1,
                           spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="image"):
        bilateral_features(torch.rand(4, 4), sigma_xy=1.0, sigma_intensity=0.1)


# ---------------------------------------------------------------- exact


def test_exact_two_pixels_by_hand():
    values = torch.tensor([[[[1.0, 2.0]]]])
    features = torch.tensor([[[[0.0, 1.0]], [[0.0, 2.0]]]])  # ‖Δf‖² = 5
    w = math.exp(-2.5)
    out = dense_gaussian_exact(values, features)
    assert torch.allclose(out.flatten(), torch.tensor([1 + 2 * w, 2 + w]))


def _spatial_gaussian(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """Direct separable spatial Gaussian over all pixel pairs of a 2D image."""
    h, w = values.shape[-2:]
    y, x = (torch.arange(n, dtype=values.dtype) for n in (h, w))
    ky = torch.exp(-0.5 * (y[:, None] - y[None]) ** 2 / sigma**2)
    kx = torch.exp(-0.5 * (x[:, None] - x[None]) ** 2 / sigma**2)
    return ky @ values @ kx.T


def test_constant_image_is_a_spatial_gaussian():
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(2, 3, 20, 24, generator=gen, dtype=torch.float64)
    image = torch.full((2, 1, 20, 24), 0.3, dtype=torch.float64)
    f = bilateral_features(image, sigma_xy=SIGMA_XY, sigma_intensity=SIGMA_I)
    expected = _spatial_gaussian(values, SIGMA_XY)
    assert torch.allclose(dense_gaussian_exact(values, f), expected, rtol=1e-10)
    assert _rel(dense_gaussian_grid(values, f), expected) < 0.03


def test_exact_refuses_large_images():
    with pytest.raises(ValueError, match="grid/permutohedral"):
        dense_gaussian_exact(torch.zeros(1, 1, 16385), torch.zeros(1, 1, 16385))


def test_shape_errors():
    with pytest.raises(ValueError, match="spatial"):
        dense_gaussian_exact(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="values"):
        dense_gaussian_grid(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="floating"):
        dense_gaussian(torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.zeros(1, 2, 4, 4))


# ---------------------------------------------------------------- grid vs exact

CASES = [  # (batch, *spatial), image channels
    ((2, 32, 32), 1),
    ((1, 6, 16, 16), 1),
    ((2, 24, 24), 2),
]


@pytest.mark.parametrize(("shape", "channels"), CASES)
def test_grid_matches_exact(shape, channels):
    gen = torch.Generator().manual_seed(1)
    image, probs = phantom(shape, gen, channels=channels)
    f = bilateral_features(image, sigma_xy=SIGMA_XY, sigma_intensity=SIGMA_I)
    values = torch.cat([probs, torch.ones_like(probs[:, :1])], 1).requires_grad_()
    exact = dense_gaussian_exact(values, f)
    approx = dense_gaussian_grid(values, f)
    assert _rel(approx, exact) <= 0.05
    # backward: the same filter applied to the incoming gradient
    direction = torch.randn(exact.shape, generator=gen)
    (g_exact,) = torch.autograd.grad(exact, values, direction)
    (g_grid,) = torch.autograd.grad(approx, values, direction)
    assert F.cosine_similarity(g_grid.flatten(), g_exact.flatten(), dim=0) >= 0.99


def test_grid_one_spatial_dim():
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(2, 1, 50, generator=gen).sort(-1).values
    f = bilateral_features(image, sigma_xy=4.0, sigma_intensity=0.2)
    values = torch.rand(2, 2, 50, generator=gen)
    assert _rel(dense_gaussian_grid(values, f), dense_gaussian_exact(values, f)) <= 0.05


def test_grid_is_symmetric_and_nonnegative():
    gen = torch.Generator().manual_seed(3)
    image, _ = phantom((1, 12, 12), gen)
    f = bilateral_features(image.double(), sigma_xy=3.0, sigma_intensity=0.2)
    u, v = (torch.rand(1, 1, 12, 12, generator=gen, dtype=torch.float64) for _ in range(2))
    wv, wu = dense_gaussian_grid(v, f), dense_gaussian_grid(u, f)
    assert torch.allclose((u * wv).sum(), (wu * v).sum(), rtol=1e-12)
    basis = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    basis[0, 0, 5, 7] = 1
    assert dense_gaussian_grid(basis, f).min() >= 0


def test_grid_batch_is_per_image():
    gen = torch.Generator().manual_seed(4)
    image, probs = phantom((3, 16, 16), gen)
    image[1] *= 0.2  # different intensity ranges → different per-image grids
    f = bilateral_features(image, sigma_xy=4.0, sigma_intensity=0.1)
    together = dense_gaussian_grid(probs, f)
    alone = torch.cat([dense_gaussian_grid(probs[i:i + 1], f[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, rtol=1e-4, atol=1e-5)


def test_grid_code_paths_agree(monkeypatch):
    """Chunks of images, blockwise blur and sparse vs looped slicing: the same result."""
    gen = torch.Generator().manual_seed(5)
    image, probs = phantom((3, 40, 40), gen)
    f = bilateral_features(image, sigma_xy=1.5, sigma_intensity=0.1)  # long grid axes
    monkeypatch.setattr(grid_module, "_MIN_SPARSE_ENTRIES", 1 << 40)  # looped slicing
    reference = dense_gaussian_grid(probs.double(), f.double())
    monkeypatch.setattr(grid_module, "_MIN_SPARSE_ENTRIES", 0)  # CSR slicing
    monkeypatch.setattr(grid_module, "_MAX_PLAN_ENTRIES", 40 * 40 * 8)  # one image per chunk
    monkeypatch.setattr(grid_module, "_BLOCK", 4)  # blockwise blur on every axis
    assert torch.allclose(dense_gaussian_grid(probs.double(), f.double()), reference,
                          rtol=1e-10, atol=1e-12)


def test_grid_gradcheck_float64():
    gen = torch.Generator().manual_seed(6)
    image, _ = phantom((1, 4, 5), gen)
    f = bilateral_features(image.double(), sigma_xy=2.0, sigma_intensity=0.3)
    values = torch.rand(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: dense_gaussian_grid(v, f), (values,))
    assert torch.autograd.gradcheck(lambda v: dense_gaussian_exact(v, f), (values,))
    tiny = values[:, :1, :2, :3].detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda v: dense_gaussian_grid(v, f[..., :2, :3]), (tiny,))


def test_grid_errors():
    values, f = torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 4, 4)
    for bad in (0.0, -0.5, 2.0, float("nan")):
        with pytest.raises(ValueError, match="cell"):
            dense_gaussian_grid(values, f, cell=bad)
    with pytest.raises(ValueError, match="permutohedral"):
        dense_gaussian_grid(values, torch.zeros(1, 7, 4, 4))
    huge = torch.zeros(1, 3, 4, 4)
    huge[0, :, 0, 0] = 1e4  # an unnormalised image / tiny sigma
    with pytest.raises(ValueError, match="bilateral grid would hold"):
        dense_gaussian_grid(values, huge)
    nan = torch.zeros(1, 3, 4, 4)
    nan[0, 2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dense_gaussian_grid(values, nan)


# ---------------------------------------------------------------- dispatcher


def test_resolve_backend():
    assert resolve_backend("auto", 256, 3) == "exact"
    assert resolve_backend("auto", 1024, 3) == "grid"
    assert resolve_backend("auto", 1025, 5, spatial=3) == "grid"      # 3D, 2 channels
    assert resolve_backend("auto", 1025, 5, spatial=2) == "permutohedral"  # 2D RGB
    assert resolve_backend("auto", 4096, 6) == "permutohedral"
    assert resolve_backend("grid", 4, 3) == "grid"
    assert set(BACKENDS) == {"auto", "exact", "grid", "permutohedral"}
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("fast", 4, 3)


def test_dispatcher_matches_backends():
    gen = torch.Generator().manual_seed(7)
    image, probs = phantom((1, 16, 16), gen)
    f = bilateral_features(image, sigma_xy=3.0, sigma_intensity=0.2)
    assert torch.equal(dense_gaussian(probs, f), dense_gaussian_exact(probs, f))  # auto
    assert torch.equal(dense_gaussian(probs, f, backend="grid", cell=0.5),
                       dense_gaussian_grid(probs, f, cell=0.5))
    with pytest.raises(ValueError, match="backend"):
        dense_gaussian(probs, f, backend="Grid")


def test_dispatcher_permutohedral_if_available():
    pytest.importorskip("weakseg.filtering.permutohedral")
    gen = torch.Generator().manual_seed(8)
    image, probs = phantom((1, 16, 16), gen)
    f = bilateral_features(image, sigma_xy=3.0, sigma_intensity=0.2)
    out = dense_gaussian(probs, f, backend="permutohedral")
    assert out.shape == probs.shape and torch.isfinite(out).all()
