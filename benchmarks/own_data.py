"""Own-data benchmark: ACDC as an nnU-Net raw folder and MS-CMRSeg LGE as it is, trained with
today's square resize, spacing-aware 2D and 3D, same budget.

Usage:

    python benchmarks/own_data.py convert               # ACDC h5 -> nnU-Net raw (cache)
    python benchmarks/own_data.py run acdc_square_full@0 acdc_spacing_crf@1 ... --threads 1
    python benchmarks/own_data.py speed                 # inference s/volume, window / TTA
    python benchmarks/own_data.py ddp                   # s/epoch: 1 process vs torchrun 2
    python benchmarks/own_data.py report

``convert`` writes ACDC patients 021-100 into ``$WEAKSEG_CACHE`` (default
``~/.cache/weakseg``) as two nnU-Net raw folders, never into the repository:
``acdc_scribbles`` (``labelsTr``: the real scribbles with the ``ignore`` label for 021-090,
the dense masks for 091-100: one folder, weak and dense together) and ``acdc_full`` (dense
masks for all). The h5 files carry no spacing: a nominal 1.5 × 1.5 × 10 mm is written.
Rows are ``<row>@<seed>``; each trains with ``weakseg train`` (resumable) into
``benchmarks/results/own_data/``.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_run, machine, md_table, median  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "own_data"
DOC = REPO / "docs" / "benchmarks" / "own_data.md"
CACHE = Path(os.environ.get("WEAKSEG_CACHE", Path.home() / ".cache" / "weakseg"))
ACDC = REPO.parent / "shared" / "data" / "acdc"
MSCMR = REPO.parent / "shared" / "data" / "mscmr"
NOMINAL = (1.5, 1.5, 10.0)  # x, y, z mm (the h5 files have no spacing)
CLASSES = ["RV", "Myo", "LV"]
LABELS = {"background": 0, "RV": 1, "Myo": 2, "LV": 3}
#: Budget of every row: epochs × steps × batch 8 slices (3D: 1 window of 8 slices).
EPOCHS, STEPS = 8, 100
CRF = {"name": "dense_crf", "weight": 3, "params": {"sigma_xy": 5.0, "sigma_intensity": 0.1}}


def convert() -> None:
    import h5py
    import nibabel as nib
    import numpy as np

    affine = np.diag([*NOMINAL, 1.0])
    for name, weak in (("acdc_scribbles", True), ("acdc_full", False)):
        root = CACHE / name
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        for path in sorted(ACDC.glob("patient*.h5")):
            case = path.stem
            patient = int(case[7:10])
            with h5py.File(path) as f:
                image, label, scribble = f["image"][()], f["label"][()], f["scribble"][()]
            xyz = lambda a: np.ascontiguousarray(np.transpose(a, (2, 1, 0)))  # noqa: E731
            nib.save(nib.Nifti1Image(xyz(image.astype(np.float32)), affine),
                     root / "imagesTr" / f"{case}_0000.nii.gz")
            lab = scribble if (weak and patient <= 90) else label
            nib.save(nib.Nifti1Image(xyz(lab.astype(np.uint8)), affine),
                     root / "labelsTr" / f"{case}.nii.gz")
        labels = {**LABELS, **({"ignore": 4} if weak else {})}
        (root / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "cine MRI"}, "labels": labels, "numTraining": 160,
            "file_ending": ".nii.gz",
            "note": "ACDC (WSL4MIS h5) with a nominal 1.5 x 1.5 x 10 mm spacing"}))
        print(f"wrote {root}")


def _config(row: str, seed: int) -> dict:
    """The config of a row: <data>_<geometry>_<supervision>."""
    data, geometry, supervision = row.split("_")
    model: dict = {"name": "unet2d", "params": {"base_channels": 16}}
    train = {"epochs": EPOCHS, "batch_size": 8, "lr": 1e-3, "seed": seed,
             "steps_per_epoch": STEPS}
    loss = [{"name": "partial_ce", "weight": 1.0}] + ([CRF] if supervision == "crf" else [])
    if data == "acdc":
        d = {"name": "nifti", "root": str(CACHE / ("acdc_full" if supervision == "full"
                                                    else "acdc_scribbles")),
             "params": {"group_pattern": r"patient\d+"},
             "annotation": "full" if supervision == "full" else "weak",
             "train": "21-90", "val": "91-100", "size": 128}
        if supervision == "full":
            loss = [{"name": "ce_dice", "weight": 1.0}]
    else:  # mscmr: LGE scribbles (train/), dense validation masks (val/)
        d = {"name": "nifti_pairs", "params": {
                 "roots": [str(MSCMR / "train"), str(MSCMR / "val")],
                 "labels": {**LABELS, "ignore": 4}},
             "annotation": "weak", "train": "split:train", "val": "split:val", "size": 128}
    if geometry == "spacing":  # ACDC: 3 mm ≈ the square resize's resolution; LGE: 2 mm
        d.update(spacing=[3.0, 3.0]) if data == "acdc" else d.update(
            spacing=[2.0, 2.0], size=192, crop=128)
    elif geometry == "3d":
        model = {"name": "unet3d", "params": {"base_channels": 16, "depth": 3}}
        d.update(patch_depth=8)
        train["batch_size"] = 1
    return {"model": model, "data": d, "loss": loss, "train": train}


ROWS = ["acdc_square_full", "acdc_spacing_full", "acdc_3d_full", "acdc_square_crf",
        "acdc_spacing_crf", "acdc_3d_crf", "mscmr_square_crf", "mscmr_spacing_crf"]


def run(names: list[str], threads: int) -> None:
    for name in names:
        row, _, seed = name.partition("@")
        if row not in ROWS:
            raise SystemExit(f"unknown row {row}; rows: {', '.join(ROWS)}")
        out = RESULTS / name
        if (out / "summary.json").exists():
            print(f"{name}: done already")
            continue
        RESULTS.mkdir(parents=True, exist_ok=True)
        cfg = RESULTS / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(_config(row, int(seed or 0)), sort_keys=False))
        resume = ["--resume"] if (out / "last.pt").exists() else []
        cmd = [sys.executable, "-m", "weakseg.cli", "train", "--config", str(cfg), "--out",
               str(out), *resume, "--quiet", "--set", f"train.threads={threads}"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)


def speed(names: list[str], threads: int) -> None:
    """Inference seconds per validation volume of the given runs' best.pt: plain, TTA, and
    (spacing rows) sliding windows; written to results/own_data/speed.json."""
    import torch

    from weakseg.config import config_from_dict
    from weakseg.engine.inference import checkpoint_geometry, predict_volume
    from weakseg.engine.trainer import load_data, load_model_from_checkpoint

    torch.set_num_threads(threads)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        ckpt_path = RESULTS / name / "best.pt"
        if not ckpt_path.exists():
            continue
        model, ckpt = load_model_from_checkpoint(ckpt_path)
        vols = load_data(config_from_dict(ckpt["config"])).val[:5]
        geom = checkpoint_geometry(ckpt)
        times = {}
        for label, tta in (("plain", False), ("tta", True)):
            secs = []
            for v in vols:
                tic = time.perf_counter()
                predict_volume(model, v, tta=tta, **geom)
                secs.append(time.perf_counter() - tic)
            times[label] = median(secs)
        out[name] = times
        print(name, times, flush=True)
    (RESULTS / "speed.json").write_text(json.dumps(out, indent=2))


#: DDP timing: a short LGE scribble + CRF run (data read in place, nothing to convert).
DDP_ROW, DDP_EPOCHS, DDP_STEPS = "mscmr_square_crf", 3, 40


def ddp() -> None:
    """Training seconds per epoch of the same run (global batch 8) as one process with 1 and 2
    torch threads and as ``torchrun --nproc_per_node 2`` (gloo, 1 thread each); medians over
    the epochs, written to results/own_data/ddp.json. Needs an otherwise idle machine."""
    out: dict[str, dict[str, float]] = {}
    cfg_dict = _config(DDP_ROW, 0)
    cfg_dict["train"].update(epochs=DDP_EPOCHS, steps_per_epoch=DDP_STEPS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    cfg = RESULTS / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    variants = {"1 process, 1 thread": ([sys.executable], 1),
                "1 process, 2 threads": ([sys.executable], 2),
                "torchrun 2 processes, 1 thread each": (
                    [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc_per_node", "2"], 1)}
    for i, (label, (launcher, threads)) in enumerate(variants.items()):
        run_dir = RESULTS / f"ddp_{i}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a timing, not a result to resume
        cmd = [*launcher, "-m", "weakseg", "train", "--config", str(cfg), "--out",
               str(run_dir), "--quiet", "--set", f"train.threads={threads}"]
        print(" ".join(cmd), flush=True)
        tic = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - tic
        loaded = load_run(run_dir)
        if loaded is None:
            raise SystemExit(f"{run_dir}: no summary written")
        summary, rows = loaded
        out[label] = {"s_epoch": median([float(r["train_seconds"]) for r in rows]),
                      "wall_s": wall, "val_dice_mean": summary["val_metrics"]["dice_mean"]}
        print(label, out[label], flush=True)
    (RESULTS / "ddp.json").write_text(json.dumps(out, indent=2))


def _load(name: str) -> dict | None:
    run = load_run(RESULTS / name)
    if run is None:
        return None
    summary, rows = run
    return {"metrics": summary["val_metrics"], "best_epoch": summary["best_epoch"],
            "s_epoch": median([float(r["train_seconds"]) for r in rows])}


def report(names: list[str], notes: str) -> None:
    table = []
    done: dict[str, list[dict]] = {}
    for row in ROWS:
        runs = [(n, r) for n in names if n.partition("@")[0] == row
                and (r := _load(n)) is not None]
        if runs:
            done[row] = [r for _, r in runs]
    full_mean = {d: statistics.mean(r["metrics"]["dice_mean"] for r in done[f"{d}_full"])
                 for d in ("acdc_square", "acdc_spacing", "acdc_3d") if f"{d}_full" in done}
    for row, runs in done.items():
        mean = statistics.mean(r["metrics"]["dice_mean"] for r in runs)
        spread = (f" ± {statistics.pstdev([r['metrics']['dice_mean'] for r in runs]):.3f}"
                  if len(runs) > 1 else "")
        ref = full_mean.get(row.rsplit("_", 1)[0])
        pct = f"{100 * mean / ref:.1f}" if ref and not row.endswith("full") else "–"
        per_class = [statistics.mean(r["metrics"][f"dice_{c}"] for r in runs) for c in CLASSES]
        hd = statistics.mean(r["metrics"]["hd95_mean"] for r in runs)
        table.append([row, len(runs), *[f"{x:.3f}" for x in per_class], f"**{mean:.3f}**{spread}",
                      f"{hd:.1f}", pct, f"{median([r['s_epoch'] for r in runs]):.0f}"])
    speed_path = RESULTS / "speed.json"
    speed_rows = []
    if speed_path.exists():
        for name, t in json.loads(speed_path.read_text()).items():
            speed_rows.append([name, f"{t['plain']:.2f}", f"{t['tta']:.2f}",
                               f"{t['tta'] / t['plain']:.1f}×"])
    text = f"""# Your own data: ACDC as an nnU-Net raw folder, MS-CMRSeg LGE as it is

