"""Domain adaptation benchmark ACDC cine -> MS-CMRSeg LGE (issue 11): source only, ADVENT,
source-free, curriculum DA, LGE scribbles (+ CRF), source labels + LGE scribbles.

Usage (each run is `weakseg train --resume`, so an interrupted benchmark continues; two
processes side by side, one per core):

    python benchmarks/adaptation.py run source_only source_free curriculum advent \\
        scribbles scribbles_crf scribbles_source --threads 1
    python benchmarks/adaptation.py run source_only@1 source_free@1 curriculum@1 advent@1 \\
        scribbles@1 scribbles_crf@1 scribbles_source@1 --threads 1
    python benchmarks/adaptation.py report --notes benchmarks/adaptation_notes.md
    python benchmarks/adaptation.py overlay          # -> docs/benchmarks/adaptation_overlay.png
    python benchmarks/adaptation.py run ROWS --dry-run   # print the commands, run nothing

A row ``<name>`` trains ``configs/lge_<name>.yaml`` into benchmarks/results/adaptation/<name>
(or $WEAKSEG_BENCH_RESULTS/<name>); ``<name>@<seed>`` retrains it with ``train.seed=<seed>``.
``source_free`` starts from the selected model (best.pt) of the row :data:`INIT` names, with
the same seed suffix (its ``train.init``). ``curriculum`` first runs ``weakseg
estimate-priors`` with the selected source-only model of the same seed (:data:`ESTIMATES`)
into <results>/_estimates/<row>.npz, then trains with ``data.target.estimates`` set to it.
A row whose start is not finished stops the command with a message (run the start first: list
it earlier on the same command line). ``overlay --patients`` takes ``all`` (the default; also
the shared default ``91-100``) or comma-separated LGE case names (``subject1_DE,...``).
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

RESULTS = Path(os.environ.get("WEAKSEG_BENCH_RESULTS")
               or REPO / "benchmarks" / "results" / "adaptation")
DOC = REPO / "docs" / "benchmarks" / "adaptation.md"
OVERLAY = DOC.with_name("adaptation_overlay.png")
ORDER = ["source_only", "advent", "source_free", "curriculum", "scribbles", "scribbles_crf",
         "scribbles_source"]
#: rows that start from another row's selected model (train.init): name -> that row
INIT = {"source_free": "source_only"}
#: rows whose target priors are estimated by another row's selected model: name -> that row
ESTIMATES = {"curriculum": "source_only"}
#: adaptation rows that read no LGE label (the "label-free" rows of the targets)
LABEL_FREE = ["advent", "source_free", "curriculum"]
#: rows that must beat source only (target 1): the label-free rows and source + LGE scribbles
ADAPTATION = [*LABEL_FREE, "scribbles_source"]
#: LGE scribbles alone (no source), the reference of targets 2 and 3
SCRIBBLES = ["scribbles", "scribbles_crf"]
LABELS = {"source_only": "source only (ACDC labels)", "advent": "ADVENT (entropy on LGE)",
          "source_free": "source-free (entropy + KL prior)",
          "curriculum": "curriculum DA (estimated distributions)",
          "scribbles": "LGE scribbles (partial CE)",
          "scribbles_crf": "LGE scribbles + dense CRF",
          "scribbles_source": "ACDC labels + LGE scribbles (+ CRF)"}
OVERLAY_NAMES = ["source_only", "advent", "source_free", "curriculum", "scribbles_crf",
                 "scribbles_source"]
#: take --dry-run out of argv before the shared parser sees it (`run ... --dry-run`)
DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:
    sys.argv.remove("--dry-run")


def config_path(base: str) -> Path:
    return REPO / "configs" / f"lge_{base}.yaml"


def estimates_path(parent: str) -> Path:
    """The estimates file the source row ``parent`` (with seed suffix) writes."""
    return RESULTS / "_estimates" / f"{parent}.npz"


def _need(parent: str, child: str) -> None:
    if DRY_RUN or (RESULTS / parent / "summary.json").exists():
        return
    raise SystemExit(f"{child} starts from {RESULTS / parent / 'best.pt'}, but run {parent} "
                     f"is not finished; run it first (list {parent} before {child})")


def _execute(cmd: list[str], threads: int, *, done: bool = False) -> None:
    print(("# (done) " if done else "") + " ".join(cmd), flush=True)
    if not DRY_RUN:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, cwd=REPO, env=env)


def run(names: list[str], threads: int) -> None:
    for name in names:
        base, _, seed = name.partition("@")
        if base not in ORDER:
            raise SystemExit(f"unknown row '{base}'; rows: {', '.join(ORDER)}")
        suffix = f"@{int(seed)}" if seed else ""
        out = RESULTS / name
        done = (out / "summary.json").exists()
        if done:
            print(f"{name}: done already", flush=True)
            if not DRY_RUN:
                continue
        overrides = [f"train.threads={threads}"]
        if seed:
            overrides.append(f"train.seed={int(seed)}")
        if base in INIT:
            parent = INIT[base] + suffix
            _need(parent, name)
            overrides.append(f"train.init={RESULTS / parent / 'best.pt'}")
        if base in ESTIMATES:
            parent = ESTIMATES[base] + suffix
            est = estimates_path(parent)
            overrides.append(f"data.target.estimates={est}")
            if est.exists():
                print(f"{name}: estimates {est} exist (kept: a resume refuses a changed file)",
                      flush=True)
            else:
                _need(parent, name)
                if not DRY_RUN:
                    est.parent.mkdir(parents=True, exist_ok=True)
                _execute([sys.executable, "-m", "weakseg.cli", "estimate-priors",
                          "--checkpoint", str(RESULTS / parent / "best.pt"),
                          "--config", str(config_path(base)), "--out", str(est), "--quiet",
                          "--set", f"train.threads={threads}"], threads, done=done)
        resume = ["--resume"] if (out / "last.pt").exists() else []
        _execute([sys.executable, "-m", "weakseg.cli", "train", "--config",
                  str(config_path(base)), "--out", str(out), *resume, "--quiet",
                  "--set", *overrides], threads, done=done)


def _config(folder: Path) -> dict:
    import yaml

    path = folder / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def _budget(cfg: dict) -> str:
    """The training budget of a run's config.yaml, e.g. ``20×100 b8 128² lr 1e-3``."""
    t, d = cfg.get("train", {}), cfg.get("data", {})
    patch = d.get("crop") or d.get("size")
    text = (f"{t.get('epochs')}×{t.get('steps_per_epoch') or 'pass'} b{t.get('batch_size')} "
            f"{patch}² lr {t.get('lr'):g}")
    if d.get("target") and any(term.get("domain") in ("target", "both")
                               for term in cfg.get("loss", [])):
        text += " (+ target batch)"
    if t.get("init"):
        text += " + init"
    return text


