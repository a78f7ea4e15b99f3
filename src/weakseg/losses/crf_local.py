"""Local CRF losses: the grid (Laplacian / Potts) CRF and the local-window ("gated") CRF.

Both are pairwise regularisers on the softmax ``S`` of the network that penalise label
changes between nearby pixels of similar intensity (METHODS.md R2). They differ in the
neighbourhood, the spatial kernel and the relaxation of the Potts model:

**Grid CRF** (:func:`grid_crf_loss`), the quadratic (Laplacian) relaxation over the
4/8-neighbourhood in 2D or the 6/18/26-neighbourhood in 3D, each unordered pair once:

.. math::

    \\mathcal{L}_{grid}(S) = \\frac{\\sum_{\\{p,q\\} \\in \\mathcal{N}} w_{pq}\\,
        \\lVert s_p - s_q \\rVert^2}{\\sum_{\\{p,q\\} \\in \\mathcal{N}} w_{pq}},
    \\qquad
    w_{pq} = \\frac{\\exp\\big(-\\lVert I_p - I_q \\rVert^2 / 2\\sigma_I^2\\big)}
        {\\operatorname{dist}(p, q)}

**Local-window CRF** (:func:`local_window_crf_loss`), the bilinear Potts relaxation
:math:`\\sum_k S_k^\\top W (1 - S_k)` with a Gaussian kernel on position and intensity,
restricted to a ``k × k`` (``k × k × k``) window around each pixel:

.. math::

    \\mathcal{L}_{win}(S) = \\frac{\\sum_p \\sum_{q \\in \\mathcal{W}(p) \\setminus p} w_{pq}\\,
        s_p^\\top (1 - s_q)}{\\sum_p \\sum_{q \\in \\mathcal{W}(p) \\setminus p} w_{pq}},
    \\qquad
    w_{pq} = \\exp\\Big(-\\frac{\\lVert x_p - x_q \\rVert^2}{2\\sigma_{xy}^2}
        - \\frac{\\lVert I_p - I_q \\rVert^2}{2\\sigma_I^2}\\Big)

Positions ``x`` are in pixel units times ``spacing`` (anisotropic voxels); intensities
``I`` have any number of channels and are expected in ``[0, 1]`` (``sigma_intensity`` is
in those units). Both losses are **normalised per image by the total pair weight**, so the
grid value lies in ``[0, 2]`` and the window value in ``[0, 1]`` (the fraction of affinity
mass cut, the same convention as the dense CRF), whatever the image size: a loss weight
tuned on 128² crops transfers to 256² images, and no weight like ``2e-9`` is needed.

The two relaxations agree on hard (one-hot) predictions only: there
:math:`\\lVert s_p - s_q \\rVert^2 = 2\\,[y_p \\ne y_q]` and
:math:`s_p^\\top (1 - s_q) = [y_p \\ne y_q]`. On soft predictions the grid loss is zero for
any spatially constant ``S``, while the window loss is zero only for a constant *one-hot*
``S`` (it also rewards confident predictions, as the dense CRF of Tang et al. does).

Both are computed by shift-and-slice: for each offset ``o`` of the half set of
neighbour offsets, the tensors are sliced so that ``p`` and ``p + o`` are aligned, so each
unordered pair is visited once. No pixel loop and no ``unfold``, whose ``k^d``-fold copies
of the prediction and of the kernel are what make the published gated-CRF implementation
memory-heavy; the window loss also recomputes its weights in the backward pass, so its
autograd memory does not grow with the window (about ``1.3·B·C·N`` floats kept against
``k²·B·N`` for ``unfold``). ``method="unfold"`` keeps the published formulation for the
comparison (2D only).

References:
    Tang et al., "On regularized losses for weakly-supervised CNN segmentation", ECCV 2018.
    Marin et al., "Beyond gradient descent for regularized segmentation losses", CVPR 2019.
    Obukhov et al., "Gated CRF loss for weakly supervised semantic image segmentation",
    arXiv:1906.04651, 2019 (the local-window formulation used by WSL4MIS, Luo et al. 2022).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from weakseg.losses._utils import check_logits_image, check_reduction, reduce
from weakseg.losses.base import LOSSES

__all__ = [
    "GridCRFLoss",
    "LocalWindowCRFLoss",
    "grid_crf_loss",
    "local_window_crf_loss",
    "neighbour_offsets",
]

METHODS = ("shift", "unfold")


# --------------------------------------------------------------------------- helpers


def _neighbourhood_sizes(ndim: int) -> dict[int, int]:
    """``{neighbourhood size: max number of non-zero offset coordinates}`` for ``ndim``.

    1D: ``{2: 1}``; 2D: ``{4: 1, 8: 2}``; 3D: ``{6: 1, 18: 2, 26: 3}`` (faces, + edges,
    + corners).
    """
    sizes: dict[int, int] = {}
    count = 0
    for k in range(1, ndim + 1):
        count += math.comb(ndim, k) * 2**k
        sizes[count] = k
    return sizes


_ALL_NEIGHBOURHOODS = sorted({n for d in (1, 2, 3) for n in _neighbourhood_sizes(d)})


def neighbour_offsets(ndim: int, neighbourhood: int | None = None) -> list[tuple[int, ...]]:
    """The half set of neighbour offsets (each unordered pair ``{p, p+o}`` once).

    Args:
        ndim: number of spatial dimensions (1–3).
        neighbourhood: 4 or 8 in 2D, 6, 18 or 26 in 3D (2 in 1D); ``None`` = all
            ``3^ndim − 1`` neighbours (8 in 2D, 26 in 3D).

    Returns:
        ``neighbourhood / 2`` offsets, each with its first non-zero coordinate positive.

    Example:
        >>> neighbour_offsets(2, 4)
        [(0, 1), (1, 0)]
    """
    sizes = _neighbourhood_sizes(ndim)
    if neighbourhood is None:
        neighbourhood = 3**ndim - 1
    if neighbourhood not in sizes:
        raise ValueError(
            f"neighbourhood must be one of {sorted(sizes)} (or None) for {ndim}D images, "
            f"got {neighbourhood!r}"
        )
    max_nonzero = sizes[neighbourhood]
    return [
        o
        for o in itertools.product((-1, 0, 1), repeat=ndim)
        if 0 < sum(c != 0 for c in o) <= max_nonzero and _first_nonzero_positive(o)
    ]


def _window_offsets(ndim: int, radius: int) -> list[tuple[int, ...]]:
    """Half set of the offsets of a ``(2r+1)^ndim`` window, centre excluded."""
    return [
        o
        for o in itertools.product(range(-radius, radius + 1), repeat=ndim)
        if any(o) and _first_nonzero_positive(o)
    ]


def _first_nonzero_positive(offset: tuple[int, ...]) -> bool:
    return next(c for c in offset if c != 0) > 0


def _pair_slices(
    offset: tuple[int, ...], spatial: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Slices ``(a, b)`` over ``(B, C, *spatial)`` aligning ``p`` (in ``a``) with ``p + o``
    (in ``b``); ``None`` when the offset leaves the image."""
    a: list[slice] = [slice(None), slice(None)]
    b: list[slice] = [slice(None), slice(None)]
    for o, n in zip(offset, spatial, strict=True):
        if abs(o) >= n:
            return None
        if o >= 0:
            a.append(slice(0, n - o))
            b.append(slice(o, n))
        else:
            a.append(slice(-o, n))
            b.append(slice(0, n + o))
    return tuple(a), tuple(b)


