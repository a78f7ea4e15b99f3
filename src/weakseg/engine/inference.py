"""Slice-wise prediction of whole volumes at their original size.

Each slice is normalised and resized to the training size, the network's softmax is
resized back (bilinear) to the slice's own size, and the arg-max is the label map. With
``tta`` the softmax is averaged over the four flips of the slice (none, vertical,
horizontal, both), each flipped back before averaging.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from weakseg.data.base import Volume
from weakseg.data.slices import resize_image, volume_to_input

__all__ = ["FLIPS", "predict_probabilities", "predict_volume"]

#: Test-time augmentation: the spatial axes of a ``(B, C, H, W)`` batch flipped in turn.
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))


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
) -> np.ndarray:
    """Class probabilities ``(C, Z, H, W)`` float32 on ``volume``'s own grid."""
    was_training = model.training
    model.eval()
    x = volume_to_input(volume)
    h, w = x.shape[-2:]
    chunks = []
    for start in range(0, x.shape[0], batch_size):
        chunk = resize_image(x[start : start + batch_size], (size, size)).to(device)
        probs = _softmax(model, chunk, tta)
        probs = resize_image(probs, (h, w)) if (h, w) != (size, size) else probs
        chunks.append(probs.float().cpu())
    model.train(was_training)
    return torch.cat(chunks).movedim(1, 0).numpy()


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    volume: Volume,
    *,
    size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    tta: bool = False,
) -> np.ndarray:
    """Predict a ``(Z, H, W)`` uint8 class map for ``volume`` (see the module docstring)."""
    probs = predict_probabilities(model, volume, size=size, device=device,
                                  batch_size=batch_size, tta=tta)
    return probs.argmax(axis=0).astype(np.uint8)
