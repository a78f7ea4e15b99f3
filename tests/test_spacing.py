"""Spacing-aware slices: resampled to a spacing in mm (aspect kept), centred on a canvas,
predicted by sliding windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from weakseg.data.base import IGNORE_INDEX, Volume
from weakseg.data.slices import (
    build_slices,
    center_canvas,
    median_spacing,
    spacing_shape,
    to_spacing,
)
from weakseg.engine.inference import predict_probabilities
from weakseg.errors import WeaksegError


def _vol(shape=(2, 20, 40), spacing=(8.0, 1.0, 1.0), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.int64)
    label[:, 5:15, 10:30] = 1
    return Volume(key=f"v{seed}", group=f"v{seed}", image=rng.random(shape).astype(np.float32),
                  label=label, annotations={"weak": np.where(label > 0, 1, IGNORE_INDEX)},
                  spacing=spacing)


def test_spacing_shape_and_canvas():
    assert spacing_shape((20, 40), (1.0, 1.0), (2.0, 2.0)) == (10, 20)
    assert spacing_shape((20, 40), (1.0, 0.5), (1.0, 1.0)) == (20, 20)
    x = torch.arange(6.0).reshape(1, 2, 3)
    padded = center_canvas(x, 5, -1.0)
    assert padded.shape == (1, 5, 5) and padded[0, 1:3, 1:4].tolist() == x[0].tolist()
    assert (padded == -1).sum() == 25 - 6
    big = torch.arange(100.0).reshape(10, 10)
    np.testing.assert_array_equal(center_canvas(big, 4, 0.0), big[3:7, 3:7])


def test_to_spacing_keeps_aspect_and_pads_labels_as_told():
    vol = _vol()  # 20 × 40 pixels of 1 mm
    x, (weak, full) = to_spacing(vol, (2.0, 2.0), 32, [vol.annotations["weak"], vol.label],
                                 [IGNORE_INDEX, 0])
    assert x.shape == (2, 1, 32, 32) and weak.shape == full.shape == (2, 32, 32)
    # 10 × 20 image in the middle: rows 11..20, columns 6..25
    assert (full[:, :11] == 0).all() and (weak[:, :11] == IGNORE_INDEX).all()
    assert (x[:, :, :11] == 0).all()
    assert int((full[0] == 1).sum()) == 5 * 10  # the 10 × 20 mm box at 2 mm


def test_median_spacing_and_missing_spacing():
    vols = [_vol(spacing=(5, s, s), seed=i) for i, s in enumerate((0.7, 0.8, 1.2))]
    assert median_spacing(vols) == (0.8, 0.8)
    with pytest.raises(WeaksegError, match="needs the voxel spacing of each volume"):
        median_spacing([_vol(spacing=None)])


def test_build_slices_with_spacing():
    data = build_slices([_vol()], annotation="weak", num_classes=2, size=32, spacing=(2.0, 2.0),
                        priors=["tags"])
    assert data.images.shape == (2, 1, 32, 32)
    assert int((data.targets != IGNORE_INDEX).sum()) == 2 * 5 * 10
    assert data.extras["tags"].tolist() == [[True, True], [True, True]]


def test_sliding_windows_match_whole_image_for_a_pointwise_net():
    """Windows of 16 over a 20 × 40 slice, Gaussian-blended: a per-pixel network gives the
    same softmax as on the whole image."""
    torch.manual_seed(0)
    net = nn.Conv2d(1, 3, 1)
    vol = _vol()
    windowed = predict_probabilities(net, vol, size=32, spacing=(1.0, 1.0), roi=16)
    from weakseg.data.slices import volume_to_input

    with torch.no_grad():
        whole = net(volume_to_input(vol)).softmax(1).movedim(1, 0).numpy()
    np.testing.assert_allclose(windowed, whole, atol=1e-5)
    coarse = predict_probabilities(net, vol, size=32, spacing=(2.0, 2.0), roi=16)
    assert coarse.shape == (3, 2, 20, 40)  # back on the volume's own grid


def test_z_windows_and_3d_samples():
    from weakseg.data.slices import build_volumes, z_windows

    assert z_windows(4, 3) == [0]
    assert z_windows(4, 4) == [0]
    assert z_windows(4, 9) == [0, 2, 4, 5]
    vol = _vol(shape=(3, 20, 40))
    data = build_volumes([vol], annotation="weak", num_classes=2, size=16, depth=4)
    assert data.images.shape == (1, 1, 4, 16, 16) and data.targets.shape == (1, 4, 16, 16)
    assert (data.targets[0, 3] == IGNORE_INDEX).all() and (data.images[0, 0, 3] == 0).all()


def test_3d_sliding_windows_match_whole_volume_for_a_pointwise_net():
    torch.manual_seed(0)
    net = nn.Conv3d(1, 3, 1)
    vol = _vol(shape=(6, 20, 40))
    got = predict_probabilities(net, vol, size=32, spacing=(1.0, 1.0), roi=16, spatial_dims=3,
                                patch_depth=4)
    from weakseg.data.slices import volume_to_input

    with torch.no_grad():
        whole = net(volume_to_input(vol).movedim(0, 1)[None]).softmax(1)[0].numpy()
    np.testing.assert_allclose(got, whole, atol=1e-5)
