"""Dense CRF loss and normalized cut loss over all pixel pairs (METHODS.md R3, R4).

With :math:`S = \\mathrm{softmax}(z)` and the bilateral affinity of Krähenbühl & Koltun

.. math::

    W_{pq} = \\exp\\Big(-\\frac{\\lVert x_p - x_q \\rVert^2}{2\\sigma_{xy}^2}
                       -\\frac{\\lVert I_p - I_q \\rVert^2}{2\\sigma_I^2}\\Big)

over **all** pixel pairs of an image (self pair included), the per-image losses are

.. math::

    \\mathcal{L}_{CRF}(S) = \\frac{\\sum_k S_k^\\top W (1 - S_k)}{1^\\top W 1},
    \\qquad
    \\mathcal{L}_{NC}(S) = \\frac{1}{K} \\sum_k \\frac{S_k^\\top W (1 - S_k)}{d^\\top S_k},
    \\quad d = W 1 .

:math:`S_k^\\top W (1 - S_k)` is the affinity mass "cut" by the soft segment ``k``.
``W v`` is computed by fast dense Gaussian filtering (:mod:`weakseg.filtering`: a
bilateral grid for 1–2 image channels, the permutohedral lattice for more, the exact
``N × N`` kernel for tiny images); ``W S`` and ``W 1`` come from **one** filtering call.

**Normalisation.** Tang et al. (ECCV 2018) minimise the raw sum
:math:`\\sum_k S_k^\\top W (1 - S_k)`, which grows with the square of the number of
pixels and needs weights like ``2e-9``. Dividing by the total affinity
:math:`1^\\top W 1` (a positive constant for a given image, so the gradient direction is
unchanged) gives the *fraction of the affinity mass that is cut*: non-negative, at most
1, 0 for a prediction constant over the image, and comparable across image sizes, so a
weight transfers between data sets.

**Gradient.** ``W`` is symmetric and ``W 1`` does not depend on ``S``, so
:math:`\\partial\\, S_k^\\top W S_k / \\partial S_k = 2 W S_k` is taken from the forward
pass: the backward pass costs no second filtering (as in Tang et al.'s rloss code).

References:
    Tang et al., "On regularized losses for weakly-supervised CNN segmentation", ECCV 2018.
    Krähenbühl & Koltun, "Efficient inference in fully connected CRFs with Gaussian edge
    potentials", NIPS 2011.
    Tang et al., "Normalized cut loss for weakly-supervised CNN segmentation", CVPR 2018.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from weakseg.filtering import BACKENDS, bilateral_features, dense_gaussian
from weakseg.losses._utils import check_logits_image, check_reduction, reduce
from weakseg.losses.base import LOSSES

__all__ = ["DenseCRFLoss", "NormalizedCutLoss", "dense_crf_loss", "normalized_cut_loss"]

# Relative guard of the normalized-cut denominator (times 1ᵀW1, so scale-free).
_NCUT_EPS = 1e-6


def _check_options(
    sigma_xy: float, sigma_intensity: float, backend: str, downsample: int | Sequence[int],
    reduction: str,
) -> None:
    for name, value in (("sigma_xy", sigma_xy), ("sigma_intensity", sigma_intensity)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(downsample, int):
        factors: tuple[object, ...] = (downsample,)
    elif isinstance(downsample, Sequence) and not isinstance(downsample, str):
        factors = tuple(downsample)
    else:
        factors = ()
    if not factors or any(isinstance(f, bool) or not isinstance(f, int) or f < 1
                          for f in factors):
        raise ValueError(
            f"downsample must be an integer ≥ 1 (or one per spatial dim), got {downsample!r}"
        )
    check_reduction(reduction)


def _downsample(x: torch.Tensor, factors: tuple[int, ...]) -> torch.Tensor:
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.ndim - 3]
    # ceil_mode: a partial last window averages the pixels it holds
    return pool(x, kernel_size=factors, stride=factors, ceil_mode=True)  # type: ignore[operator]


class _AffinityTerms(torch.autograd.Function):
    """``q_k = S_kᵀ W S_k`` per image and class, and the degrees ``d = W 1``.

    One filtering call on ``[S, 1]``; the backward uses ``∂q_k/∂S_k = 2 W S_k`` (``W``
    symmetric) from the forward pass, so it needs no second filtering.
    """

    @staticmethod
    def forward(ctx, probs: torch.Tensor, features: torch.Tensor,  # type: ignore[override]
                backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        ones = torch.ones_like(probs[:, :1])
        filtered = dense_gaussian(torch.cat([probs, ones], 1), features, backend=backend)
        ws, degree = filtered[:, :-1], filtered[:, -1:]
        ctx.save_for_backward(ws)
        ctx.mark_non_differentiable(degree)
        return (probs * ws).flatten(2).sum(-1), degree

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q: torch.Tensor, grad_degree: torch.Tensor  # type: ignore[override]
                 ) -> tuple[torch.Tensor, None, None]:
        (ws,) = ctx.saved_tensors
        shape = grad_q.shape + (1,) * (ws.ndim - 2)
        return 2 * grad_q.reshape(shape) * ws, None, None


def _cut_terms(
    logits: torch.Tensor, image: torch.Tensor, *, sigma_xy: float, sigma_intensity: float,
    spacing: Sequence[float] | None, backend: str, downsample: int | Sequence[int],
    ignore_background: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image ``(cut (B, C'), association dᵀS (B, C'), total 1ᵀW1 (B,))``."""
    check_logits_image(logits, image)
    dims = logits.ndim - 2
    probs = logits.softmax(dim=1)
    image = image.detach().to(probs.dtype)
    factors = (downsample,) * dims if isinstance(downsample, int) else tuple(downsample)
    if len(factors) != dims:
        raise ValueError(f"downsample needs one factor per spatial dim ({dims}), got {factors}")
    if spacing is not None and len(spacing) != dims:
        raise ValueError(f"spacing needs one value per spatial dim ({dims}), got {spacing}")
    if any(f > 1 for f in factors):
        probs, image = _downsample(probs, factors), _downsample(image, factors)
        # pooled pixels are `factor` original pixels apart: σ_xy keeps its original units
        spacing = [f * s for f, s in zip(factors, spacing or (1.0,) * dims, strict=True)]
    features = bilateral_features(image, sigma_xy=sigma_xy, sigma_intensity=sigma_intensity,
                                  spacing=spacing)
    within, degree = _AffinityTerms.apply(probs, features, backend)
    association = (probs * degree).flatten(2).sum(-1)  # d^T S_k
    cut = association - within  # S_k^T W (1 - S_k)
    total = degree.flatten(1).sum(-1)  # 1^T W 1
    if ignore_background:
        cut, association = cut[:, 1:], association[:, 1:]
    return cut, association, total


