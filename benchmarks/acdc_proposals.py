"""ACDC proposal benchmark: ADM (graph cut, mean-field) and self-training next to gradient rows.

Usage (each run is `weakseg train --resume`, so an interrupted benchmark continues):

    python benchmarks/acdc_proposals.py run scribbles_dense_crf scribbles_graphcut --threads 1
    python benchmarks/acdc_proposals.py report --notes benchmarks/acdc_proposals_notes.md

A row ``<name>`` trains ``configs/acdc_proposals_<name>.yaml``, or for the reference rows
shared with the constraint benchmark (``full``, ``points_size_lagrangian_per_image``,
``boxes``) ``configs/acdc_constraints_<name>.yaml``, into
benchmarks/results/acdc_proposals/<name> (or $WEAKSEG_BENCH_RESULTS/<name>). ``<name>@<seed>``
retrains it with ``train.seed=<seed>``. Self-training rows (``*_cbst``) start from the
selected model of the row their config's ``train.init`` names, with the same seed suffix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acdc_scribbles import REPO  # noqa: E402

RESULTS = Path(os.environ.get("WEAKSEG_BENCH_RESULTS")
               or REPO / "benchmarks" / "results" / "acdc_proposals")
DOC = REPO / "docs" / "benchmarks" / "acdc_proposals.md"
SHARED = {"full", "points_size_lagrangian_per_image", "boxes"}
#: self-training rows: name -> the row whose selected model (best.pt) they start from
INIT = {"scribbles_dense_crf_cbst": "scribbles_dense_crf"}


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


if __name__ == "__main__":
    if sys.argv[1] == "run":
        args = sys.argv[2:]
        threads = 1
        if "--threads" in args:
            i = args.index("--threads")
            threads = int(args[i + 1])
            del args[i:i + 2]
        run(args, threads)
