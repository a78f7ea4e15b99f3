"""Splits by group (patient), never by slice."""

from __future__ import annotations

import re

from weakseg.data.base import Volume
from weakseg.errors import WeaksegError

__all__ = ["group_number", "parse_groups", "select_groups"]


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


def select_groups(volumes: list[Volume], spec: str | int | list[int] | None) -> list[Volume]:
    """Volumes whose group number (or group name) is in ``spec``; all when ``spec`` is None.

    ``"split:<name>"`` selects the volumes the data set itself assigns to split ``name``
    (``meta["split"]``, e.g. MoNuSeg's ``split.json``: ``split:train``, ``split:val``).
    """
    if spec is None:
        return list(volumes)
    if isinstance(spec, str) and spec.startswith("split:"):
        name = spec[len("split:"):].strip()
        have = sorted({str(v.meta["split"]) for v in volumes if v.meta.get("split")})
        if not have:
            raise WeaksegError(f"'{spec}': this data set defines no splits; select groups by "
                               "number ('21-90') or name instead")
        if name not in have:
            raise WeaksegError(f"'{spec}': unknown split '{name}'; this data set has "
                               f"{', '.join(have)}")
        return [v for v in volumes if v.meta.get("split") == name]
    if isinstance(spec, str) and not re.fullmatch(r"[\d\s,\-]+", spec):
        names = {s.strip() for s in spec.split(",")}
        return [v for v in volumes if v.group in names or v.key in names]
    wanted = parse_groups(spec)
    return [v for v in volumes if group_number(v.group) in wanted]
