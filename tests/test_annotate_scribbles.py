"""Tests for the seeded scribble simulator (``weakseg.annotate.scribbles``)."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.annotate import ANNOTATORS
from weakseg.annotate.scribbles import simulate_scribbles
from weakseg.data.base import IGNORE_INDEX
from weakseg.errors import WeaksegError


def heart_slice(size: int = 64, shift: int = 0) -> np.ndarray:
    """A cardiac-like 2D mask: LV disk (3) in a myocardium ring (2), RV crescent (1)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2 - 2 - shift)
    lab = np.zeros((size, size), dtype=np.int64)
    lab[r < 0.22 * size] = 2
    lab[r < 0.14 * size] = 3
    rv = np.hypot((yy - size / 2) / 1.6, xx - 0.3 * size - shift) < 0.19 * size
    lab[rv & (r >= 0.22 * size)] = 1
    return lab


def heart_volume() -> np.ndarray:
    vol = np.stack([heart_slice(shift=s) for s in (-3, 0, 3, 5)])
    vol[3][vol[3] == 1] = 0  # apex slice without RV
    return vol


def check_inside(label: np.ndarray, scribble: np.ndarray) -> None:
    marked = scribble != IGNORE_INDEX
    assert marked.any()
    np.testing.assert_array_equal(scribble[marked], label[marked])


def test_registered() -> None:
    assert ANNOTATORS.get("scribble") is simulate_scribbles


def test_shape_dtype_and_values_3d() -> None:
    label = heart_volume()
    out = simulate_scribbles(label, num_classes=4, seed=0)
    assert out.shape == label.shape
    assert out.dtype == np.int64
    assert set(np.unique(out).tolist()) <= {IGNORE_INDEX, 0, 1, 2, 3}


def test_2d_input_gives_2d_output() -> None:
    label = heart_slice()
    out = simulate_scribbles(label, num_classes=4, seed=3)
    assert out.shape == label.shape
    check_inside(label, out)
    assert set(np.unique(out[out >= 0]).tolist()) == {0, 1, 2, 3}


def test_same_seed_identical_different_seed_differs() -> None:
    label = heart_volume()
    a = simulate_scribbles(label, num_classes=4, seed=7)
    b = simulate_scribbles(label, num_classes=4, seed=7)
    c = simulate_scribbles(label, num_classes=4, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_does_not_touch_global_rng() -> None:
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    simulate_scribbles(heart_volume(), num_classes=4, seed=1)
    assert np.random.random() == expected


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_labels_are_correct_and_present_classes_scribbled(seed: int) -> None:
    label = heart_volume()
    out = simulate_scribbles(label, num_classes=4, seed=seed)
    check_inside(label, out)
    for z in range(label.shape[0]):
        present = set(np.unique(label[z]).tolist())
        scribbled = set(np.unique(out[z][out[z] >= 0]).tolist())
        assert scribbled == present, (z, present, scribbled)


def test_absent_class_gets_no_scribble() -> None:
    label = heart_volume()
    out = simulate_scribbles(label, num_classes=5, seed=0)  # class 4 never occurs
    assert not np.any(out == 4)
    assert not np.any(out[3] == 1)  # no RV in the apex slice


def test_scribbles_keep_away_from_borders() -> None:
    label = heart_slice()
    out = simulate_scribbles(label, num_classes=4, seed=0, erosion=2)
    for c in range(4):
        # Every scribbled pixel has at least one pixel of its class on each side.
        ys, xs = np.nonzero(out == c)
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            y, x = ys + dy, xs + dx
            ok = (y >= 0) & (y < label.shape[0]) & (x >= 0) & (x < label.shape[1])
            assert ok.all()
            assert np.all(label[y, x] == c)


def test_coverage_is_sparse() -> None:
    label = heart_volume()
    for seed in range(5):
        out = simulate_scribbles(label, num_classes=4, seed=seed)
        coverage = float(np.mean(out != IGNORE_INDEX))
        assert 0.001 < coverage < 0.10, coverage


def test_scribbles_are_thin_connected_lines() -> None:
    from scipy import ndimage

    label = heart_slice()
    out = simulate_scribbles(label, num_classes=4, seed=0)
    for c in range(4):
        line = out == c
        _, n = ndimage.label(line, structure=np.ones((3, 3)))
        assert n == 1  # one component per class region here
        # Thin: a one-pixel line has no 2x2 block of marked pixels... almost never.
        blocks = line[:-1, :-1] & line[1:, :-1] & line[:-1, 1:] & line[1:, 1:]
        assert blocks.sum() <= 1


def test_fraction_and_width() -> None:
    label = heart_volume()
    full = simulate_scribbles(label, num_classes=4, seed=0)
    short = simulate_scribbles(label, num_classes=4, seed=0, fraction=0.3)
    wide = simulate_scribbles(label, num_classes=4, seed=0, width=3)
    n_full, n_short, n_wide = ((x != IGNORE_INDEX).sum() for x in (full, short, wide))
    assert n_short < 0.5 * n_full
    assert n_wide > 1.5 * n_full
    check_inside(label, short)
    check_inside(label, wide)


def test_zero_fraction_gives_no_scribble() -> None:
    out = simulate_scribbles(heart_volume(), num_classes=4, seed=0, fraction=0.0)
    assert np.all(out == IGNORE_INDEX)


def test_classes_subset() -> None:
    label = heart_volume()
    out = simulate_scribbles(label, num_classes=4, seed=0, classes=[1, 3])
    assert set(np.unique(out).tolist()) == {IGNORE_INDEX, 1, 3}


def test_tiny_region_falls_back_to_less_erosion() -> None:
    label = np.zeros((20, 20), dtype=np.int64)
    label[5:7, 5:8] = 1  # 2x3 region vanishes under any erosion
    out = simulate_scribbles(label, num_classes=2, seed=0, erosion=3)
    assert np.any(out == 1)
    check_inside(label, out)


def test_float_integer_labels_accepted() -> None:
    label = heart_slice().astype(np.float32)
    out = simulate_scribbles(label, num_classes=4, seed=0)
    check_inside(label.astype(np.int64), out)


@pytest.mark.parametrize(
    ("label", "kwargs", "match"),
    [
        (np.zeros(10, dtype=np.int64), {}, "shape"),
        (np.zeros((2, 2, 4, 4), dtype=np.int64), {}, "shape"),
        (np.zeros((0, 4), dtype=np.int64), {}, "empty"),
        (np.full((4, 4), -1), {}, "negative"),
        (np.full((4, 4), 4), {}, "num_classes"),
        (np.full((4, 4), 0.5), {}, "non-integer"),
        (np.zeros((4, 4), dtype=np.int64), {"num_classes": 0}, "num_classes"),
        (np.zeros((4, 4), dtype=np.int64), {"seed": -1}, "seed"),
        (np.zeros((4, 4), dtype=np.int64), {"classes": [5]}, "classes"),
        (np.zeros((4, 4), dtype=np.int64), {"width": 0}, "width"),
        (np.zeros((4, 4), dtype=np.int64), {"erosion": -1}, "erosion"),
        (np.zeros((4, 4), dtype=np.int64), {"fraction": -0.1}, "fraction"),
        (np.zeros((4, 4), dtype=np.int64), {"fraction": 1.5}, "fraction"),
    ],
)
def test_bad_input_raises(label: np.ndarray, kwargs: dict, match: str) -> None:
    params = {"num_classes": 4, "seed": 0, **kwargs}
    with pytest.raises(WeaksegError, match=match):
        simulate_scribbles(label, **params)
