"""Tests for the pure-PyTorch permutohedral lattice filter (vs an exact O(N²) reference)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import weakseg.filtering.permutohedral as perm_mod
from weakseg.filtering.permutohedral import dense_gaussian_permutohedral

Filter = Callable[[Tensor], Tensor]


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threading only adds latency (a lot on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def exact_filter(values: Tensor, features: Tensor) -> Tensor:
    """Σ_j exp(-½‖f_i − f_j‖²) v_j per image, with a dense (N, N) matrix (tiny N only)."""
    bsz, nch = values.shape[:2]
    npix = values[0, 0].numel()
    feats = features.reshape(bsz, features.shape[1], npix).transpose(1, 2).to(values.dtype)
    kernel = torch.exp(-0.5 * torch.cdist(feats, feats) ** 2)
    out = torch.einsum("bij,bcj->bci", kernel, values.reshape(bsz, nch, npix))
    return out.reshape(values.shape)


def crf_loss(seg: Tensor, wfilter: Filter) -> Tensor:
    """Σ_k S_kᵀ W (1 − S_k) / 1ᵀ W 1 (dense CRF loss, Tang et al. 2018)."""
    ws = wfilter(seg)
    w1 = wfilter(torch.ones_like(seg[:, :1]))
    return (seg * (ws.sum(1, keepdim=True) - ws)).sum() / w1.sum()


def grid(shape: tuple[int, ...]) -> Tensor:
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def _interp(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    return F.interpolate(x, size=shape, mode=mode, align_corners=False)


def soft_seg(gen: torch.Generator, bsz: int, nch: int, shape: tuple[int, ...], down: int) -> Tensor:
    small = tuple(max(2, n // down) for n in shape)
    logits = 2.0 * torch.randn(bsz, nch, *small, generator=gen, dtype=torch.float64)
    return torch.softmax(_interp(logits, shape), dim=1)


def image(gen: torch.Generator, bsz: int, ch: int, shape: tuple[int, ...], down: int) -> Tensor:
    small = tuple(max(2, n // down) for n in shape)
    smooth = _interp(torch.rand(bsz, ch, *small, generator=gen, dtype=torch.float64), shape)
    return smooth + 0.03 * torch.randn(bsz, ch, *shape, generator=gen, dtype=torch.float64)


def case_5d(sxy: float, srgb: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """2 images 32x32, features (y, x)/σ_xy + RGB/σ_rgb, 4-class soft segmentation."""
    gen = torch.Generator().manual_seed(seed)
    pos = grid((32, 32))[None].expand(2, -1, -1, -1) / sxy
    feats = torch.cat([pos, image(gen, 2, 3, (32, 32), down=4) / srgb], dim=1)
    return soft_seg(gen, 2, 4, (32, 32), down=8), feats


def case_3d_positions() -> tuple[Tensor, Tensor]:
    """2 volumes 10x10x10, features = voxel positions / 2."""
    gen = torch.Generator().manual_seed(1)
    feats = grid((10, 10, 10))[None].expand(2, -1, -1, -1, -1) / 2.0
    return soft_seg(gen, 2, 3, (10, 10, 10), down=3), feats


def case_1d() -> tuple[Tensor, Tensor]:
    """2 signals of 512 samples, feature = position / 4."""
    gen = torch.Generator().manual_seed(2)
    feats = grid((512,))[None].expand(2, -1, -1) / 4.0
    return soft_seg(gen, 2, 3, (512,), down=32), feats


def compare(seg: Tensor, feats: Tensor, **kwargs: float) -> dict[str, float]:
    """Errors of W S, of the CRF loss, and cosine of its gradient, lattice vs exact."""
    approx = dense_gaussian_permutohedral(seg, feats, **kwargs)  # type: ignore[arg-type]
    ref = exact_filter(seg, feats)
    best = (approx * ref).sum() / (approx * approx).sum()  # best global factor
    seg_a = seg.clone().requires_grad_(True)
    seg_e = seg.clone().requires_grad_(True)
    loss_a = crf_loss(seg_a, lambda v: dense_gaussian_permutohedral(v, feats, **kwargs))  # type: ignore[arg-type]
    loss_e = crf_loss(seg_e, lambda v: exact_filter(v, feats))
    loss_a.backward()
    loss_e.backward()
    assert seg_a.grad is not None and seg_e.grad is not None
    return {
        "rel_fro": float((approx - ref).norm() / ref.norm()),
        "rel_fro_scaled": float((best * approx - ref).norm() / ref.norm()),
        "max_rel": float(((approx - ref).abs() / ref.abs()).max()),
        "cos_ws": float(F.cosine_similarity(approx.flatten(), ref.flatten(), dim=0)),
        "loss_rel": float(abs(loss_a.detach() / loss_e.detach() - 1)),
        "grad_cos": float(F.cosine_similarity(seg_a.grad.flatten(), seg_e.grad.flatten(), dim=0)),
    }


# --------------------------------------------------------------------------- accuracy vs exact


def test_5d_position_colour_vs_exact() -> None:
    seg, feats = case_5d(sxy=5.0, srgb=0.15)
    m = compare(seg, feats)
    # W S itself carries the lattice's intrinsic error (see the module docstring).
    assert m["rel_fro_scaled"] < 0.13, m
    assert m["cos_ws"] > 0.99, m
    assert m["rel_fro"] < 0.35, m
    # What the loss needs: the ratio and its gradient.
    assert m["loss_rel"] < 0.05, m
    assert m["grad_cos"] > 0.99, m


def test_5d_hard_case_and_more_lattices() -> None:
    """Small σ (sparse features): one lattice is worse; averaging lattices helps."""
    seg, feats = case_5d(sxy=2.0, srgb=0.05, seed=3)
    one = compare(seg, feats)
    two = compare(seg, feats, n_lattices=2)
    assert one["loss_rel"] < 0.05 and two["loss_rel"] < 0.05, (one, two)
    assert one["grad_cos"] > 0.98, one
    assert two["grad_cos"] > one["grad_cos"], (one, two)
    assert two["rel_fro_scaled"] < one["rel_fro_scaled"], (one, two)


def test_5d_accurate_mode_within_5_percent_on_synthetic() -> None:
    """The accurate mode at the default σ (σ_xy = 5, σ_rgb = 0.1): one ring of added lattice
    neighbours (less lost blur mass), the calibration of the global factor, and 3 lattices
    bring W S within 5 % of the exact sum."""
    seg, feats = case_5d(sxy=5.0, srgb=0.1)
    classic = compare(seg, feats)
    ring = compare(seg, feats, neighbours=1, calibrate=256)
    accurate = compare(seg, feats, neighbours=1, calibrate=256, n_lattices=3)
    assert ring["rel_fro"] < 0.5 * classic["rel_fro"], (classic, ring)
    assert ring["rel_fro_scaled"] < classic["rel_fro_scaled"], (classic, ring)
    assert abs(ring["rel_fro"] - ring["rel_fro_scaled"]) < 0.005, ring   # calibrated
    assert accurate["rel_fro"] < 0.05, accurate
    assert accurate["loss_rel"] < 0.05 and accurate["grad_cos"] > 0.99, accurate


def test_5d_accurate_mode_within_5_percent_on_real_histology(monuseg_root) -> None:
    """Real H&E crops (MoNuSeg validation tiles at 512², 48×48 windows) at the default
    σ_xy = 5, σ_rgb = 0.1: W S within 5 %, loss within 5 %, gradient cosine ≥ 0.99."""
    from weakseg.data.monuseg import load_monuseg
    from weakseg.data.slices import build_slices
    from weakseg.filtering import bilateral_features

    vols = load_monuseg(root=monuseg_root, split="val").volumes[:2]
    images = build_slices(vols, annotation="full", num_classes=2, size=512).images
    crop = images[:, :, 300:348, 300:348].contiguous().double()
    feats = bilateral_features(crop, sigma_xy=5.0, sigma_intensity=0.1)
    seg = soft_seg(torch.Generator().manual_seed(0), 2, 2, (48, 48), down=8)
    m = compare(seg, feats, neighbours=1, calibrate=256, n_lattices=2)
    assert m["rel_fro"] < 0.05 and m["loss_rel"] < 0.05 and m["grad_cos"] > 0.99, m


def test_3d_positions_vs_exact() -> None:
    seg, feats = case_3d_positions()
    m = compare(seg, feats)
    assert m["rel_fro"] < 0.08, m
    assert m["loss_rel"] < 0.03, m
    assert m["grad_cos"] > 0.998, m


def test_4d_positions_and_intensity_vs_exact() -> None:
    gen = torch.Generator().manual_seed(4)
    pos = grid((10, 10, 10))[None].expand(2, -1, -1, -1, -1) / 3.0
    feats = torch.cat([pos, image(gen, 2, 1, (10, 10, 10), down=3) / 0.1], dim=1)
    m = compare(soft_seg(gen, 2, 3, (10, 10, 10), down=3), feats)
    assert m["rel_fro_scaled"] < 0.1, m
    assert m["loss_rel"] < 0.03, m
    assert m["grad_cos"] > 0.995, m


def test_1d_features_vs_exact() -> None:
    seg, feats = case_1d()
    m = compare(seg, feats)
    assert m["rel_fro"] < 0.01, m
    assert m["max_rel"] < 0.1, m
    assert m["loss_rel"] < 0.005, m
    assert m["grad_cos"] > 0.9999, m


def test_normalisation_constant_on_dense_features() -> None:
    """The analytic constant makes W 1 unbiased where the features fill the lattice."""
    gen = torch.Generator().manual_seed(5)
    for nf in (1, 2):
        feats = 12.0 * torch.rand(1, nf, 1000, generator=gen, dtype=torch.float64)
        ones = torch.ones(1, 1, 1000, dtype=torch.float64)
        ratio = dense_gaussian_permutohedral(ones, feats) / exact_filter(ones, feats)
        inner = ((feats > 4) & (feats < 8)).all(dim=1, keepdim=True)
        assert abs(float(ratio[inner].mean()) - 1) < 0.01, (nf, ratio[inner].mean())


def test_finer_scale_is_more_accurate_on_dense_1d_interior() -> None:
    feats = grid((400,))[None] / 8.0
    ones = torch.ones(1, 1, 400, dtype=torch.float64)
    ref = exact_filter(ones, feats)[..., 40:-40]
    errs = [
        float(
            (dense_gaussian_permutohedral(ones, feats, scale=s)[..., 40:-40] / ref - 1).abs().max()
        )
        for s in (1.0, 2.0)
    ]
    assert errs[1] < errs[0] < 1e-3, errs


# --------------------------------------------------------------------------- exact properties


def test_constant_features_give_constant_response() -> None:
    gen = torch.Generator().manual_seed(6)
    feats = torch.full((2, 5, 6, 7), 0.3, dtype=torch.float64)
    values = torch.rand(2, 3, 6, 7, generator=gen, dtype=torch.float64)
    out = dense_gaussian_permutohedral(values, feats)
    # Every pixel sees every pixel with the same weight: out_i = c Σ_j v_j.
    total = values.flatten(2).sum(-1)[..., None, None]
    ratio = out / total
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-10)
    assert 0.2 < float(ratio.flatten()[0]) < 5.0  # exact value is 1 (lattice self-weight)


def test_linearity() -> None:
    gen = torch.Generator().manual_seed(7)
    _, feats = case_5d(sxy=4.0, srgb=0.2, seed=7)
    v1 = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    v2 = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    lhs = dense_gaussian_permutohedral(2.5 * v1 - 0.7 * v2, feats)
    rhs = 2.5 * dense_gaussian_permutohedral(v1, feats) - 0.7 * dense_gaussian_permutohedral(
        v2, feats
    )
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_batch_independence() -> None:
    seg, feats = case_5d(sxy=3.0, srgb=0.1, seed=8)
    seg = torch.cat([seg, seg.flip(-1)])
    feats = torch.cat([feats, feats.flip(-2) + 3.0])
    batched = dense_gaussian_permutohedral(seg, feats)
    for b in range(seg.shape[0]):
        single = dense_gaussian_permutohedral(seg[b : b + 1], feats[b : b + 1])
        torch.testing.assert_close(batched[b : b + 1], single, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(40,), (9, 11), (5, 6, 7)])
@pytest.mark.parametrize("nf", [1, 3])
def test_spatial_dims_and_shapes(shape: tuple[int, ...], nf: int) -> None:
    gen = torch.Generator().manual_seed(9)
    feats = torch.randn(2, nf, *shape, generator=gen, dtype=torch.float64)
    values = torch.rand(2, 2, *shape, generator=gen, dtype=torch.float64)
    out = dense_gaussian_permutohedral(values, feats)
    assert out.shape == values.shape and out.dtype == torch.float64
    ref = exact_filter(values, feats)
    cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert float(cos) > 0.97


def test_float32_matches_float64() -> None:
    seg, feats = case_5d(sxy=5.0, srgb=0.15, seed=10)
    out64 = dense_gaussian_permutohedral(seg, feats)
    out32 = dense_gaussian_permutohedral(seg.float(), feats.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-4 * float(out64.max()))


def test_backward_is_exact_adjoint_and_gradcheck() -> None:
    gen = torch.Generator().manual_seed(11)
    feats = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 2, 6, 5, generator=gen, dtype=torch.float64)
    out = dense_gaussian_permutohedral(v, feats)
    (wtu,) = torch.autograd.grad((out * u).sum(), v)
    # <W v, u> == <v, Wᵀ u>
    torch.testing.assert_close((out * u).sum(), (v * wtu).sum(), rtol=1e-10, atol=1e-10)
    # Wᵀ is close to W (the lattice operator is symmetric up to blur ordering).
    wu = dense_gaussian_permutohedral(u, feats)
    assert float(F.cosine_similarity(wtu.flatten(), wu.flatten(), dim=0)) > 0.99
    small = v[:1, :1, :3, :3].detach().clone().requires_grad_(True)
    fsmall = feats[:1, :, :3, :3]
    fn = lambda x: dense_gaussian_permutohedral(x, fsmall, n_lattices=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (small,))
    assert torch.autograd.gradgradcheck(fn, (small,))


def test_features_are_not_differentiated() -> None:
    seg, feats = case_5d(sxy=5.0, srgb=0.15, seed=12)
    feats = feats.clone().requires_grad_(True)
    seg = seg.clone().requires_grad_(True)
    dense_gaussian_permutohedral(seg, feats).sum().backward()
    assert feats.grad is None and seg.grad is not None


@pytest.mark.parametrize("max_code", [10**8, 5000, 100])
def test_staged_key_encoding_matches_fast_path(
    monkeypatch: pytest.MonkeyPatch, max_code: int
) -> None:
    """Key ranges too large for one int64 code fall back to an exact staged encoding."""
    seg, feats = case_5d(sxy=3.0, srgb=0.1, seed=13)
    fast = dense_gaussian_permutohedral(seg, feats)
    fast_ring = dense_gaussian_permutohedral(seg, feats, neighbours=1)
    monkeypatch.setattr(perm_mod, "_MAX_CODE", max_code)
    staged = dense_gaussian_permutohedral(seg, feats)
    torch.testing.assert_close(staged, fast, rtol=1e-12, atol=1e-12)
    # the added neighbour ring too: same lattice, same result
    staged_ring = dense_gaussian_permutohedral(seg, feats, neighbours=1)
    torch.testing.assert_close(staged_ring, fast_ring, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(fast_ring, fast)


def test_input_validation() -> None:
    v = torch.rand(1, 2, 4, 4)
    f = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError):
        dense_gaussian_permutohedral(v, f[..., :3])
    with pytest.raises(ValueError):  # 4 spatial dims
        dense_gaussian_permutohedral(torch.rand(1, 2, 2, 2, 2, 2), torch.rand(1, 3, 2, 2, 2, 2))
    with pytest.raises(ValueError):  # rank mismatch
        dense_gaussian_permutohedral(v, f.flatten(2))
    with pytest.raises(ValueError):  # batch mismatch
        dense_gaussian_permutohedral(v, f.expand(2, -1, -1, -1))
    with pytest.raises(ValueError):
        dense_gaussian_permutohedral(v, f, scale=0.5)
    with pytest.raises(ValueError):
        dense_gaussian_permutohedral(v, f, n_lattices=0)
    with pytest.raises(ValueError, match="neighbours"):
        dense_gaussian_permutohedral(v, f, neighbours=-1)
    with pytest.raises(ValueError, match="calibrate"):
        dense_gaussian_permutohedral(v, f, calibrate=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        dense_gaussian_permutohedral(v.long(), f)
    empty = dense_gaussian_permutohedral(torch.rand(1, 0, 4, 4), f)
    assert empty.shape == (1, 0, 4, 4)
