"""Selections by number, name, glob and list; seeded folds disjoint by group."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.data.base import Volume
from weakseg.data.splits import fold_split, select_groups
from weakseg.errors import WeaksegError


def _vols(keys: list[str], groups: list[str] | None = None) -> list[Volume]:
    groups = groups or keys
    return [Volume(key=k, group=g, image=np.zeros((1, 4, 4), np.float32))
            for k, g in zip(keys, groups, strict=True)]


def test_numbers_names_globs_lists():
    vols = _vols(["patient021", "patient022", "patient030", "case_x"])
    keys = lambda sel: [v.key for v in select_groups(vols, sel)]  # noqa: E731
    assert keys("21-22") == ["patient021", "patient022"]
    assert keys(30) == ["patient030"]
    assert keys("patient02*") == ["patient021", "patient022"]
    assert keys("case_x, patient030") == ["patient030", "case_x"]
    assert keys(["patient03?", "case_*"]) == ["patient030", "case_x"]
    assert keys("nothing*") == []
    assert keys(None) == [v.key for v in vols]


def test_numbers_on_ids_with_several_numbers_are_refused():
    """'21-24' must not silently match the frame number of patient021_frame01."""
    vols = _vols(["patient001_frame21", "patient021_frame01"])
    with pytest.raises(WeaksegError, match="hold several numbers; set the reader's group_pattern"):
        select_groups(vols, "21-24")
    assert [v.key for v in select_groups(vols, "patient021_*")] == ["patient021_frame01"]
    grouped = _vols(["patient001_frame21", "patient021_frame01"], ["patient001", "patient021"])
    assert [v.key for v in select_groups(grouped, "21-24")] == ["patient021_frame01"]


def test_seeded_folds_partition_groups():
    keys = [f"p{i:02d}_f{j}" for i in range(10) for j in (1, 2)]
    vols = _vols(keys, [k.split("_")[0] for k in keys])
    seen: list[str] = []
    for fold in range(5):
        train, val = fold_split(vols, fold)
        assert {v.group for v in train}.isdisjoint({v.group for v in val})
        assert len(train) + len(val) == len(vols) and len(val) == 4
        seen += [v.key for v in val]
        assert [v.key for v in fold_split(vols, fold)[1]] == [v.key for v in val]  # seeded
    assert sorted(seen) == sorted(keys)  # every case validated exactly once
    assert [v.key for v in fold_split(vols, 0, seed=1)[1]] != [v.key for v in
                                                              fold_split(vols, 0)[1]]
    with pytest.raises(WeaksegError, match="fold 5 does not exist; use 0..4"):
        fold_split(vols, 5)
    with pytest.raises(WeaksegError, match="cannot make 50 folds"):
        fold_split(vols, 0, num_folds=50)
