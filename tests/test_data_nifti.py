"""Tests for the NIfTI (nnU-Net / Decathlon raw layout) reader and writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from weakseg.data.base import DATASETS, IGNORE_INDEX
from weakseg.data.nifti import (
    load_nifti_folder,
    read_nifti_image_folder,
    write_nifti_prediction,
)
from weakseg.errors import WeaksegError

SHAPE_XYZ = (6, 8, 5)
SHAPE_ZYX = (5, 8, 6)
AFFINE = np.array(
    [
        [-1.5, 0.0, 0.0, 10.0],
        [0.0, 1.5, 0.0, -20.0],
        [0.0, 0.0, 8.0, 5.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
V2_LABELS = {"background": 0, "RV": 1, "LV": 2}


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _image(seed: int, shape: tuple[int, ...] = SHAPE_XYZ) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _label(seed: int, num_classes: int = 3) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(0, num_classes, SHAPE_XYZ).astype(np.uint8)


def _dataset(
    root: Path,
    cases: tuple[str, ...] = ("case_a", "case_b"),
    *,
    labels: dict[str, Any] | None = None,
    channels: int = 1,
    with_labels: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a tiny nnU-Net raw data set; return the on-disk (X, Y, Z) arrays."""
    spec: dict[str, Any] = {
        "labels": labels if labels is not None else V2_LABELS,
        "channel_names": {str(k): f"mod{k}" for k in range(channels)},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    spec.update(extra or {})
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(spec))
    arrays: dict[str, Any] = {}
    for i, case in enumerate(cases):
        chans = [_image(10 * i + k) for k in range(channels)]
        for k, arr in enumerate(chans):
            _save(root / "imagesTr" / f"{case}_{k:04d}.nii.gz", arr)
        arrays[case] = {"image": chans}
        if with_labels:
            lab = _label(i)
            _save(root / "labelsTr" / f"{case}.nii.gz", lab)
            arrays[case]["label"] = lab
    return arrays


def _zyx(arr: np.ndarray) -> np.ndarray:
    return np.transpose(arr, (2, 1, 0))


# ------------------------------------------------------------------------- reading


def test_registered() -> None:
    assert DATASETS.get("nifti") is load_nifti_folder


def test_read_v2_layout(tmp_path: Path) -> None:
    arrays = _dataset(tmp_path)
    data = load_nifti_folder(tmp_path)
    assert data.class_names == ["background", "RV", "LV"]
    assert data.in_channels == 1
    assert [v.key for v in data.volumes] == ["case_a", "case_b"]
    vol = data.volumes[0]
    assert vol.group == "case_a"
    assert vol.shape == SHAPE_ZYX
    assert vol.image.dtype == np.float32
    np.testing.assert_allclose(vol.image, _zyx(arrays["case_a"]["image"][0]))
    assert vol.label is not None and vol.label.dtype == np.int64
    np.testing.assert_array_equal(vol.label, _zyx(arrays["case_a"]["label"]))
    assert vol.annotations == {}
    assert vol.spacing == pytest.approx((8.0, 1.5, 1.5))
    assert vol.meta["format"] == "nifti"
    assert vol.meta["case"] == "case_a"
    assert vol.meta["path"].endswith("case_a_0000.nii.gz")
    np.testing.assert_allclose(vol.meta["affine"], AFFINE)
    assert isinstance(vol.meta["header"], nib.Nifti1Header)


def test_read_v1_labels_and_modality(tmp_path: Path) -> None:
    _dataset(
        tmp_path,
        labels={"2": "LV", "0": "background", "1": "RV"},
        extra={"modality": {"0": "MRI"}},
    )
    spec = json.loads((tmp_path / "dataset.json").read_text())
    del spec["channel_names"]
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    data = load_nifti_folder(str(tmp_path))
    assert data.class_names == ["background", "RV", "LV"]
    assert data.in_channels == 1


def test_case_without_label(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "labelsTr" / "case_b.nii.gz").unlink()
    data = load_nifti_folder(tmp_path)
    assert data.volumes[0].label is not None
    assert data.volumes[1].label is None


def test_uncompressed_nii_accepted(tmp_path: Path) -> None:
    _dataset(tmp_path, cases=("c1",), with_labels=False)
    src = tmp_path / "imagesTr" / "c1_0000.nii.gz"
    nib.save(nib.load(str(src)), str(tmp_path / "imagesTr" / "c1_0000.nii"))
    src.unlink()
    _save(tmp_path / "labelsTr" / "c1.nii", _label(0))
    data = load_nifti_folder(tmp_path)
    assert data.volumes[0].key == "c1" and data.volumes[0].label is not None


