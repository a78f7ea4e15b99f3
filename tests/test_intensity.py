"""Intensity normalisation per modality: MR per volume, CT one window for the data set."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.data.base import IGNORE_INDEX, Volume
from weakseg.data.intensity import Normalization, fit_normalization
from weakseg.data.slices import normalize_intensity
from weakseg.errors import WeaksegError


def _ct(seed: int, shift: float = 0.0) -> Volume:
    rng = np.random.default_rng(seed)
    image = rng.normal(-800, 50, (3, 16, 16)).astype(np.float32)  # air-ish background
    label = np.zeros((3, 16, 16), np.int64)
    label[:, 4:12, 4:12] = 1
    image[label == 1] = rng.normal(40 + shift, 10, int(label.sum()))  # soft tissue
    return Volume(key=f"c{seed}", group=f"c{seed}", image=image, label=label)


def test_minmax_is_the_per_volume_percentile_scaling():
    vol = _ct(0)
    np.testing.assert_array_equal(Normalization("minmax").apply(vol.image),
                                  normalize_intensity(vol.image))


def test_zscore_per_volume():
    out = Normalization("zscore").apply(_ct(1).image)
    assert out.shape == (3, 16, 16, 1)
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1) < 1e-3


def test_ct_window_from_training_foreground_then_zscore():
    vols = [_ct(2), _ct(3)]
    norm = fit_normalization("ct", vols)
    fg = np.concatenate([v.image[v.label == 1] for v in vols])
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert norm.lo[0] == pytest.approx(lo, rel=1e-6) and norm.hi[0] == pytest.approx(hi, rel=1e-6)
    clipped = np.clip(fg, lo, hi)
    assert norm.mean[0] == pytest.approx(clipped.mean(), rel=1e-5)
    # one transform for every volume: a brighter scan stays brighter (unlike per-volume)
    a, b = norm.apply(_ct(4).image), norm.apply(_ct(5, shift=20).image)
    assert float(b[..., 0][_ct(5).label == 1].mean()) > float(a[..., 0][_ct(4).label == 1].mean())
    assert float(a.min()) >= (lo - norm.mean[0]) / norm.std[0] - 1e-4  # air clipped to window
    assert Normalization.from_dict(norm.to_dict()) == norm
    assert Normalization.from_dict(None) == Normalization("minmax")


def test_auto_and_errors():
    assert fit_normalization("auto", [_ct(0)], ["CT"]).kind == "ct"
    assert fit_normalization("auto", [_ct(0)], ["MRI"]).kind == "minmax"
    assert fit_normalization("auto", [_ct(0)], None).kind == "minmax"
    with pytest.raises(WeaksegError, match="unknown; use one of auto, minmax, zscore, ct"):
        fit_normalization("hu", [_ct(0)])
    empty = Volume(key="e", group="e", image=np.zeros((1, 4, 4), np.float32),
                   annotations={"weak": np.full((1, 4, 4), IGNORE_INDEX)})
    with pytest.raises(WeaksegError, match="needs labelled foreground voxels"):
        fit_normalization("ct", [empty])


def test_ct_data_set_trains_with_its_window(tmp_path):
    """An nnU-Net folder whose channel is 'CT': auto picks the CT scheme, stored in the
    checkpoint and used by predict."""
    import json

    import nibabel as nib
    import torch
    import yaml

    from weakseg.cli import main

    from .conftest import tiny_config

    root = tmp_path / "ct"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(3):
        vol = _ct(10 + i)
        xyz = lambda a: np.ascontiguousarray(np.transpose(a, (2, 1, 0)))  # noqa: E731
        nib.save(nib.Nifti1Image(xyz(vol.image), np.eye(4)),
                 root / "imagesTr" / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(xyz(vol.label.astype(np.uint8)), np.eye(4)),
                 root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                   "labels": {"background": 0, "organ": 1}}))
    raw = tiny_config(train__epochs=1)
    raw["data"] = {"name": "nifti", "root": str(root), "annotation": "full", "size": 16,
                   "train": "0-1", "val": "2"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["normalization"]["kind"] == "ct" and ckpt["normalization"]["lo"][0] > -200
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--input",
                 str(root / "imagesTr"), "--output", str(tmp_path / "pred"), "--quiet"]) == 0
