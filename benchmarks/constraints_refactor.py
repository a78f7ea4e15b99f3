"""Old vs new numbers of two ACDC constraint rows after the constraint / objective / priors
refactor (issue 9, design step): writes docs/benchmarks/constraints_refactor.md.

The old numbers are read from the published table of docs/benchmarks/acdc_constraints.md;
the new runs from a separate results folder (default
benchmarks/results/constraints_refactor/<row>), trained with the same configs (migrated to
the `constraint` + `objective` form) and seed 0:

    python -m weakseg.cli train --config configs/acdc_constraints_<row>.yaml \\
        --out benchmarks/results/constraints_refactor/<row> --quiet --set train.threads=1
    python benchmarks/constraints_refactor.py --commands "..."
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, median  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROWS = ["points_size_logbarrier", "points_size_lagrangian_per_image"]
CLASSES = ["RV", "Myo", "LV"]
OLD_DOC = REPO / "docs" / "benchmarks" / "acdc_constraints.md"
DOC = REPO / "docs" / "benchmarks" / "constraints_refactor.md"


def old_rows() -> dict[str, dict[str, str]]:
    """The main table of acdc_constraints.md, by method name."""
    lines = [line for line in OLD_DOC.read_text().splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if len(cells) == len(head) and cells[0] not in out:
            out[cells[0]] = dict(zip(head, cells, strict=True))
    return out


def new_row(out: Path) -> dict[str, str]:
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader(open(out / "log.csv")))
    m = summary["val_metrics"]
    last = rows[-1]
    return {
        **{f"Dice {c}": f"{m[f'dice_{c}']:.3f}" for c in CLASSES},
        "Dice mean": f"{m['dice_mean']:.3f}",
        "HD95 mean": f"{m['hd95_mean']:.1f}",
        "best epoch": str(summary["best_epoch"]),
        "Dice at last epoch": f"{float(last['val_dice_mean']):.3f}",
        "train violated (last epoch)": f"size {100 * float(last['train_size_violated']):.1f} %",
        "s/epoch": f"{median([float(r['train_seconds']) for r in rows]):.0f}",
        "_dice_mean": str(m["dice_mean"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results"
                   / "constraints_refactor")
    p.add_argument("--baseline", type=Path, default=None,
                   help="runs of the code before the refactor, retrained now (same layout)")
    p.add_argument("--baseline-label", default="before the refactor, retrained now")
    p.add_argument("--commands", default="", help="the exact commands, for the document")
    p.add_argument("--notes", default="", help="a markdown paragraph for the document")
    args = p.parse_args()
    import torch

    old = old_rows()
    cols = [*[f"Dice {c}" for c in CLASSES], "Dice mean", "HD95 mean", "best epoch",
            "Dice at last epoch", "train violated (last epoch)", "s/epoch"]
    table, deltas = [], []
    for name in ROWS:
        new = new_row(args.results / name)
        delta = float(new["_dice_mean"]) - float(old[name]["Dice mean"])
        deltas.append(delta)
        table.append([name, "published (acdc_constraints.md)", *[old[name][c] for c in cols],
                      ""])
        if args.baseline is not None and (args.baseline / name / "summary.json").exists():
            base = new_row(args.baseline / name)
            diff = float(base["_dice_mean"]) - float(old[name]["Dice mean"])
            table.append([name, args.baseline_label, *[base[c] for c in cols], f"{diff:+.3f}"])
        table.append([name, "after the refactor", *[new[c] for c in cols], f"{delta:+.3f}"])
    stamp = datetime.date.today().isoformat()
    machine = (f"`nproc` = {os.cpu_count()}, {platform.machine()}, torch {torch.__version__}, "
               f"Python {platform.python_version()}")
    text = f"""# Constraint refactor: two ACDC rows re-run (seed 0)

Issue 9, design step: constraint families and objectives became two registries joined by one
`constraint` loss (the shipped configs migrated to `constraint: {{family: size}}` plus
`objective: {{method: log_barrier | lagrangian, ...}}`, `num_classes` injected from the data),
and the priors a registry (the `index` batch entry from it). Behaviour is meant to be
unchanged: the two rows below were retrained with the migrated configs, the same protocol and
seed as `acdc_constraints.md`, into a separate results folder.

Measured {stamp}; {machine}.

{md_table(["row", "run", *cols, "Δ Dice mean vs published"], table)}

Largest |Δ Dice mean| of the refactored code vs the published numbers:
{max(abs(d) for d in deltas):.4f}. s/epoch is the median training pass of an epoch (validation
excluded) and measures the load of the machine (both rows ran at once with the test suite; the
pre-refactor reruns shared the 2 cores with other sessions' trainings too, load ~5),
not the code.

{args.notes}

## Commands

```bash
{args.commands}
```
"""
    DOC.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