def test_ignore_label_makes_partial_annotations(tmp_path: Path) -> None:
    labels = {"background": 0, "RV": 1, "LV": 2, "ignore": 3}
    _dataset(tmp_path, labels=labels, with_labels=False)
    scrib = np.full(SHAPE_XYZ, 3, np.uint8)
    scrib[1, 1:4, 2] = 1
    scrib[4, 2, 1:3] = 0
    _save(tmp_path / "labelsTr" / "case_a.nii.gz", scrib)
    data = load_nifti_folder(tmp_path)
    assert data.class_names == ["background", "RV", "LV"]
    vol = data.volumes[0]
    assert vol.label is None
    weak = vol.annotations["weak"]
    assert weak.dtype == np.int64 and weak.shape == SHAPE_ZYX
    expected = _zyx(scrib).astype(np.int64)
    expected[expected == 3] = IGNORE_INDEX
    np.testing.assert_array_equal(weak, expected)
    assert (weak != IGNORE_INDEX).sum() == 5
    assert data.volumes[1].annotations == {}


def test_annotation_dir_with_unlabelled_value(tmp_path: Path) -> None:
    arrays = _dataset(tmp_path)
    scrib = np.full(SHAPE_XYZ, 4, np.uint8)
    scrib[2, 3, :] = 2
    _save(tmp_path / "scribblesTr" / "case_a.nii.gz", scrib)
    data = load_nifti_folder(tmp_path, annotation_dir="scribblesTr", unlabelled_value=4)
    vol = data.volumes[0]
    np.testing.assert_array_equal(vol.label, _zyx(arrays["case_a"]["label"]))
    weak = vol.annotations["weak"]
    assert set(np.unique(weak).tolist()) == {IGNORE_INDEX, 2}
    assert (weak == 2).sum() == SHAPE_XYZ[2]
    assert data.volumes[1].annotations == {}
    assert data.volumes[1].label is not None


def test_unlabelled_value_from_dataset_json(tmp_path: Path) -> None:
    _dataset(
        tmp_path,
        labels={"0": "background", "1": "RV", "2": "LV", "4": "unlabelled"},
        extra={"unlabelled_value": 4},
    )
    scrib = np.full(SHAPE_XYZ, 4, np.uint8)
    scrib[0, 0, 0] = 1
    for case in ("case_a", "case_b"):
        _save(tmp_path / "weak" / f"{case}.nii.gz", scrib)
    data = load_nifti_folder(tmp_path, annotation_dir="weak")
    assert data.class_names == ["background", "RV", "LV"]
    assert all((v.annotations["weak"] == 1).sum() == 1 for v in data.volumes)


def test_multichannel(tmp_path: Path) -> None:
    arrays = _dataset(tmp_path, channels=2)
    data = load_nifti_folder(tmp_path)
    assert data.in_channels == 2
    vol = data.volumes[1]
    assert vol.image.shape == (*SHAPE_ZYX, 2)
    assert vol.channels == 2
    for k in range(2):
        np.testing.assert_allclose(vol.image[..., k], _zyx(arrays["case_b"]["image"][k]))
    assert len(vol.meta["channel_paths"]) == 2


def test_decathlon_4d_images(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "tumour"}, "modality": {"0": "a", "1": "b"}})
    )
    img = _image(0, (*SHAPE_XYZ, 2))
    _save(tmp_path / "imagesTr" / "BRATS_001.nii.gz", img)
    (tmp_path / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"mac resource fork")
    _save(tmp_path / "labelsTr" / "BRATS_001.nii.gz", _label(0, 2))
    data = load_nifti_folder(tmp_path)
    assert data.in_channels == 2
    vol = data.volumes[0]
    assert vol.key == "BRATS_001"
    np.testing.assert_allclose(vol.image, np.transpose(img, (2, 1, 0, 3)))


# --------------------------------------------------------------- writing / predict


