"""ACDC constraint benchmark: points / boxes / tags with size and box constraints.

Usage (each run is `weakseg train --resume`, so an interrupted benchmark continues):

    python benchmarks/acdc_constraints.py run full points_pce points_size_logbarrier --threads 1
    python benchmarks/acdc_constraints.py report --notes benchmarks/acdc_constraints_notes.md

Runs are named after configs/acdc_constraints_<name>.yaml and live in
benchmarks/results/acdc_constraints/<name> (or $WEAKSEG_BENCH_RESULTS/<name>: a separate
folder, e.g. to re-run rows after a refactor without touching the published runs). The
report reads each run's summary.json and log.csv, and measures the constraint satisfaction
of the selected model on the validation slices (size bounds from the validation tags and the
training-set statistics, as in training).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_main, md_table, median  # noqa: E402
from acdc_scribbles import CLASSES, REPO, _machine_line, run  # noqa: E402
from acdc_scribbles import overlay as _overlay  # noqa: E402

RESULTS = Path(os.environ.get("WEAKSEG_BENCH_RESULTS")
               or REPO / "benchmarks" / "results" / "acdc_constraints")
DOC = REPO / "docs" / "benchmarks" / "acdc_constraints.md"
PREFIX = "acdc_constraints_"
ORDER = ["full", "points_pce", "points_size_penalty", "points_size_logbarrier",
         "points_size_lagrangian", "points_size_lagrangian_per_image", "points_size_proposal",
         "points_size_crf", "boxes", "tags_size", "tags_size_crf"]


def _load(name: str) -> dict | None:
    out = RESULTS / name
    if not (out / "summary.json").exists():
        return None
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader(open(out / "log.csv")))
    return {"summary": summary, "rows": rows}


def val_size_satisfaction(name: str) -> float:
    """Fraction of the validation size constraints the selected model satisfies.

    For every validation slice (128x128, as trained) and class, the bounds are those of
    ``bounds_from_tags``: (0, 0) for classes the slice's tags say are absent, else the
    (min, max) class size over the training slices. A constraint holds if the hard
    (argmax) size lies within its bounds. Computed for every run, with or without a size
    term (full supervision gives the reference rate).
    """
    import numpy as np
    import torch

    from weakseg.annotate.boxes import size_bounds_from_tags, size_stats, tags_from_mask
    from weakseg.config import load_config
    from weakseg.data import DATASETS
    from weakseg.data.slices import build_slices
    from weakseg.engine.trainer import load_model_from_checkpoint

    cfg = load_config(RESULTS / name / "config.yaml")
    root = (REPO / cfg.data.root) if not Path(cfg.data.root).is_absolute() else cfg.data.root
    train = DATASETS.build("acdc_h5", root=root, patients=cfg.data.train).volumes
    val = DATASETS.build("acdc_h5", root=root, patients=cfg.data.val).volumes
    size = cfg.data.size
    stats = size_stats(build_slices(train, annotation="full", num_classes=4, size=size)
                       .targets.numpy(), 4)
    vdata = build_slices(val, annotation="full", num_classes=4, size=size)
    labels = vdata.targets.numpy()
    bounds = size_bounds_from_tags(tags_from_mask(labels, num_classes=4), stats)  # (N, C, 2)
    model, _ = load_model_from_checkpoint(RESULTS / name / "best.pt")
    model.eval()
    hard = []
    with torch.no_grad():
        for i in range(0, len(vdata), 32):
            pred = model(vdata.images[i:i + 32]).argmax(1)
            hard.append(torch.stack([(pred == c).sum((1, 2)) for c in range(4)], 1))
    sizes = torch.cat(hard).numpy()
    ok = (sizes >= bounds[..., 0]) & (sizes <= bounds[..., 1])
    return float(np.mean(ok))


def report(names: list[str], notes: str) -> None:
    runs = {n: r for n in names if (r := _load(n)) is not None}
    if "full" not in runs:
        raise SystemExit("the full-supervision run is missing; run it first")
    full = runs["full"]["summary"]["val_metrics"]["dice_mean"]
    head = ["method", *[f"Dice {c}" for c in CLASSES], "Dice mean", "% of full",
            *[f"HD95 {c}" for c in CLASSES], "HD95 mean", "best epoch", "Dice at last epoch",
            "train violated (last epoch)", "val size constraints met", "s/epoch"]
    rows = []
    for name, r in runs.items():
        m = r["summary"]["val_metrics"]
        last = r["rows"][-1]
        violated = [k for k in last if k.startswith("train_") and k.endswith("_violated")]
        terms = [k for k in violated if k.count("_") == 3]  # per term of a multi-term loss
        shown = terms or [k for k in violated if k.count("_") == 2]
        viol = ", ".join(f"{k[6:-9].replace('_', ' ')} {100 * float(last[k]):.1f} %"
                         for k in shown) or "–"
        sat = val_size_satisfaction(name)
        per_epoch = median([float(x["train_seconds"]) for x in r["rows"]])
        rows.append([
            name, *[f"{m[f'dice_{c}']:.3f}" for c in CLASSES], f"**{m['dice_mean']:.3f}**",
            f"{100 * m['dice_mean'] / full:.1f}", *[f"{m[f'hd95_{c}']:.1f}" for c in CLASSES],
            f"{m['hd95_mean']:.1f}", r["summary"]["best_epoch"],
            f"{float(last['val_dice_mean']):.3f}", viol,
            f"{100 * sat:.1f} %", f"{per_epoch:.0f}",
        ])
        print(name, rows[-1], flush=True)
    epochs = len(runs["full"]["rows"])
    seeds = seed_table(list(runs))
    dates = " and ".join(sorted({datetime.date.fromtimestamp(
        (RESULTS / n / "summary.json").stat().st_mtime).isoformat() for n in runs}))
    seed_runs = sorted(p.parent.name for n in runs for p in RESULTS.glob(f"{n}@*/summary.json"))
    text = f"""# ACDC from points, boxes and tags with constraints — reduced CPU protocol

