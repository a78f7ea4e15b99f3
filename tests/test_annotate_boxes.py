"""Tests for boxes, extreme points, tags and size bounds (``weakseg.annotate.boxes``)."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.annotate.boxes import (
    box_masks,
    boxes_from_mask,
    extreme_points,
    oracle_size_bounds,
    size_bounds_from_boxes,
    size_bounds_from_tags,
    size_stats,
    tags_from_mask,
)
from weakseg.errors import WeaksegError


def volume() -> np.ndarray:
    """3 slices of 20x24: slice 0 has a disc (1) and a square (2), slice 1 only the
    disc, slice 2 only background."""
    yy, xx = np.mgrid[:20, :24]
    lab = np.zeros((3, 20, 24), dtype=np.int64)
    lab[0][np.hypot(yy - 8, xx - 9) < 5] = 1
    lab[0, 14:18, 17:22] = 2
    lab[1][np.hypot(yy - 10, xx - 12) < 3] = 1
    return lab


def test_tight_boxes_contain_region_exactly() -> None:
    label = volume()
    boxes = boxes_from_mask(label, num_classes=3)
    assert boxes.shape == (3, 3, 4) and boxes.dtype == np.int64
    np.testing.assert_array_equal(boxes[0, 2], [14, 17, 18, 22])
    np.testing.assert_array_equal(boxes[1, 2], [-1, -1, -1, -1])
    np.testing.assert_array_equal(boxes[2, 1], [-1, -1, -1, -1])
    np.testing.assert_array_equal(boxes[2, 0], [0, 0, 20, 24])
    masks = box_masks(boxes, label.shape[1:])
    assert masks.shape == (3, 3, 20, 24) and masks.dtype == bool
    for z in range(3):
        for c in range(3):
            region = label[z] == c
            assert not (region & ~masks[z, c]).any()  # the box contains the region
            if region.any():  # ... and is tight: every border row/column touches it
                y0, x0, y1, x1 = boxes[z, c]
                sub = region[y0:y1, x0:x1]
                assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
            else:
                assert not masks[z, c].any()


def test_margin_jitter_and_2d() -> None:
    label = volume()
    boxes = boxes_from_mask(label, num_classes=3, margin=3)
    np.testing.assert_array_equal(boxes[0, 2], [11, 14, 20, 24])  # clipped to the image
    a = boxes_from_mask(label, num_classes=3, seed=1, jitter=2)
    np.testing.assert_array_equal(a, boxes_from_mask(label, num_classes=3, seed=1, jitter=2))
    tight = boxes_from_mask(label, num_classes=3)
    present = tight[..., 0] >= 0
    assert np.abs(a - tight)[present].max() <= 2
    assert (a[~present] == -1).all()
    assert (a[..., 2] > a[..., 0])[present].all() and (a[..., 3] > a[..., 1])[present].all()
    two_d = boxes_from_mask(label[0], num_classes=3)
    np.testing.assert_array_equal(two_d, tight[0])
    assert box_masks(two_d, (20, 24)).shape == (3, 20, 24)


def test_extreme_points_on_boundary() -> None:
    label = volume()
    pts = extreme_points(label, num_classes=3)
    assert pts.shape == (3, 3, 4, 2)
    assert (pts[1, 2] == -1).all() and (pts[2, 1] == -1).all()
    boxes = boxes_from_mask(label, num_classes=3)
    padded = np.pad(label, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    for z in range(3):
        for c in range(3):
            if boxes[z, c, 0] < 0:
                continue
            y0, x0, y1, x1 = boxes[z, c]
            (ty, tx), (by, bx), (ly, lx), (ry, rx) = pts[z, c]
            assert (ty, by, lx, rx) == (y0, y1 - 1, x0, x1 - 1)
            for y, x in pts[z, c]:
                assert label[z, y, x] == c
                nb = padded[z, y : y + 3, x : x + 3]  # 3x3 around (y, x)
                assert (nb != c).any()  # on the boundary
    np.testing.assert_array_equal(pts[0, 1, 0], [4, 9])  # top of the disc: its middle pixel
    np.testing.assert_array_equal(extreme_points(label[0], num_classes=3), pts[0])


def test_tags() -> None:
    label = volume()
    tags = tags_from_mask(label, num_classes=3)
    np.testing.assert_array_equal(tags, [[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    assert tags.dtype == bool
    np.testing.assert_array_equal(tags_from_mask(label, num_classes=3, per="volume"), [1, 1, 1])
    np.testing.assert_array_equal(tags_from_mask(label[1], num_classes=3), [1, 1, 0])


def test_size_stats_and_tag_bounds() -> None:
    label = volume()
    stats = size_stats([label, label[1]], num_classes=4)
    disc_sizes = sorted([(label[0] == 1).sum(), (label[1] == 1).sum()])
    np.testing.assert_array_equal(stats[1], disc_sizes)
    np.testing.assert_array_equal(stats[2], [20, 20])
    np.testing.assert_array_equal(stats[3], [0, 0])  # never present
    tags = tags_from_mask(label, num_classes=4)
    bounds = size_bounds_from_tags(tags, stats)
    assert bounds.shape == (3, 4, 2)
    assert (bounds[..., 0] <= bounds[..., 1]).all()
    np.testing.assert_array_equal(bounds[1, 2], [0, 0])  # absent: suppression
    np.testing.assert_array_equal(bounds[0, 1], disc_sizes)
    tags[0, 3] = True
    with pytest.raises(WeaksegError, match="never occur"):
        size_bounds_from_tags(tags, stats)


def test_box_and_oracle_bounds() -> None:
    label = volume()
    boxes = boxes_from_mask(label, num_classes=3)
    b = size_bounds_from_boxes(boxes)
    np.testing.assert_allclose(b[0, 2], [0.5 * 20, 0.9 * 20])
    np.testing.assert_array_equal(b[1, 2], [0, 0])
    assert (b[..., 0] <= b[..., 1]).all()
    o = oracle_size_bounds(label, num_classes=3, margin=0.1)
    assert o.shape == (3, 3, 2)
    sizes = np.stack([(label == c).sum(axis=(1, 2)) for c in range(3)], axis=1)
    np.testing.assert_allclose(o[..., 0], 0.9 * sizes)
    np.testing.assert_allclose(o[..., 1], 1.1 * sizes)
    assert (o[..., 0] <= sizes).all() and (sizes <= o[..., 1]).all()
    assert oracle_size_bounds(label[0], num_classes=3).shape == (3, 2)


def test_bad_inputs() -> None:
    label = volume()
    with pytest.raises(WeaksegError, match="seed"):
        boxes_from_mask(label, num_classes=3, jitter=2)
    with pytest.raises(WeaksegError, match="margin"):
        boxes_from_mask(label, num_classes=3, margin=-1)
    with pytest.raises(WeaksegError, match="outside"):
        boxes_from_mask(label, num_classes=2)
    with pytest.raises(WeaksegError, match="shape"):
        extreme_points(label[None], num_classes=3)
    with pytest.raises(WeaksegError, match="per"):
        tags_from_mask(label, num_classes=3, per="patient")
    with pytest.raises(WeaksegError, match="lo"):
        size_bounds_from_boxes(boxes_from_mask(label, num_classes=3), lo=0.9, hi=0.5)
    with pytest.raises(WeaksegError, match="valid"):
        box_masks(np.array([[0, 0, 30, 5]]), (20, 24))
    with pytest.raises(WeaksegError, match="stats"):
        size_bounds_from_tags(np.ones((2, 3), bool), np.zeros((4, 2)))
    with pytest.raises(WeaksegError, match="margin"):
        oracle_size_bounds(label, num_classes=3, margin=-0.1)


def test_outside_boxes_annotator() -> None:
    from weakseg.annotate import ANNOTATORS
    from weakseg.data.base import IGNORE_INDEX

    lab = volume()
    out = ANNOTATORS.get("outside_boxes")(lab, num_classes=3, seed=0)
    inside = box_masks(boxes_from_mask(lab, num_classes=3)[:, 1:], lab.shape[-2:]).any(1)
    assert out.shape == lab.shape and out.dtype == np.int64
    assert (out[inside] == IGNORE_INDEX).all() and (out[~inside] == 0).all()
    assert (lab[out == 0] == 0).all()            # only true background is labelled
    assert (out[2] == 0).all()                   # no structure: background everywhere
    wider = ANNOTATORS.get("outside_boxes")(lab, num_classes=3, seed=0, margin=2)
    assert (wider == IGNORE_INDEX).sum() > (out == IGNORE_INDEX).sum()
    assert np.array_equal(ANNOTATORS.get("outside_boxes")(lab[0], num_classes=3, seed=0), out[0])
