"""ACDC proposal benchmark: ADM (graph cut, mean-field) and self-training next to gradient rows.

Usage (each run is `weakseg train --resume`, so an interrupted benchmark continues):

    python benchmarks/acdc_proposals.py run scribbles_dense_crf scribbles_graphcut --threads 1
    python benchmarks/acdc_proposals.py report --notes benchmarks/acdc_proposals_notes.md

A row ``<name>`` trains ``configs/acdc_proposals_<name>.yaml``, or for the reference rows
shared with the constraint benchmark (``full``, ``points_size_lagrangian_per_image``,
``boxes``) ``configs/acdc_constraints_<name>.yaml``, into
benchmarks/results/acdc_proposals/<name> (or $WEAKSEG_BENCH_RESULTS/<name>). ``<name>@<seed>``
retrains it with ``train.seed=<seed>``. Rows that refine a trained model start from the
selected model of the row :data:`INIT` names, with the same seed suffix (``*_cbst``,
``scribbles_dense_crf_graphcut``).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_main, load_seeds, md_table, row_stats  # noqa: E402
from acdc_scribbles import CLASSES, REPO, _machine_line  # noqa: E402
from acdc_scribbles import overlay as _overlay  # noqa: E402

RESULTS = Path(os.environ.get("WEAKSEG_BENCH_RESULTS")
               or REPO / "benchmarks" / "results" / "acdc_proposals")
DOC = REPO / "docs" / "benchmarks" / "acdc_proposals.md"
SHARED = {"full", "points_size_lagrangian_per_image", "boxes"}
#: self-training rows: name -> the row whose selected model (best.pt) they start from
INIT = {"scribbles_dense_crf_cbst": "scribbles_dense_crf",
        "scribbles_dense_crf_graphcut": "scribbles_dense_crf",
        "scribbles_dense_crf_more": "scribbles_dense_crf",
        "scribbles_dense_crf_meanfield": "scribbles_dense_crf",
        "full_more": "full"}
ORDER = ["full", "full_more", "scribbles_dense_crf", "scribbles_graphcut",
         "scribbles_dense_crf_more", "scribbles_dense_crf_graphcut",
         "scribbles_dense_crf_meanfield", "scribbles_dense_crf_cbst",
         "points_size_lagrangian_per_image",
         "points_size_lagrangian_graphcut", "boxes", "boxes_graphcut"]
#: the gradient row each proposal row is compared with (step time, Dice)
BASE = {"scribbles_graphcut": "scribbles_dense_crf",
        "scribbles_dense_crf_meanfield": "scribbles_dense_crf_more",
        "scribbles_dense_crf_cbst": "scribbles_dense_crf_more",
        "scribbles_dense_crf_graphcut": "scribbles_dense_crf_more",
        "points_size_lagrangian_graphcut": "points_size_lagrangian_per_image",
        "boxes_graphcut": "boxes"}


def config_path(base: str) -> Path:
    prefix = "acdc_constraints_" if base in SHARED else "acdc_proposals_"
    return REPO / "configs" / f"{prefix}{base}.yaml"


def run(names: list[str], threads: int) -> None:
    for name in names:
        base, _, seed = name.partition("@")
        out = RESULTS / name
        if (out / "summary.json").exists():
            print(f"{name}: done already", flush=True)
            continue
        resume = ["--resume"] if (out / "last.pt").exists() else []
        cmd = [sys.executable, "-m", "weakseg.cli", "train", "--config", str(config_path(base)),
               "--out", str(out), *resume, "--quiet", "--set", f"train.threads={threads}"]
        if seed:
            cmd.append(f"train.seed={int(seed)}")
        if base in INIT:
            parent = INIT[base] + (f"@{seed}" if seed else "")
            cmd.append(f"train.init={RESULTS / parent / 'best.pt'}")
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)


def _proposal_epochs(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The epochs a proposal was computed in (``start_epoch`` rows); all epochs of a row
    without a proposal or whose proposal was on from the start."""
    active = [r for r in rows if any(float(v) > 0 for k, v in r.items()
                                     if k.endswith("_refreshed"))]
    return active or rows