Measured {dates} on this machine: see "Machine" below.

**Protocol.** ACDC (WSL4MIS h5), 2D U-Net 16-32-64-128-256 (1.81 M parameters), 128×128
slices, train on patients 021–090 (140 volumes, 1284 slices), select the best epoch on
patients 091–100 (20 volumes) by mean 3D Dice and report its 3D metrics on the same patients
(no separate test split in this copy of the data: validation numbers, slightly optimistic for
every row alike). Same network, budget ({epochs} epochs × 160 steps, batch 8, Adam lr 1e-3,
poly decay, rot90/flip augmentation) and seed 0 for every row, including full supervision —
half the budget of `acdc_scribbles.md`, to fit several runs in a session on 2 cores. Weak
annotations are simulated from the full masks with seeded simulators (`configs/{PREFIX}*.yaml`):

- **points**: one click per structure and slice (`sim:points`, uniform inside, drawn as a
  radius-2 disc so that it survives the resizing), background included: 0.08 % of the pixels;
- **boxes**: the tight box of each structure per slice, as priors only (`annotation: none`):
  per-pixel emptiness (the classes allowed at each pixel), tightness of every row and column
  crossing a box, box-size bounds on the mass inside each box, log-barrier on values in
  pixels (`configs/{PREFIX}boxes.yaml`; earlier forms collapsed, see "Boxes" below);
- **tags**: which classes each slice contains, no pixel label (`annotation: none`).

Size bounds (`bounds_from_tags`): `(0, 0)` for the classes a slice's tags say are absent,
the (min, max) class size over the training slices' masks for present ones — a data-set
statistic, as in Kervadec et al. (MedIA 2019); no bound reads the ground truth of the slice it
constrains. HD95 is in voxels (no spacing in the h5 files).

{md_table(head, rows)}

"train violated" = fraction of the active constraints of the last training epoch violated by
more than half a pixel (logged by the trainer, `train_<term>_violated`). "val size
constraints met" = the fraction of (slice, class) size constraints of the validation slices
that the **selected model's hard prediction** satisfies (bounds built from the validation
tags exactly as in training), computed by the report. s/epoch: median training-pass time with
1 torch thread, two runs sharing the 2 cores.

{seeds}
![validation overlays: truth and each run](acdc_constraints_overlay.png)

{notes}

## Commands

```bash
python benchmarks/acdc_constraints.py run {' '.join(runs)} --threads 1   # resumable
python benchmarks/acdc_constraints.py run {' '.join(seed_runs)} --threads 1   # seeds
python benchmarks/acdc_constraints.py report {' '.join(runs)} \\
    --notes benchmarks/acdc_constraints_notes.md
python benchmarks/acdc_constraints.py overlay full points_pce points_size_logbarrier \\
    points_size_lagrangian_per_image boxes
python benchmarks/box_dynamics.py --steps 120
```

## Machine

{_machine_line()}
"""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(text)


def seed_table(names: list[str]) -> str:
    """Mean 3D Dice of the selected model for every training seed of the rows that have
    ``<name>@<seed>`` runs (same config and weak labels, another ``train.seed``)."""
    spread = {}
    for name in names:
        extra = sorted(RESULTS.glob(f"{name}@*/summary.json"))
        if extra:
            dice = [runs_dice(RESULTS / name)] + [runs_dice(p.parent) for p in extra]
            spread[name] = ([0] + [int(p.parent.name.partition("@")[2]) for p in extra], dice)
    if not spread:
        return ""
    full = spread.get("full")
    full_mean = sum(full[1]) / len(full[1]) if full else None
    rows = []
    for name, (seeds, dice) in spread.items():
        mean = sum(dice) / len(dice)
        ratio = f"{100 * mean / full_mean:.1f}" if full_mean else "–"
        rows.append([name, ", ".join(map(str, seeds)), " / ".join(f"{d:.3f}" for d in dice),
                     f"**{mean:.3f}**", f"{min(dice):.3f}–{max(dice):.3f}", ratio])
    head = ["method", "seeds", "Dice mean per seed", "mean over seeds", "range",
            "% of full (seed means)"]
    return ("**Seed spread.** The same configs retrained with other `train.seed` values (same "
            "weak labels; network initialisation, batch order and augmentation change): "
            "differences between rows smaller than these ranges are not established.\n\n"
            + md_table(head, rows) + "\n")


def runs_dice(out: Path) -> float:
    return json.loads((out / "summary.json").read_text())["val_metrics"]["dice_mean"]


def overlay(names: list[str], patients: str) -> None:
    """Mid-ventricle slices of a few validation volumes: truth and each run's prediction."""
    _overlay(names, patients, results=RESULTS,
             path=DOC.with_name("acdc_constraints_overlay.png"), annotation=None)


def main() -> None:
    bench_main(__doc__, run=lambda names, threads: run(names, threads, prefix=PREFIX,
                                                       results=RESULTS),
               report=report, report_names=ORDER, overlay=overlay,
               overlay_names=["full", "points_pce", "points_size_logbarrier",
                              "points_size_lagrangian_per_image", "boxes"])


if __name__ == "__main__":
    main()
