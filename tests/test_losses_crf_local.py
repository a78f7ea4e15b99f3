"""Grid CRF and local-window CRF losses (METHODS.md R2): hand values, O(N²) brute-force
references, shift == unfold, neighbourhoods, 2D/3D, reductions, errors, gradcheck."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from weakseg.losses.base import LOSSES
from weakseg.losses.crf_local import (
    GridCRFLoss,
    LocalWindowCRFLoss,
    grid_crf_loss,
    local_window_crf_loss,
    neighbour_offsets,
)

SHAPES = [(2, 3, 6, 5), (2, 3, 4, 5, 3)]  # 2D and 3D


def _data(shape: tuple[int, ...], seed: int, channels: int = 1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=dtype)
    image = torch.rand((shape[0], channels, *shape[2:]), generator=gen, dtype=dtype)
    return logits, image


# ------------------------------------------------------------ O(N²) references (loops)


def _pairs(spatial: tuple[int, ...]):
    """All unordered pixel pairs ``(p, q)`` as coordinate tuples."""
    coords = list(itertools.product(*(range(n) for n in spatial)))
    return itertools.combinations(coords, 2)


def _ref_grid(logits, image, neighbourhood, sigma, spacing=None):
    ndim = logits.ndim - 2
    spacing = spacing or (1.0,) * ndim
    max_nonzero = {2: 1, 4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[neighbourhood]
    probs = logits.softmax(1)
    out = []
    for b in range(logits.shape[0]):
        num = den = 0.0
        for p, q in _pairs(tuple(logits.shape[2:])):
            d = [qi - pi for pi, qi in zip(p, q, strict=True)]
            if max(abs(x) for x in d) > 1 or sum(x != 0 for x in d) > max_nonzero:
                continue
            dist = math.sqrt(sum((x * s) ** 2 for x, s in zip(d, spacing, strict=True)))
            di = float((image[(b, slice(None), *p)] - image[(b, slice(None), *q)]).square().sum())
            w = math.exp(-di / (2 * sigma**2)) / dist
            ds = float((probs[(b, slice(None), *p)] - probs[(b, slice(None), *q)]).square().sum())
            num += w * ds
            den += w
        out.append(num / den)
    return torch.tensor(out, dtype=torch.float64)


def _ref_window(logits, image, kernel_size, sigma_xy, sigma_i, spacing=None):
    ndim = logits.ndim - 2
    spacing = spacing or (1.0,) * ndim
    r = kernel_size // 2
    probs = logits.softmax(1)
    out = []
    for b in range(logits.shape[0]):
        num = den = 0.0
        for p, q in _pairs(tuple(logits.shape[2:])):
            d = [qi - pi for pi, qi in zip(p, q, strict=True)]
            if max(abs(x) for x in d) > r:
                continue
            d2 = sum((x * s) ** 2 for x, s in zip(d, spacing, strict=True))
            di = float((image[(b, slice(None), *p)] - image[(b, slice(None), *q)]).square().sum())
            w = math.exp(-d2 / (2 * sigma_xy**2) - di / (2 * sigma_i**2))
            sp, sq = probs[(b, slice(None), *p)], probs[(b, slice(None), *q)]
            num += w * float(1 - (sp * sq).sum())
            den += w
        out.append(num / den)
    return torch.tensor(out, dtype=torch.float64)


# ------------------------------------------------------------ hand-computed values

# three pixels in a row: s = (1/2, 1/2), (3/4, 1/4), (1/4, 3/4); image 0, 0, 0.1
_LOGITS_1x3 = torch.tensor(
    [[[[0.0, math.log(3), 0.0]], [[0.0, 0.0, math.log(3)]]]], dtype=torch.float64
)
_IMAGE_1x3 = torch.tensor([[[[0.0, 0.0, 0.1]]]], dtype=torch.float64)


def test_grid_two_pixels_is_squared_difference():
    logits = _LOGITS_1x3[..., :2]
    image = torch.tensor([[[[0.0, 0.7]]]], dtype=torch.float64)
    # a single pair: the normalisation cancels w, leaving ||s_0 - s_1||^2 = 2 * 0.25^2
    assert math.isclose(float(grid_crf_loss(logits, image)), 0.125, rel_tol=1e-12)


def test_grid_hand_value_three_pixels():
    w2 = math.exp(-0.5)  # |ΔI| = σ = 0.1
    expected = (1.0 * 0.125 + w2 * 0.5) / (1.0 + w2)
    for nb in (4, 8):
        got = grid_crf_loss(_LOGITS_1x3, _IMAGE_1x3, neighbourhood=nb, sigma_intensity=0.1)
        assert math.isclose(float(got), expected, rel_tol=1e-12)


def test_window_hand_value_three_pixels():
    sigma_xy = 2.0
    a = math.exp(-1 / (2 * sigma_xy**2))  # spatial weight at distance 1 (distance 2: a⁴)
    e = math.exp(-0.5)  # intensity weight for |ΔI| = σ
    cut01, cut12, cut02 = 0.5, 0.625, 0.5  # 1 - s_p·s_q
    k3 = (a * cut01 + a * e * cut12) / (a + a * e)
    k5 = (a * cut01 + a * e * cut12 + a**4 * e * cut02) / (a + a * e + a**4 * e)
    for method in ("shift", "unfold"):
        got3 = local_window_crf_loss(
            _LOGITS_1x3, _IMAGE_1x3, kernel_size=3, sigma_xy=sigma_xy, method=method
        )
        got5 = local_window_crf_loss(
            _LOGITS_1x3, _IMAGE_1x3, kernel_size=5, sigma_xy=sigma_xy, method=method
        )
        assert math.isclose(float(got3), k3, rel_tol=1e-12)
        assert math.isclose(float(got5), k5, rel_tol=1e-12)


# ------------------------------------------------------------ brute-force references


@pytest.mark.parametrize("neighbourhood", [4, 8])
def test_grid_matches_bruteforce_2d(neighbourhood):
    logits, image = _data((2, 3, 4, 5), 0, channels=2, dtype=torch.float64)
    got = grid_crf_loss(logits, image, neighbourhood=neighbourhood, spacing=(1.0, 0.7),
                        sigma_intensity=0.3, reduction="none")
    ref = _ref_grid(logits, image, neighbourhood, 0.3, spacing=(1.0, 0.7))
    assert torch.allclose(got, ref, rtol=1e-10)


@pytest.mark.parametrize("neighbourhood", [6, 18, 26])
def test_grid_matches_bruteforce_3d(neighbourhood):
    logits, image = _data((1, 2, 3, 3, 2), 1, dtype=torch.float64)
    got = grid_crf_loss(logits, image, neighbourhood=neighbourhood, spacing=(2.5, 1.0, 1.0),
                        sigma_intensity=0.2, reduction="none")
    ref = _ref_grid(logits, image, neighbourhood, 0.2, spacing=(2.5, 1.0, 1.0))
    assert torch.allclose(got, ref, rtol=1e-10)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_window_matches_bruteforce(kernel_size):
    logits, image = _data((2, 3, 4, 5), 2, channels=3, dtype=torch.float64)
    for method in ("shift", "unfold"):
        got = local_window_crf_loss(logits, image, kernel_size=kernel_size, sigma_xy=1.5,
                                    sigma_intensity=0.4, spacing=(1.0, 0.5), method=method,
                                    reduction="none")
        ref = _ref_window(logits, image, kernel_size, 1.5, 0.4, spacing=(1.0, 0.5))
        assert torch.allclose(got, ref, rtol=1e-10)
    logits, image = _data((1, 2, 3, 3, 2), 3, dtype=torch.float64)
    got = local_window_crf_loss(logits, image, kernel_size=kernel_size, sigma_xy=1.5,
                                sigma_intensity=0.4, spacing=(2.0, 1.0, 1.0), reduction="none")
    ref = _ref_window(logits, image, kernel_size, 1.5, 0.4, spacing=(2.0, 1.0, 1.0))
    assert torch.allclose(got, ref, rtol=1e-10)


# ------------------------------------------------------------ properties


def test_shift_equals_unfold():
    logits, image = _data((2, 4, 13, 11), 4, channels=2)
    for kernel_size in (3, 5, 7):
        shift = local_window_crf_loss(logits, image, kernel_size=kernel_size, method="shift",
                                      reduction="none")
        unfold = local_window_crf_loss(logits, image, kernel_size=kernel_size, method="unfold",
                                       reduction="none")
        assert torch.allclose(shift, unfold, atol=1e-6)
    logits, image = _data((1, 3, 9, 8), 5, dtype=torch.float64)
    logits.requires_grad_(True)
    g = [torch.autograd.grad(local_window_crf_loss(logits, image, method=m), logits)[0]
         for m in ("shift", "unfold")]
    assert torch.allclose(g[0], g[1], atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_zero_for_constant_predictions(shape):
    gen = torch.Generator().manual_seed(6)
    b, c, *sp = shape
    image = torch.rand((b, 1, *sp), generator=gen)
    soft = torch.randn(b, c, *([1] * len(sp)), generator=gen).expand(shape)
    assert float(grid_crf_loss(soft, image)) == 0.0  # any constant prediction
    # the window (Potts) relaxation: zero only for a constant hard prediction; a constant
    # soft prediction costs 1 - ||s||^2 on every pair
    hard = torch.zeros(shape)
    hard[:, 1] = 1000.0
    assert float(local_window_crf_loss(hard, image)) == 0.0
    s = soft.softmax(1).flatten(2)[:, :, 0]
    expected = (1 - s.square().sum(1)).mean()
    assert torch.allclose(local_window_crf_loss(soft, image), expected, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_bounds(shape):
    for seed in range(3):
        logits, image = _data(shape, 10 + seed)
        logits = logits * 5
        g = grid_crf_loss(logits, image, reduction="none")
        w = local_window_crf_loss(logits, image, reduction="none")
        assert torch.all(g >= 0) and torch.all(g <= 2)
        assert torch.all(w >= 0) and torch.all(w <= 1)


def test_checkerboard_reaches_the_bounds():
    yy, xx = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    labels = (yy + xx) % 2
    logits = torch.nn.functional.one_hot(labels, 2).movedim(-1, 0)[None].double() * 1000
    image = torch.full((1, 1, 6, 6), 0.5, dtype=torch.float64)
    # 4-neighbours of a checkerboard always disagree: ||s_p - s_q||^2 = 2 on every pair
    assert math.isclose(float(grid_crf_loss(logits, image, neighbourhood=4)), 2.0)
    assert float(local_window_crf_loss(logits, image, kernel_size=3, sigma_xy=0.1)) == (
        pytest.approx(1.0)
    )


def test_constant_image_gives_plain_spatial_weights():
    logits, image = _data((2, 3, 5, 6), 7, dtype=torch.float64)
    flat = torch.full_like(image, 0.3)
    for nb in (4, 8):
        a = grid_crf_loss(logits, flat, neighbourhood=nb, sigma_intensity=0.1)
        b = grid_crf_loss(logits, image, neighbourhood=nb, sigma_intensity=math.inf)
        ref = _ref_grid(logits, image, nb, math.inf).mean()  # w = 1 / dist
        assert torch.allclose(a, ref, rtol=1e-10) and torch.allclose(b, ref, rtol=1e-10)
    a = local_window_crf_loss(logits, flat, kernel_size=5, sigma_xy=2.0)
    b = local_window_crf_loss(logits, image, kernel_size=5, sigma_xy=2.0,
                              sigma_intensity=math.inf)
    assert torch.allclose(a, b, rtol=1e-10)


def test_edges_lower_the_cost_of_cutting_there():
    # prediction with a vertical boundary; an image edge at the same place makes it cheap
    logits = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    logits[:, 1, :, 3:] = 8.0
    logits[:, 0, :, :3] = 8.0
    flat = torch.full((1, 1, 6, 6), 0.5, dtype=torch.float64)
    edge = flat.clone()
    edge[..., 3:] = 1.0
    for fn in (grid_crf_loss, local_window_crf_loss):
        assert float(fn(logits, edge)) < 0.1 * float(fn(logits, flat))


def test_neighbourhood_offsets():
    counts = {(2, 4): 2, (2, 8): 4, (2, None): 4, (3, 6): 3, (3, 18): 9, (3, 26): 13,
              (3, None): 13, (1, 2): 1}
    for (ndim, nb), n in counts.items():
        offs = neighbour_offsets(ndim, nb)
        assert len(offs) == n and len(set(offs)) == n
        # the half set: no offset together with its opposite
        assert not {tuple(-c for c in o) for o in offs} & set(offs)
    assert neighbour_offsets(2, 4) == [(0, 1), (1, 0)]
    logits, image = _data((1, 3, 5, 5), 8)
    assert not torch.allclose(grid_crf_loss(logits, image, neighbourhood=4),
                              grid_crf_loss(logits, image, neighbourhood=8))


def test_grid8_is_twice_window3_on_hard_predictions():
    """With σ_xy = 1/√ln2 the 3×3 Gaussian weights (1/√2, 1/2) are proportional to the
    8-neighbour weights 1/dist = (1, 1/√2); on one-hot predictions ||s_p − s_q||² = 2·[≠]
    and s_pᵀ(1 − s_q) = [≠], so grid = 2 × window. (Not true for soft predictions.)"""
    gen = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 3, (2, 7, 6), generator=gen)
    hard = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double() * 1000
    image = torch.rand(2, 1, 7, 6, generator=gen, dtype=torch.float64)
    sigma_xy = 1 / math.sqrt(math.log(2))
    grid = grid_crf_loss(hard, image, neighbourhood=8, reduction="none")
    win = local_window_crf_loss(hard, image, kernel_size=3, sigma_xy=sigma_xy, reduction="none")
    assert torch.allclose(grid, 2 * win, rtol=1e-12)
    soft, _ = _data((2, 3, 7, 6), 9, dtype=torch.float64)
    assert not torch.allclose(
        grid_crf_loss(soft, image, neighbourhood=8),
        2 * local_window_crf_loss(soft, image, kernel_size=3, sigma_xy=sigma_xy),
    )


def test_no_pair_gives_zero_not_nan():
    logits = torch.randn(2, 3, 1, 1, requires_grad=True)
    image = torch.rand(2, 1, 1, 1)
    for fn in (grid_crf_loss, local_window_crf_loss):
        value = fn(logits, image)
        value.backward()
        assert float(value.detach()) == 0.0 and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------ checklist


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["grid_crf", "local_crf"])
def test_smoke_and_reductions(shape, name):
    logits, image = _data(shape, 11, channels=2)
    fn = {"grid_crf": grid_crf_loss, "local_crf": local_window_crf_loss}[name]
    none = fn(logits, image, reduction="none")
    assert none.shape == (shape[0],)
    assert torch.allclose(fn(logits, image), none.mean())
    assert torch.allclose(fn(logits, image, reduction="sum"), none.sum())
    loss = LOSSES.build(name)
    assert loss.inputs == ("image",)
    logits.requires_grad_(True)
    value = loss(logits, image=image)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(logits.grad).all()


def test_module_equals_function():
    logits, image = _data((2, 3, 6, 7), 12, channels=2)
    assert torch.equal(
        GridCRFLoss(neighbourhood=4, sigma_intensity=0.2, spacing=(1, 2), reduction="sum")(
            logits, image),
        grid_crf_loss(logits, image, neighbourhood=4, sigma_intensity=0.2, spacing=(1, 2),
                      reduction="sum"),
    )
    params = dict(kernel_size=3, sigma_xy=2.0, sigma_intensity=0.3, spacing=(1.0, 0.5),
                  method="unfold", reduction="none")
    assert torch.equal(LocalWindowCRFLoss(**params)(logits, image),
                       local_window_crf_loss(logits, image, **params))


def test_gradcheck_float64():
    logits, image = _data((1, 3, 3, 3), 13, dtype=torch.float64)
    logits.requires_grad_(True)
    for nb in (4, 8):
        assert torch.autograd.gradcheck(
            lambda z, nb=nb: grid_crf_loss(z, image, neighbourhood=nb), (logits,), fast_mode=True)
    for method in ("shift", "unfold"):
        assert torch.autograd.gradcheck(
            lambda z, m=method: local_window_crf_loss(z, image, kernel_size=3, method=m),
            (logits,), fast_mode=True)
    logits3, image3 = _data((1, 2, 2, 2, 2), 14, dtype=torch.float64)
    logits3.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: grid_crf_loss(z, image3), (logits3,), fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda z: local_window_crf_loss(z, image3, kernel_size=3), (logits3,), fast_mode=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"neighbourhood": 5},
        {"neighbourhood": 6},  # 3D-only in 2D
        {"sigma_intensity": 0.0},
        {"sigma_intensity": -1.0},
        {"sigma_intensity": float("nan")},
        {"spacing": (1.0,)},
        {"spacing": (1.0, -1.0)},
        {"spacing": 1.0},
        {"reduction": "avg"},
    ],
)
def test_grid_errors(kwargs):
    logits, image = _data((1, 3, 4, 4), 15)
    with pytest.raises(ValueError):
        grid_crf_loss(logits, image, **kwargs)
    if kwargs != {"neighbourhood": 6} and kwargs != {"spacing": (1.0,)}:
        with pytest.raises(ValueError):
            GridCRFLoss(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 4},
        {"kernel_size": 1},
        {"kernel_size": 3.0},
        {"sigma_xy": 0.0},
        {"sigma_intensity": -0.1},
        {"method": "conv"},
        {"spacing": (1.0, 1.0, 1.0)},
        {"reduction": "avg"},
    ],
)
def test_window_errors(kwargs):
    logits, image = _data((1, 3, 4, 4), 16)
    with pytest.raises(ValueError):
        local_window_crf_loss(logits, image, **kwargs)
    if "spacing" not in kwargs:
        with pytest.raises(ValueError):
            LocalWindowCRFLoss(**kwargs)


def test_input_errors():
    logits, image = _data((2, 3, 4, 4), 17)
    logits3, image3 = _data((1, 3, 4, 4, 4), 18)
    bad_images = [image[:1], image[..., :3], image[:, 0], (image * 255).long()]
    for fn in (grid_crf_loss, local_window_crf_loss):
        for bad in bad_images:
            with pytest.raises(ValueError, match="image"):
                fn(logits, bad)
    with pytest.raises(ValueError, match="2D"):
        local_window_crf_loss(logits3, image3, method="unfold")


# ------------------------------------------------------------ low-memory backward


def test_window_custom_backward_equals_autograd():
    logits, image = _data((2, 3, 7, 6), 19, channels=2, dtype=torch.float64)
    logits.requires_grad_(True)
    grads = []
    for image_grad in (False, True):  # True: the plain autograd path
        img = image.clone().requires_grad_(image_grad)
        value = local_window_crf_loss(logits, img, kernel_size=5, sigma_xy=2.0,
                                      reduction="none")
        grads.append(torch.autograd.grad((value * torch.tensor([1.0, 3.0])).sum(), logits)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    img = image.clone().requires_grad_(True)  # the image gets a gradient when asked for
    local_window_crf_loss(logits, img).backward()
    assert img.grad is not None and torch.count_nonzero(img.grad) > 0


def _saved_bytes(fn) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_window_shift_memory_does_not_grow_with_the_window():
    logits, image = _data((1, 2, 24, 24), 20)
    logits.requires_grad_(True)
    small = _saved_bytes(lambda: local_window_crf_loss(logits, image, kernel_size=3))
    large = _saved_bytes(lambda: local_window_crf_loss(logits, image, kernel_size=11))
    unfold = _saved_bytes(lambda: local_window_crf_loss(logits, image, kernel_size=11,
                                                        method="unfold"))
    assert large == small and 10 * large < unfold
