"""Exact dense Gaussian filtering with the explicit ``N × N`` kernel (the test reference).

.. math::

    (W v)_i = \\sum_{j} \\exp\\big(-\\tfrac12 \\lVert f_i - f_j \\rVert^2\\big)\\, v_j

Cost ``O(N² (F + C))`` time per image; memory is bounded by computing the kernel in row
blocks. Meant for tiny images and as the ground truth the fast backends are tested against.
"""

from __future__ import annotations

import torch

from weakseg.filtering.features import check_values_features

__all__ = ["MAX_EXACT_PIXELS", "dense_gaussian_exact"]

#: Largest image (pixels per image) the exact backend accepts.
MAX_EXACT_PIXELS = 16384
# Kernel entries materialised at once (rows × columns × batch).
_BLOCK_ENTRIES = 1 << 22


def _exact_apply(values: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    b, c = values.shape[:2]
    n = values[0, 0].numel()
    v = values.reshape(b, c, n)
    f = features.reshape(b, features.shape[1], n).to(values.dtype).transpose(1, 2).contiguous()
    out = torch.empty_like(v)
    rows = max(1, _BLOCK_ENTRIES // (b * n))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        # explicit differences (no ‖a‖²+‖b‖²−2ab cancellation), so w_ii = 1 exactly
        d2 = torch.zeros(b, stop - start, n, dtype=f.dtype, device=f.device)
        for k in range(f.shape[2]):
            d2 += (f[:, start:stop, k, None] - f[:, None, :, k]).square()
        kernel = torch.exp(d2.mul_(-0.5))  # (B, rows, N)
        out[:, :, start:stop] = torch.bmm(v, kernel.transpose(1, 2))
    return out.reshape(values.shape)


class _ExactFilter(torch.autograd.Function):
    """``W v`` with ``W`` symmetric, so the backward pass is ``W`` applied to the gradient.

    Nothing but the features is saved (autograd through the kernel would keep ``N²``
    entries per image); the backward calls this Function again, so it is twice differentiable.
    """

    @staticmethod
    def forward(ctx, values: torch.Tensor, features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(features)
        return _exact_apply(values, features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (features,) = ctx.saved_tensors
        return _ExactFilter.apply(grad.contiguous(), features), None


def dense_gaussian_exact(values: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Exact dense Gaussian filter over all pixel pairs of each image.

    Args:
        values: ``(B, C, *spatial)`` values to filter (1–3 spatial dims); differentiable.
        features: ``(B, F, *spatial)`` features already divided by their bandwidths
            (see :func:`~weakseg.filtering.features.bilateral_features`); not differentiated.

    Returns:
        ``out_i = Σ_j exp(-½‖f_i − f_j‖²) v_j``, same shape and dtype as ``values``.

    Raises:
        ValueError: on mismatched shapes, or when an image has more than
            :data:`MAX_EXACT_PIXELS` pixels (use the grid/permutohedral backend).

    Shape:
        values ``(B, C, *spatial)``, features ``(B, F, *spatial)`` → ``(B, C, *spatial)``.

    Example:
        >>> v = torch.ones(1, 1, 1, 2)
        >>> f = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
        >>> dense_gaussian_exact(v, f).flatten()  # 1 + exp(-1/2)
        tensor([1.6065, 1.6065])
    """
    check_values_features(values, features)
    n = values[0, 0].numel()
    if n > MAX_EXACT_PIXELS:
        raise ValueError(
            f"the exact backend builds an N×N kernel; N = {n} pixels per image exceeds "
            f"{MAX_EXACT_PIXELS}: use the grid/permutohedral backend"
        )
    return _ExactFilter.apply(values.contiguous(), features.detach())
