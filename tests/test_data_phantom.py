"""Tests for the synthetic cardiac phantom data set (``weakseg.data.phantom``)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from weakseg.data import DATASETS, IGNORE_INDEX, VolumeSet
from weakseg.data.phantom import load_phantom
from weakseg.errors import WeaksegError


@pytest.fixture(scope="module")
def phantom() -> VolumeSet:
    return load_phantom()


def test_registered() -> None:
    assert DATASETS.get("phantom") is load_phantom


def test_structure(phantom: VolumeSet) -> None:
    assert phantom.class_names == ["background", "RV", "Myo", "LV"]
    assert phantom.num_classes == 4
    assert phantom.in_channels == 1
    assert len(phantom.volumes) == 12
    keys = [v.key for v in phantom.volumes]
    assert keys == [f"phantom_{i:03d}" for i in range(12)]
    for v in phantom.volumes:
        assert v.group == v.key
        assert v.image.shape == (8, 64, 64)
        assert v.image.dtype == np.float32
        assert v.label is not None
        assert v.label.shape == (8, 64, 64)
        assert v.label.dtype == np.int64
        assert set(np.unique(v.label).tolist()) <= {0, 1, 2, 3}
        assert v.spacing is not None and len(v.spacing) == 3
        scribble = v.annotations["scribble"]
        assert scribble.shape == v.label.shape
        assert scribble.dtype == np.int64


def test_image_finite_in_unit_range(phantom: VolumeSet) -> None:
    for v in phantom.volumes:
        assert np.all(np.isfinite(v.image))
        assert v.image.min() >= 0.0
        assert v.image.max() <= 1.0
        assert v.image.std() > 0.05


def test_mid_slice_has_all_classes(phantom: VolumeSet) -> None:
    for v in phantom.volumes:
        assert v.label is not None
        mid = v.label[v.label.shape[0] // 2]
        assert set(np.unique(mid).tolist()) == {0, 1, 2, 3}, v.key


def test_heart_shrinks_toward_apex(phantom: VolumeSet) -> None:
    for v in phantom.volumes:
        assert v.label is not None
        heart = (v.label > 0).sum(axis=(1, 2))
        assert heart[0] > heart[-1] > 0
        assert np.all((v.label == 3).sum(axis=(1, 2)) > 0)  # LV in every slice


def test_contrast(phantom: VolumeSet) -> None:
    for v in phantom.volumes:
        assert v.label is not None
        lv = v.image[v.label == 3].mean()
        myo = v.image[v.label == 2].mean()
        rv = v.image[v.label == 1].mean()
        assert lv > myo + 0.2
        assert rv > myo + 0.2
    # Intensity alone is not enough: some background is as bright as the blood pool.
    v = phantom.volumes[0]
    assert v.label is not None
    bright_bg = (v.image > np.median(v.image[v.label == 3])) & (v.label == 0)
    assert bright_bg.sum() > 50


def test_scribbles_inside_their_classes(phantom: VolumeSet) -> None:
    coverage = []
    for v in phantom.volumes:
        assert v.label is not None
        s = v.annotations["scribble"]
        marked = s != IGNORE_INDEX
        np.testing.assert_array_equal(s[marked], v.label[marked])
        coverage.append(marked.mean())
        for z in range(s.shape[0]):
            assert set(np.unique(s[z][marked[z]]).tolist()) == set(np.unique(v.label[z]).tolist())
    assert 0.001 < float(np.mean(coverage)) < 0.05


def test_deterministic_by_seed(phantom: VolumeSet) -> None:
    again = load_phantom(num_volumes=3)
    other = load_phantom(num_volumes=3, seed=1)
    for a, b, c in zip(phantom.volumes, again.volumes, other.volumes, strict=False):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.annotations["scribble"], b.annotations["scribble"])
        assert not np.array_equal(a.image, c.image)
        assert not np.array_equal(a.label, c.label)


def test_volumes_differ(phantom: VolumeSet) -> None:
    a, b = phantom.volumes[0], phantom.volumes[1]
    assert not np.array_equal(a.label, b.label)


def test_parameters() -> None:
    vs = load_phantom(num_volumes=2, size=96, slices=5, seed=3, noise=0.0)
    assert len(vs.volumes) == 2
    for v in vs.volumes:
        assert v.image.shape == (5, 96, 96)
        assert v.label is not None
        assert set(np.unique(v.label[2]).tolist()) == {0, 1, 2, 3}
    single = load_phantom(num_volumes=1, slices=1)
    assert single.volumes[0].image.shape == (1, 64, 64)


def test_fast() -> None:
    load_phantom(num_volumes=1)  # warm up imports
    start = time.perf_counter()
    load_phantom()
    assert time.perf_counter() - start < 3.0  # about 0.3 s; generous for slow CI


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_volumes": 0},
        {"size": 8},
        {"slices": 0},
        {"seed": -1},
        {"noise": -0.1},
        {"noise": float("nan")},
    ],
)
def test_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(WeaksegError):
        load_phantom(**kwargs)
