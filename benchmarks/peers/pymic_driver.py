"""Side by side with PyMIC (pip ``pymic==0.6.2``) on ACDC scribbles (issue 12): its own
virtual environment, the data in its layout, configurations derived from its published ACDC
examples, its agents, and every model scored by OUR evaluator.

    python benchmarks/peers/pymic_driver.py setup              # PyMIC venv outside the package
    python benchmarks/peers/pymic_driver.py convert            # ACDC h5 -> PyMIC nii.gz + csv
    python benchmarks/peers/pymic_driver.py configs            # derived .cfg files (to read)
    python benchmarks/peers/pymic_driver.py run pce@0 gcrf@0 dmpls@0 dmsps@0 --threads 1
    python benchmarks/peers/pymic_driver.py score --ours full=DIR --ours pce=DIR ...

Everything PyMIC lives under ``$WEAKSEG_PEERS_CACHE`` (default ~/.cache/weakseg/peers):
``pymic-venv/``, ``acdc_pymic/`` (converted data), ``configs/``, ``runs/<method>@<seed>/``.
PyMIC is never imported here: ``pymic_launch.py`` runs inside its venv. Run this file with
the weakseg environment's python (it uses weakseg's reader, resizing and 3D metrics).
See benchmarks/peers/README.md for what was changed in PyMIC's configurations and why.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from pymic_configs import (  # noqa: E402
    BUDGET_BATCH,
    BUDGET_ITERATIONS,
    METHODS,
    PUBLISHED,
    SIZE,
    derive_config,
    parse_agent,
    render_cfg,
    split_of,
)

CACHE = Path(os.environ.get("WEAKSEG_PEERS_CACHE") or Path.home() / ".cache/weakseg/peers")
VENV = CACHE / "pymic-venv"
DATA = CACHE / "acdc_pymic"
CONFIGS = CACHE / "configs"
RUNS = CACHE / "runs"
SRC = REPO.parent / "shared" / "data" / "acdc"
DOC = REPO / "docs" / "benchmarks" / "peers.md"
LAUNCH = HERE / "pymic_launch.py"
PYMIC = "pymic==0.6.2"
TORCH = "2.13.0"
#: imported at module level by PyMIC 0.6.2 but not declared by it (its other networks and
#: transforms); these install cleanly beside the CPU torch. torchvision and timm do not (see
#: pymic_launch.py): the launcher gives placeholders for them.
UNDECLARED = ["einops==0.8.2", "ml-collections==1.1.0", "monai==1.6.1", "imops==0.11.0"]
CLASSES = ["RV", "Myo", "LV"]


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def _probe_torch(python: str) -> dict | None:
    """torch version / CUDA of ``python`` outside any venv, or None."""
    code = ("import json,sys,torch;print(json.dumps({'v':torch.__version__,"
            "'cuda':torch.version.cuda,'venv':sys.prefix!=sys.base_prefix}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return json.loads(out.stdout) if out.returncode == 0 else None


# --- 1. setup -------------------------------------------------------------------------------

def setup(venv: Path, base_python: str | None, force: bool) -> None:
    """Create the PyMIC venv: ``--system-site-packages`` over a non-venv python that has the
    CPU torch 2.13.0, else a plain venv with ``torch==2.13.0`` installed first; then pymic
    and the packages it imports without declaring them (``UNDECLARED``); refuse any CUDA
    build or nvidia-* package.

    No torchvision (nor timm, which needs it): PyMIC imports it without declaring it, and
    the PyPI wheels of torchvision 0.28 (the release for torch 2.13) are CUDA builds whose C
    extension does not load beside the CPU torch (``import torchvision`` fails with
    "RuntimeError: operator torchvision::nms does not exist"). PyMIC's segmentation path
    only calls ``torchvision.transforms.Compose``; ``pymic_launch.py`` provides it."""
    if venv.exists() and force:
        shutil.rmtree(venv)
    base = base_python or getattr(sys, "_base_executable", None) or sys.executable
    probe = _probe_torch(base)
    system_torch = bool(probe and probe["v"].split("+")[0] == TORCH and probe["cuda"] is None
                        and not probe["venv"])
    if not _venv_python(venv).exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        flags = ["--system-site-packages"] if system_torch else []
        _sh([base, "-m", "venv", *flags, str(venv)])
    py = str(_venv_python(venv))
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    have = _probe_torch(py)
    if not (have and have["v"].split("+")[0] == TORCH and have["cuda"] is None):
        # a pip resolver given torch==2.13.0 picks the local CPU wheel 2.13.0+cpu when one is
        # on its find-links (a local version sorts above 2.13.0); checked just below
        _sh([*pip, f"torch=={TORCH}"])
    _sh([*pip, PYMIC, *UNDECLARED])
    if subprocess.run([py, "-m", "pip", "show", "-q", "torchvision"],
                      capture_output=True).returncode == 0:  # left by an older setup
        _sh([py, "-m", "pip", "uninstall", "-y", "torchvision"])
    out = subprocess.run([py, str(LAUNCH), "versions"], capture_output=True, text=True,
                         check=True)
    versions = json.loads(out.stdout.strip().splitlines()[-1])
    versions.update({"venv": str(venv), "system_site_packages": system_torch, "base": base,
                     "date": datetime.date.today().isoformat()})
    bad = []
    if versions["torch_cuda"] is not None:
        bad.append(f"torch {versions['torch']} is a CUDA build ({versions['torch_cuda']})")
    if versions["cuda_packages"]:
        bad.append(f"CUDA packages installed: {', '.join(versions['cuda_packages'])}")
    if versions["torch"].split("+")[0] != TORCH:
        bad.append(f"torch {versions['torch']} is not {TORCH}")
    (CACHE / "pymic-versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    print(json.dumps(versions, indent=2))
    if bad:
        raise SystemExit("setup: " + "; ".join(bad) + f" in {venv}; remove it, make the CPU "
                         f"wheel torch=={TORCH}+cpu available to pip, and run setup again")
    print(f"PyMIC venv ready: {venv}")


# --- 2. convert -----------------------------------------------------------------------------

def _write_nii(path: Path, array: Any) -> None:
    """``array`` (Z, H, W) as NIfTI that SimpleITK reads back as (Z, H, W) (unit spacing)."""
    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)), np.eye(4))
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(path)


def convert(src: Path, out: Path, force: bool) -> None:
    """WSL4MIS h5 -> PyMIC's example layout: ``.nii.gz`` files + ``image,label`` csv files.

    Same preprocessing as our benchmarks (weakseg's ``to_grid``: per-volume 0.5-99.5
    percentile min-max, bilinear antialiased resize to 128x128; labels and scribbles nearest).
    Training: one ``(1, 128, 128)`` volume per slice of patients 021-090, with the scribble map
    (4 = unlabelled, PyMIC's partial-label value) and the dense mask (for the ``full`` row).
    Validation: whole ``(Z, 128, 128)`` volumes of patients 091-100 with their dense masks
    (PyMIC selects its checkpoint on them; our evaluator reads the original h5 files)."""
    import numpy as np

    from weakseg.data.acdc import read_acdc_h5
    from weakseg.data.base import IGNORE_INDEX
    from weakseg.data.intensity import Normalization
    from weakseg.data.slices import to_grid

    done = out / "meta.json"
    if done.exists() and not force:
        print(f"{out}: converted already ({json.loads(done.read_text())['train_slices']} "
              "training slices); --force to redo")
        return
    files = sorted(src.glob("patient*_frame*.h5"))
    if not files:
        raise SystemExit(f"no patient*_frame*.h5 under {src}")
    for sub in ("train", "valid"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {"train": [], "train_full": [], "valid": []}
    labelled = total = 0
    volumes = {"train": 0, "valid": 0}
    for path in files:
        split = split_of(path.stem)
        if split is None:
            continue
        vol = read_acdc_h5(path)
        x, (lab, scr) = to_grid(vol, SIZE, None, [vol.label, vol.annotations["scribble"]],
                                [0, IGNORE_INDEX], Normalization("minmax"))
        image = x[:, 0].numpy().astype(np.float32)  # (Z, 128, 128)
        lab_np = lab.numpy().astype(np.uint8)
        scr_np = scr.numpy()
        scr_np = np.where(scr_np == IGNORE_INDEX, 4, scr_np).astype(np.uint8)
        volumes[split] += 1
        if split == "valid":
            _write_nii(out / "valid" / f"{vol.key}.nii.gz", image)
            _write_nii(out / "valid" / f"{vol.key}_gt.nii.gz", lab_np)
            rows["valid"].append(f"valid/{vol.key}.nii.gz,valid/{vol.key}_gt.nii.gz")
            continue
        for z in range(image.shape[0]):
            stem = f"train/{vol.key}_z{z:02d}"
            _write_nii(out / f"{stem}.nii.gz", image[z:z + 1])
            _write_nii(out / f"{stem}_scribble.nii.gz", scr_np[z:z + 1])
            _write_nii(out / f"{stem}_gt.nii.gz", lab_np[z:z + 1])
            rows["train"].append(f"{stem}.nii.gz,{stem}_scribble.nii.gz")
            rows["train_full"].append(f"{stem}.nii.gz,{stem}_gt.nii.gz")
        labelled += int((scr_np != 4).sum())
        total += scr_np.size
    for name, lines in rows.items():
        (out / f"image_{name}.csv").write_text("image,label\n" + "\n".join(lines) + "\n")
    meta = {"source": str(src), "size": SIZE, "train_volumes": volumes["train"],
            "train_slices": len(rows["train"]), "valid_volumes": volumes["valid"],
            "scribbled_fraction": labelled / max(total, 1), "unlabelled_value": 4,
            "preprocessing": "weakseg to_grid: minmax 0.5-99.5 percentiles per volume, "
                             "bilinear (antialiased) resize; labels nearest-exact",
            "date": datetime.date.today().isoformat()}
    done.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


# --- 3. configs -----------------------------------------------------------------------------

def _header(method: str, iterations: int, batch: int, seed: int) -> str:
    return (f"Derived by benchmarks/peers/pymic_driver.py from {PUBLISHED[method]['source']}\n"
            f"changed to ours: {iterations} iterations x batch {batch} at {SIZE}x{SIZE}, train "
            f"021-090 / select 091-100, seed {seed}, CPU (see pymic_configs.py)")


def configs(out: Path, methods: list[str], seed: int, iterations: int, batch: int,
            rampup: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in methods:
        cfg = derive_config(m, data_dir=str(DATA), ckpt_dir=str(RUNS / f"{m}@{seed}" / "ckpt"),
                            seed=seed, iterations=iterations, batch=batch, rampup=rampup)
        path = out / f"acdc_{m}.cfg"
        path.write_text(render_cfg(cfg, _header(m, iterations, batch, seed)))
        paths.append(path)
        print(f"wrote {path}")
    return paths


# --- 4. run ---------------------------------------------------------------------------------

_TIME = re.compile(r"training/validation time: ([\d.]+)s/([\d.]+)s")
_IT = re.compile(r"^\S+ \S+ it (\d+)$", re.M)


def parse_pymic_logs(ckpt: Path) -> dict[str, float]:
    """Training and validation seconds summed over PyMIC's ``log_train_*.txt`` files, and the
    last iteration they reached."""
    train_s = valid_s = 0.0
    blocks, last = 0, 0
    for log in sorted(ckpt.glob("log_train_*.txt")):
        text = log.read_text(errors="replace")
        for a, b in _TIME.findall(text):
            train_s += float(a)
            valid_s += float(b)
            blocks += 1
        its = [int(i) for i in _IT.findall(text)]
        last = max([last, *its])
    return {"train_s": train_s, "valid_s": valid_s, "blocks": blocks, "last_iteration": last}


def run_name(method: str, seed: int, iterations: int, batch: int) -> str:
    """``pce@0`` at our budget; ``pce@0-it20`` or ``pce@0-it20b4`` for any other, so that a
    smoke run never stands in for a real one."""
    name = f"{method}@{seed}"
    if iterations != BUDGET_ITERATIONS or batch != BUDGET_BATCH:
        name += f"-it{iterations}" + (f"b{batch}" if batch != BUDGET_BATCH else "")
    return name


def run(agents: list[str], *, runs: Path, iterations: int, batch: int, iter_valid: int,
        save_every: int, threads: int, rampup: str, venv: Path) -> None:
    py = _venv_python(venv)
    flags = [f"--threads {threads}"]
    for flag, value, default in (("--iterations", iterations, BUDGET_ITERATIONS),
                                 ("--batch", batch, BUDGET_BATCH),
                                 ("--iter-valid", iter_valid, 100),
                                 ("--save-every", save_every, 200),
                                 ("--rampup", rampup, "scaled"),
                                 ("--runs", runs, RUNS)):
        if value != default:
            flags.append(f"{flag} {value}")
    if not py.exists():
        raise SystemExit(f"no PyMIC venv at {venv}; run `setup` first")
    if not (DATA / "meta.json").exists():
        raise SystemExit(f"no converted data at {DATA}; run `convert` first")
    for spec in agents:
        method, seed = parse_agent(spec)
        name = run_name(method, seed, iterations, batch)
        driver_command = (f"python benchmarks/peers/pymic_driver.py run {method}@{seed} "
                          + " ".join(flags))
        out = runs / name
        ckpt = out / "ckpt"
        record_path = out / "run.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        if record.get("status") == "done":
            print(f"{name}: done already ({out})")
            continue
        ckpt.mkdir(parents=True, exist_ok=True)
        latest = ckpt / "model_latest.txt"
        resume = None
        if latest.exists():  # an interrupted run: PyMIC's own resume (ckpt_init_mode = 1)
            it = latest.read_text().strip()
            if (ckpt / f"model_{it}.pt").exists() and int(it) < iterations:
                resume = f"model_{it}.pt"
        cfg = derive_config(method, data_dir=str(DATA), ckpt_dir=str(ckpt), seed=seed,
                            iterations=iterations, batch=batch, iter_valid=iter_valid,
                            save_every=save_every, rampup=rampup, resume_from=resume)
        cfg_path = out / "pymic.cfg"
        cfg_path.write_text(render_cfg(cfg, _header(method, iterations, batch, seed)))
        cmd = [str(py), str(LAUNCH), "train", str(cfg_path), "--threads", str(threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        print(f"{name}: " + ("resuming from " + resume if resume else "training"), flush=True)
        print("+ " + " ".join(cmd), flush=True)
        t0 = time.time()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        with open(out / "stdout.log", "a") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.time() - t0
        sessions = record.get("sessions", [])
        sessions.append({"started": started, "wall_s": round(wall, 1), "resumed_from": resume,
                         "returncode": proc.returncode})
        stats = parse_pymic_logs(ckpt)
        # PyMIC writes model_best.txt only once a validation Dice exceeds 0
        done = proc.returncode == 0 and stats["last_iteration"] > 0 and any(
            (ckpt / f"model_{k}.txt").exists() for k in ("best", "latest"))
        record = {
            "agent": f"{method}@{seed}", "method": method, "seed": seed,
            "pymic_method": (PUBLISHED[method]["wsl"] or {}).get("method_name", "fully_sup"),
            "source": PUBLISHED[method]["source"], "iterations": iterations, "batch": batch,
            "images_seen": stats["last_iteration"] * batch, "threads": threads,
            "wall_s": round(sum(s["wall_s"] for s in sessions), 1),
            "train_s": round(stats["train_s"], 1), "valid_s": round(stats["valid_s"], 1),
            # every logged block of iter_valid iterations, redone ones after a resume too
            "s_per_iteration": stats["train_s"] / max(stats["blocks"]
                                                      * cfg["training"]["iter_valid"], 1),
            "last_iteration": stats["last_iteration"], "sessions": sessions,
            "command": " ".join(cmd), "driver_command": driver_command,
            "status": "done" if done else "failed",
        }
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        if not done:
            tail = (out / "stdout.log").read_text(errors="replace").splitlines()[-25:]
            raise SystemExit(f"{name}: PyMIC exited with {proc.returncode}; "
                             f"last lines of {out / 'stdout.log'}:\n" + "\n".join(tail))
        print(f"{name}: done in {wall:.0f} s, {record['s_per_iteration']:.3f} s/iteration "
              f"(training only), {record['images_seen']} images seen")


# --- 5. score -------------------------------------------------------------------------------

def replay_model(probs: list[tuple[str, Any]]) -> Any:
    """A stand-in network for weakseg's ``evaluate_volumes``: it returns, chunk by chunk, the
    log-probabilities PyMIC predicted at 128x128 (``probs``: ``(key, (C, Z, H, W))`` in the
    order the volumes are evaluated), so that OUR evaluator does the rest exactly as for our
    own models (softmax, bilinear resize back to the original grid, arg-max, 3D Dice/HD95).
    Its input is only checked for shape."""
    import torch
    from torch import nn

    class Replay(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.volumes = [(k, torch.from_numpy(p).float().movedim(1, 0))  # (Z, C, H, W)
                            for k, p in probs]
            self.v = self.z = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.v >= len(self.volumes):
                raise RuntimeError("replay: more slices asked for than were stored")
            key, p = self.volumes[self.v]
            n = x.shape[0]
            if tuple(x.shape[-2:]) != tuple(p.shape[-2:]) or self.z + n > p.shape[0]:
                raise RuntimeError(f"replay of {key}: input {tuple(x.shape)} does not match "
                                   f"the stored prediction {tuple(p.shape)} at slice {self.z}")
            out = p[self.z:self.z + n].clamp_min(1e-12).log()
            self.z += n
            if self.z == p.shape[0]:
                self.v, self.z = self.v + 1, 0
            return out

        def finished(self) -> bool:
            return self.v == len(self.volumes) and self.z == 0

    return Replay()


def score_peer(out: Path, venv: Path, threads: int) -> dict[str, Any]:
    """Predict 091-100 with a trained PyMIC run (in its venv) and score with our evaluator."""
    import numpy as np

    from weakseg.data import DATASETS
    from weakseg.engine.trainer import evaluate_volumes

    npz = out / "valid_probabilities.npz"
    if not npz.exists():
        cmd = [str(_venv_python(venv)), str(LAUNCH), "predict", str(out / "pymic.cfg"),
               str(npz), "--threads", str(threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        print("+ " + " ".join(cmd), flush=True)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        (out / "predict.log").write_text(res.stdout + res.stderr)
        if res.returncode:
            raise SystemExit(f"prediction failed for {out}:\n{res.stderr[-3000:]}")
    vset = DATASETS.build("acdc_h5", root=SRC, patients="91-100")
    stored = np.load(npz)
    missing = [v.key for v in vset.volumes if v.key not in stored]
    if missing:
        raise SystemExit(f"{npz}: no prediction for {', '.join(missing)}")
    model = replay_model([(v.key, stored[v.key]) for v in vset.volumes])
    vm = evaluate_volumes(model, vset.volumes, vset.class_names, size=SIZE, device="cpu")
    if not model.finished():
        raise SystemExit(f"{npz}: not every stored slice was scored")
    vm.write_csv(out / "val_metrics.csv")
    metrics = vm.compute()
    (out / "val_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def load_ours(name: str, folder: Path) -> dict[str, Any]:
    """One of our runs (``weakseg train`` folder): its summary's validation metrics (same
    evaluator), s/iteration (median over epochs of training seconds / steps), images seen
    and wall time (sum of epoch seconds, validation included)."""
    import yaml

    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    from _common import load_run, median

    loaded = load_run(folder)
    if loaded is None:
        raise SystemExit(f"{folder}: no summary.json (an unfinished run?)")
    summary, rows = loaded
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    batch = int(cfg["train"]["batch_size"])
    steps = [round(float(r["train_seconds"]) * float(r["images_per_s"]) / batch) for r in rows]
    spi = median([float(r["train_seconds"]) / max(s, 1) for r, s in zip(rows, steps,
                                                                          strict=True)])
    wall = sum(float(r.get("epoch_seconds") or r["train_seconds"]) for r in rows)
    return {"name": name, "tool": "weakseg", "metrics": summary["val_metrics"],
            "s_per_iteration": spi, "images_seen": sum(steps) * batch, "wall_s": wall,
            "batch": batch, "threads": cfg["train"].get("threads"), "folder": str(folder)}


def _tool(record: dict[str, Any]) -> str:
    if record["pymic_method"] == "fully_sup":
        masks = "full masks" if record["method"] == "full" else "pCE"
        return f"PyMIC baseline ({masks})"
    return f"PyMIC {record['pymic_method']}"


def _fmt_wall(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"


def score(*, runs: Path, agents: list[str], ours: list[str], doc: Path, venv: Path,
          threads: int) -> None:
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    from _common import machine, md_table

    rows: list[dict[str, Any]] = []
    for spec in ours:
        name, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"--ours wants NAME=FOLDER, got {spec!r}")
        rows.append(load_ours(name, Path(folder)))
    folders = ([runs / a for a in agents] if agents else
               sorted(p for p in runs.glob("*@*") if (p / "run.json").exists()))
    for out in folders:
        record = json.loads((out / "run.json").read_text())
        if record.get("status") != "done":
            print(f"{out.name}: not finished ({record.get('status')}); skipped")
            continue
        rows.append({"name": out.name, "tool": _tool(record),
                     "metrics": score_peer(out, venv, threads),
                     "s_per_iteration": record["s_per_iteration"],
                     "images_seen": record["images_seen"], "wall_s": record["wall_s"],
                     "batch": record["batch"], "threads": record["threads"],
                     "folder": str(out), "command": record.get("driver_command")})
    if not rows:
        raise SystemExit("nothing to score: no finished run and no --ours folder")
    full = next((r["metrics"]["dice_mean"] for r in rows
                 if r["tool"] == "weakseg" and r["name"].split("@")[0] == "full"), None)
    head = ["method", "tool", *[f"Dice {c}" for c in CLASSES], "Dice mean", "HD95 mean",
            "% of full", "s/iteration", "images seen", "wall time"]
    table = []
    for r in rows:
        m = r["metrics"]
        table.append([r["name"], r["tool"], *[f"{m[f'dice_{c}']:.3f}" for c in CLASSES],
                      f"**{m['dice_mean']:.3f}**", f"{m['hd95_mean']:.1f}",
                      f"{100 * m['dice_mean'] / full:.1f}" if full else "—",
                      f"{r['s_per_iteration']:.3f}", f"{r['images_seen']:,}",
                      _fmt_wall(r["wall_s"])])
    partial = [r["name"] for r in rows if r["images_seen"] < BUDGET_ITERATIONS * BUDGET_BATCH]
    versions = CACHE / "pymic-versions.json"
    ver = json.loads(versions.read_text()) if versions.exists() else {}
    peer_env = (f"PyMIC {ver.get('pymic', '?')} in its own venv (`{ver.get('venv', '?')}`): "
                f"torch {ver.get('torch', '?')} (CUDA: {ver.get('torch_cuda')}), numpy "
                f"{ver.get('numpy', '?')}, SimpleITK {ver.get('SimpleITK', '?')}; "
                "torchvision and timm are placeholders (benchmarks/peers/README.md).")
    banner = ""
    if partial:
        banner = (f"\n> **Not a comparison yet.** {', '.join(partial)} saw fewer than the\n"
                  f"> {BUDGET_ITERATIONS * BUDGET_BATCH:,} training images of the budget "
                  "(smoke or unfinished runs):\n> these rows only show that the pipeline "
                  "works.\n")
    budget = (f"Budget: {BUDGET_ITERATIONS:,} iterations × batch {BUDGET_BATCH} = "
              f"{BUDGET_ITERATIONS * BUDGET_BATCH:,} images (our 15 epochs × 160 steps × 8)")
    run_cmds = sorted({r["command"] for r in rows if r.get("command")})
    score_cmd = " ".join(["python benchmarks/peers/pymic_driver.py score",
                          *[r["name"] for r in rows if r["tool"] != "weakseg"],
                          *[f"--ours {s}" for s in ours]])
    commands = "\n".join(["python benchmarks/peers/pymic_driver.py setup",
                          "python benchmarks/peers/pymic_driver.py convert",
                          *run_cmds, score_cmd])
    text = f"""# Side by side with PyMIC on ACDC scribbles

