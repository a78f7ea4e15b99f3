"""Partially labelled sites on ACDC (issue 11, C8): naive, marginal and prior-aware training
of one 4-class network from three simulated sites that each label other structures, next to
full labels.

Usage (each run is `weakseg train --resume`, so an interrupted benchmark continues):

    python benchmarks/partial_labels.py run naive prior_aware --threads 1   # one process
    python benchmarks/partial_labels.py run marginal full --threads 1        # the other
    python benchmarks/partial_labels.py report --notes benchmarks/partial_labels_notes.md
    python benchmarks/partial_labels.py run ROWS --dry-run   # print the commands, run nothing

A row ``<name>`` trains ``configs/acdc_partial_sites_<name>.yaml`` (``full``:
``configs/acdc_constraints_full.yaml``, the full-label row of acdc_constraints.md and
acdc_proposals.md) into benchmarks/results/partial_labels/<name> (or
$WEAKSEG_BENCH_RESULTS/<name>); ``<name>@<seed>`` retrains it with ``train.seed=<seed>``.
The ``full`` row is not retrained when the acdc_proposals benchmark already holds a finished
run of the same seed whose config.yaml is configs/acdc_constraints_full.yaml (up to threads,
device and init): ``run`` says so and ``report`` reads it from there.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_main, load_run, load_seeds, md_table, row_stats  # noqa: E402
from acdc_scribbles import CLASSES, REPO, _machine_line  # noqa: E402

RESULTS = Path(os.environ.get("WEAKSEG_BENCH_RESULTS")
               or REPO / "benchmarks" / "results" / "partial_labels")
#: where a finished full-label run of the same config may already be (acdc_proposals)
FULL_ELSEWHERE = REPO / "benchmarks" / "results" / "acdc_proposals"
DOC = REPO / "docs" / "benchmarks" / "partial_labels.md"
ORDER = ["full", "naive", "marginal", "prior_aware"]
LABELS = {"full": "full labels (every structure, every patient)",
          "naive": "naive (unlabelled structure = background)",
          "marginal": "marginal CE (unlabelled structures merged into background)",
          "prior_aware": "marginal CE + prior-aware KL (primal-dual)"}
#: take --dry-run out of argv before the shared parser sees it (`run ... --dry-run`)
DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:
    sys.argv.remove("--dry-run")


def config_path(base: str) -> Path:
    if base == "full":
        return REPO / "configs" / "acdc_constraints_full.yaml"
    return REPO / "configs" / f"acdc_partial_sites_{base}.yaml"


def _same_config(folder: Path, base: str) -> bool:
    """Whether the run in ``folder`` trained ``configs/<base>`` (threads, device and init
    aside) — the seed included, since the folder name carries it."""
    import yaml

    from weakseg.config import config_from_dict, load_config

    if not (folder / "config.yaml").exists():
        return False
    saved = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    seed = int(folder.name.partition("@")[2] or 0)
    ours = load_config(config_path(base), [f"train.seed={seed}"])
    for cfg in (saved, ours):
        cfg.train.threads, cfg.train.device, cfg.train.init = None, "auto", None
    return saved.to_dict() == ours.to_dict()


def _folder(name: str) -> Path:
    """The folder of row ``name``: ours, or for ``full`` a matching finished acdc_proposals run."""
    ours = RESULTS / name
    other = FULL_ELSEWHERE / name
    if (name.partition("@")[0] == "full" and not (ours / "summary.json").exists()
            and not (ours / "last.pt").exists() and (other / "summary.json").exists()
            and _same_config(other, "full")):
        return other
    return ours


def run(names: list[str], threads: int) -> None:
    for name in names:
        base, _, seed = name.partition("@")
        if base not in ORDER:
            raise SystemExit(f"unknown row '{base}'; rows: {', '.join(ORDER)}")
        out = _folder(name)
        done = (out / "summary.json").exists()
        if done:
            print(f"{name}: done already ({out})", flush=True)
            if not DRY_RUN:
                continue
        resume = ["--resume"] if (out / "last.pt").exists() else []
        cmd = [sys.executable, "-m", "weakseg.cli", "train", "--config", str(config_path(base)),
               "--out", str(out), *resume, "--quiet", "--set", f"train.threads={threads}"]
        if seed:
            cmd.append(f"train.seed={int(seed)}")
        print(("# (done) " if done else "") + " ".join(cmd), flush=True)
        if not DRY_RUN:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            subprocess.run(cmd, check=True, cwd=REPO, env=env)


def _seeds(base: str) -> dict[int, tuple[dict, list[dict[str, str]]]]:
    """Finished runs of a row by seed (``full``: also the matching acdc_proposals runs)."""
    found = load_seeds(RESULTS, base)
    if base == "full":
        for folder in [FULL_ELSEWHERE / base, *sorted(FULL_ELSEWHERE.glob(f"{base}@*"))]:
            seed = int(folder.name.partition("@")[2] or 0)
            if seed not in found and _folder(folder.name) == folder:
                run_ = load_run(folder)
                if run_ is not None:
                    found[seed] = run_
    return found


def _verdict(ok: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "not measurable yet"}[ok]


def targets(stats: dict[str, dict]) -> list[str]:
    """The issue's target, read from the table's seed-mean Dice."""
    def seeds(name: str) -> str:
        n = len(stats[name]["seeds"])
        return f" ({n} seed{'s' if n > 1 else ''})"

    pa, full, naive = stats.get("prior_aware"), stats.get("full"), stats.get("naive")
    lines = []
    if pa is None or full is None:
        lines.append("1. Prior-aware ≥ 90 % of full labels: " + _verdict(None)
                     + " (prior_aware or full missing).")
    else:
        ratio = pa["mean"] / full["mean"]
        lines.append(f"1. Prior-aware ≥ 90 % of full labels: {_verdict(ratio >= 0.9)} — "
                     f"prior_aware {pa['mean']:.3f}{seeds('prior_aware')} = {100 * ratio:.1f} % "
                     f"of full {full['mean']:.3f}{seeds('full')}.")
    if pa is None or naive is None:
        lines.append("2. Prior-aware ≥ naive + 10 Dice points: " + _verdict(None)
                     + " (prior_aware or naive missing).")
    else:
        gain = 100 * (pa["mean"] - naive["mean"])
        lines.append(f"2. Prior-aware ≥ naive + 10 Dice points: {_verdict(gain >= 10)} — "
                     f"prior_aware {pa['mean']:.3f}{seeds('prior_aware')} vs naive "
                     f"{naive['mean']:.3f}{seeds('naive')}: {gain:+.1f} points.")
    return lines


def report(names: list[str], notes: str) -> None:
    stats = {n: row_stats(r, CLASSES) for n in names if (r := _seeds(n))}
    if not stats:
        raise SystemExit(f"no finished run of {', '.join(names)} in {RESULTS}; run them first")
    full = stats["full"]["mean"] if "full" in stats else None
    head = ["row", "method", "seeds", "Dice per seed", "Dice mean", "% of full",
            *[f"Dice {c}" for c in CLASSES], *[f"HD95 {c}" for c in CLASSES], "HD95 mean",
            "Dice last epoch", "best epoch", "s/epoch"]
    rows = []
    for name, st in stats.items():
        rows.append([
            name, LABELS.get(name, name), ", ".join(map(str, st["seeds"])),
            " / ".join(f"{d:.3f}" for d in st["dice"]), f"**{st['mean']:.3f}**",
            f"{100 * st['mean'] / full:.1f}" if full else "–",
            *[f"{st['per_class'][c]:.3f}" for c in CLASSES],
            *[f"{st['hd95_class'][c]:.1f}" for c in CLASSES], f"{st['hd95']:.1f}",
            f"{st['last']:.3f}", ", ".join(map(str, st["best"])), f"{st['s_epoch']:.0f}",
        ])
        print(rows[-1], flush=True)
    folders = [f for n in stats
               for f in [_folder(n), *[_folder(p.name) for p in sorted(RESULTS.glob(f"{n}@*"))
                                       + sorted(FULL_ELSEWHERE.glob(f"{n}@*"))]]
               if (f / "summary.json").exists()]
    folders = sorted(set(folders))
    dates = " and ".join(sorted({datetime.date.fromtimestamp(
        (p / "summary.json").stat().st_mtime).isoformat() for p in folders}))
    seed_runs = sorted({p.name for p in folders if "@" in p.name},  # starts first
                       key=lambda n: (int(n.partition("@")[2]),
                                      list(stats).index(n.partition("@")[0])))
    others = " ".join(seed_runs) or "<row>@1 ..."
    reused = [p for p in folders if p.parent == FULL_ELSEWHERE]
    reuse_note = (f"The `full` row is the acdc_proposals run{'s' if len(reused) > 1 else ''} "
                  f"{', '.join(f'`{p.relative_to(REPO)}`' for p in reused)} (same config and "
                  "seed), not retrained." if reused else "")
    goals = "\n".join(targets(stats))
    text = f"""# ACDC: partially labelled sites (naive, marginal, prior-aware) next to full labels

