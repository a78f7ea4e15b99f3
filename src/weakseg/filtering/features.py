"""Feature spaces for dense Gaussian filtering, and the checks every backend shares.

A dense Gaussian filter computes, for every pixel ``i`` of an image,

.. math::

    (W v)_i = \\sum_{j \\in \\Omega} \\exp\\big(-\\tfrac12 \\lVert f_i - f_j \\rVert^2\\big)\\, v_j

over **all** pixel pairs (the self pair included, :math:`w_{ii} = 1`), where the
features :math:`f` are already divided by their bandwidths. For the bilateral kernel of
Krähenbühl & Koltun (NIPS 2011) the features are the pixel position over
:math:`\\sigma_{xy}` and the intensity over :math:`\\sigma_I`
(:func:`bilateral_features`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["bilateral_features", "check_values_features"]


def _check_sigma(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_values_features(values: torch.Tensor, features: torch.Tensor) -> None:
    """Check ``values (B, C, *spatial)`` and ``features (B, F, *spatial)`` (1–3 spatial dims)."""
    if values.ndim < 3 or values.ndim > 5:
        raise ValueError(
            f"values must be (B, C, *spatial) with 1-3 spatial dims, got {tuple(values.shape)}"
        )
    if features.ndim != values.ndim:
        raise ValueError(
            f"features {tuple(features.shape)} must be (B, F, *spatial) like values "
            f"{tuple(values.shape)}"
        )
    if features.shape[0] != values.shape[0] or features.shape[2:] != values.shape[2:]:
        raise ValueError(
            f"features {tuple(features.shape)} and values {tuple(values.shape)} differ in "
            "batch size or spatial shape"
        )
    if features.shape[1] < 1:
        raise ValueError(f"features need at least one channel, got {tuple(features.shape)}")
    if not values.dtype.is_floating_point:
        raise ValueError(f"values must be a floating-point tensor, got {values.dtype}")


def bilateral_features(
    image: torch.Tensor,
    *,
    sigma_xy: float,
    sigma_intensity: float,
    spacing: Sequence[float] | None = None,
) -> torch.Tensor:
    """Bilateral feature map: pixel coordinates over ``sigma_xy``, then intensities.

    .. math::

        f_p = \\Big(\\frac{p \\odot \\text{spacing}}{\\sigma_{xy}},\\;
                   \\frac{I_p}{\\sigma_I}\\Big)

    Args:
        image: ``(B, K, *spatial)`` image with ``K`` channels and 1–3 spatial dims.
        sigma_xy: spatial bandwidth, in pixels (or in the units of ``spacing``).
        sigma_intensity: intensity bandwidth, in image units (e.g. 0.1 for [0, 1] images).
        spacing: physical size of a pixel along each spatial dim (e.g. mm); default 1.

    Returns:
        ``(B, D + K, *spatial)`` features in the image's floating dtype, ``D`` = spatial dims.

    Shape:
        image ``(B, K, *spatial)`` → ``(B, D + K, *spatial)``.

    Example:
        >>> image = torch.rand(2, 1, 16, 16)
        >>> bilateral_features(image, sigma_xy=5.0, sigma_intensity=0.1).shape
        torch.Size([2, 3, 16, 16])
    """
    _check_sigma("sigma_xy", sigma_xy)
    _check_sigma("sigma_intensity", sigma_intensity)
    if image.ndim < 3 or image.ndim > 5:
        raise ValueError(
            f"image must be (B, K, *spatial) with 1-3 spatial dims, got {tuple(image.shape)}"
        )
    spatial = image.shape[2:]
    dims = len(spatial)
    if spacing is None:
        spacing = (1.0,) * dims
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != dims or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing must hold {dims} positive numbers (one per spatial dim), got {spacing}"
        )
    dtype = image.dtype if image.dtype.is_floating_point else torch.get_default_dtype()
    axes = [
        torch.arange(n, device=image.device, dtype=dtype) * (s / sigma_xy)
        for n, s in zip(spatial, spacing, strict=True)
    ]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (D, *spatial)
    coords = coords.unsqueeze(0).expand(image.shape[0], *coords.shape)
    return torch.cat([coords, image.to(dtype) / sigma_intensity], dim=1)
