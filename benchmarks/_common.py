"""Helpers shared by the benchmark scripts: machine description, markdown tables, and the
run / report / overlay command line of the training benchmarks."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["bench_main", "load_run", "load_seeds", "machine", "md_table", "median", "row_stats"]


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


def row_stats(runs: dict[int, tuple[dict, list[dict[str, str]]]], classes: Sequence[str], *,
              timed: Callable[[list[dict[str, str]]], list[dict[str, str]]] = lambda rows: rows
              ) -> dict:
    """Seed statistics of a row from :func:`load_seeds`: Dice per seed, mean, range, per-class
    Dice and HD95, last-epoch Dice, best epochs and the median s/epoch over the log rows that
    ``timed`` keeps (None when a run has no log rows, e.g. a post-processed evaluation)."""
    metrics = [summary["val_metrics"] for summary, _ in runs.values()]

    def mean(key: str) -> float:
        return statistics.fmean(m[key] for m in metrics)

    dice = [m["dice_mean"] for m in metrics]
    times = [float(r["train_seconds"]) for _, rows in runs.values() for r in timed(rows)]
    last = [float(rows[-1]["val_dice_mean"]) for _, rows in runs.values()
            if rows and "val_dice_mean" in rows[-1]]
    return {
        "seeds": sorted(runs), "dice": dice, "mean": statistics.fmean(dice),
        "min": min(dice), "max": max(dice),
        "per_class": {c: mean(f"dice_{c}") for c in classes},
        "hd95_class": ({c: mean(f"hd95_{c}") for c in classes}
                       if all(f"hd95_{c}" in m for m in metrics for c in classes) else {}),
        "hd95": mean("hd95_mean"),
        "last": statistics.fmean(last) if last else None,
        "best": [summary.get("best_epoch", "–") for summary, _ in runs.values()],
        "epochs": [len(rows) for _, rows in runs.values()],
        "s_epoch": median(times) if times else None,
        "kept": [float(rows[-1][k]) for _, rows in runs.values() if rows for k in rows[-1]
                 if k.endswith("_kept")],
    }


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
