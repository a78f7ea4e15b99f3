"""Splits by group (patient), never by slice: selections and cross-validation folds.

A selection (``data.train`` / ``data.val`` / ``data.test``, ``evaluate --patients``) is one of

- numbers and ranges, ``"21-90,95"``: the number in each group id (``patient021`` → 21);
  a group id holding several numbers (``patient021_frame01``) is ambiguous and refused —
  set the reader's ``group_pattern`` (e.g. ``"patient\\d+"``) or select by name;
- names and glob patterns, ``"patient021_frame01,patient03*"``, matched against the group id
  and the volume key; a YAML list (``[case_001, "case_01*"]``) is the same;
- ``"split:<name>"``: the data set's own split (MoNuSeg's ``split.json``).

Folds (:func:`fold_split`) follow nnU-Net: ``splits_final.json`` when the data set has one
(a list of ``{"train": [...], "val": [...]}``, one entry per fold), else a seeded k-fold over
the groups.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

import numpy as np

from weakseg.data.base import Volume
from weakseg.errors import WeaksegError

__all__ = ["FOLD_SEED", "fold_split", "group_number", "parse_groups", "select_groups"]

#: Seed of the k-fold assignment of groups when the data set brings no splits.
FOLD_SEED = 12345
_NUMERIC = re.compile(r"[\d\s,\-]+")


def parse_groups(spec: str | int | list[int]) -> set[int]:
    """Parse ``"21-90"``, ``"91-100,5"``, ``7`` or ``[1, 2]`` into a set of ints."""
    if isinstance(spec, int):
        return {spec}
    if isinstance(spec, list):
        return {int(x) for x in spec}
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise WeaksegError(f"bad range '{part}': start {a} is after end {b}")
            out.update(range(a, b + 1))
        elif part.isdigit():
            out.add(int(part))
        else:
            raise WeaksegError(f"bad group spec '{part}'; use numbers and ranges like '21-90,95'")
    return out


def group_number(group: str) -> int | None:
    """The last integer in a group id (``patient091`` → 91), or None."""
    nums = re.findall(r"\d+", group)
    return int(nums[-1]) if nums else None


def _numbered(volumes: list[Volume], spec: str) -> list[Volume]:
    ambiguous = [v.group for v in volumes if len(re.findall(r"\d+", v.group)) > 1]
    if ambiguous:
        raise WeaksegError(
            f"'{spec}' selects by number, but group ids like '{ambiguous[0]}' hold several "
            "numbers; set the reader's group_pattern (e.g. data.params.group_pattern: "
            "'patient\\d+') or select by names or glob patterns (e.g. 'patient02*')"
        )
    wanted = parse_groups(spec)
    return [v for v in volumes if group_number(v.group) in wanted]


def _named(volumes: list[Volume], patterns: list[str]) -> list[Volume]:
    chosen = []
    for v in volumes:
        if any(fnmatch.fnmatchcase(v.group, p) or fnmatch.fnmatchcase(v.key, p)
               for p in patterns):
            chosen.append(v)
    return chosen


def select_groups(
    volumes: list[Volume], spec: str | int | Sequence[str | int] | None
) -> list[Volume]:
    """Volumes whose group matches ``spec`` (see the module docstring); all when ``None``."""
    if spec is None:
        return list(volumes)
    if isinstance(spec, int):
        spec = str(spec)
    elif not isinstance(spec, str):
        spec = ",".join(str(s) for s in spec)
    if spec.startswith("split:"):
        name = spec[len("split:"):].strip()
        have = sorted({str(v.meta["split"]) for v in volumes if v.meta.get("split")})
        if not have:
            raise WeaksegError(f"'{spec}': this data set defines no splits; select groups by "
                               "number ('21-90') or name instead")
        if name not in have:
            raise WeaksegError(f"'{spec}': unknown split '{name}'; this data set has "
                               f"{', '.join(have)}")
        return [v for v in volumes if v.meta.get("split") == name]
    if _NUMERIC.fullmatch(spec):
        return _numbered(volumes, spec)
    patterns = [s.strip() for s in spec.split(",") if s.strip()]
    return _named(volumes, patterns)


def fold_split(
    volumes: list[Volume], fold: int, *, num_folds: int = 5, seed: int = FOLD_SEED
) -> tuple[list[Volume], list[Volume]]:
    """``(train, val)`` of cross-validation fold ``fold``, disjoint by group.

    Volumes that carry ``meta["fold"]`` (the fold in which they are validated, from nnU-Net's
    ``splits_final.json``) use it; otherwise the sorted groups are shuffled with ``seed`` and
    dealt round-robin into ``num_folds`` folds (nnU-Net's default is 5 folds).
    """
    given = [v.meta.get("fold") for v in volumes]
    if all(f is not None for f in given) and volumes:
        count = max(int(f) for f in given if f is not None) + 1  # type: ignore[arg-type]
        if not 0 <= fold < count:
            raise WeaksegError(f"fold {fold} does not exist; splits_final.json defines folds "
                               f"0..{count - 1}")
        val = [v for v in volumes if v.meta.get("fold") == fold]
        return [v for v in volumes if v.meta.get("fold") != fold], val
    if num_folds < 2:
        raise WeaksegError(f"num_folds must be ≥ 2, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise WeaksegError(f"fold {fold} does not exist; use 0..{num_folds - 1}")
    groups = sorted({v.group for v in volumes})
    if len(groups) < num_folds:
        raise WeaksegError(f"{len(groups)} groups (patients) cannot make {num_folds} folds; "
                           "lower num_folds or add data")
    order = np.random.default_rng(seed).permutation(len(groups))
    in_val = {groups[i] for k, i in enumerate(order) if k % num_folds == fold}
    return ([v for v in volumes if v.group not in in_val],
            [v for v in volumes if v.group in in_val])
