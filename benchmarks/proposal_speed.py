"""Speed of one proposal for a batch (not run in CI): ``docs/benchmarks/proposal_speed.md``.

Times one call of every registered proposal (:data:`weakseg.losses.proposals.PROPOSALS`) on a
batch of 8 grayscale 128 × 128 images with 4 labels, for three kinds of prediction:

- ``phantom``: discs of 3 foreground classes on a noisy image, logits ``4·onehot + N(0, 1)``
  (a network part-way through training: mostly right, noisy);
- ``unet-init``: the logits of an untrained ``unet2d`` (seed 0) on the same images (the first
  steps of a training run: small, spatially smooth, uninformative);
- ``noise``: i.i.d. ``N(0, 1)`` logits (a worst case for the graph cut: no structure at all).

1 % of the pixels carry their true label as the weak labels (hard constraints). One UNet
training step (``unet2d``, CE, Adam) on the same batch is timed too, for the ratio "proposal /
step". Median and min of ``--repeats`` calls after one warm-up, in this process.

    python benchmarks/proposal_speed.py --threads 1        # → docs/benchmarks/proposal_speed.md
    python benchmarks/proposal_speed.py --repeats 2 --output /tmp/p.md   # a quick check
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, md_table, median  # noqa: E402

from weakseg.losses.proposals import PROPOSALS  # noqa: E402
from weakseg.models import MODELS  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "proposal_speed.md"
BATCH, CLASSES, SIZE = 8, 4, 128

#: name → (registered proposal, its parameters, what)
PROPOSAL_CASES: dict[str, tuple[str, dict[str, object], str]] = {
    "graphcut": ("graphcut", {"lam": 1.0, "sigma": 0.1},
                 "graph cut / α-expansion, 8-neighbour, λ = 1, σ = 0.1, tol 1e-3"),
    "graphcut-exact": ("graphcut", {"lam": 1.0, "sigma": 0.1, "tol": 0.0, "max_cycles": 10},
                       "the same, run to the expansion local minimum (tol 0)"),
    "meanfield": ("meanfield", {"lam": 0.05, "iterations": 5},
                  "dense CRF mean-field, 5 iterations, bilateral grid (auto)"),
    "pathak": ("pathak", {"constraint": "size", "iterations": 30, "num_classes": CLASSES},
               "Pathak's proposal, size bounds ±20 % of the truth, 30 dual steps"),
    "cbst": ("cbst", {"p0": 0.2}, "class-balanced self-training, p = 0.2"),
}
PREDICTIONS = ("phantom", "unet-init", "noise")


def _inputs(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disc phantom: image ``(B, 1, H, W)``, truth ``(B, H, W)``, weak labels (1 %)."""
    axes = torch.meshgrid(*[torch.arange(SIZE, dtype=torch.float32)] * 2, indexing="ij")
    truth = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.long)
    for i in range(BATCH):
        for k in range(1, CLASSES):
            centre = [float(torch.rand((), generator=gen)) * SIZE for _ in range(2)]
            radius = (0.1 + 0.15 * float(torch.rand((), generator=gen))) * SIZE
            dist = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True)).sqrt()
            truth[i][dist < radius] = k
    means = torch.rand(CLASSES, generator=gen)
    image = (means[truth] + 0.05 * torch.randn(truth.shape, generator=gen)).clamp(0, 1)
    weak = torch.full_like(truth, -100)
    pick = torch.rand(truth.shape, generator=gen) < 0.01
    weak[pick] = truth[pick]
    return image[:, None], truth, weak


def _logits(kind: str, image: torch.Tensor, truth: torch.Tensor,
            gen: torch.Generator) -> torch.Tensor:
    if kind == "phantom":
        onehot = F.one_hot(truth, CLASSES).movedim(-1, 1).float()
        return 4 * onehot + torch.randn(onehot.shape, generator=gen)
    if kind == "unet-init":
        torch.manual_seed(0)
        model = MODELS.build("unet2d", in_channels=1, num_classes=CLASSES).eval()
        with torch.no_grad():
            return model(image)
    return torch.randn(BATCH, CLASSES, SIZE, SIZE, generator=gen)


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times), min(times)


def _unet_step(image: torch.Tensor, truth: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(0)
    model = MODELS.build("unet2d", in_channels=1, num_classes=CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(image), truth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (1 on a machine whose cores are busy: oversubscribed "
                        "parallel regions of the UNet and the filtering slow down 10x)")
    p.add_argument("--output", type=Path, default=DOC)
    p.add_argument("--note", default="", help="conditions of the run (background load...)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    image, truth, weak = _inputs(gen)
    sizes = F.one_hot(truth, CLASSES).sum((1, 2)).float()
    batch = {"image": image, "target": weak,
             "bounds": torch.stack([0.8 * sizes, 1.2 * sizes], -1)}
    load = os.getloadavg()[0]
    step_med, step_min = _time(_unet_step(image, truth), args.repeats)
    print(f"unet step: {step_med:.3f} s", flush=True)
    rows = [["UNet training step", "—", f"{1000 * step_med:.0f}", f"{1000 * step_min:.0f}",
             "1.00"]]
    for kind in PREDICTIONS:
        logits = _logits(kind, image, truth, gen)
        for name, (registered, params, what) in PROPOSAL_CASES.items():
            proposal = PROPOSALS.build(registered, **params)
            med, low = _time(lambda proposal=proposal, logits=logits: proposal(logits, batch),
                             args.repeats)
            print(f"{name} {kind}: {med:.3f} s", flush=True)
            rows.append([f"`{name}`: {what}", kind, f"{1000 * med:.0f}", f"{1000 * low:.0f}",
                         f"{med / step_med:.2f}"])
    command = "python benchmarks/proposal_speed.py" + (
        f" --repeats {args.repeats}" if args.repeats != 5 else "") + (
        f" --threads {args.threads}" if args.threads != 2 else "") + (
        ' --note "..."' if args.note else "")
    lines = [
        "# Proposals: time of one proposal for a batch",
        "",
        f"One call of each proposal on a batch of {BATCH} grayscale {SIZE}×{SIZE} images, "
        f"{CLASSES} labels, 1 % of the pixels weakly labelled (hard constraints); median (and "
        f"min) of {args.repeats} calls after one warm-up, on the CPU. The last column divides "
        "by one UNet training step (`unet2d`, CE, Adam) on the same batch. Predictions: "
        "`phantom` (discs, logits 4·onehot + N(0, 1)), `unet-init` (an untrained `unet2d`), "
        "`noise` (i.i.d. N(0, 1) logits, a worst case for the graph cut). See the script's "
        "docstring.",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: `nproc` = {os.cpu_count()}, {machine()}",
        f"- 1-minute load average at the start: {load:.1f}",
        "",
        md_table(["proposal", "prediction", "median ms", "min ms", "÷ UNet step"], rows),
        "",
    ]
    if args.note:
        lines += ["Conditions: " + args.note, ""]
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