Scored {datetime.date.today().isoformat()}; protocol of `acdc_scribbles.md` (reduced budget).
{banner}
**Protocol.** Both tools train 2D networks on the same 128×128 slices of patients 021–090
(real scribbles; the converted PyMIC data is made by weakseg's own resizing and intensity
normalisation) and select a checkpoint on patients 091–100; every model is then scored by
weakseg's evaluator (`weakseg.engine.trainer.evaluate_volumes`: softmax at 128², bilinear
resize back to each slice's grid, arg-max, Dice and HD95 per class on each 3D volume at the
original resolution, HD95 in voxels, mean over the 20 volumes). PyMIC's predictions are
replayed into that function; no post-processing on either side. PyMIC selects on its own
validation Dice (3D, at 128², every 100 iterations), weakseg on 3D Dice at the original
resolution after each epoch. {budget}. PyMIC configurations: derived from its published
ACDC examples with only budget, size, split, seed and device changed
(`benchmarks/peers/README.md`).

{md_table(head, table)}

"s/iteration": training seconds per optimisation step at batch 8 (PyMIC: its logged training
time per block of iterations, data loading included; weakseg: median over epochs of the
training pass / steps), 1 torch thread, on a machine shared with other runs, so they compare
only runs measured side by side. "wall time": the whole run, validation included.
"% of full": mean Dice / weakseg's full supervision (when given).

