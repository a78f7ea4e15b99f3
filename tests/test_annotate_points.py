"""Tests for the point and eroded-blob simulators (``weakseg.annotate.points``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from weakseg.annotate.base import ANNOTATORS
from weakseg.annotate.points import simulate_eroded_blobs, simulate_points
from weakseg.data.base import IGNORE_INDEX
from weakseg.errors import WeaksegError


def rings(size: int = 40) -> np.ndarray:
    """2D: a disc (2) inside a ring (1) on background (0)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    lab = np.zeros((size, size), dtype=np.int64)
    lab[r < 0.38 * size] = 1
    lab[r < 0.2 * size] = 2
    return lab


def volume() -> np.ndarray:
    """3D: slice 0 = rings; slice 1 = two separate squares of class 2, no class 1."""
    second = np.zeros((40, 40), dtype=np.int64)
    second[3:12, 4:14] = 2
    second[25:37, 22:35] = 2
    return np.stack([rings(), second])


def check_inside(label: np.ndarray, ann: np.ndarray) -> None:
    marked = ann != IGNORE_INDEX
    assert marked.any()
    np.testing.assert_array_equal(ann[marked], label[marked])


def test_registered() -> None:
    assert ANNOTATORS.get("points") is simulate_points
    assert ANNOTATORS.get("eroded_blobs") is simulate_eroded_blobs


@pytest.mark.parametrize("placement", ["uniform", "centroid"])
def test_points_counts_inside_and_absent(placement: str) -> None:
    label = volume()
    out = simulate_points(label, num_classes=3, seed=0, placement=placement,
                          points_per_structure=3, jitter=0.3)
    assert out.shape == label.shape and out.dtype == np.int64
    check_inside(label, out)
    counts = np.stack([(out == c).sum(axis=(1, 2)) for c in range(3)], axis=1)
    assert counts[1, 1] == 0  # class 1 absent from slice 1
    assert (counts[0] >= 1).all() and (counts[:, 0] >= 1).all()
    assert (counts <= 3).all()
    if placement == "uniform":  # distinct pixels, exactly k
        assert counts[0].tolist() == [3, 3, 3]


def test_points_seeded_and_2d() -> None:
    label = volume()
    a = simulate_points(label, num_classes=3, seed=5)
    np.testing.assert_array_equal(a, simulate_points(label, num_classes=3, seed=5))
    assert not np.array_equal(a, simulate_points(label, num_classes=3, seed=6))
    out2d = simulate_points(label[0], num_classes=3, seed=1)
    assert out2d.shape == label[0].shape
    check_inside(label[0], out2d)


def test_points_per_component_background_and_radius() -> None:
    label = volume()
    out = simulate_points(label, num_classes=3, seed=2, per_component=True,
                          include_background=False)
    assert not (out == 0).any()
    _, n = ndimage.label(label[1] == 2, structure=np.ones((3, 3)))
    assert n == 2 and (out[1] == 2).sum() == 2  # one click per square
    out = simulate_points(label, num_classes=3, seed=2, background_points=4, radius=2)
    check_inside(label, out)
    assert (out[0] == 2).sum() > 1  # discs, not single pixels
    assert (out[0] == 2).sum() <= 13  # a radius-2 disc has 13 pixels


def test_centroid_without_jitter_is_central_and_inside_rings() -> None:
    label = rings()
    out = simulate_points(label, num_classes=3, seed=0, placement="centroid", jitter=0.0)
    (disc,) = np.argwhere(out == 2)
    assert np.abs(disc - 20).max() <= 1
    (ring,) = np.argwhere(out == 1)  # centroid of the ring is outside it, the click is not
    assert label[tuple(ring)] == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"placement": "middle"}, "placement"),
        ({"points_per_structure": 0}, "points_per_structure"),
        ({"radius": -1}, "radius"),
        ({"jitter": -0.1}, "jitter"),
        ({"seed": -1}, "seed"),
        ({"num_classes": 2}, "outside"),
        ({"classes": [5]}, "classes"),
    ],
)
def test_points_bad_input(kwargs: dict, match: str) -> None:
    args = {"num_classes": 3, "seed": 0} | kwargs
    with pytest.raises(WeaksegError, match=match):
        simulate_points(rings(), **args)


def test_points_bad_label() -> None:
    with pytest.raises(WeaksegError, match="shape"):
        simulate_points(np.zeros(5, dtype=int), num_classes=2, seed=0)
    with pytest.raises(WeaksegError, match="outside"):
        simulate_points(np.full((4, 4), IGNORE_INDEX), num_classes=2, seed=0)


def test_eroded_blobs_fraction_mode() -> None:
    label = volume()
    out = simulate_eroded_blobs(label, num_classes=3, seed=0, per_component=True)
    check_inside(label, out)
    assert not (out == 0).any()  # background unlabelled by default
    assert not (out[1] == 1).any()
    for z, c in ((0, 1), (0, 2), (1, 2)):
        assert 0 < (out[z] == c).sum() < 0.5 * (label[z] == c).sum()
    comps, _ = ndimage.label(out[1] == 2)
    assert comps.max() == 2  # both squares keep a blob
    np.testing.assert_array_equal(out, simulate_eroded_blobs(label, num_classes=3, seed=9,
                                                             per_component=True))
    whole = simulate_eroded_blobs(label, num_classes=3, seed=0, erosion_fraction=0.0,
                                  include_background=True)
    np.testing.assert_array_equal(whole, label)


def test_eroded_blobs_iterations_match_square_erosion() -> None:
    label = rings()
    mask = label == 2
    for k in (1, 3):
        expected = ndimage.binary_erosion(mask, structure=np.ones((3, 3)), iterations=k)
        out = simulate_eroded_blobs(label, num_classes=3, seed=0, iterations=k)
        np.testing.assert_array_equal(out == 2, expected)
    # Too many iterations: falls back to the deepest non-empty erosion, never empty.
    out = simulate_eroded_blobs(label, num_classes=3, seed=0, iterations=50)
    assert (out == 2).sum() > 0 and (out == 1).sum() > 0
    check_inside(label, out)


def test_eroded_blobs_bad_input() -> None:
    with pytest.raises(WeaksegError, match="erosion_fraction"):
        simulate_eroded_blobs(rings(), num_classes=3, seed=0, erosion_fraction=1.5)
    with pytest.raises(WeaksegError, match="iterations"):
        simulate_eroded_blobs(rings(), num_classes=3, seed=0, iterations=-2)