def dense_crf_loss(
    logits: torch.Tensor,
    image: torch.Tensor,
    *,
    sigma_xy: float = 5.0,
    sigma_intensity: float = 0.1,
    spacing: Sequence[float] | None = None,
    backend: str = "auto",
    downsample: int | Sequence[int] = 1,
    ignore_background: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Normalised dense CRF (Potts) loss: the fraction of affinity mass cut by ``S``.

    .. math::

        \\mathcal{L}(S) = \\frac{\\sum_k S_k^\\top W (1 - S_k)}{1^\\top W 1} \\in [0, 1],
        \\quad S = \\mathrm{softmax}(z)

    per image, with the bilateral Gaussian affinity ``W`` over all pixel pairs. This
    equals Tang et al.'s (ECCV 2018) dense CRF loss divided by the positive,
    prediction-independent constant ``1ᵀW1``; it is 0 for a prediction constant over the
    image and keeps its scale across image sizes (see the module docstring).

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (1–3 spatial dims).
        image: ``(B, K, *spatial)`` the network's input image, typically in [0, 1]
            (treated as data: no gradient flows into it).
        sigma_xy: spatial bandwidth in pixels (in the units of ``spacing`` if given).
        sigma_intensity: intensity bandwidth in image units.
        spacing: physical pixel size per spatial dim (e.g. mm), default 1.
        backend: filtering backend, one of :data:`weakseg.filtering.BACKENDS`.
        downsample: speed knob; average-pool probabilities and image by this factor
            (one int, or one per spatial dim) before filtering. ``sigma_xy`` stays in
            original pixels. About ``factor^D`` times fewer pixels to filter.
        ignore_background: leave class 0 out of the sum over ``k``.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for ``(B,)``.

    Returns:
        The loss: a scalar, or ``(B,)`` for ``"none"``.

    Shape:
        logits ``(B, C, *spatial)``, image ``(B, K, *spatial)``; output scalar or ``(B,)``.

    Example:
        >>> logits = torch.randn(2, 4, 32, 32, requires_grad=True)
        >>> image = torch.rand(2, 1, 32, 32)
        >>> loss = dense_crf_loss(logits, image, sigma_xy=5.0, sigma_intensity=0.1)
        >>> loss.backward()
        >>> 0.0 <= float(loss.detach()) <= 1.0
        True
    """
    _check_options(sigma_xy, sigma_intensity, backend, downsample, reduction)
    cut, _, total = _cut_terms(
        logits, image, sigma_xy=sigma_xy, sigma_intensity=sigma_intensity, spacing=spacing,
        backend=backend, downsample=downsample, ignore_background=ignore_background,
    )
    # clamp: rounding can leave -1e-8 where the cut is 0
    return reduce((cut.sum(1) / total).clamp_min(0), reduction)


def normalized_cut_loss(
    logits: torch.Tensor,
    image: torch.Tensor,
    *,
    sigma_xy: float = 5.0,
    sigma_intensity: float = 0.1,
    spacing: Sequence[float] | None = None,
    backend: str = "auto",
    downsample: int | Sequence[int] = 1,
    ignore_background: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Normalized cut loss (Tang et al., CVPR 2018), averaged over classes.

    .. math::

        \\mathcal{L}(S) = \\frac{1}{K} \\sum_k
            \\frac{S_k^\\top W (1 - S_k)}{d^\\top S_k + \\epsilon\\, 1^\\top W 1}
            \\in [0, 1], \\quad d = W 1

    per image; ``K`` counts the classes in the sum (``C``, or ``C − 1`` with
    ``ignore_background``). Each term is the cut of segment ``k`` relative to its
    association ``dᵀS_k``, so it is in [0, 1]; the guard ``ε = 1e-6`` (relative to the
    total affinity) keeps an empty class at ~0 instead of 0/0. Note that a class with a
    small but uniform soft mass (say ``s^k = 10⁻³`` everywhere) has a cut equal to nearly
    all of its association, so it adds ≈ ``1/K``: that is the normalized cut of a soft
    segment, and its gradient pushes such a class's mass into coherent regions or to 0.

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (1–3 spatial dims).
        image: ``(B, K, *spatial)`` the network's input image, typically in [0, 1].
        sigma_xy, sigma_intensity, spacing, backend, downsample, ignore_background,
        reduction: as in :func:`dense_crf_loss`.

    Returns:
        The loss: a scalar, or ``(B,)`` for ``"none"``.

    Shape:
        logits ``(B, C, *spatial)``, image ``(B, K, *spatial)``; output scalar or ``(B,)``.

    Example:
        >>> logits = torch.randn(2, 3, 16, 16)
        >>> image = torch.rand(2, 1, 16, 16)
        >>> normalized_cut_loss(logits, image, reduction="none").shape
        torch.Size([2])
    """
    _check_options(sigma_xy, sigma_intensity, backend, downsample, reduction)
    cut, association, total = _cut_terms(
        logits, image, sigma_xy=sigma_xy, sigma_intensity=sigma_intensity, spacing=spacing,
        backend=backend, downsample=downsample, ignore_background=ignore_background,
    )
    ratio = cut / (association + _NCUT_EPS * total[:, None])
    per_image = ratio.sum(1) / max(cut.shape[1], 1)
    return reduce(per_image.clamp_min(0), reduction)


class _CRFLossBase(nn.Module):
    """Stores the shared hyper-parameters; validates them once at construction."""

    inputs = ("image",)

    def __init__(
        self,
        *,
        sigma_xy: float = 5.0,
        sigma_intensity: float = 0.1,
        spacing: Sequence[float] | None = None,
        backend: str = "auto",
        downsample: int | Sequence[int] = 1,
        ignore_background: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_options(sigma_xy, sigma_intensity, backend, downsample, reduction)
        self.sigma_xy = sigma_xy
        self.sigma_intensity = sigma_intensity
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.backend = backend
        self.downsample = downsample if isinstance(downsample, int) else tuple(downsample)
        self.ignore_background = ignore_background
        self.reduction = reduction

    def _options(self) -> dict[str, Any]:
        return {
            "sigma_xy": self.sigma_xy, "sigma_intensity": self.sigma_intensity,
            "spacing": self.spacing, "backend": self.backend, "downsample": self.downsample,
            "ignore_background": self.ignore_background, "reduction": self.reduction,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options().items())


@LOSSES.register("dense_crf", help="dense CRF loss over all pixel pairs, normalised (R3)")
class DenseCRFLoss(_CRFLossBase):
    """Module form of :func:`dense_crf_loss` (stores hyper-parameters only).

    Example:
        >>> loss = DenseCRFLoss(sigma_xy=5.0, sigma_intensity=0.1)
        >>> loss(torch.randn(2, 4, 16, 16), image=torch.rand(2, 1, 16, 16)).shape
        torch.Size([])
    """

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return dense_crf_loss(logits, image, **self._options())


@LOSSES.register("normalized_cut", help="normalized cut loss over all pixel pairs (R4)")
class NormalizedCutLoss(_CRFLossBase):
    """Module form of :func:`normalized_cut_loss` (stores hyper-parameters only).

    Example:
        >>> loss = NormalizedCutLoss(sigma_xy=5.0, sigma_intensity=0.1)
        >>> loss(torch.randn(2, 4, 16, 16), image=torch.rand(2, 1, 16, 16)).shape
        torch.Size([])
    """

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return normalized_cut_loss(logits, image, **self._options())
