"""Dense Gaussian (bilateral) filtering over all pixel pairs, used by the dense CRF losses.

Every backend computes, per image,

.. math::

    (W v)_i = \\sum_{j \\in \\Omega} \\exp\\big(-\\tfrac12 \\lVert f_i - f_j \\rVert^2\\big)\\, v_j

for ``values (B, C, *spatial)`` and ``features (B, F, *spatial)`` already divided by
their bandwidths (:func:`bilateral_features`), self pair included:

- ``"exact"``: the explicit ``N × N`` kernel (tiny images; the test reference);
- ``"grid"``: a bilateral grid in pure PyTorch, for 2D/3D positions + 1–2 channels;
- ``"permutohedral"``: the permutohedral lattice (Adams et al., 2010) for more features;
- ``"auto"``: exact when ``N ≤ 256``, grid for at most 2 non-spatial (intensity)
  features, else permutohedral (e.g. RGB: a dense 5-D grid costs ~3× the lattice at 128²).
"""

from __future__ import annotations

from typing import Any

import torch

from weakseg.filtering.exact import dense_gaussian_exact
from weakseg.filtering.features import bilateral_features, check_values_features
from weakseg.filtering.grid import dense_gaussian_grid

__all__ = [
    "AUTO_EXACT_MAX_PIXELS",
    "AUTO_GRID_MAX_CHANNELS",
    "BACKENDS",
    "bilateral_features",
    "dense_gaussian",
    "dense_gaussian_exact",
    "dense_gaussian_grid",
    "resolve_backend",
]

#: Backend names accepted by :func:`dense_gaussian`.
BACKENDS = ("auto", "exact", "grid", "permutohedral")
#: ``"auto"`` uses the exact kernel up to this many pixels per image.
AUTO_EXACT_MAX_PIXELS = 256  # the grid is already faster than the N² kernel at 32²
#: ``"auto"`` uses the bilateral grid up to this many non-spatial (intensity) features.
AUTO_GRID_MAX_CHANNELS = 2


def _permutohedral(values: torch.Tensor, features: torch.Tensor, **kw: Any) -> torch.Tensor:
    try:
        from weakseg.filtering.permutohedral import dense_gaussian_permutohedral
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the permutohedral backend is unavailable "
            f"(weakseg.filtering.permutohedral failed to import: {err}); "
            "use backend='grid' (≤ 5 feature channels) or 'exact' (tiny images)"
        ) from err
    return dense_gaussian_permutohedral(values, features, **kw)


def resolve_backend(backend: str, pixels: int, dims: int, spatial: int = 2) -> str:
    """The concrete backend ``"auto"`` picks for ``pixels`` per image, ``dims`` features of
    which ``spatial`` are positions (the rest are intensity channels)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if pixels <= AUTO_EXACT_MAX_PIXELS:
        return "exact"
    if dims - spatial <= AUTO_GRID_MAX_CHANNELS:
        return "grid"
    return "permutohedral"


def dense_gaussian(
    values: torch.Tensor, features: torch.Tensor, *, backend: str = "auto", **kw: Any
) -> torch.Tensor:
    """Dense Gaussian filter ``out_i = Σ_j exp(-½‖f_i − f_j‖²) v_j`` by the chosen backend.

    Args:
        values: ``(B, C, *spatial)`` values (1–3 spatial dims); differentiable.
        features: ``(B, F, *spatial)`` features divided by their bandwidths.
        backend: one of :data:`BACKENDS`.
        **kw: options of the backend (e.g. ``cell`` for ``"grid"``). With ``"auto"``
            they go to the backend it picks, and are dropped when it picks ``"exact"``
            (which has none).

    Returns:
        ``(B, C, *spatial)`` filtered values.

    Raises:
        ValueError: unknown backend or mismatched shapes.

    Shape:
        values ``(B, C, *spatial)``, features ``(B, F, *spatial)`` → ``(B, C, *spatial)``.

    Example:
        >>> image = torch.rand(1, 1, 8, 8)
        >>> f = bilateral_features(image, sigma_xy=3.0, sigma_intensity=0.2)
        >>> dense_gaussian(torch.ones(1, 2, 8, 8), f).shape
        torch.Size([1, 2, 8, 8])
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_values_features(values, features)
    chosen = resolve_backend(backend, values[0, 0].numel(), features.shape[1],
                             values.ndim - 2)
    if chosen == "exact":
        if backend == "auto":
            kw = {}
        return dense_gaussian_exact(values, features, **kw)
    if chosen == "grid":
        return dense_gaussian_grid(values, features, **kw)
    return _permutohedral(values, features, **kw)
