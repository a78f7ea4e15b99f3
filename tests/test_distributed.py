"""Data-parallel training: two CPU processes (gloo) against one process, same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from weakseg.engine.distributed import Dist, forward_global, loss_scale

from .conftest import tiny_config


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A global-batch loss whose normalisation depends on the whole batch."""
    return nn.functional.cross_entropy(logits, target, ignore_index=-100)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 8, 8, generator=g)  # 5 samples over 2 processes: shares 3 and 2
    y = torch.randint(0, 3, (5, 8, 8), generator=g)
    y[1, :4] = -100  # unlabelled pixels in one share only
    return x, y


def _worker(rank: int, rendezvous: str, out: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                                  world_size=2)
    dist = Dist(rank=rank, world=2)
    net = nn.parallel.DistributedDataParallel(_net())
    x, y = _batch()
    logits = forward_global(net, x, dist)
    (_loss(logits, y) * loss_scale(dist)).backward()
    if rank == 0:
        torch.save({"logits": logits.detach(), "grads": [p.grad for p in net.parameters()]}, out)
    del net, logits  # the DDP reducer goes before its process group
    torch_dist.barrier()  # no process leaves while another still talks to it (gloo aborts)
    torch_dist.destroy_process_group()


def test_global_batch_loss_and_gradient_equal_one_process(tmp_path):
    """Gathered logits are the whole batch's, and the DDP gradient of the global-batch loss
    equals the one-process gradient (no batch norm, no dropout: exact up to float sums)."""
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    net = _net()
    x, y = _batch()
    logits = net(x)
    _loss(logits, y).backward()
    torch.testing.assert_close(got["logits"], logits.detach())
    for g_ddp, p in zip(got["grads"], net.parameters(), strict=True):
        torch.testing.assert_close(g_ddp, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    """``torchrun --nproc_per_node 2 -m weakseg train``: rank 0 alone writes and reports; the
    training losses follow the one-process run with the same global batch within 5 % (the
    difference: batch-norm statistics per share) and the final validation Dice within 0.05."""
    raw = tiny_config(train__epochs=3)
    raw["data"]["params"]["num_volumes"] = 6
    raw["data"]["train"], raw["data"]["val"] = "0-4", "5"
    raw["model"]["params"]["dropout"] = 0.0
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "weakseg", "train", "--config", str(cfg),
                          "--out", str(tmp_path / "one"), "--quiet"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "weakseg", "train", "--config",
                          str(cfg), "--out", str(tmp_path / "two"), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("best epoch") == 1 and two.stdout.count("epoch 3/3") == 1

    def log(name: str) -> list[dict[str, str]]:
        return list(csv.DictReader(open(tmp_path / name / "log.csv")))

    a, b = log("one"), log("two")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        assert abs(float(ra["train_total"]) - float(rb["train_total"])) <= 0.05 * float(
            ra["train_total"])
    assert abs(float(a[-1]["val_dice_mean"]) - float(b[-1]["val_dice_mean"])) <= 0.05
    ckpt = torch.load(tmp_path / "two" / "best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert not list(Path(tmp_path / "two").glob(".weakseg-tmp-*"))
