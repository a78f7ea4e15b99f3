"""Overhead of weakseg's training step against a plain hand-written PyTorch loop.

Same network (unet2d, 1.81 M parameters), same batch (8 × 1 × 128 × 128, 4 classes), same
optimiser (Adam) and loss (partial CE on ~1 % labelled pixels); the two loops alternate in
the same process (5 rounds × 20 steps each) and the median step time of each is compared.
weakseg's step = `train_one_epoch` (batch indexing, loss recipe with per-term logging,
finiteness check, LR schedule); augmentation is off in both (it is data work, timed apart).

    python benchmarks/trainer_overhead.py            # writes docs/benchmarks/trainer_overhead.md
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, md_table, median  # noqa: E402

from weakseg.config import config_from_dict  # noqa: E402
from weakseg.data.slices import SliceData  # noqa: E402
from weakseg.engine.trainer import build_optimizer, train_one_epoch  # noqa: E402
from weakseg.losses import partial_cross_entropy  # noqa: E402
from weakseg.losses.recipe import LossRecipe, LossTerm  # noqa: E402
from weakseg.models import MODELS  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "trainer_overhead.md"
STEPS, ROUNDS, BATCH, SIZE = 20, 5, 8, 128


def make_data(n: int) -> SliceData:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, SIZE, SIZE, generator=gen)
    targets = torch.randint(0, 4, (n, SIZE, SIZE), generator=gen)
    targets[torch.rand(n, SIZE, SIZE, generator=gen) > 0.01] = -100
    return SliceData(images, targets, ["v"] * n, list(range(n)))


def main() -> None:
    torch.set_num_threads(2)
    data = make_data(STEPS * BATCH)
    cfg = config_from_dict({"train": {"epochs": 1, "batch_size": BATCH}})
    torch.manual_seed(0)
    model_a = MODELS.build("unet2d", in_channels=1, num_classes=4)
    model_b = MODELS.build("unet2d", in_channels=1, num_classes=4)
    model_b.load_state_dict(model_a.state_dict())
    opt_a, sched_a = build_optimizer(cfg, model_a, STEPS * ROUNDS * 2)
    opt_b = torch.optim.Adam(model_b.parameters(), lr=1e-3, weight_decay=1e-4)
    recipe = LossRecipe([LossTerm("partial_ce")])

    def weakseg_round() -> float:
        t = time.perf_counter()
        train_one_epoch(model_a, recipe, data, opt_a, sched_a, batch_size=BATCH, seed=0,
                        augment=False)
        return (time.perf_counter() - t) / STEPS

    def plain_round() -> float:
        model_b.train()
        order = torch.randperm(len(data))
        t = time.perf_counter()
        for s in range(STEPS):
            idx = order[s * BATCH:(s + 1) * BATCH]
            x, y = data.images[idx], data.targets[idx]
            loss = partial_cross_entropy(model_b(x), y)
            opt_b.zero_grad()
            loss.backward()
            opt_b.step()
        return (time.perf_counter() - t) / STEPS

    weakseg_round(), plain_round()  # warm-up
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(weakseg_round())
        b.append(plain_round())
    ta, tb = median(a), median(b)
    rows = [["plain PyTorch loop", f"{1000 * tb:.1f}", "1.000"],
            ["weakseg train_one_epoch", f"{1000 * ta:.1f}", f"{ta / tb:.3f}"]]
    text = f"""# Trainer overhead vs a plain PyTorch loop

Measured {datetime.date.today().isoformat()}; {machine()}.

unet2d (1.81 M parameters), batch {BATCH} × 1 × {SIZE}², 4 classes, Adam, partial CE; {ROUNDS}
alternating rounds of {STEPS} steps in one process; median seconds per step.

{md_table(["loop", "ms / step (median)", "ratio"], rows)}

**Overhead of the weakseg step: {100 * (ta / tb - 1):+.1f} %** (target: under 5 %).

Command: `python benchmarks/trainer_overhead.py`
"""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