Measured {datetime.date.today().isoformat()} on this machine: {machine()}.

**Protocol.** Same 2D U-Net 16-32-64-128-256 (3D: 16-32-64-128, depth 3) and budget for every
row: {EPOCHS} epochs × {STEPS} steps × 8 slices (3D: 1 window of 8 slices per step, the same
slices seen), Adam lr 1e-3, poly decay, rot90/flip augmentation; the best epoch selected on
the validation split and its 3D metrics reported on it (validation numbers). HD95 in mm.
- **ACDC** (`python benchmarks/own_data.py convert`): patients 021–100 of the WSL4MIS h5
  files written as an nnU-Net raw folder with a **nominal** 1.5 × 1.5 × 10 mm spacing (the
  h5 files carry none): `labelsTr` holds the real scribbles (`ignore` label) for 021–090 and
  the dense masks for 091–100 in one folder; `full` rows read a copy with dense masks for all.
  Train 021–090 (grouped by patient with `group_pattern: patient\\d+`), validate 091–100.
- **MS-CMRSeg LGE** (`../shared/data/mscmr`, read in place by the `nifti_pairs` reader): train
  on the 25 subjects' real scribbles, validate on the 5 subjects with dense masks
  (0.73–0.76 mm in-plane, 480²–512²). There are no dense training masks: no `full` row.
