"""Speed and memory of the dense CRF loss backends (not run in CI).

Times forward + backward of :func:`weakseg.losses.crf.dense_crf_loss` (batch 8, 4 classes,
grayscale image in [0, 1], σ_xy = 5 px, σ_I = 0.1) for each filtering backend:

- ``exact`` (the explicit N × N kernel) where it fits (≤ 64²);
- ``grid`` (bilateral grid) at 64² → 512² (scaling), and 3D 16 × 128 × 128;
- ``permutohedral`` when :mod:`weakseg.filtering.permutohedral` is importable;
- the local-window CRF (11 × 11) when :mod:`weakseg.losses.crf_local` is importable;
- one UNet training step (``unet2d``, Adam, CE) at the same batch, for the target
  "the dense CRF loss costs ≤ 15 % of a training step".

Every case runs in a **fresh subprocess** so its memory is measured alone. Time: median
wall-clock of ``--repeats`` forward+backward calls after one warm-up. Memory (CPU): the
process's peak resident set size (``getrusage`` ``ru_maxrss``) after the runs minus the
same figure just before the first call (inputs and model allocated, libraries loaded by
one call on a tiny input), i.e. the extra peak memory the case needs, allocator slack
included; on CUDA,
``torch.cuda.max_memory_allocated`` over the same span.

    python benchmarks/crf_speed.py                      # all cases → docs/benchmarks/crf_speed.md
    python benchmarks/crf_speed.py --cases grid-64 --output /tmp/crf.md   # a quick check
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, md_table, median  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "crf_speed.md"
BATCH, CLASSES, SIGMA_XY, SIGMA_I = 8, 4, 5.0, 0.1


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "dense" (dense_crf_loss), "local" (local-window CRF), "unet" (training step)
    spatial: tuple[int, ...]
    backend: str = ""
    downsample: int = 1
    method: str = "shift"  # local-window CRF: "shift" (weakseg) or "unfold" (published code)


CASES = [
    Case("exact-32", "dense", (32, 32), "exact"),
    Case("exact-64", "dense", (64, 64), "exact"),
    Case("grid-64", "dense", (64, 64), "grid"),
    Case("grid-128", "dense", (128, 128), "grid"),
    Case("grid-256", "dense", (256, 256), "grid"),
    Case("grid-512", "dense", (512, 512), "grid"),
    Case("grid-256-down2", "dense", (256, 256), "grid", downsample=2),
    Case("grid-3d", "dense", (16, 128, 128), "grid"),
    Case("permutohedral-128", "dense", (128, 128), "permutohedral"),
    Case("permutohedral-256", "dense", (256, 256), "permutohedral"),
    Case("permutohedral-3d", "dense", (16, 128, 128), "permutohedral"),
    Case("local11-128", "local", (128, 128)),
    Case("local11-256", "local", (256, 256)),
    Case("local11-unfold-128", "local", (128, 128), method="unfold"),
    Case("local11-unfold-256", "local", (256, 256), method="unfold"),
    Case("unet-128", "unet", (128, 128)),
    Case("unet-256", "unet", (256, 256)),
]


def _image(batch: int, spatial: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A smooth random image min-max normalised to [0, 1] (the full intensity range)."""
    image = torch.rand(batch, 1, *spatial, generator=gen)
    pool = F.avg_pool2d if len(spatial) == 2 else F.avg_pool3d
    image = pool(image, 5, 1, 2)
    lo = image.amin(dim=tuple(range(1, image.ndim)), keepdim=True)
    hi = image.amax(dim=tuple(range(1, image.ndim)), keepdim=True)
    return (image - lo) / (hi - lo)


def _step_fn(case: Case, device: torch.device, batch: int, spatial: tuple[int, ...]
             ) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    image = _image(batch, spatial, gen).to(device)
    if case.kind == "unet":
        from weakseg.models import MODELS

        model = MODELS.build("unet2d", in_channels=1, num_classes=CLASSES).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        target = torch.randint(0, CLASSES, (batch, *spatial), generator=gen).to(device)

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(model(image), target).backward()
            optimiser.step()

        return step
    logits = torch.randn(batch, CLASSES, *spatial, generator=gen).to(device)
    logits.requires_grad_()
    if case.kind == "local":
        from weakseg.losses.crf_local import local_window_crf_loss

        def loss() -> torch.Tensor:
            return local_window_crf_loss(logits, image, kernel_size=11, sigma_xy=SIGMA_XY,
                                         sigma_intensity=SIGMA_I, method=case.method)
    else:
        if case.backend == "permutohedral":
            import weakseg.filtering.permutohedral  # noqa: F401 - fail early when missing
        from weakseg.losses.crf import dense_crf_loss

        def loss() -> torch.Tensor:
            return dense_crf_loss(logits, image, sigma_xy=SIGMA_XY, sigma_intensity=SIGMA_I,
                                  backend=case.backend, downsample=case.downsample)

    def step() -> None:
        logits.grad = None
        loss().backward()

    return step


