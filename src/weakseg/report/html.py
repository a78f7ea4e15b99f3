"""``weakseg report``: one static HTML file to browse one or several runs side by side.

The file is self-contained (images inlined as PNG data URIs, a few lines of JavaScript, no
server, no network): a summary table (best epoch, validation Dice and HD95 per class, training
time), curves over epochs (training loss per term, validation Dice and HD95 per class, learning
rate, constraint violations), and per-volume overlays of the validation volumes with a slice
slider — image, the weak labels, the ground truth, then each run's prediction.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from weakseg.config import Config, config_from_dict
from weakseg.data.base import Volume
from weakseg.engine.inference import checkpoint_geometry, predict_volume
from weakseg.engine.trainer import load_data, load_model_from_checkpoint
from weakseg.errors import WeaksegError
from weakseg.report.plots import overlay_rgb
from weakseg.safeio import write_text_atomic

__all__ = ["RunRecord", "build_report", "read_run"]


@dataclass
class RunRecord:
    """What a run folder holds, as read by :func:`read_run`."""

    path: Path
    name: str
    config: dict[str, Any]
    history: list[dict[str, float]]
    summary: dict[str, Any] = field(default_factory=dict)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_run(path: str | Path) -> RunRecord:
    """Read ``config.yaml``, ``log.csv`` and (when finished) ``summary.json`` of a run."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise WeaksegError(f"run folder {path} does not exist; give folders written by "
                           "'weakseg train --out'")
    log, cfg = path / "log.csv", path / "config.yaml"
    if not log.is_file() or not cfg.is_file():
        raise WeaksegError(f"{path} is not a weakseg run folder (no log.csv / config.yaml); "
                           "give folders written by 'weakseg train --out'")
    try:
        config = yaml.safe_load(cfg.read_text()) or {}
        with log.open(newline="") as f:
            rows = [{k: _number(v) for k, v in row.items() if v not in ("", None)}
                    for row in csv.DictReader(f)]
        summary_path = path / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise WeaksegError(f"cannot read the run in {path}: {exc}") from exc
    if not rows:
        raise WeaksegError(f"{path}/log.csv has no epoch yet; wait for the first epoch")
    return RunRecord(path, path.resolve().name, config, rows, summary)


# ------------------------------------------------------------------------- pictures