Measured {dates} on this machine: see "Machine" below.

**Protocol** (the reduced CPU protocol of `acdc_constraints.md`). ACDC (WSL4MIS h5), 2D U-Net
16-32-64-128-256 (1.81 M parameters), 128×128 slices, train on patients 021–090 (140 volumes,
1284 slices), select the best epoch on patients 091–100 (20 volumes, full masks) by mean 3D
Dice and report its 3D metrics on the same patients (validation numbers, slightly optimistic
for every row alike; "Dice last epoch" is free of that selection). Same network and budget for
every row — 15 epochs × 160 steps, batch 8, Adam lr 1e-3, poly decay, rot90/flip augmentation.
Partial labels: `annotation: sim:partial_sites` puts every training patient in one of three
simulated sites, `sha256("0:<patient id>") mod 3` (19 / 26 / 25 patients): site 0 labels the
LV only, site 1 RV + Myo, site 2 the Myo only; every other pixel is 0 ("background or a
structure this site does not label"). Rows: `naive` trains that 0 as background (partial CE);
`marginal` scores label 0 with the background probability plus those of the structures the
site does not label (marginal CE); `prior_aware` adds PaNN's KL(prior fraction ‖ average
predicted fraction) of each structure over the slices that do not label it, by stochastic
primal-dual (prior RV 0.0127, Myo 0.0127, LV 0.0091: the mean fractions on the slices of the
sites that label each structure; dual step 0.05; not tuned); `full` trains on every structure
of every patient (CE + Dice). {reuse_note} Seeds change the network initialisation, batch
order and augmentation (the sites stay: `annotation_seed` 0). HD95 in voxels (the h5 files
store no spacing). s/epoch: median training-pass time with the threads the run was given,
runs sharing the machine's cores, so only indicative.

{md_table(head, rows)}

Configs: `configs/acdc_partial_sites_<row>.yaml`; `full` is `configs/acdc_constraints_full.yaml`.

## Target (issue 11), from the seed-mean Dice of the table

{goals}

{notes}

## Commands

```bash
python benchmarks/partial_labels.py run {' '.join(stats)} --threads 1   # resumable
python benchmarks/partial_labels.py run {others} --threads 1   # other seeds
python benchmarks/partial_labels.py report {' '.join(stats)} \\
    --notes benchmarks/partial_labels_notes.md
python benchmarks/partial_labels.py run {' '.join(stats)} --dry-run   # the exact commands
```

`run` executes, per row, `weakseg train --config configs/acdc_partial_sites_<row>.yaml --out
benchmarks/results/partial_labels/<row> --quiet --set train.threads=1 [train.seed=<k>]`
(`--resume` when a last.pt exists).

## Machine

{_machine_line()}
"""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(text)


def main() -> None:
    bench_main(__doc__, run=run, report=report, report_names=ORDER)


if __name__ == "__main__":
    main()