def report(names: list[str], notes: str) -> None:
    stats = {n: row_stats(r, CLASSES, timed=_proposal_epochs) for n in names
             if (r := load_seeds(RESULTS, n))}
    if "full" not in stats:
        raise SystemExit("the full-supervision run is missing; run it first")
    full = stats["full"]["mean"]
    full_step = stats["full"]["s_epoch"]
    head = ["method", "seeds", "Dice per seed", "Dice mean", "% of full",
            "% of full, same epochs", *[f"Dice {c}" for c in CLASSES], "HD95 mean",
            "best epoch", "s/epoch",
            "step time × full", "step time × gradient row"]
    rows = []
    for name, st in stats.items():
        base = BASE.get(name)
        ratio = (f"{st['s_epoch'] / stats[base]['s_epoch']:.2f} ({base})"
                 if base in stats else "–")
        # rows that add 5 epochs to a trained model: against full supervision + 5 epochs
        same = "full_more" if name in INIT or name == "full_more" else "full"
        same_pct = (f"{100 * st['mean'] / stats[same]['mean']:.1f}" if same in stats else "–")
        rows.append([
            name, ", ".join(map(str, st["seeds"])), " / ".join(f"{d:.3f}" for d in st["dice"]),
            f"**{st['mean']:.3f}**", f"{100 * st['mean'] / full:.1f}", same_pct,
            *[f"{st['per_class'][c]:.3f}" for c in CLASSES], f"{st['hd95']:.1f}",
            ", ".join(map(str, st["best"])), f"{st['s_epoch']:.0f}",
            f"{st['s_epoch'] / full_step:.2f}", ratio,
        ])
        print(rows[-1], flush=True)
    folders = [p for n in stats for p in [RESULTS / n, *RESULTS.glob(f"{n}@*")]
               if (p / "summary.json").exists()]
    dates = " and ".join(sorted({datetime.date.fromtimestamp(
        (p / "summary.json").stat().st_mtime).isoformat() for p in folders}))
    seed_runs = sorted(p.name for p in folders if "@" in p.name)
    text = f"""# ACDC: proposals (ADM graph cut, mean-field, self-training) next to gradient descent

Measured {dates} on this machine: see "Machine" below.

**Protocol** (the reduced CPU protocol of `acdc_constraints.md`). ACDC (WSL4MIS h5), 2D U-Net
16-32-64-128-256 (1.81 M parameters), 128×128 slices, train on patients 021–090 (140 volumes,
1284 slices), select the best epoch on patients 091–100 (20 volumes) by mean 3D Dice and report
its 3D metrics on the same patients (validation numbers, slightly optimistic for every row
alike). Same network and budget for every row — 15 epochs × 160 steps, batch 8, Adam lr 1e-3,
poly decay, rot90/flip augmentation — except the rows `scribbles_dense_crf_<x>` that refine a
trained model: they **add** 5 epochs (lr 3e-4) to the selected dense-CRF model of the same seed
(`train.init`; their s/epoch is that of the 5 epochs), and `scribbles_dense_crf_more` is their
control: the same 5 added epochs by gradient descent on the dense-CRF loss itself; `full_more`
gives full supervision the same 5 added epochs ("% of full, same epochs" divides those rows by
it, the others by `full`). The boxes and
points proposal rows keep the 15-epoch budget and switch the proposal on at epoch 10
(`start_epoch: 10`): up to there they train exactly as their gradient row with the same seed
(the delayed term adds an exact zero gradient; tested), and their s/epoch is that of the
epochs with the proposal on.
Scribbles are the real ACDC scribbles; points and boxes are simulated from the masks as in
`acdc_constraints.md`. Seeds change the network initialisation, batch order and augmentation
(the weak labels stay). HD95 in voxels. s/epoch: median training-pass time with 1 torch
thread, two runs sharing the 2 cores (the ratios compare rows measured under similar load,
still noisy by ±20 %).

{md_table(head, rows)}

Configs: `configs/acdc_proposals_<method>.yaml`; `full`, `points_size_lagrangian_per_image` and
`boxes` are the rows of `configs/acdc_constraints_<method>.yaml`.

{notes}

## Commands

```bash
python benchmarks/acdc_proposals.py run {' '.join(stats)} --threads 1   # resumable
python benchmarks/acdc_proposals.py run {' '.join(seed_runs)} --threads 1   # other seeds
python benchmarks/acdc_proposals.py report {' '.join(stats)} \\
    --notes benchmarks/acdc_proposals_notes.md
python benchmarks/acdc_proposals.py overlay
```

## Machine

{_machine_line()}
"""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(text)


def overlay(names: list[str], patients: str) -> None:
    """Mid-ventricle slices of a few validation volumes: scribbles, truth, each run."""
    _overlay([n for n in names if (RESULTS / n / "best.pt").exists()], patients,
             results=RESULTS, path=DOC.with_name("acdc_proposals_overlay.png"),
             annotation="scribble")


def main() -> None:
    bench_main(__doc__, run=run, report=report, report_names=ORDER, overlay=overlay,
               overlay_names=["full", "scribbles_dense_crf", "scribbles_graphcut",
                              "scribbles_dense_crf_cbst"])


if __name__ == "__main__":
    main()