def _verdict(ok: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "not measurable yet"}[ok]


def targets(stats: dict[str, dict]) -> list[str]:
    """The issue's three targets, each read from the table's seed-mean Dice."""
    def seeds(name: str) -> str:
        n = len(stats[name]["seeds"])
        return "" if n >= 2 else f" ({n} seed only)"

    lines = []
    # 1. every adaptation row above source only
    base = stats.get("source_only")
    rows = [n for n in ADAPTATION if n in stats]
    if base is None or not rows:
        lines.append("1. Every adaptation row above source only: "
                     + _verdict(None) + " (source_only or every adaptation row missing).")
    else:
        parts = [f"{n} {stats[n]['mean']:.3f}{seeds(n)} ({stats[n]['mean'] - base['mean']:+.3f}"
                 f"; above in {sum(d > base['mean'] for d in stats[n]['dice'])}/"
                 f"{len(stats[n]['dice'])} seeds)" for n in rows]
        missing = [n for n in ADAPTATION if n not in stats]
        ok = all(stats[n]["mean"] > base["mean"] for n in rows)
        lines.append(
            f"1. Every adaptation row above source only ({base['mean']:.3f}"
            f"{seeds('source_only')}): {_verdict(ok if not missing or not ok else None)} — "
            + "; ".join(parts) + (f"; not run: {', '.join(missing)}" if missing else "") + ".")
    # 2. best label-free row >= 80 % of the LGE-scribble row
    free = [n for n in LABEL_FREE if n in stats]
    scrib = [n for n in SCRIBBLES if n in stats]
    ref = max(scrib, key=lambda n: stats[n]["mean"]) if scrib else None
    if not free or ref is None:
        lines.append("2. Best label-free row ≥ 80 % of the LGE-scribble row: " + _verdict(None)
                     + " (a label-free row or the LGE-scribble rows missing).")
    else:
        best = max(free, key=lambda n: stats[n]["mean"])
        ratio = stats[best]["mean"] / stats[ref]["mean"]
        missing = [n for n in LABEL_FREE if n not in stats]
        verdict = _verdict(ratio >= 0.8) + (" so far" if missing and ratio < 0.8 else "")
        lines.append(
            f"2. Best label-free row ≥ 80 % of the LGE-scribble row: {verdict} — "
            f"{best} {stats[best]['mean']:.3f}{seeds(best)} = {100 * ratio:.1f} % of {ref} "
            f"{stats[ref]['mean']:.3f}{seeds(ref)} (the better LGE-scribble row; label-free "
            f"rows run: {', '.join(free)}).")
    # 3. source + LGE scribbles >= LGE scribbles alone
    if "scribbles_source" not in stats or ref is None:
        lines.append("3. Source labels + LGE scribbles ≥ LGE scribbles alone: "
                     + _verdict(None) + " (a row missing).")
    else:
        both = stats["scribbles_source"]["mean"]
        lines.append(
            f"3. Source labels + LGE scribbles ≥ LGE scribbles alone: "
            f"{_verdict(both >= stats[ref]['mean'])} — scribbles_source {both:.3f}"
            f"{seeds('scribbles_source')} vs {ref} {stats[ref]['mean']:.3f}{seeds(ref)} "
            f"({both - stats[ref]['mean']:+.3f}).")
    return lines


