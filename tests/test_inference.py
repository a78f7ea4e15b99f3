"""Prediction: flip test-time augmentation, probabilities, the device option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from weakseg.data.base import Volume
from weakseg.engine.device import resolve_device
from weakseg.engine.inference import FLIPS, predict_probabilities, predict_volume
from weakseg.errors import WeaksegError


def _volume(seed: int = 0, shape=(3, 20, 24)) -> Volume:
    image = np.random.default_rng(seed).random(shape).astype(np.float32)
    return Volume(key="v", group="v", image=image)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))


def test_probabilities_sum_to_one_and_argmax_is_the_label_map():
    vol, net = _volume(), _net()
    probs = predict_probabilities(net, vol, size=16)
    assert probs.shape == (3, *vol.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(predict_volume(net, vol, size=16), probs.argmax(axis=0))


def test_tta_is_the_mean_over_flipped_back_predictions():
    vol, net = _volume(1), _net(1)
    got = predict_probabilities(net, vol, size=16, tta=True)
    # reference: each flip of the resized input, predicted, flipped back, averaged; resized
    from weakseg.data.slices import resize_image, volume_to_input

    x = resize_image(volume_to_input(vol), (16, 16))
    with torch.no_grad():
        ref = sum(net(x.flip(d) if d else x).softmax(1).flip(d) if d else net(x).softmax(1)
                  for d in FLIPS) / 4
    ref = resize_image(ref, vol.shape[1:]).movedim(1, 0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert not np.allclose(got, predict_probabilities(net, vol, size=16), atol=1e-3)


def test_tta_leaves_a_flip_equivariant_model_unchanged():
    torch.manual_seed(0)
    net = nn.Conv2d(1, 3, 1)  # pointwise: commutes with flips
    vol = _volume(2, (2, 16, 16))
    np.testing.assert_allclose(predict_probabilities(net, vol, size=16, tta=True),
                               predict_probabilities(net, vol, size=16), atol=1e-6)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(WeaksegError, match="bad --device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(WeaksegError, match="--device=xla is not supported"):
        resolve_device("xla")
    if not torch.cuda.is_available():
        with pytest.raises(WeaksegError, match="--device=cuda but this torch"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(WeaksegError, match="has no MPS"):
            resolve_device("mps")