- Geometries: **square** = today's resize of every slice to 128² (aspect not kept);
  **spacing** = resampled to 3 mm (ACDC, ≈ the square resize's resolution, on a 128² canvas)
  or 2 mm (LGE, 192² canvas, 128² training patches), predicted by Gaussian sliding windows;
  **3d** = `unet3d` on 8-slice windows of the square-resized volumes, 3D sliding windows.
- Supervision: **full** (CE + Dice on dense masks), **crf** (real scribbles, partial CE +
  dense CRF weight 3, the shipped ACDC recipe's weight).

Commands: `python benchmarks/own_data.py run <row>@<seed> ... --threads 1`, then
`python benchmarks/own_data.py speed <runs>` and `python benchmarks/own_data.py report`.
Rows with n = 2 are the mean of seeds 0 and 1 (± their spread); n = 1: seed 0 only.

{md_table(["row", "n", "Dice RV", "Dice Myo", "Dice LV", "Dice mean", "HD95 mean (mm)",
           "% of full (same geometry)", "s/epoch"], table)}

## Inference time per validation volume (median, s)

{md_table(["run", "plain", "flip TTA (4×)", "TTA / plain"], speed_rows) if speed_rows else
 "not measured yet"}

{Path(notes).read_text() if notes else ""}
"""
    DOC.write_text(text)
    print(f"wrote {DOC}")


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("convert")
    r = sub.add_parser("run")
    r.add_argument("names", nargs="+")
    r.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("speed")
    s.add_argument("names", nargs="+")
    s.add_argument("--threads", type=int, default=1)
    sub.add_parser("ddp")
    q = sub.add_parser("report")
    q.add_argument("names", nargs="*")
    q.add_argument("--notes", default="")
    args = p.parse_args()
    if args.cmd == "convert":
        convert()
    elif args.cmd == "run":
        run(args.names, args.threads)
    elif args.cmd == "speed":
        speed(args.names, args.threads)
    elif args.cmd == "ddp":
        ddp()
    else:
        names = args.names or sorted(p.name for p in RESULTS.glob("*@*") if p.is_dir())
        report(names, args.notes)


if __name__ == "__main__":
    main()