def report(names: list[str], notes: str) -> None:
    stats = {n: row_stats(r, CLASSES) for n in names if (r := load_seeds(RESULTS, n))}
    if not stats:
        raise SystemExit(f"no finished run of {', '.join(names)} in {RESULTS}; run them first")
    base = stats.get("source_only")
    head = ["row", "method", "seeds", "Dice per seed", "Dice mean", "Δ source only",
            *[f"Dice {c}" for c in CLASSES], *[f"HD95 {c}" for c in CLASSES], "HD95 mean",
            "Dice last epoch", "best epoch", "budget", "s/epoch"]
    rows = []
    for name, st in stats.items():
        delta = f"{st['mean'] - base['mean']:+.3f}" if base is not None else "–"
        rows.append([
            name, LABELS.get(name, name), ", ".join(map(str, st["seeds"])),
            " / ".join(f"{d:.3f}" for d in st["dice"]), f"**{st['mean']:.3f}**", delta,
            *[f"{st['per_class'][c]:.3f}" for c in CLASSES],
            *[f"{st['hd95_class'][c]:.1f}" for c in CLASSES], f"{st['hd95']:.1f}",
            f"{st['last']:.3f}", ", ".join(map(str, st["best"])),
            _budget(_config(RESULTS / name)), f"{st['s_epoch']:.0f}",
        ])
        print(rows[-1], flush=True)
    folders = [p for n in stats for p in [RESULTS / n, *RESULTS.glob(f"{n}@*")]
               if (p / "summary.json").exists()]
    dates = " and ".join(sorted({datetime.date.fromtimestamp(
        (p / "summary.json").stat().st_mtime).isoformat() for p in folders}))
    seed_runs = sorted({p.name for p in folders if "@" in p.name},  # starts first
                       key=lambda n: (int(n.partition("@")[2]),
                                      list(stats).index(n.partition("@")[0])))
    others = " ".join(seed_runs) or "<row>@1 ..."
    goals = "\n".join(targets(stats))
    picture = (f"![LGE val: image, truth, source only, adapted and scribble rows]({OVERLAY.name})"
               if OVERLAY.exists() else "(picture not drawn yet: run the `overlay` command)")
    text = f"""# Domain adaptation ACDC cine → MS-CMRSeg LGE, and LGE scribbles

Measured {dates} on this machine: see "Machine" below.

**Protocol.** Source: ACDC cine (WSL4MIS h5, patients 021–100, full masks; the h5 files store
no spacing, a nominal 10 × 1.5 × 1.5 mm is assumed). Target: MS-CMRSeg LGE (another sequence,
scanner and site; same classes RV, Myo, LV): `train/` = 25 subjects, images and real
scribbles, `val/` = 5 subjects with dense expert masks. The 15 LGE test subjects are kept
apart and never read. Both domains resampled to 2 mm in-plane on a 192² canvas (intensities
min-max per volume); 2D U-Net 16-32-64-128-256 (1.81 M parameters). Every row selects its
best epoch on the 5 LGE `val/` subjects by mean 3D Dice and reports that checkpoint's 3D
metrics on the same 5 subjects (validation numbers, optimistic for every row alike; "Dice last
epoch" is free of that selection). Dice and HD95 per 3D volume at the original resolution
(predictions resampled back), **HD95 in mm** (the NIfTI spacing, ≈ 0.75 mm in-plane, 5 mm
slices), averaged over the 5 subjects and then over the seeds. Rows (configs
`configs/lge_<row>.yaml`):

- `source_only`: ACDC labels (CE + Dice), no target term; LGE only validates.
- `advent`: + entropy (normalised by log C, weight 0.01) of the predictions on unlabelled LGE
  training images (ADVENT MinEnt; each step one ACDC and one LGE batch in one forward).
- `source_free`: **adds** its epochs to the selected `source_only` model of the same seed
  (`train.init`) on LGE training images only: entropy + KL(predicted class ratio ‖ the ACDC
  label fractions stored in that checkpoint); no ACDC image is read. Its s/epoch is that of
  the adaptation epochs alone.
- `curriculum`: ACDC labels + KL(estimated ‖ predicted) class distributions of every LGE
  training slice, globally and per cell of a 4 × 4 grid; the estimates are the soft
  predictions of the selected `source_only` model of the same seed (`weakseg
  estimate-priors`); whole 192² canvases.
- `scribbles`, `scribbles_crf`: the real LGE scribbles alone (partial CE; + dense CRF loss,
  weight 3, σ_xy 5 px, σ_I 0.1), no ACDC image.
- `scribbles_source`: ACDC labels + LGE scribbles with partial CE + the same dense CRF term.

"Label-free" rows read no LGE label: `advent`, `source_free`, `curriculum`. Budget column:
epochs × steps, batch, training patch, learning rate ("+ target batch": each step also draws
an LGE batch; "+ init": starts from another row's model). Seeds change the network
initialisation, batch order and augmentation (the scribbles stay). s/epoch: median
training-pass time with the threads the run was given (`--threads`), runs sharing the
machine's cores, so only indicative.

{md_table(head, rows)}

## Targets (issue 11), from the seed-mean Dice of the table

{goals}

Reading of the targets: "adaptation rows" are the rows that train on ACDC and adapt to LGE
(`advent`, `source_free`, `curriculum`, `scribbles_source`); "the LGE-scribble row" is the
better of `scribbles` and `scribbles_crf` (the stricter reading of "LGE scribbles (+ CRF)").
Two seeds differ by up to several Dice points on ACDC (`acdc_constraints.md`); on 5 LGE subjects
a difference below the seed spread is not established.

{picture}

Each row of the picture is one LGE `val/` subject (its slice with the most foreground in the
truth, cropped to 30 mm around the heart); columns: image, truth, then the seed-0 model of each
row.

{notes}

## Commands

```bash
python benchmarks/adaptation.py run {' '.join(n for n in stats)} --threads 1   # resumable
python benchmarks/adaptation.py run {others} --threads 1   # other seeds
python benchmarks/adaptation.py report {' '.join(stats)} \\
    --notes benchmarks/adaptation_notes.md
python benchmarks/adaptation.py overlay
python benchmarks/adaptation.py run {' '.join(stats)} --dry-run   # the exact commands
```

`run` executes, per row, `weakseg train --config configs/lge_<row>.yaml --out
benchmarks/results/adaptation/<row> --quiet --set train.threads=1 [train.seed=<k>]`
(`--resume` when a last.pt exists); `source_free` adds `train.init=<source_only run>/best.pt`;
`curriculum` is preceded by `weakseg estimate-priors --checkpoint <source_only run>/best.pt
--config configs/lge_curriculum.yaml --out benchmarks/results/adaptation/_estimates/<source_only
run>.npz` and adds `data.target.estimates=<that file>`.

## Machine

{_machine_line()}
"""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(text)


