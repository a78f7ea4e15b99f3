"""MoNuSeg nuclei from the real point labels: partial CE, dense CRF on RGB, size bounds.

Usage (each run is `weakseg train --resume`, so an interrupted benchmark continues):

    python benchmarks/monuseg_points.py run full points_pce points_crf points_size_crf
    python benchmarks/monuseg_points.py report --notes benchmarks/monuseg_notes.md

Runs are named after configs/monuseg_<name>.yaml and live in
benchmarks/results/monuseg/<name>. The report predicts the 4 validation tiles with each
run's best.pt at full resolution (1000x1000) and scores pixel Dice (= F1 of the nucleus
class), precision, recall and AJI (connected components of the prediction as instances).
"""

from __future__ import annotations

import csv
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_main, md_table, median  # noqa: E402
from acdc_scribbles import REPO, _machine_line, run  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "monuseg"
DOC = REPO / "docs" / "benchmarks" / "monuseg_points.md"
PREFIX = "monuseg_"
ORDER = ["full", "points_pce", "points_crf", "points_size", "points_size_crf"]


def score(name: str, vols: list) -> dict:
    """Pixel and instance scores of ``name``'s best.pt on ``vols``, pooled over tiles."""
    import numpy as np

    from weakseg.engine.inference import checkpoint_geometry, predict_volume
    from weakseg.engine.trainer import load_model_from_checkpoint
    from weakseg.metrics.instances import aggregated_jaccard_index, instances_from_semantic

    model, ckpt = load_model_from_checkpoint(RESULTS / name / "best.pt")
    tp = fp = fn = 0
    ajis, dices, preds = [], [], []
    for v in vols:
        pred = predict_volume(model, v, **checkpoint_geometry(ckpt))[0]
        truth = v.label[0] == 1
        p = pred == 1
        tp_, fp_, fn_ = int((p & truth).sum()), int((p & ~truth).sum()), int((~p & truth).sum())
        tp, fp, fn = tp + tp_, fp + fp_, fn + fn_
        dices.append(2 * tp_ / max(2 * tp_ + fp_ + fn_, 1))
        ajis.append(aggregated_jaccard_index(instances_from_semantic(p), v.meta["instances"][0]))
        preds.append(pred)
    return {"dice_pooled": 2 * tp / max(2 * tp + fp + fn, 1),
            "dice_mean": float(np.mean(dices)), "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1), "aji": float(np.mean(ajis)),
            "aji_tiles": ajis, "preds": preds}


def report(names: list[str], notes: str) -> None:
    from weakseg.data.monuseg import load_monuseg
    from weakseg.report import plot_overlays

    vols = load_monuseg(root=REPO.parent / "shared" / "data" / "monuseg", split="val").volumes
    runs = [n for n in names if (RESULTS / n / "summary.json").exists()]
    if "full" not in runs:
        raise SystemExit("the full-supervision run is missing; run it first")
    scores = {n: score(n, vols) for n in runs}
    full = scores["full"]
    head = ["method", "pixel Dice (F1)", "% of full", "precision", "recall", "AJI",
            "AJI % of full", "best epoch", "s/epoch"]
    rows = []
    for n in runs:
        s = scores[n]
        log = list(csv.DictReader(open(RESULTS / n / "log.csv")))
        summary = json.loads((RESULTS / n / "summary.json").read_text())
        rows.append([n, f"**{s['dice_pooled']:.3f}**",
                     f"{100 * s['dice_pooled'] / full['dice_pooled']:.1f}",
                     f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"**{s['aji']:.3f}**",
                     f"{100 * s['aji'] / full['aji']:.1f}", summary["best_epoch"],
                     f"{median([float(r['train_seconds']) for r in log]):.0f}"])
        print(rows[-1], [round(a, 3) for a in s["aji_tiles"]], flush=True)
    # a 300x300 window of every validation tile, truth and each run
    win = (slice(350, 650), slice(350, 650))
    images = [v.image[0][win] for v in vols]
    columns = {"truth": [v.label[0][win] for v in vols]}
    columns.update({n: [p[win] for p in scores[n]["preds"]] for n in runs})
    plot_overlays(DOC.with_name("monuseg_overlay.png"), images, columns,
                  row_titles=[v.key.split("_")[0] for v in vols],
                  class_names=["background", "nucleus"])
    text = f"""# MoNuSeg nuclei from real point labels — reduced CPU protocol

Measured {datetime.date.today().isoformat()} on this machine: see "Machine" below.

**Protocol.** MoNuSeg H&E tiles of the WeakNucleiSeg copy (`../shared/data/monuseg`): train
on the 12 `split.json` training tiles, select the best epoch on the 4 validation tiles by
pixel Dice and report on the same 4 tiles (the published test tiles are not in this copy: these
are validation numbers, slightly optimistic for every row alike). Tiles are resized
1000 → 512 (nuclei ≈ 8–12 px across), the network trains on random 128×128 crops (batch 8,
16 epochs × 50 steps, Adam lr 1e-3 with poly decay, rot90/flip augmentation, seed 0), the same
2D U-Net (16 base channels, 1.81 M parameters) and budget for every row. Predictions are made on
whole 512² tiles and up-sampled to 1000² before scoring. Pixel Dice = F1 of the nucleus class
pooled over the 4 tiles; AJI (Kumar et al., TMI 2017) on the 8-connected components of the
predicted mask (no instance post-processing such as watershed, for every row), mean over tiles.

Weak labels: the **real** clicks (one per nucleus) turned into Voronoi labels as in Qu et al.
(MIDL 2019): a radius-2 disc around each click is nucleus, the edges of the clicks' Voronoi
diagram are background, everything else unlabelled (8.5 % of the pixels at 512²). They use
the points only.

{md_table(head, rows)}

s/epoch: median training-pass time with 1 torch thread while another run shared the 2 cores.

![validation windows: truth and each run](monuseg_overlay.png)

{notes}

## Commands

```bash
python benchmarks/monuseg_points.py run {' '.join(runs)} --threads 1   # resumable
python benchmarks/monuseg_points.py report {' '.join(runs)} --notes benchmarks/monuseg_notes.md
```

## Machine

{_machine_line()}
"""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(text)


def main() -> None:
    bench_main(__doc__, run=lambda names, threads: run(names, threads, prefix=PREFIX,
                                                       results=RESULTS),
               report=report, report_names=ORDER)


if __name__ == "__main__":
    main()
