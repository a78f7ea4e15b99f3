"""Prediction: flip test-time augmentation, probabilities, the device option, keeping the
largest connected component per class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from weakseg.data.base import Volume
from weakseg.engine.device import resolve_device
from weakseg.engine.inference import (
    FLIPS,
    largest_component,
    predict_probabilities,
    predict_volume,
)
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


def test_largest_component_keeps_one_blob_per_class_2d():
    labels = np.array([[1, 1, 0, 1, 2],
                       [1, 0, 0, 0, 2],
                       [0, 0, 3, 0, 0],
                       [2, 0, 0, 0, 3]], dtype=np.uint8)
    before = labels.copy()
    out = largest_component(labels)
    np.testing.assert_array_equal(out, [[1, 1, 0, 0, 2],
                                        [1, 0, 0, 0, 2],
                                        [0, 0, 3, 0, 0],      # tie: the first blob of 3
                                        [0, 0, 0, 0, 0]])
    assert out.dtype == labels.dtype and np.array_equal(labels, before)   # input untouched
    only_2 = largest_component(labels, classes=[2], background=9)
    assert only_2[3, 0] == 9 and only_2[0, 3] == 1 and only_2[3, 4] == 3
    labels[3, 3], labels[3, 4] = 3, 0                     # diagonal to (2, 2)
    assert largest_component(labels)[3, 3] == 0
    assert largest_component(labels, connectivity=2)[3, 3] == 3      # 8-neighbours


def test_largest_component_in_3d_joins_slices():
    labels = np.zeros((3, 4, 4), dtype=np.int64)
    labels[0, :2, :2] = labels[1, 1, 1] = labels[2, 1, 1:3] = 1      # 4 + 1 + 2, one blob in 3D
    labels[2, 3, 3] = 1                                               # a stray voxel
    out = largest_component(labels)
    assert out.sum() == 7 and out[2, 3, 3] == 0
    with pytest.raises(ValueError, match="integer label map"):
        largest_component(labels.astype(np.float32))
    assert np.array_equal(largest_component(np.zeros((2, 2), np.uint8)), np.zeros((2, 2)))


def test_predict_volume_keep_largest_cleans_the_arg_max():
    net = nn.Conv2d(1, 3, 1)                       # classes by intensity: speckled blobs
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-10.0, 0.0, 10.0]).view(3, 1, 1, 1))
        net.bias.copy_(torch.tensor([-5.0, 0.0, -5.0]))
    vol = _volume(3)
    raw = predict_volume(net, vol, size=16)
    kept = predict_volume(net, vol, size=16, keep_largest=True)
    np.testing.assert_array_equal(kept, largest_component(raw))
    assert not np.array_equal(kept, raw)
    for k in np.unique(kept)[1:]:          # one 3D blob (face neighbours) per foreground class
        assert ndimage.label(kept == k)[1] == 1