## Commands

```bash
{commands}
```

Our rows come from `weakseg train` folders (`benchmarks/acdc_scribbles.py run` /
`benchmarks/acdc_proposals.py run`), read with `--ours NAME=FOLDER`.

## Machine

{machine().replace(', 2 torch threads', '')}.
{peer_env}
"""
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(text)


# --- command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", type=Path, default=VENV)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="create the PyMIC venv (outside the package)")
    s.add_argument("--base-python", help="python whose own site-packages hold torch 2.13.0 "
                                         "CPU (then the venv reuses it)")
    s.add_argument("--force", action="store_true", help="recreate the venv")
    c = sub.add_parser("convert", help="ACDC h5 -> PyMIC layout (cache folder)")
    c.add_argument("--src", type=Path, default=SRC)
    c.add_argument("--out", type=Path, default=DATA)
    c.add_argument("--force", action="store_true")
    g = sub.add_parser("configs", help="write the derived PyMIC .cfg files")
    g.add_argument("--out", type=Path, default=CONFIGS)
    g.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    g.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="train PyMIC agents METHOD@SEED (resumable)")
    r.add_argument("agents", nargs="+")
    r.add_argument("--runs", type=Path, default=RUNS)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--iter-valid", type=int, default=100)
    r.add_argument("--save-every", type=int, default=200)
    q = sub.add_parser("score", help="predict 091-100, score with weakseg, write peers.md")
    q.add_argument("agents", nargs="*", help="run folder names (default: every finished run)")
    q.add_argument("--runs", type=Path, default=RUNS)
    q.add_argument("--ours", action="append", default=[], metavar="NAME=FOLDER",
                   help="a finished weakseg run folder, e.g. full=benchmarks/results/acdc/full")
    q.add_argument("--doc", type=Path, default=DOC)
    q.add_argument("--threads", type=int, default=1)
    for sp in (g, r):
        sp.add_argument("--iterations", type=int, default=BUDGET_ITERATIONS)
        sp.add_argument("--batch", type=int, default=BUDGET_BATCH)
        sp.add_argument("--rampup", choices=["scaled", "published"], default="scaled")
    args = p.parse_args(argv)
    if args.cmd == "setup":
        setup(args.venv, args.base_python, args.force)
    elif args.cmd == "convert":
        convert(args.src, args.out, args.force)
    elif args.cmd == "configs":
        configs(args.out, args.methods, args.seed, args.iterations, args.batch, args.rampup)
    elif args.cmd == "run":
        run(args.agents, runs=args.runs, iterations=args.iterations, batch=args.batch,
            iter_valid=args.iter_valid, save_every=args.save_every, threads=args.threads,
            rampup=args.rampup, venv=args.venv)
    else:
        score(runs=args.runs, agents=args.agents, ours=args.ours, doc=args.doc,
              venv=args.venv, threads=args.threads)


if __name__ == "__main__":
    main()
