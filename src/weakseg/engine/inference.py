"""Slice-wise prediction of whole volumes at their original size."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from weakseg.data.base import Volume
from weakseg.data.slices import resize_image, volume_to_input

__all__ = ["predict_volume"]


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    volume: Volume,
    *,
    size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """Predict a ``(Z, H, W)`` class map for ``volume``.

    Each slice is normalised and resized to ``size × size`` as in training; the
    class probabilities are resized back (bilinear) before the arg-max, so the
    map has the volume's own geometry.
    """
    was_training = model.training
    model.eval()
    x = volume_to_input(volume)
    h, w = x.shape[-2:]
    out = np.empty((x.shape[0], h, w), dtype=np.uint8)
    for start in range(0, x.shape[0], batch_size):
        chunk = resize_image(x[start : start + batch_size], (size, size)).to(device)
        probs = model(chunk).softmax(dim=1)
        probs = resize_image(probs, (h, w)) if (h, w) != (size, size) else probs
        out[start : start + batch_size] = probs.argmax(dim=1).cpu().numpy().astype(np.uint8)
    model.train(was_training)
    return out