def _abs(path: str) -> str:
    return str(path if Path(path).is_absolute() else (REPO / path).resolve())


def _val_volumes(cfg: dict, patients: str) -> tuple[list, list[str]]:
    """The LGE validation volumes a run validated on (from its stored config)."""
    from weakseg.data import DATASETS

    block = cfg["data"].get("target") or cfg["data"]
    params = dict(block.get("params") or {})
    if params.get("roots"):
        roots = [_abs(r) for r in params["roots"]]
        params["roots"] = [r for r in roots if Path(r).name == "val"] or roots
    if block.get("root"):
        params["root"] = _abs(block["root"])
    vset = DATASETS.build(block["name"], **params)
    vols = [v for v in vset.volumes if v.meta.get("split") == "val" and v.label is not None]
    if patients not in ("all", "91-100"):
        wanted = [p.strip() for p in patients.split(",") if p.strip()]
        vols = [v for v in vols if v.key in wanted]
    if not vols:
        raise SystemExit(f"no LGE val volume with a mask matches --patients {patients}")
    return vols, vset.class_names


def overlay(names: list[str], patients: str, *, path: Path = OVERLAY,
            margin_mm: float = 30.0) -> None:
    """The slice with the most foreground of each LGE val subject, cropped to the heart
    (``margin_mm`` around the truth): image, truth, each run (seed 0 unless a name carries
    @seed)."""
    from dataclasses import replace

    from weakseg.engine.inference import checkpoint_geometry, predict_volume
    from weakseg.engine.trainer import load_model_from_checkpoint
    from weakseg.report import plot_volume_overlays

    found = [n for n in names if (RESULTS / n / "best.pt").exists()]
    if not found:
        raise SystemExit(f"no best.pt of {', '.join(names)} in {RESULTS}; run them first")
    vols, class_names = _val_volumes(_config(RESULTS / found[0]), patients)
    preds = {}
    for name in found:
        model, ckpt = load_model_from_checkpoint(RESULTS / name / "best.pt")
        preds[name] = [predict_volume(model, v, **checkpoint_geometry(ckpt)) for v in vols]
    boxes = [_heart_box(v, margin_mm) for v in vols]
    vols = [replace(v, image=v.image[:, ys, xs], label=v.label[:, ys, xs], annotations={})
            for v, (ys, xs) in zip(vols, boxes, strict=True)]
    preds = {n: [p[:, ys, xs] for p, (ys, xs) in zip(ps, boxes, strict=True)]
             for n, ps in preds.items()}
    plot_volume_overlays(path, vols, preds, class_names=class_names, max_rows=len(vols))
    print(f"wrote {path}")


def _heart_box(vol, margin_mm: float) -> tuple[slice, slice]:
    """In-plane window around the truth's foreground (all slices) plus ``margin_mm``: the
    heart fills a few % of an LGE slice's field of view."""
    import numpy as np

    ys, xs = np.nonzero((vol.label > 0).any(axis=0))
    if not len(ys):
        return slice(None), slice(None)
    sy, sx = (vol.spacing[1], vol.spacing[2]) if vol.spacing else (1.0, 1.0)
    my, mx = int(round(margin_mm / sy)), int(round(margin_mm / sx))
    h, w = vol.label.shape[1:]
    return (slice(max(0, ys.min() - my), min(h, ys.max() + 1 + my)),
            slice(max(0, xs.min() - mx), min(w, xs.max() + 1 + mx)))


def main() -> None:
    bench_main(__doc__, run=run, report=report, report_names=ORDER, overlay=overlay,
               overlay_names=OVERLAY_NAMES)


if __name__ == "__main__":
    main()