def _png(rgb: np.ndarray) -> str:
    """An RGB array in [0, 1] as a PNG data URI."""
    import matplotlib.image as mpimg

    buf = io.BytesIO()
    mpimg.imsave(buf, np.clip(rgb, 0, 1), format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _curve_groups(runs: Sequence[RunRecord]) -> dict[str, list[str]]:
    """Title → the log columns plotted in it (union over runs, in log order)."""
    cols: list[str] = []
    for run in runs:
        for row in run.history:
            cols += [c for c in row if c not in cols]

    def pick(pred: Any) -> list[str]:
        return [c for c in cols if pred(c)]

    return {
        "training loss per term": pick(lambda c: c.startswith("train_") and not c.endswith(
            ("_violated", "seconds")) and c != "train_seconds"),
        "validation Dice per class": pick(lambda c: c.startswith("val_dice_")),
        "validation HD95 per class": pick(lambda c: c.startswith("val_hd95_")),
        "constraints violated (fraction)": pick(lambda c: c.endswith("_violated")),
        "learning rate": pick(lambda c: c == "lr"),
    }


def _curves(runs: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """``(title, PNG data URI)`` per curve group: one panel per column, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = []
    for title, cols in _curve_groups(runs).items():
        if not cols:
            continue
        n = len(cols)
        ncols = min(n, 4)
        nrows = -(-n // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.6 * nrows), squeeze=False)
        for ax, col in zip(axes.flat, cols, strict=False):
            for run in runs:
                pts = [(r["epoch"], r[col]) for r in run.history
                       if col in r and math.isfinite(r[col])]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=".", label=run.name)
            ax.set_title(col.removeprefix("train_").removeprefix("val_"), fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            if col == "train_total" or (col.startswith("train_") and "violated" not in col):
                if all(r.get(col, 1.0) > 0 for run in runs for r in run.history):
                    ax.set_yscale("log")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(runs), 4), fontsize=8)
        fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
        out.append((title, _figure_uri(fig)))
    return out


# ------------------------------------------------------------------------- overlays


def _data_key(cfg: Config) -> str:
    d = cfg.data
    target = None if d.target is None else [d.target.name, d.target.root, d.target.params,
                                            d.target.val]  # whose val volumes are shown
    return json.dumps([d.name, d.root, d.params, d.val, d.fold, d.size, target],
                      sort_keys=True, default=str)


def _overlay_section(runs: Sequence[RunRecord], volumes: int) -> list[dict[str, Any]]:
    """Per validation volume: the slices of every column as PNG data URIs."""
    cfgs = [config_from_dict(r.config) for r in runs]
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(_data_key(cfg), []).append(i)
    sections = []
    for members in groups.values():
        cfg = cfgs[members[0]]
        try:
            splits = load_data(cfg)
        except WeaksegError as exc:
            raise WeaksegError(f"cannot read the data of run {runs[members[0]].path} for the "
                               f"overlays ({exc}); run the report from the folder you trained "
                               "in, or pass --no-overlays") from exc
        shown: list[Volume] = splits.val[:volumes]
        if not shown:
            continue
        models = []
        for i in members:
            ckpt = runs[i].path / "best.pt"
            if not ckpt.is_file():
                raise WeaksegError(f"{runs[i].path} has no best.pt yet; pass --no-overlays or "
                                   "wait for the first epoch")
            model, meta = load_model_from_checkpoint(ckpt)
            models.append((runs[i].name, model, checkpoint_geometry(meta)))
        annotation = cfg.data.annotation if cfg.data.annotation in (
            shown[0].annotations or {}) else None
        for vol in shown:
            columns: dict[str, list[str]] = {"image": [], }
            if annotation:
                columns[f"weak labels ({annotation})"] = []
            columns["ground truth"] = []
            preds = {name: predict_volume(model, vol, **geometry)
                     for name, model, geometry in models}
            for name in preds:
                columns[name] = []
            image = vol.image if vol.image.ndim == 3 else vol.image[..., :3]
            for z in range(vol.shape[0]):
                columns["image"].append(_png(overlay_rgb(image[z], None)))
                if annotation:
                    columns[f"weak labels ({annotation})"].append(_png(overlay_rgb(
                        image[z], vol.annotations[annotation][z], show_background=True)))
                columns["ground truth"].append(_png(overlay_rgb(image[z], vol.label[z]
                                                                if vol.label is not None
                                                                else None)))
                for name, pred in preds.items():
                    columns[name].append(_png(overlay_rgb(image[z], pred[z])))
            sections.append({"key": vol.key, "slices": vol.shape[0], "columns": columns})
    return sections


# ------------------------------------------------------------------------- page


def _summary_table(runs: Sequence[RunRecord]) -> str:
    class_cols: list[str] = []
    for run in runs:
        for key in (run.summary.get("val_metrics") or {}):
            if key.startswith(("dice_", "hd95_")) and key not in class_cols:
                class_cols.append(key)
    head = ["run", "annotation", "loss", "epochs", "best epoch", *class_cols, "train s"]
    rows = []
    for run in runs:
        cfg = run.config
        losses = " + ".join(f"{t.get('name')}×{t.get('weight', 1)}" for t in cfg.get("loss", []))
        metrics = run.summary.get("val_metrics") or {}
        cells = [run.name, str(cfg.get("data", {}).get("annotation", "")), losses,
                 str(len(run.history)), str(run.summary.get("best_epoch", "–"))]
        cells += [f"{metrics[c]:.3f}" if isinstance(metrics.get(c), (int, float)) else "–"
                  for c in class_cols]
        total = run.summary.get("train_seconds_total")
        cells.append(f"{total:.0f}" if isinstance(total, (int, float)) else "–")
        rows.append(cells)
    out = ["<table class='summary'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
           + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "\n".join(out) + "</table>"


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table.summary { border-collapse: collapse; font-size: 0.85em; }
table.summary td, table.summary th { border: 1px solid #bbb; padding: 3px 6px; }
.curve { max-width: 100%; }
.volume { margin: 1em 0 2em; }
.columns { display: flex; flex-wrap: wrap; gap: 6px; }
.columns figure { margin: 0; text-align: center; font-size: 0.8em; }
.columns img { width: 220px; image-rendering: pixelated; }
"""

_SCRIPT = """
const DATA = JSON.parse(document.getElementById('overlay-data').textContent);
function show(v, z) {
  const vol = DATA[v];
  document.querySelectorAll(`img[data-volume="${v}"]`).forEach(img => {
    img.src = vol.columns[img.dataset.column][z];
  });
  document.getElementById(`z-${v}`).textContent = `slice ${z + 1} / ${vol.slices}`;
}
DATA.forEach((vol, v) => {
  const slider = document.getElementById(`slider-${v}`);
  slider.addEventListener('input', () => show(v, Number(slider.value)));
  show(v, Number(slider.value));
});
"""


def _volume_html(v: int, vol: dict[str, Any]) -> str:
    mid = vol["slices"] // 2
    figs = "".join(
        f"<figure><img class='overlay' data-volume='{v}' data-column='{html.escape(col)}' "
        f"alt='{html.escape(col)}'><figcaption>{html.escape(col)}</figcaption></figure>"
        for col in vol["columns"]
    )
    return (f"<div class='volume'><h3>{html.escape(vol['key'])}</h3>"
            f"<input type='range' class='slider' id='slider-{v}' min='0' "
            f"max='{vol['slices'] - 1}' value='{mid}'> <span id='z-{v}'></span>"
            f"<div class='columns'>{figs}</div></div>")


def build_report(
    run_dirs: Sequence[str | Path], out: str | Path, *, volumes: int = 4, overlays: bool = True
) -> Path:
    """Write the HTML report of ``run_dirs`` to ``out``; returns ``out``.

    Args:
        volumes: number of validation volumes shown with overlays.
        overlays: predict the validation volumes with each run's ``best.pt`` (needs the
            run's data where its config says); ``False`` shows the table and curves only.
    """
    if not run_dirs:
        raise WeaksegError("give at least one run folder")
    if volumes < 1:
        raise WeaksegError(f"--volumes must be ≥ 1, got {volumes}")
    runs = [read_run(p) for p in run_dirs]
    names = [r.name for r in runs]
    for run in runs:  # two runs of the same name: qualify by their parent folder
        if names.count(run.name) > 1:
            run.name = f"{run.path.resolve().parent.name}/{run.name}"
    for i, run in enumerate(runs):  # still the same (one folder given twice): number them
        if [r.name for r in runs].count(run.name) > 1:
            run.name = f"{run.name} #{i + 1}"
    curves = _curves(runs)
    sections = _overlay_section(runs, volumes) if overlays else []
    body = [f"<h1>weakseg report: {html.escape(', '.join(r.name for r in runs))}</h1>",
            "<h2>Summary (validation metrics of best.pt)</h2>", _summary_table(runs),
            "<h2>Curves</h2>"]
    body += [f"<h3>{html.escape(t)}</h3><img class='curve' src='{uri}' alt='{html.escape(t)}'>"
             for t, uri in curves]
    if sections:
        body.append("<h2>Validation volumes (slider: slice)</h2>")
        body += [_volume_html(v, vol) for v, vol in enumerate(sections)]
    data = json.dumps(sections).replace("</", "<\\/")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>weakseg report</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}"
        f"<script type='application/json' id='overlay-data'>{data}</script>"
        f"<script>{_SCRIPT}</script></body></html>"
    )
    out = Path(out)
    write_text_atomic(out, page)
    return out