def run_case(name: str, threads: int, repeats: int, device_name: str) -> dict[str, object]:
    """Run one case in this process; returns times (s) and extra peak memory (MiB)."""
    torch.set_num_threads(threads)
    case = next(c for c in CASES if c.name == name)
    device = torch.device(device_name)
    try:
        step = _step_fn(case, device, BATCH, case.spatial)
    except ImportError as err:
        return {"name": name, "skipped": f"not available ({err})"}
    # load libraries and lazily allocated buffers on a tiny input first, so the memory
    # figure below is the case's own
    _step_fn(case, device, 2, (32,) * len(case.spatial))()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    step()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"name": name, "median_s": median(times), "min_s": min(times),
            "extra_peak_mib": (peak - base) / 2**20}


def _describe(case: Case) -> str:
    size = "×".join(str(s) for s in case.spatial)
    if case.kind == "unet":
        return f"UNet training step (unet2d, Adam, CE), {size}"
    if case.kind == "local":
        return f"local-window CRF 11×11 ({case.method}), {size}"
    down = f", downsample {case.downsample}" if case.downsample > 1 else ""
    return f"dense CRF, {case.backend}, {size}{down}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=None,
                        help=f"subset of: {' '.join(c.name for c in CASES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    parser.add_argument("--output", type=Path, default=DOC)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child process: run one case
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.threads, args.repeats, args.device)))
        return

    names = args.cases or [c.name for c in CASES]
    unknown = sorted(set(names) - {c.name for c in CASES})
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {[c.name for c in CASES]}")
    results: dict[str, dict[str, object]] = {}
    for name in names:
        cmd = [sys.executable, __file__, "--case", name, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--device", args.device]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results[name] = {"name": name, "skipped": f"over {args.timeout:.0f} s"}
        else:
            lines = out.stdout.strip().splitlines()
            if out.returncode != 0 or not lines:
                tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
                results[name] = {"name": name, "skipped": f"failed: {tail}"}
            else:
                results[name] = json.loads(lines[-1])
        print(json.dumps(results[name]), flush=True)

    rows = []
    for case in CASES:
        if case.name not in results:
            continue
        r = results[case.name]
        if "skipped" in r:
            rows.append([case.name, _describe(case), "—", "—", "—", r["skipped"]])
            continue
        share = ""
        unet = results.get(f"unet-{case.spatial[-1]}", {})
        if case.kind != "unet" and len(case.spatial) == 2 and "median_s" in unet:
            share = f"{100 * float(r['median_s']) / float(unet['median_s']):.0f} % of a UNet step"
        rows.append([case.name, _describe(case), f"{1e3 * float(r['median_s']):.0f}",
                     f"{1e3 * float(r['min_s']):.0f}", f"{float(r['extra_peak_mib']):.0f}",
                     share])
    command = "python benchmarks/crf_speed.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(args.threads)
    text = "\n".join([
        "# Dense CRF loss: speed and memory by backend",
        "",
        f"Forward + backward of the loss at batch {BATCH}, {CLASSES} classes, grayscale "
        f"images in [0, 1], σ_xy = {SIGMA_XY:g} px, σ_I = {SIGMA_I:g}; each case in a fresh "
        f"process, median (and min) of {args.repeats} runs after one warm-up, device "
        f"`{args.device}`. Extra peak memory: peak RSS (`getrusage`) after the runs minus "
        "the same before the first call (inputs and model allocated, libraries loaded by a "
        "call on a tiny input); on CUDA, "
        "`torch.cuda.max_memory_allocated`. The UNet rows are one full training step "
        "(forward, CE, backward, Adam) for the ≤ 15 % target.",
        "",
        f"- command: `{command.strip()}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        "",
        md_table(["case", "what", "median ms", "min ms", "extra peak MiB", "note"], rows),
        "",
    ])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
