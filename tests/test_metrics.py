"""Tests for weakseg.metrics: per-volume Dice/HD95/ASD and the VolumeMetrics accumulator."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from weakseg.errors import WeaksegError
from weakseg.metrics import VolumeMetrics, volume_metrics

NAMES = ["background", "RV", "MYO", "LV"]


def _plates(shape: tuple[int, ...], axis: int, at: int, offset: int) -> tuple[np.ndarray, ...]:
    """gt: a one-voxel-thick plate (class 1) at ``at`` along ``axis``; pred: same, shifted.

    Every plate voxel is a surface voxel and its nearest voxel in the other plate is
    straight along ``axis``, so all surface distances equal ``offset * spacing[axis]``.
    """
    gt = np.zeros(shape, dtype=np.int64)
    pred = np.zeros(shape, dtype=np.int64)
    inner = tuple(slice(1, n - 1) for n in shape)
    idx_g = list(inner)
    idx_p = list(inner)
    idx_g[axis] = at
    idx_p[axis] = at + offset
    gt[tuple(idx_g)] = 1
    pred[tuple(idx_p)] = 1
    return pred, gt


def test_dice_hand_computed() -> None:
    pred = np.array([[1, 1, 0], [0, 2, 2]])
    gt = np.array([[1, 0, 0], [0, 2, 2]])
    out = volume_metrics(pred, gt, num_classes=3)
    assert set(out) == {"dice", "hd95", "asd"}
    # class 1: |P∩G| = 1, |P| = 2, |G| = 1; class 2: identical.
    np.testing.assert_allclose(out["dice"], [2 / 3, 1.0])
    assert out["hd95"][1] == 0.0 and out["asd"][1] == 0.0
    assert out["dice"].dtype == np.float64 and out["dice"].shape == (2,)


@pytest.mark.parametrize(
    ("axis", "spacing", "offset"),
    [(0, (10.0, 1.5, 1.5), 2), (2, (10.0, 1.0, 2.5), 3), (1, None, 1)],
)
def test_hd95_asd_anisotropic_spacing(
    axis: int, spacing: tuple[float, ...] | None, offset: int
) -> None:
    pred, gt = _plates((8, 9, 10), axis, at=2, offset=offset)
    out = volume_metrics(pred, gt, num_classes=2, spacing=spacing)
    expected = offset * (1.0 if spacing is None else spacing[axis])
    np.testing.assert_allclose(out["hd95"], [expected], rtol=1e-6)
    np.testing.assert_allclose(out["asd"], [expected], rtol=1e-6)
    assert out["dice"][0] == 0.0


def test_integer_spacing_accepted() -> None:
    # MONAI rejects a spacing tuple mixing int and float; we normalise it.
    pred, gt = _plates((6, 7, 8), 0, at=1, offset=2)
    out = volume_metrics(pred, gt, num_classes=2, spacing=(3, 1.0, np.float32(1)))
    np.testing.assert_allclose(out["hd95"], [6.0])


def test_cropping_matches_uncropped_monai() -> None:
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:12, :20, :24]
    gt = np.zeros((12, 20, 24), dtype=np.int64)
    gt[(z - 6) ** 2 + (y - 9) ** 2 + (x - 14) ** 2 < 16] = 1
    gt[(z - 5) ** 2 + (y - 12) ** 2 + (x - 6) ** 2 < 9] = 2
    pred = gt.copy()
    flip = rng.random(gt.shape) < 0.03
    pred[flip] = rng.integers(0, 3, int(flip.sum()))
    spacing = [2.0, 0.7, 1.3]
    out = volume_metrics(pred, gt, num_classes=3, spacing=spacing)
    onehot_p = np.stack([pred == c for c in range(3)])[None].astype(np.float32)
    onehot_g = np.stack([gt == c for c in range(3)])[None].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(onehot_p, onehot_g, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(onehot_p, onehot_g, symmetric=True, spacing=spacing)
    np.testing.assert_allclose(out["hd95"], hd.numpy()[0], rtol=1e-5)
    np.testing.assert_allclose(out["asd"], asd.numpy()[0], rtol=1e-5)
    assert np.all(out["asd"] > 0)


def test_empty_mask_conventions() -> None:
    shape = (4, 5, 6)
    spacing = (2.0, 1.0, 1.0)
    diag = math.sqrt(8.0**2 + 5.0**2 + 6.0**2)
    gt = np.zeros(shape, dtype=np.int64)
    pred = np.zeros(shape, dtype=np.int64)
    gt[1:3, 1:3, 1:3] = 2  # class 2 missed by pred
    pred[0, 0, :2] = 3  # class 3 only in pred; class 1 in neither
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MONAI empty-mask or deprecation warnings leak
        out = volume_metrics(pred, gt, num_classes=4, spacing=spacing)
    np.testing.assert_allclose(out["dice"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out["hd95"], [0.0, diag, diag])
    np.testing.assert_allclose(out["asd"], [0.0, diag, diag])


def test_include_background() -> None:
    pred = np.array([[0, 0, 1, 1]])
    gt = np.array([[0, 1, 1, 1]])
    out = volume_metrics(pred, gt, num_classes=2, include_background=True)
    assert out["dice"].shape == (2,)
    # background: |P∩G| = 1, |P| = 2, |G| = 1; class 1: |P∩G| = 2, |P| = 2, |G| = 3.
    np.testing.assert_allclose(out["dice"], [2 / 3, 4 / 5])
    assert volume_metrics(pred, gt, num_classes=2)["dice"].shape == (1,)


def test_2d_input() -> None:
    pred, gt = _plates((7, 9), axis=1, at=2, offset=3)
    out = volume_metrics(pred, gt, num_classes=2, spacing=(0.5, 2.0))
    np.testing.assert_allclose(out["hd95"], [6.0], rtol=1e-6)
    np.testing.assert_allclose(out["asd"], [6.0], rtol=1e-6)


def test_float_maps_with_whole_numbers_accepted() -> None:
    pred = np.array([[0.0, 1.0], [1.0, 0.0]])
    out = volume_metrics(pred, pred.astype(np.int32), num_classes=2)
    np.testing.assert_allclose(out["dice"], [1.0])


@pytest.mark.parametrize(
    ("pred", "gt", "kwargs", "match"),
    [
        (np.zeros((3, 4), int), np.zeros((4, 3), int), {}, "same shape"),
        (np.full((3, 4), 3), np.zeros((3, 4), int), {}, r"\[0, 2\]"),
        (np.zeros((3, 4), int), np.full((3, 4), -1), {}, r"\[0, 2\]"),
        (np.full((3, 4), 0.5), np.zeros((3, 4), int), {}, "integer"),
        (np.zeros((2, 2, 2, 2), int), np.zeros((2, 2, 2, 2), int), {}, "2D or 3D"),
        (np.zeros((3, 4), int), np.zeros((3, 4), int), {"spacing": (1.0,)}, "one value per"),
        (np.zeros((3, 4), int), np.zeros((3, 4), int), {"spacing": (1.0, 0.0)}, "positive"),
        (np.zeros((3, 4), int), np.zeros((3, 4), int), {"num_classes": 1}, "at least 2"),
    ],
)
def test_bad_input_raises(
    pred: np.ndarray, gt: np.ndarray, kwargs: dict[str, object], match: str
) -> None:
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(WeaksegError, match=match):
        volume_metrics(pred, gt, **kwargs)  # type: ignore[arg-type]


def _accumulated() -> VolumeMetrics:
    rng = np.random.default_rng(1)
    vm = VolumeMetrics(NAMES)
    for i in range(3):
        gt = np.zeros((3, 10, 10), dtype=np.int64)
        gt[:, 2:6, 2:6] = 1
        gt[:, 6:9, 3:8] = 2
        gt[:, 1:3, 6:9] = 3
        pred = np.roll(gt, i, axis=2)
        pred[rng.random(gt.shape) < 0.05] = 0
        vm.update(pred, gt, key=f"case{i}", spacing=(5.0, 1.0, 1.0))
    return vm


def test_accumulator_mean_equals_mean_of_rows() -> None:
    vm = _accumulated()
    rows = vm.rows()
    assert len(vm) == len(rows) == 3
    assert [r["key"] for r in rows] == ["case0", "case1", "case2"]
    assert list(rows[0]) == vm.columns
    means = vm.compute()
    assert set(means) == set(vm.columns) - {"key"}
    for col, value in means.items():
        assert value == pytest.approx(np.mean([r[col] for r in rows]))
    row = rows[1]
    assert row["dice_mean"] == pytest.approx(np.mean([row[f"dice_{n}"] for n in NAMES[1:]]))
    assert "dice_background" not in row


def test_accumulator_update_reset_and_errors() -> None:
    vm = VolumeMetrics(NAMES, include_background=True)
    gt = np.array([[0, 1], [2, 3]])
    row = vm.update(gt, gt, key="a")
    assert row["dice_background"] == 1.0 and row["hd95_mean"] == 0.0
    with pytest.raises(WeaksegError, match="already added"):
        vm.update(gt, gt, key="a")
    vm.reset()
    assert len(vm) == 0
    with pytest.raises(WeaksegError, match="update"):
        vm.compute()
    with pytest.raises(WeaksegError, match="at least 2"):
        VolumeMetrics(["background"])
    with pytest.raises(WeaksegError, match="unique"):
        VolumeMetrics(["bg", "a", "a"])


def test_write_csv(tmp_path: Path) -> None:
    vm = _accumulated()
    path = vm.write_csv(tmp_path / "out" / "metrics.csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        records = list(reader)
    expected = ["key"]
    for m in ("dice", "hd95", "asd"):
        expected += [f"{m}_RV", f"{m}_MYO", f"{m}_LV", f"{m}_mean"]
    assert reader.fieldnames == expected
    assert [r["key"] for r in records] == ["case0", "case1", "case2", "mean"]
    assert float(records[-1]["dice_LV"]) == pytest.approx(vm.compute()["dice_LV"])


def test_format_table() -> None:
    vm = _accumulated()
    text = vm.format_table()
    lines = text.splitlines()
    assert lines[0].split() == ["class", "Dice", "HD95", "ASD"]
    for name in ["RV", "MYO", "LV", "mean"]:
        assert any(line.startswith(name) for line in lines)
    assert "±" in text and "distances in mm" in text
    assert "background" not in text
    mean_line = next(line for line in lines if line.startswith("mean"))
    assert f"{vm.compute()['dice_mean']:.3f}" in mean_line