def _check_sigma(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number (inf allowed), got {value!r}")


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    """Validate ``spacing``: positive finite values, one per spatial dim (``None`` = 1)."""
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be a sequence of numbers, got {spacing!r}") from None
    if not values or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be positive finite numbers, got {tuple(spacing)}")
    return values


def _spacing_for(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """:func:`_check_spacing` plus the length check against ``ndim`` spatial dims."""
    values = _check_spacing(spacing)
    if values is None:
        return (1.0,) * ndim
    if len(values) != ndim:
        raise ValueError(
            f"spacing {values} has {len(values)} entries but the images have {ndim} "
            "spatial dims"
        )
    return values


def _normalised(num: torch.Tensor, den: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``num / den`` per image, 0 where no pair has weight, attached to the graph of
    ``probs`` even when the image has no pair at all (e.g. a 1×1 image)."""
    attached = num.clamp_min(0) + 0 * probs.flatten(1)[:, 0]  # clamp: rounding in Σw − Σw·s·s
    return attached / den.clamp_min(torch.finfo(den.dtype).tiny)


def _check_kernel_size(kernel_size: int) -> None:
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 3
        or kernel_size % 2 == 0
    ):
        raise ValueError(f"kernel_size must be an odd integer ≥ 3, got {kernel_size!r}")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got '{method}'")


# --------------------------------------------------------------------------- grid CRF


def grid_crf_loss(
    logits: torch.Tensor,
    image: torch.Tensor,
    *,
    neighbourhood: int | None = None,
    sigma_intensity: float = 0.1,
    spacing: Sequence[float] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Contrast-sensitive grid CRF (Laplacian relaxation of Potts), normalised per image.

    ``Σ_{p,q∈N} w_pq ‖s_p − s_q‖² / Σ_{p,q∈N} w_pq`` with
    ``w_pq = exp(−‖I_p − I_q‖² / 2σ²) / dist(p, q)``, each unordered neighbour pair once
    (see the module docstring). The value lies in ``[0, 2]`` (2 = every pair carries
    opposite one-hot predictions) and is 0 for any spatially constant prediction.

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (2D or 3D).
        image: ``(B, K, *spatial)`` network input in ``[0, 1]``, any number ``K`` of
            channels (the intensity distance is the Euclidean norm over channels).
        neighbourhood: 4 or 8 in 2D, 6, 18 or 26 in 3D; ``None`` = 8 in 2D, 26 in 3D.
        sigma_intensity: ``σ`` of the contrast term, in image units; ``inf`` gives the
            plain spatial weights ``1 / dist``.
        spacing: physical size of a pixel per spatial dim (``dist`` uses it); ``None`` = 1.
        reduction: ``"mean"`` or ``"sum"`` over images, or ``"none"`` → ``(B,)``.

    Returns:
        The loss; an image with no neighbour pair (or all weights underflowing to 0)
        contributes 0.

    Shape:
        logits ``(B, C, *spatial)``, image ``(B, K, *spatial)``; output scalar, or ``(B,)``
        for ``"none"``.

    Example:
        >>> logits = torch.randn(2, 3, 16, 16); image = torch.rand(2, 1, 16, 16)
        >>> 0 <= float(grid_crf_loss(logits, image, neighbourhood=4)) <= 2
        True
    """
    check_reduction(reduction)
    check_logits_image(logits, image)
    _check_sigma("sigma_intensity", sigma_intensity)
    ndim = logits.ndim - 2
    offsets = neighbour_offsets(ndim, neighbourhood)
    sp = _spacing_for(spacing, ndim)

    probs = logits.softmax(dim=1)
    image = image.to(probs.dtype)
    gamma = 1.0 / (2.0 * float(sigma_intensity) ** 2)
    dims = tuple(range(1, logits.ndim))  # channel (kept as size 1) and spatial dims
    num = probs.new_zeros(probs.shape[0])
    den = probs.new_zeros(probs.shape[0])
    for offset in offsets:
        slices = _pair_slices(offset, probs.shape[2:])
        if slices is None:
            continue
        a, b = slices
        dist = math.sqrt(sum((o * s) ** 2 for o, s in zip(offset, sp, strict=True)))
        contrast = (image[a] - image[b]).square().sum(dim=1, keepdim=True)
        weight = torch.exp(-gamma * contrast) / dist
        jump = (probs[a] - probs[b]).square().sum(dim=1, keepdim=True)
        num = num + (weight * jump).sum(dim=dims)
        den = den + weight.sum(dim=dims)
    return reduce(_normalised(num, den, probs), reduction)


@LOSSES.register("grid_crf", help="grid (4/8, 6/18/26-neighbour) contrast-sensitive CRF (R2)")
class GridCRFLoss(nn.Module):
    """Module form of :func:`grid_crf_loss` (stores hyper-parameters only)."""

    inputs = ("image",)

    def __init__(
        self,
        *,
        neighbourhood: int | None = None,
        sigma_intensity: float = 0.1,
        spacing: Sequence[float] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        _check_sigma("sigma_intensity", sigma_intensity)
        if neighbourhood is not None and neighbourhood not in _ALL_NEIGHBOURHOODS:
            raise ValueError(
                f"neighbourhood must be one of {_ALL_NEIGHBOURHOODS} (or None), "
                f"got {neighbourhood!r}"
            )
        self.neighbourhood = neighbourhood
        self.sigma_intensity = sigma_intensity
        self.spacing = _check_spacing(spacing)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return grid_crf_loss(
            logits,
            image,
            neighbourhood=self.neighbourhood,
            sigma_intensity=self.sigma_intensity,
            spacing=self.spacing,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"neighbourhood={self.neighbourhood}, sigma_intensity={self.sigma_intensity}, "
            f"spacing={self.spacing}, reduction='{self.reduction}'"
        )


# --------------------------------------------------------------------------- window CRF


def local_window_crf_loss(
    logits: torch.Tensor,
    image: torch.Tensor,
    *,
    kernel_size: int = 5,
    sigma_xy: float = 5.0,
    sigma_intensity: float = 0.1,
    spacing: Sequence[float] | None = None,
    method: str = "shift",
    reduction: str = "mean",
) -> torch.Tensor:
    """Local-window (gated) CRF: ``Σ_k S_kᵀ W (1 − S_k)`` with ``W`` cut to a window.

    For each pixel ``p`` and each other pixel ``q`` of the ``kernel_size^d`` window centred
    on ``p`` (and inside the image), ``w_pq = exp(−‖x_p − x_q‖²/2σ_xy² − ‖I_p − I_q‖²/2σ_I²)``
    and the pair costs ``w_pq s_pᵀ(1 − s_q)``; the sum is divided by ``Σ w_pq`` (the
    fraction of affinity mass cut, in ``[0, 1]``; 0 only for a constant one-hot prediction).

    The published implementation (Obukhov et al.; WSL4MIS ``gate_crf_loss.py``) builds the
    kernel with ``F.unfold``, divides by ``B·H·W`` instead of ``Σ w``, and also counts the
    zero-padded neighbours outside the image in ``Σ w`` (a constant that carries no
    gradient). ``method="unfold"`` keeps its ``unfold`` formulation (a ``(B, C, k², H, W)``
    copy of the prediction and a ``(B, 1, k², H, W)`` kernel, 2D only) but masks the padded
    neighbours and uses the normalisation above, so it returns the value and gradient of
    ``method="shift"`` (up to rounding), which computes the same sum by shift-and-slice over
    the half window (each unordered pair once, 2D and 3D) and recomputes the weights in its
    backward pass (memory ``O(B·C·N)`` whatever ``kernel_size``; when ``image`` requires a
    gradient it falls back to plain autograd). Its source/destination masks ("gating") and
    multi-kernel compositions are not reproduced.

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (2D or 3D).
        image: ``(B, K, *spatial)`` network input in ``[0, 1]``, any number of channels.
        kernel_size: window side (odd, ≥ 3); WSL4MIS uses radius 5, i.e. 11.
        sigma_xy: spatial ``σ`` in pixels (times ``spacing``); WSL4MIS uses 6.
        sigma_intensity: intensity ``σ`` in image units; WSL4MIS uses 0.1. ``inf`` for
            either σ switches that term off.
        spacing: physical size of a pixel per spatial dim; ``None`` = 1.
        method: ``"shift"`` (default, 2D and 3D) or ``"unfold"`` (2D only, memory-heavy).
        reduction: ``"mean"`` or ``"sum"`` over images, or ``"none"`` → ``(B,)``.

    Returns:
        The loss; an image with no pair in any window contributes 0.

    Shape:
        logits ``(B, C, *spatial)``, image ``(B, K, *spatial)``; output scalar, or ``(B,)``
        for ``"none"``.

    Example:
        >>> logits = torch.randn(2, 3, 16, 16); image = torch.rand(2, 1, 16, 16)
        >>> a = local_window_crf_loss(logits, image, method="shift")
        >>> b = local_window_crf_loss(logits, image, method="unfold")
        >>> bool(torch.allclose(a, b, atol=1e-5))
        True
    """
    check_reduction(reduction)
    _check_method(method)
    _check_kernel_size(kernel_size)
    _check_sigma("sigma_xy", sigma_xy)
    _check_sigma("sigma_intensity", sigma_intensity)
    check_logits_image(logits, image)
    ndim = logits.ndim - 2
    sp = _spacing_for(spacing, ndim)
    if method == "unfold" and ndim != 2:
        raise ValueError(
            f"method='unfold' supports 2D images only, got logits {tuple(logits.shape)}; "
            "use method='shift'"
        )

    probs = logits.softmax(dim=1)
    image = image.to(probs.dtype)
    if method == "unfold":
        num, den = _window_unfold(probs, image, kernel_size, sigma_xy, sigma_intensity, sp)
    else:
        num, den = _window_shift(probs, image, kernel_size, sigma_xy, sigma_intensity, sp)
    return reduce(_normalised(num, den, probs), reduction)


def _window_weights(
    probs: torch.Tensor,
    image: torch.Tensor,
    kernel_size: int,
    sigma_xy: float,
    sigma_intensity: float,
    spacing: tuple[float, ...],
) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...], torch.Tensor]]:
    """For each offset of the half window: the slices ``(a, b)`` aligning ``p`` and
    ``q = p + o`` and the weights ``w_pq``, shape ``(B, 1, *overlap)``."""
    gamma_xy = 1.0 / (2.0 * float(sigma_xy) ** 2)
    gamma_i = 1.0 / (2.0 * float(sigma_intensity) ** 2)
    for offset in _window_offsets(probs.ndim - 2, kernel_size // 2):
        slices = _pair_slices(offset, probs.shape[2:])
        if slices is None:
            continue
        a, b = slices
        d2 = sum((o * s) ** 2 for o, s in zip(offset, spacing, strict=True))
        contrast = (image[a] - image[b]).square().sum(dim=1, keepdim=True)
        yield a, b, torch.exp(-gamma_xy * d2 - gamma_i * contrast)


def _window_sums(
    probs: torch.Tensor,
    image: torch.Tensor,
    kernel_size: int,
    sigma_xy: float,
    sigma_intensity: float,
    spacing: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``(Σ w s_pᵀ(1 − s_q), Σ w)`` over unordered window pairs, shape ``(B,)``.

    Both sums over ordered pairs are twice these (``w`` and the Potts cost are symmetric),
    so the ratio is the same. ``s_pᵀ(1 − s_q)`` is summed as ``Σ w − Σ w s_pᵀ s_q`` so that
    autograd only keeps views of ``probs`` and the ``(B, 1, *spatial)`` weights.
    """
    dims = tuple(range(1, probs.ndim))
    dot = probs.new_zeros(probs.shape[0])
    den = probs.new_zeros(probs.shape[0])
    for a, b, weight in _window_weights(probs, image, kernel_size, sigma_xy, sigma_intensity,
                                        spacing):
        dot = dot + (weight * (probs[a] * probs[b]).sum(dim=1, keepdim=True)).sum(dim=dims)
        den = den + weight.sum(dim=dims)
    return den - dot, den


class _WindowCut(torch.autograd.Function):
    """:func:`_window_sums` with a backward that recomputes the weights instead of storing
    them: memory ``O(B·C·N)`` whatever the window (autograd would keep ``(k^d − 1)/2``
    weight maps). Not differentiable with respect to the image."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        probs: torch.Tensor,
        image: torch.Tensor,
        kernel_size: int,
        sigma_xy: float,
        sigma_intensity: float,
        spacing: tuple[float, ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(probs, image)
        ctx.params = (kernel_size, sigma_xy, sigma_intensity, spacing)
        num, den = _window_sums(probs, image, kernel_size, sigma_xy, sigma_intensity, spacing)
        ctx.mark_non_differentiable(den)
        return num, den

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_num: torch.Tensor, grad_den: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        probs, image = ctx.saved_tensors
        # ∂num/∂s_p = −Σ_{q ∈ window(p)} w_pq s_q: the window message, both pair directions
        message = torch.zeros_like(probs)
        for a, b, weight in _window_weights(probs, image, *ctx.params):
            message[a] += weight * probs[b]
            message[b] += weight * probs[a]
        grad = -grad_num.view(-1, *([1] * (probs.ndim - 1))) * message
        return grad, None, None, None, None, None


def _window_shift(
    probs: torch.Tensor,
    image: torch.Tensor,
    kernel_size: int,
    sigma_xy: float,
    sigma_intensity: float,
    spacing: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift-and-slice window sums; the low-memory backward unless the image needs a
    gradient (then plain autograd, which also differentiates the weights)."""
    args = (kernel_size, sigma_xy, sigma_intensity, spacing)
    if image.requires_grad and torch.is_grad_enabled():
        return _window_sums(probs, image, *args)
    num, den = _WindowCut.apply(probs, image, *args)
    return num, den


def _window_unfold(
    probs: torch.Tensor,
    image: torch.Tensor,
    kernel_size: int,
    sigma_xy: float,
    sigma_intensity: float,
    spacing: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The published ``F.unfold`` formulation (2D): ``(Σ w − Σ_p s_pᵀ (W S)_p, Σ w)``."""
    b, c, h, w = probs.shape
    k2 = kernel_size * kernel_size
    pad = kernel_size // 2

    def unfold(x: torch.Tensor) -> torch.Tensor:
        return F.unfold(x, kernel_size, padding=pad).view(b, x.shape[1], k2, h, w)

    ys = torch.arange(h, dtype=probs.dtype, device=probs.device) * spacing[0]
    xs = torch.arange(w, dtype=probs.dtype, device=probs.device) * spacing[1]
    mesh = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(b, 2, h, w)
    features = torch.cat([mesh / float(sigma_xy), image / float(sigma_intensity)], dim=1)
    kernel = (-0.5 * (unfold(features) - features.unsqueeze(2)).square()).sum(1, keepdim=True)
    kernel = kernel.exp()  # (B, 1, k², H, W)
    inside = unfold(probs.new_ones(b, 1, h, w))  # 0 for the zero-padded neighbours
    not_centre = torch.ones(k2, dtype=probs.dtype, device=probs.device)
    not_centre[k2 // 2] = 0
    kernel = kernel * inside * not_centre.view(1, 1, k2, 1, 1)
    product = (kernel * unfold(probs)).sum(dim=2)  # (W S)_p, shape (B, C, H, W)
    dims = tuple(range(1, probs.ndim))
    den = kernel.sum(dim=(1, 2, 3, 4))
    num = den - (product * probs).sum(dim=dims)
    return num, den


@LOSSES.register("local_crf", help="local-window (gated) CRF, the WSL4MIS baseline (R2)")
class LocalWindowCRFLoss(nn.Module):
    """Module form of :func:`local_window_crf_loss` (stores hyper-parameters only)."""

    inputs = ("image",)

    def __init__(
        self,
        *,
        kernel_size: int = 5,
        sigma_xy: float = 5.0,
        sigma_intensity: float = 0.1,
        spacing: Sequence[float] | None = None,
        method: str = "shift",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        _check_method(method)
        _check_kernel_size(kernel_size)
        _check_sigma("sigma_xy", sigma_xy)
        _check_sigma("sigma_intensity", sigma_intensity)
        self.kernel_size = kernel_size
        self.sigma_xy = sigma_xy
        self.sigma_intensity = sigma_intensity
        self.spacing = _check_spacing(spacing)
        self.method = method
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return local_window_crf_loss(
            logits,
            image,
            kernel_size=self.kernel_size,
            sigma_xy=self.sigma_xy,
            sigma_intensity=self.sigma_intensity,
            spacing=self.spacing,
            method=self.method,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, sigma_xy={self.sigma_xy}, "
            f"sigma_intensity={self.sigma_intensity}, spacing={self.spacing}, "
            f"method='{self.method}', reduction='{self.reduction}'"
        )
