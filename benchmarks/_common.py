"""Helpers shared by the benchmark scripts: machine description and markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence

__all__ = ["machine", "md_table", "median"]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}")


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def md_table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
