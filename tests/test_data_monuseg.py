"""MoNuSeg reader (``weakseg.data.monuseg``) and AJI / instances (``weakseg.metrics.instances``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.data.base import DATASETS, IGNORE_INDEX
from weakseg.data.monuseg import load_monuseg, read_monuseg_tile
from weakseg.errors import WeaksegError
from weakseg.metrics.instances import aggregated_jaccard_index, instances_from_semantic

# --------------------------------------------------------------------------- synthetic folder


def _fake(root: Path, stems: tuple[str, ...] = ("Organ_a", "Organ_b"), points: bool = True,
          split: dict | None = None) -> Path:
    for d in ("images", "labels_instance", "labels_point"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(
            root / "images" / f"{stem}.png"
        )
        inst = np.zeros((12, 16), dtype=np.uint16)
        inst[1:4, 1:5] = 7
        inst[6:10, 8:14] = 300
        Image.fromarray(inst).save(root / "labels_instance" / f"{stem}_label.png")
        if points and stem == stems[0]:
            pt = np.zeros((12, 16), dtype=np.uint8)
            pt[2, 3] = pt[8, 10] = 255
            Image.fromarray(pt).save(root / "labels_point" / f"{stem}_label_point.png")
    split = split or {"train": [f"{stems[0]}.png"], "val": [f"{s}.png" for s in stems[1:]]}
    (root / "split.json").write_text(json.dumps(split))
    return root


def test_registered_and_synthetic_layout(tmp_path: Path) -> None:
    root = _fake(tmp_path)
    vs = DATASETS.get("monuseg")(root=root)
    assert vs.class_names == ["background", "nucleus"] and vs.in_channels == 3
    assert [v.key for v in vs.volumes] == ["Organ_a", "Organ_b"]
    a, b = vs.volumes
    assert a.image.shape == (1, 12, 16, 3) and a.image.dtype == np.float32
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0 and a.channels == 3
    assert a.label is not None and a.label.dtype == np.int64 and a.label.shape == (1, 12, 16)
    assert a.label.sum() == 12 + 24 and a.group == a.key
    inst = a.meta["instances"]
    assert inst.dtype == np.uint16 and set(np.unique(inst).tolist()) == {0, 7, 300}
    pts = a.annotations["points"]
    assert pts.shape == (1, 12, 16) and (pts == 1).sum() == 2
    assert set(np.unique(pts).tolist()) == {IGNORE_INDEX, 1}
    np.testing.assert_array_equal(a.meta["point_coords"], [[2, 3], [8, 10]])
    assert "points" not in b.annotations
    assert [v.key for v in load_monuseg(root=root, split="val").volumes] == ["Organ_b"]


def test_validation(tmp_path: Path) -> None:
    with pytest.raises(WeaksegError, match="not found"):
        load_monuseg(root=tmp_path / "nope")
    root = _fake(tmp_path / "x")
    with pytest.raises(WeaksegError, match="unknown MoNuSeg split"):
        load_monuseg(root=root, split="test")
    (root / "labels_instance" / "Organ_b_label.png").unlink()
    with pytest.raises(WeaksegError, match="no instance label for Organ_b.png"):
        load_monuseg(root=root)
    root = _fake(tmp_path / "y")
    small = Image.fromarray(np.zeros((5, 5), np.uint16))
    small.save(root / "labels_instance" / "Organ_a_label.png")
    with pytest.raises(WeaksegError, match="same pixels"):
        load_monuseg(root=root, split="train")
    root = _fake(tmp_path / "z", split={"train": ["Organ_c.png"], "val": []})
    with pytest.raises(WeaksegError, match="Organ_c.png"):
        load_monuseg(root=root, split="train")
    (root / "images" / "Organ_a.png").write_bytes(b"not a png")
    with pytest.raises(WeaksegError, match="cannot read"):
        load_monuseg(root=root)


# --------------------------------------------------------------------------- real data


def test_real_val_split(monuseg_root: Path) -> None:
    vs = load_monuseg(root=monuseg_root, split="val")
    assert len(vs.volumes) == 4
    for v in vs.volumes:
        assert v.image.shape == (1, 1000, 1000, 3) and v.image.dtype == np.float32
        assert v.label is not None and v.label.shape == (1, 1000, 1000)
        assert v.meta["instances"].dtype == np.uint16
        np.testing.assert_array_equal(v.label, v.meta["instances"] > 0)
        assert v.annotations == {}  # no points for the validation tiles


def test_real_train_tile_points(monuseg_root: Path) -> None:
    split = json.loads((monuseg_root / "split.json").read_text())
    stem = Path(split["train"][0]).stem
    v = read_monuseg_tile(
        monuseg_root / "images" / f"{stem}.png",
        monuseg_root / "labels_instance" / f"{stem}_label.png",
        monuseg_root / "labels_point" / f"{stem}_label_point.png",
    )
    pts = v.annotations["points"]
    n = int((pts == 1).sum())
    n_nuclei = len(np.unique(v.meta["instances"])) - 1
    assert abs(n - n_nuclei) <= 0.02 * n_nuclei  # about one click per nucleus
    assert (v.label[pts == 1] == 1).mean() > 0.98  # clicks lie on nuclei


# --------------------------------------------------------------------------- AJI


def test_aji_hand_computed() -> None:
    gt = np.array([[1, 1, 1, 1, 0, 0, 2, 2, 0, 0]])
    pred = np.array([[0, 5, 5, 5, 5, 9, 0, 3, 3, 3]])
    # G1 best S5: |inter| 3, |union| 5; G2 best S3: 1, 4; S9 unused adds 1 -> 4 / 10.
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(0.4)
    # One prediction covering two nuclei is matched by both (original AJI): 4 / 8.
    assert aggregated_jaccard_index(np.array([[4, 4, 4, 4]]), np.array([[1, 1, 2, 2]])) == 0.5
    assert aggregated_jaccard_index(gt, gt) == 1.0
    assert aggregated_jaccard_index(np.zeros((3, 3), int), np.zeros((3, 3), int)) == 1.0
    assert aggregated_jaccard_index(np.zeros_like(gt), gt) == 0.0
    assert aggregated_jaccard_index(gt, np.zeros_like(gt)) == 0.0


def _aji_loops(pred: np.ndarray, gt: np.ndarray) -> float:
    c = u = 0
    used: set[int] = set()
    pids = [p for p in np.unique(pred) if p]
    for g in [g for g in np.unique(gt) if g]:
        gm = gt == g
        ious = [((gm & (pred == p)).sum() / (gm | (pred == p)).sum(), -p) for p in pids]
        best = max(ious, default=(0.0, 0))
        if best[0] > 0:
            pm = pred == -best[1]
            c += (gm & pm).sum()
            u += (gm | pm).sum()
            used.add(-best[1])
        else:
            u += gm.sum()
    u += sum((pred == p).sum() for p in pids if p not in used)
    return c / u


def test_aji_matches_loop_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = instances_from_semantic(rng.random((24, 24)) < 0.5, connectivity=4) * 3
        pred = instances_from_semantic(rng.random((24, 24)) < 0.5, connectivity=8)
        assert aggregated_jaccard_index(pred, gt) == pytest.approx(_aji_loops(pred, gt))


def test_aji_bad_input() -> None:
    with pytest.raises(WeaksegError, match="shape"):
        aggregated_jaccard_index(np.zeros((2, 2), int), np.zeros((3, 3), int))
    with pytest.raises(WeaksegError, match="dtype"):
        aggregated_jaccard_index(np.zeros((2, 2)), np.zeros((2, 2), int))


def test_instances_from_semantic() -> None:
    mask = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]])
    four = instances_from_semantic(mask, connectivity=4)
    eight = instances_from_semantic(mask, connectivity=8)
    assert four.max() == 4 and eight.max() == 3
    assert eight[0, 0] == eight[1, 2] != 0
    big = instances_from_semantic(mask, min_size=2)
    assert big.max() == 1 and (big > 0).sum() == 3
    stack = instances_from_semantic(np.stack([mask, mask]))
    assert stack.max() == 6 and stack.shape == (2, 4, 4)
    with pytest.raises(WeaksegError, match="connectivity"):
        instances_from_semantic(mask, connectivity=6)


def test_split_membership_selects_tiles(tmp_path: Path) -> None:
    from weakseg.data.splits import select_groups

    vols = load_monuseg(root=_fake(tmp_path / "s")).volumes
    assert [v.key for v in select_groups(vols, "split:val")] == ["Organ_b"]
    assert [v.key for v in select_groups(vols, "split:train")] == ["Organ_a"]
    with pytest.raises(WeaksegError, match="unknown split 'test'"):
        select_groups(vols, "split:test")


def test_voronoi_point_labels_hand_case() -> None:
    from weakseg.data.base import IGNORE_INDEX
    from weakseg.data.monuseg import voronoi_point_labels

    pts = np.zeros((5, 9), dtype=bool)
    pts[2, 1] = pts[2, 7] = True
    out = voronoi_point_labels(pts, radius=1)
    assert out[2, 1] == 1 and out[1, 1] == 1 and out[2, 2] == 1 and out[1, 2] == IGNORE_INDEX
    background_columns = {x for x in range(9) if (out[:, x] == 0).all()}
    assert background_columns in ({3, 4}, {4, 5})        # the bisector x=4, two pixels wide
    assert (out == 0).sum() == 2 * 5
    assert (out[0, 0] == IGNORE_INDEX) and (out[0, 8] == IGNORE_INDEX)
    assert (voronoi_point_labels(np.zeros((4, 4), bool)) == IGNORE_INDEX).all()
    with pytest.raises(WeaksegError, match="radius"):
        voronoi_point_labels(pts, radius=-1)


def test_real_voronoi_labels_mostly_right(monuseg_root: Path) -> None:
    vols = [v for v in load_monuseg(root=monuseg_root, split="train").volumes][:2]
    for v in vols:
        ann, lab = v.annotations["points_voronoi"], v.label
        bg, fg = ann == 0, ann == 1
        assert bg.sum() > 1000 and fg.sum() > 100
        assert (lab[bg] == 0).mean() > 0.75 and (lab[fg] == 1).mean() > 0.85
