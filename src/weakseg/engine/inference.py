"""Slice-wise prediction of whole volumes at their original size.

In the square geometry each slice is normalised and resized to the training size. With a
training ``spacing`` (``data.spacing``) each slice is resampled to that spacing instead
(aspect ratio kept) and predicted by sliding windows of the training patch size (``roi``)
with Gaussian weighting (MONAI's ``sliding_window_inference``, overlap 0.5). Either way the
softmax is resized back (bilinear) to the slice's own grid, and the arg-max is the label
map. With ``tta`` the softmax is averaged over the four flips of the slice (none, vertical,
horizontal, both), each flipped back before averaging. With ``keep_largest`` (``weakseg
predict`` / ``evaluate --largest-component``) the label map keeps only the largest connected
component of every foreground class (:func:`largest_component`; the knowledge prior of
METHODS.md C14 as post-processing).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from weakseg.constrain.knowledge import largest_components
from weakseg.data.base import Volume
from weakseg.data.intensity import Normalization
from weakseg.data.slices import in_plane_spacing, resize_image, spacing_shape, volume_to_input

__all__ = ["FLIPS", "checkpoint_geometry", "largest_component", "predict_probabilities",
           "predict_volume"]

#: Test-time augmentation: the in-plane axes of a ``(B, C, [D,] H, W)`` batch flipped in turn.
FLIPS: tuple[tuple[int, ...], ...] = ((), (-2,), (-1,), (-2, -1))


def checkpoint_geometry(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``size``, ``spacing`` and ``roi`` a checkpoint was trained with, as keyword arguments
    of :func:`predict_probabilities` (older checkpoints: the square geometry)."""
    spacing = ckpt.get("spacing")
    return {"size": int(ckpt["size"]), "spacing": tuple(spacing) if spacing else None,
            "roi": ckpt.get("roi"), "spatial_dims": int(ckpt.get("spatial_dims", 2)),
            "patch_depth": ckpt.get("patch_depth"), "normalization": ckpt.get("normalization")}


def _softmax(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    if not tta:
        return model(x).softmax(dim=1)
    total = torch.zeros(())
    for dims in FLIPS:
        xf = x.flip(dims) if dims else x
        p = model(xf).softmax(dim=1)
        total = total + (p.flip(dims) if dims else p)
    return total / len(FLIPS)


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    volume: Volume,
    *,
    size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    tta: bool = False,
    spacing: tuple[float, float] | None = None,
    roi: int | None = None,
    spatial_dims: int = 2,
    patch_depth: int | None = None,
    normalization: dict[str, Any] | None = None,
) -> np.ndarray:
    """Class probabilities ``(C, Z, H, W)`` float32 on ``volume``'s own grid.

    ``spacing`` (``(y, x)`` mm) and ``roi`` (the training patch size, default ``size``)
    select the spacing-aware geometry (see the module docstring). ``spatial_dims=3``: the
    volume (in-plane resized or resampled alike) is predicted by 3D sliding windows of
    ``patch_depth × roi × roi``."""
    was_training = model.training
    model.eval()
    x = volume_to_input(volume, Normalization.from_dict(normalization))
    h, w = x.shape[-2:]
    if spacing is None:
        shape = (size, size)
    else:
        shape = spacing_shape((h, w), in_plane_spacing(volume, "this checkpoint"), spacing)
    window = roi or size

    def softmax(t: torch.Tensor) -> torch.Tensor:  # (N, K, [D,] H', W') → (N, C, ...)
        if spatial_dims == 2 and spacing is None:
            return _softmax(model, t, tta)
        roi_size = (window, window) if spatial_dims == 2 else (
            patch_depth or t.shape[2], window, window)
        return cast(torch.Tensor, sliding_window_inference(
            t, roi_size, batch_size, lambda u: _softmax(model, u, tta), overlap=0.5,
            mode="gaussian"))

    try:
        if spatial_dims == 3:  # the whole volume as one (1, K, Z, H', W') input
            vol = resize_image(x, shape).movedim(0, 1)[None].to(device)
            chunks = [softmax(vol)[0].movedim(1, 0)]  # (Z, C, H', W')
        else:
            chunks = [softmax(resize_image(x[i : i + batch_size], shape).to(device))
                      for i in range(0, x.shape[0], batch_size)]
        probs = torch.cat([resize_image(c, (h, w)).float().cpu() for c in chunks])
    finally:
        model.train(was_training)
    return probs.movedim(1, 0).numpy()


@torch.no_grad()
def predict_volume(
    model: nn.Module, volume: Volume, *, keep_largest: bool = False, **options: Any
) -> np.ndarray:
    """Predict a ``(Z, H, W)`` uint8 class map for ``volume``: the arg-max of
    :func:`predict_probabilities` with the same ``options`` (``size``, ``device``, ``tta``,
    the geometry of :func:`checkpoint_geometry`, ...); with ``keep_largest`` only the
    largest 3D connected component of every foreground class is kept
    (:func:`largest_component`)."""
    pred = predict_probabilities(model, volume, **options).argmax(axis=0).astype(np.uint8)
    return largest_component(pred) if keep_largest else pred


def largest_component(
    labels: np.ndarray, classes: Iterable[int] | None = None, *, connectivity: int = 1,
    background: int = 0,
) -> np.ndarray:
    """Keep the largest connected component of each class of a label map; the pixels of its
    other components become ``background``.

    The post-processing form of the one-component prior (METHODS.md C14; the constraint
    form is :func:`weakseg.constrain.knowledge.one_component_constraints`), as in nnU-Net's
    "keep the largest component". Components span the whole array: a ``(Z, H, W)`` volume
    is analysed in 3D.

    Args:
        labels: integer label map, 1-3 axes (not modified).
        classes: the classes to clean; default every class present but ``background``.
        connectivity: 1 (faces: 4-neighbours in 2D, 6 in 3D) up to ``labels.ndim``.
        background: the label given to the removed pixels.

    Returns:
        A new label map of the same shape and dtype.

    Example:
        >>> largest_component(np.array([[1, 1, 0, 1, 2]])).tolist()
        [[1, 1, 0, 0, 2]]
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or not 1 <= labels.ndim <= 3:
        raise ValueError(f"labels must be an integer label map with 1-3 axes, got "
                         f"{labels.dtype} {labels.shape}")
    chosen = ([int(k) for k in np.unique(labels) if k != background] if classes is None
              else [int(k) for k in classes])
    out = labels.copy()
    if not chosen:
        return out
    masks = labels[None] == np.asarray(chosen).reshape(-1, *[1] * labels.ndim)
    keep = largest_components(masks, connectivity=connectivity)
    out[(masks & ~keep).any(axis=0)] = background
    return out