def test_prediction_round_trip(tmp_path: Path) -> None:
    arrays = _dataset(tmp_path / "raw")
    data = load_nifti_folder(tmp_path / "raw")
    out = tmp_path / "pred"
    for vol in data.volumes:
        assert vol.label is not None
        path = write_nifti_prediction(vol, vol.label.astype(np.uint8), out)
        assert path == out / f"{vol.key}.nii.gz"
        img = nib.load(str(path))
        assert img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, AFFINE)
        assert img.header.get_zooms() == pytest.approx((1.5, 1.5, 8.0))
        np.testing.assert_array_equal(np.asarray(img.dataobj), arrays[vol.key]["label"])
    back = read_nifti_image_folder(out)
    assert [v.key for v in back] == ["case_a", "case_b"]
    for vol, orig in zip(back, data.volumes, strict=True):
        assert vol.label is None
        np.testing.assert_array_equal(vol.image, orig.label)
        np.testing.assert_allclose(vol.meta["affine"], AFFINE)
        assert vol.spacing == pytest.approx(orig.spacing)


def test_read_image_folder_nnunet_root(tmp_path: Path) -> None:
    _dataset(tmp_path, channels=2)
    (tmp_path / "imagesTr").rename(tmp_path / "imagesTs")
    vols = read_nifti_image_folder(tmp_path)
    assert [v.key for v in vols] == ["case_a", "case_b"]
    assert all(v.channels == 2 and v.label is None for v in vols)
    vols = read_nifti_image_folder(tmp_path / "imagesTs")
    assert [v.channels for v in vols] == [2, 2]


def test_read_image_folder_single_file(tmp_path: Path) -> None:
    _save(tmp_path / "scan.nii.gz", _image(3))
    vols = read_nifti_image_folder(tmp_path / "scan.nii.gz")
    assert len(vols) == 1 and vols[0].key == "scan" and vols[0].shape == SHAPE_ZYX


def test_write_prediction_shape_mismatch(tmp_path: Path) -> None:
    _dataset(tmp_path, cases=("c1",))
    vol = load_nifti_folder(tmp_path).volumes[0]
    with pytest.raises(WeaksegError, match="shape"):
        write_nifti_prediction(vol, np.zeros((6, 8, 5), np.uint8), tmp_path / "out")


def test_read_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(WeaksegError, match="does not exist"):
        read_nifti_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeaksegError, match="no NIfTI images"):
        read_nifti_image_folder(tmp_path / "empty")


# -------------------------------------------------------------------------- errors


def test_error_missing_root(tmp_path: Path) -> None:
    with pytest.raises(WeaksegError, match="does not exist"):
        load_nifti_folder(tmp_path / "missing")


def test_error_missing_dataset_json(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "dataset.json").unlink()
    with pytest.raises(WeaksegError, match=r"no dataset\.json in .*imagesTr/, labelsTr/"):
        load_nifti_folder(tmp_path)


