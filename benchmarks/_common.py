"""Helpers shared by the benchmark scripts: machine description, markdown tables, and the
run / report / overlay command line of the training benchmarks."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["bench_main", "load_run", "load_seeds", "machine", "md_table", "median"]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}")


def load_run(out: Path) -> tuple[dict, list[dict[str, str]]] | None:
    """``(summary.json, log.csv rows)`` of a finished run folder, or None."""
    import csv
    import json

    if not (out / "summary.json").exists():
        return None
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return json.loads((out / "summary.json").read_text()), rows


def load_seeds(results: Path, base: str) -> dict[int, tuple[dict, list[dict[str, str]]]]:
    """Finished runs of a row by training seed: folder ``<base>`` is seed 0, ``<base>@<k>``
    seed k (the naming of the ``run NAME@SEED`` command of the training benchmarks)."""
    found = {}
    for folder in [results / base, *sorted(results.glob(f"{base}@*"))]:
        run_ = load_run(folder)
        if run_ is not None:
            found[int(folder.name.partition("@")[2] or 0)] = run_
    return found


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def md_table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_main(
    description: str,
    *,
    run: Callable[[list[str], int], None],
    report: Callable[[list[str], str], None],
    report_names: Sequence[str],
    overlay: Callable[[list[str], str], None] | None = None,
    overlay_names: Sequence[str] = (),
) -> None:
    """``run NAMES [--threads N]``, ``report [NAMES] [--notes FILE]`` and, when ``overlay``
    is given, ``overlay [NAMES] [--patients SPEC]``: the command line of a training
    benchmark script."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("names", nargs="+")
    r.add_argument("--threads", type=int, default=2)
    q = sub.add_parser("report")
    q.add_argument("names", nargs="*", default=list(report_names))
    q.add_argument("--notes", default="", help="markdown file with the discussion section")
    if overlay is not None:
        o = sub.add_parser("overlay")
        o.add_argument("names", nargs="*", default=list(overlay_names))
        o.add_argument("--patients", default="91-100")
    args = p.parse_args()
    if args.cmd == "run":
        run(args.names, args.threads)
    elif args.cmd == "overlay" and overlay is not None:
        overlay(args.names, args.patients)
    else:
        report(args.names, Path(args.notes).read_text() if args.notes else "")
