"""ACDC h5 reader, the slice pipeline and splits by patient."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from weakseg.data import DATASETS, IGNORE_INDEX
from weakseg.data.acdc import read_acdc_h5
from weakseg.data.slices import build_slices, resize_image, resize_labels
from weakseg.data.splits import parse_groups, select_groups
from weakseg.errors import WeaksegError


def _write(path: Path, image=None, label=None, scribble=None) -> Path:
    rng = np.random.default_rng(0)
    image = rng.random((3, 12, 10), dtype=np.float32) if image is None else image
    label = rng.integers(0, 4, (3, 12, 10)).astype(np.uint8) if label is None else label
    scribble = np.full((3, 12, 10), 4, np.uint16) if scribble is None else scribble
    scribble[:, 2, 2] = label[:, 2, 2]
    with h5py.File(path, "w") as f:
        f["image"], f["label"], f["scribble"] = image, label, scribble
    return path


def test_read_maps_unlabelled_value(tmp_path: Path):
    vol = read_acdc_h5(_write(tmp_path / "patient007_frame01.h5"))
    assert vol.group == "patient007" and vol.key == "patient007_frame01"
    scr = vol.annotations["scribble"]
    assert (scr == IGNORE_INDEX).sum() == scr.size - 3
    assert vol.label is not None and vol.label.dtype == np.int64


def test_nominal_spacing_is_given_to_every_volume(tmp_path: Path):
    _write(tmp_path / "patient007_frame01.h5")
    assert DATASETS.build("acdc_h5", root=tmp_path).volumes[0].spacing is None  # none stored
    vset = DATASETS.build("acdc_h5", root=tmp_path, nominal_spacing=[10, 1.5, 1.5])
    assert vset.volumes[0].spacing == (10.0, 1.5, 1.5)
    with pytest.raises(WeaksegError, match=r"nominal_spacing must be \[z, y, x\] in mm"):
        DATASETS.build("acdc_h5", root=tmp_path, nominal_spacing=[1.5, 1.5])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"label": np.full((3, 12, 10), 7, np.uint8)}, r"values \[7\] outside"),
        ({"label": np.zeros((3, 12, 9), np.uint8)}, "does not match image shape"),
        ({"image": np.full((3, 12, 10), np.nan, np.float32)}, "NaN/Inf"),
        ({"scribble": np.full((3, 12, 10), 9, np.uint16)}, "scribble has values"),
    ],
)
def test_read_errors(tmp_path: Path, kwargs, match):
    path = tmp_path / "patient001_frame01.h5"
    if "scribble" in kwargs:
        _write(path)
        with h5py.File(path, "a") as f:
            del f["scribble"]
            f["scribble"] = kwargs["scribble"]
    else:
        _write(path, **kwargs)
    with pytest.raises(WeaksegError, match=match) as info:
        read_acdc_h5(path)
    assert "\n" not in str(info.value)


def test_missing_and_corrupt_files(tmp_path: Path):
    with pytest.raises(WeaksegError, match="file not found"):
        read_acdc_h5(tmp_path / "nope.h5")
    bad = tmp_path / "patient001_frame01.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(WeaksegError, match="cannot read"):
        read_acdc_h5(bad)
    with pytest.raises(WeaksegError, match="data folder not found"):
        DATASETS.build("acdc_h5", root=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeaksegError, match=r"no \.h5 files"):
        DATASETS.build("acdc_h5", root=empty)


def test_resize_image_linear_labels_nearest():
    img = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    up = resize_image(img, (8, 8))
    assert len(torch.unique(up)) > 16  # interpolated values, not copies
    lab = torch.tensor([[[0, 1], [2, 3]]])
    assert set(resize_labels(lab, (7, 5)).unique().tolist()) <= {0, 1, 2, 3}
    weak = torch.full((1, 4, 4), IGNORE_INDEX)
    weak[0, 1, 1] = 2
    assert set(resize_labels(weak, (8, 8)).unique().tolist()) == {IGNORE_INDEX, 2}


def test_group_specs():
    assert parse_groups("21-23, 30") == {21, 22, 23, 30}
    with pytest.raises(WeaksegError, match="start 9 is after end 3"):
        parse_groups("9-3")
    with pytest.raises(WeaksegError, match="bad group spec"):
        parse_groups("a-b;")


def test_real_acdc_split_by_patient(acdc_root: Path):
    vset = DATASETS.build("acdc_h5", root=acdc_root, patients="88-93")
    assert vset.class_names == ["background", "RV", "Myo", "LV"]
    train = select_groups(vset.volumes, "88-90")
    val = select_groups(vset.volumes, "91-93")
    assert {v.group for v in train} == {"patient088", "patient089", "patient090"}
    assert not {v.group for v in train} & {v.group for v in val}
    assert len(train) == 6  # both frames of each patient stay together
    data = build_slices(train, annotation="scribble", num_classes=4, size=64)
    assert data.images.shape[1:] == (1, 64, 64)
    assert 0.002 < data.labelled_fraction < 0.05  # real scribbles: about 1 % of pixels
    assert set(data.keys) == {v.key for v in train}
    # hand-drawn scribbles agree with the masks almost everywhere (measured: 99.98 %)
    scr = np.concatenate([v.annotations["scribble"].ravel() for v in train])
    lab = np.concatenate([v.label.ravel() for v in train])
    mask = scr != IGNORE_INDEX
    assert np.mean(scr[mask] == lab[mask]) > 0.99