def test_error_bad_dataset_json(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(WeaksegError, match="cannot read .*dataset.json"):
        load_nifti_folder(tmp_path)


def test_error_non_contiguous_labels(tmp_path: Path) -> None:
    _dataset(tmp_path, labels={"background": 0, "RV": 1, "LV": 3})
    with pytest.raises(WeaksegError, match=r"0\.\.C-1"):
        load_nifti_folder(tmp_path)


def test_error_missing_image_dir(tmp_path: Path) -> None:
    _dataset(tmp_path)
    with pytest.raises(WeaksegError, match="image folder .* does not exist"):
        load_nifti_folder(tmp_path, image_dir="imagesTs")


def test_error_no_images(tmp_path: Path) -> None:
    _dataset(tmp_path, cases=())
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(WeaksegError, match="no images in"):
        load_nifti_folder(tmp_path)


def test_error_corrupt_image(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "imagesTr" / "case_b_0000.nii.gz").write_bytes(b"\x00garbage" * 40)
    with pytest.raises(WeaksegError, match=r"cannot read NIfTI file .*case_b_0000\.nii\.gz"):
        load_nifti_folder(tmp_path)


def test_error_truncated_label(tmp_path: Path) -> None:
    _dataset(tmp_path)
    path = tmp_path / "labelsTr" / "case_a.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 40])
    with pytest.raises(WeaksegError, match=r"cannot read NIfTI file .*case_a\.nii\.gz"):
        load_nifti_folder(tmp_path)


def test_error_shape_mismatch(tmp_path: Path) -> None:
    _dataset(tmp_path)
    _save(tmp_path / "labelsTr" / "case_a.nii.gz", np.zeros((6, 8, 4), np.uint8))
    with pytest.raises(WeaksegError, match="does not match image shape"):
        load_nifti_folder(tmp_path)


def test_error_geometry_mismatch(tmp_path: Path) -> None:
    _dataset(tmp_path)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    _save(tmp_path / "labelsTr" / "case_a.nii.gz", _label(0), shifted)
    with pytest.raises(WeaksegError, match="geometry mismatch"):
        load_nifti_folder(tmp_path)


def test_error_label_out_of_range(tmp_path: Path) -> None:
    _dataset(tmp_path)
    lab = _label(0)
    lab[0, 0, 0] = 7
    _save(tmp_path / "labelsTr" / "case_a.nii.gz", lab)
    with pytest.raises(WeaksegError, match=r"values \[7\] outside the declared classes"):
        load_nifti_folder(tmp_path)


def test_error_nan_image(tmp_path: Path) -> None:
    _dataset(tmp_path)
    img = _image(0)
    img[1, 2, 3] = np.nan
    _save(tmp_path / "imagesTr" / "case_a_0000.nii.gz", img)
    with pytest.raises(WeaksegError, match="NaN/Inf"):
        load_nifti_folder(tmp_path)


def test_error_missing_channel(tmp_path: Path) -> None:
    _dataset(tmp_path, channels=2)
    (tmp_path / "imagesTr" / "case_b_0001.nii.gz").unlink()
    with pytest.raises(WeaksegError, match=r"missing channel file .*case_b_0001\.nii\.gz"):
        load_nifti_folder(tmp_path)


def test_error_weak_annotation_without_labelled_voxel(tmp_path: Path) -> None:
    _dataset(tmp_path)
    for case in ("case_a", "case_b"):
        _save(tmp_path / "scribbles" / f"{case}.nii.gz", np.full(SHAPE_XYZ, 4, np.uint8))
    with pytest.raises(WeaksegError, match="annotation 'weak' has no labelled voxel"):
        load_nifti_folder(tmp_path, annotation_dir="scribbles", unlabelled_value=4)


def test_error_annotation_dir_without_unlabelled_value(tmp_path: Path) -> None:
    _dataset(tmp_path)
    _save(tmp_path / "scribbles" / "case_a.nii.gz", _label(0))
    with pytest.raises(WeaksegError, match="unlabelled value is unknown"):
        load_nifti_folder(tmp_path, annotation_dir="scribbles")


def test_error_orphan_label(tmp_path: Path) -> None:
    _dataset(tmp_path)
    _save(tmp_path / "labelsTr" / "case_z.nii.gz", _label(0))
    with pytest.raises(WeaksegError, match="case_z.nii.gz has no image"):
        load_nifti_folder(tmp_path)


def test_errors_are_one_line(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "imagesTr" / "case_a_0000.nii.gz").write_bytes(b"junk")
    with pytest.raises(WeaksegError) as info:
        load_nifti_folder(tmp_path)
    assert "\n" not in str(info.value)


# ------------------------------------------------- one folder: weak and dense maps, folds, groups


def _mixed(root: Path) -> dict[str, Any]:
    """labelsTr with an 'ignore' label: case_a and case_c scribbled, case_b dense."""
    cases = ("patient001_frame01", "patient001_frame12", "patient002_frame01")
    arrays = _dataset(root, cases, labels={**V2_LABELS, "ignore": 3})
    for case in (cases[0], cases[2]):
        weak = arrays[case]["label"].copy()
        weak[:, :, 1:] = 3  # only the first slice is annotated
        _save(root / "labelsTr" / f"{case}.nii.gz", weak)
        arrays[case]["weak"] = weak
    return arrays


def test_mixed_weak_and_dense_maps_in_labels_folder(tmp_path: Path) -> None:
    arrays = _mixed(tmp_path)
    vols = {v.key: v for v in load_nifti_folder(tmp_path).volumes}
    weak_case, dense_case = vols["patient001_frame01"], vols["patient001_frame12"]
    assert weak_case.label is None
    expected = _zyx(arrays["patient001_frame01"]["weak"]).astype(np.int64)
    expected[expected == 3] = IGNORE_INDEX
    np.testing.assert_array_equal(weak_case.annotations["weak"], expected)
    np.testing.assert_array_equal(dense_case.label, _zyx(arrays["patient001_frame12"]["label"]))
    # a dense case trains with its full map as its weak annotation
    np.testing.assert_array_equal(dense_case.annotations["weak"], dense_case.label)


def test_group_pattern_groups_cases_of_one_patient(tmp_path: Path) -> None:
    _mixed(tmp_path)
    vols = load_nifti_folder(tmp_path, group_pattern=r"patient\d+").volumes
    assert [v.group for v in vols] == ["patient001", "patient001", "patient002"]
    assert [v.group for v in load_nifti_folder(tmp_path, group_pattern=r"patient(\d+)").volumes] \
        == ["001", "001", "002"]
    with pytest.raises(WeaksegError, match="does not match case 'patient001_frame01'"):
        load_nifti_folder(tmp_path, group_pattern=r"subject\d+")
    with pytest.raises(WeaksegError, match="is not a regular expression"):
        load_nifti_folder(tmp_path, group_pattern="patient(")


def test_splits_final_json_gives_folds(tmp_path: Path) -> None:
    from weakseg.data.splits import fold_split

    cases = ("c1", "c2", "c3", "c4")
    _dataset(tmp_path, cases)
    splits = [{"train": ["c3", "c4"], "val": ["c1", "c2"]},
              {"train": ["c1", "c2"], "val": ["c3", "c4"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    vols = load_nifti_folder(tmp_path).volumes
    train, val = fold_split(vols, 1)
    assert [v.key for v in train] == ["c1", "c2"] and [v.key for v in val] == ["c3", "c4"]
    with pytest.raises(WeaksegError, match="defines folds 0..1"):
        fold_split(vols, 2)
    (tmp_path / "splits_final.json").write_text(json.dumps(splits[:1]))
    with pytest.raises(WeaksegError, match="puts 2 cases in no validation fold, e.g. 'c3'"):
        load_nifti_folder(tmp_path)
    (tmp_path / "splits_final.json").write_text(json.dumps([{"val": ["c1", "c9"]}]))
    with pytest.raises(WeaksegError, match="names 1 cases without an image, e.g. 'c9'"):
        load_nifti_folder(tmp_path)
    (tmp_path / "splits_final.json").write_text('{"val": []}')
    with pytest.raises(WeaksegError, match="one entry per fold"):
        load_nifti_folder(tmp_path)


# ------------------------------------------------------- image / label folder pairs (MS-CMRSeg)


def _pairs(root: Path, cases: tuple[str, ...], suffix: str, weak: bool) -> None:
    for i, case in enumerate(cases):
        _save(root / "images" / f"{case}.nii.gz", _image(i))
        lab = _label(i)
        if weak:
            lab[:, :, 1:] = 4
        _save(root / "labels" / f"{case}{suffix}.nii.gz", lab)


def test_nifti_pairs_two_folders_weak_and_dense(tmp_path: Path) -> None:
    from weakseg.data.nifti import load_nifti_pairs
    from weakseg.data.splits import select_groups

    _pairs(tmp_path / "train", ("s1_DE", "s2_DE"), "_scribble", weak=True)
    _pairs(tmp_path / "val", ("s3_DE",), "_manual", weak=False)
    labels = {"background": 0, "RV": 1, "LV": 2, "ignore": 4}
    vset = load_nifti_pairs(roots=[str(tmp_path / "train"), str(tmp_path / "val")],
                            labels=labels)
    vols = {v.key: v for v in vset.volumes}
    assert vset.class_names == ["background", "RV", "LV"]
    assert vols["s1_DE"].label is None and (vols["s1_DE"].annotations["weak"] == -100).any()
    assert vols["s3_DE"].label is not None and vols["s3_DE"].spacing == (8.0, 1.5, 1.5)
    assert [v.key for v in select_groups(vset.volumes, "split:val")] == ["s3_DE"]
    with pytest.raises(WeaksegError, match="case names must be unique"):
        load_nifti_pairs(roots=[str(tmp_path / "train"), str(tmp_path / "train")], labels=labels)
    with pytest.raises(WeaksegError, match="images does not exist"):
        load_nifti_pairs(root=str(tmp_path), labels=labels)
    with pytest.raises(WeaksegError, match="needs data.root or data.params.roots"):
        load_nifti_pairs(labels=labels)


def test_nifti_pairs_reads_the_real_mscmr(tmp_path: Path) -> None:
    from tests.conftest import shared_data

    root = shared_data("mscmr")
    from weakseg.data.nifti import load_nifti_pairs

    vset = load_nifti_pairs(roots=[str(root / "train"), str(root / "val")],
                            labels={"background": 0, "RV": 1, "Myo": 2, "LV": 3, "ignore": 4})
    train = [v for v in vset.volumes if v.meta["split"] == "train"]
    val = [v for v in vset.volumes if v.meta["split"] == "val"]
    assert len(train) == 25 and all(v.label is None and "weak" in v.annotations for v in train)
    assert len(val) == 5 and all(v.label is not None for v in val)
    assert all(0.7 < v.spacing[1] < 0.8 and 4.9 < v.spacing[0] < 5.1 for v in vset.volumes)
