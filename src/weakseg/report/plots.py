"""Overlay pictures and training curves (matplotlib, headless ``Agg`` backend)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from weakseg.data.base import Volume
from weakseg.safeio import atomic_path

__all__ = ["overlay_rgb", "plot_curves", "plot_overlays", "plot_volume_overlays"]

_COLORS = np.array(
    [[0, 0, 0], [0.95, 0.25, 0.25], [0.25, 0.85, 0.35], [0.25, 0.5, 1.0], [1.0, 0.8, 0.2],
     [0.8, 0.3, 0.9], [0.2, 0.9, 0.9], [1.0, 0.5, 0.0]]
)


_BACKGROUND_MARK = np.array([1.0, 0.85, 0.1])  # labelled background in weak annotations


def _rgb(colour: np.ndarray) -> tuple[float, float, float]:
    return float(colour[0]), float(colour[1]), float(colour[2])


def overlay_rgb(
    image: np.ndarray, labels: np.ndarray | None, alpha: float = 0.45,
    show_background: bool = False,
) -> np.ndarray:
    """``image`` as RGB in [0, 1] with ``labels`` blended in (class colours; labelled
    background marked when ``show_background``)."""
    img = image.astype(np.float32)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
    if labels is None:
        return rgb
    out = rgb.copy()
    mask = labels > 0
    colors = _COLORS[np.clip(labels, 0, len(_COLORS) - 1) % len(_COLORS)]
    out[mask] = (1 - alpha) * rgb[mask] + alpha * colors[mask]
    if show_background:
        out[labels == 0] = _BACKGROUND_MARK
    return out


def plot_overlays(
    path: str | Path,
    images: Sequence[np.ndarray],
    columns: Mapping[str, Sequence[np.ndarray | None]],
    *,
    row_titles: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    weak_columns: Sequence[str] = (),
) -> Path:
    """A grid: one row per slice, first column the image, then one column per label map.

    Args:
        images: 2D slices ``(H, W)`` (or ``(H, W, 3)``).
        columns: title → one label map per slice (``None`` shows the bare image);
            unlabelled pixels (negative values) are left uncoloured.
        weak_columns: titles of weak annotations, whose labelled background pixels
            are drawn too (in yellow).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n, m = len(images), 1 + len(columns)
    fig, axes = plt.subplots(n, m, figsize=(2.4 * m, 2.4 * n + 0.4), squeeze=False)
    for i, image in enumerate(images):
        axes[i, 0].imshow(overlay_rgb(image, None))
        axes[i, 0].set_title("image" if i == 0 else "", fontsize=9)
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
        for j, (title, maps) in enumerate(columns.items(), start=1):
            axes[i, j].imshow(overlay_rgb(image, maps[i], show_background=title in weak_columns))
            axes[i, j].set_title(title if i == 0 else "", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if class_names:
        handles = [Patch(color=_rgb(_COLORS[k % len(_COLORS)]), label=name)
                   for k, name in enumerate(class_names) if k > 0]
        if weak_columns:
            handles.append(Patch(color=_rgb(_BACKGROUND_MARK), label=f"{class_names[0]} (weak)"))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if class_names else 0, 1, 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_curves(path: str | Path, logs: dict[str, str | Path]) -> Path:
    """Training loss and validation Dice per epoch for one or more runs' ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, log in logs.items():
        with open(log, newline="") as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r["epoch"]) for r in rows]
        ax_loss.plot(epochs, [float(r["train_total"]) for r in rows], label=name)
        if rows and "val_dice_mean" in rows[0]:
            pts = [(e, float(r["val_dice_mean"])) for e, r in zip(epochs, rows, strict=True)
                   if r.get("val_dice_mean")]
            ax_dice.plot(*zip(*pts, strict=True), marker=".", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_dice.set(xlabel="epoch", ylabel="mean Dice", title="validation Dice", ylim=(0, 1))
    ax_loss.legend(fontsize=8)
    if ax_dice.get_legend_handles_labels()[0]:
        ax_dice.legend(fontsize=8)
    else:
        ax_dice.text(0.5, 0.5, "no validation split", ha="center", transform=ax_dice.transAxes)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_volume_overlays(
    path: str | Path,
    volumes: Sequence[Volume],
    predictions: Mapping[str, Sequence[np.ndarray]],
    *,
    class_names: Sequence[str] | None = None,
    annotation: str | None = None,
    max_rows: int = 4,
) -> Path:
    """Mid slice of up to ``max_rows`` volumes: image, [annotation], ground truth, predictions.

    Args:
        volumes: the volumes (their ``label`` is the ground truth column when present).
        predictions: run name → one ``(Z, H, W)`` class map per volume.
        annotation: name of a weak annotation of the volumes to show (e.g. ``"scribble"``).
    """
    picked = list(range(len(volumes)))[:max_rows]
    images, rows = [], []
    columns: dict[str, list[np.ndarray | None]] = {}
    if annotation:
        columns[annotation] = []
    if any(volumes[i].label is not None for i in picked):
        columns["ground truth"] = []
    for name in predictions:
        columns[name] = []
    for i in picked:
        vol = volumes[i]
        z = _most_labelled_slice(vol)
        image = vol.image[z]
        images.append(image if image.ndim == 2 else image[..., :3])
        rows.append(f"{vol.key} z={z}")
        if annotation:
            ann = vol.annotations.get(annotation)
            columns[annotation].append(None if ann is None else ann[z])
        if "ground truth" in columns:
            columns["ground truth"].append(None if vol.label is None else vol.label[z])
        for name, preds in predictions.items():
            columns[name].append(preds[i][z])
    return plot_overlays(path, images, columns, row_titles=rows, class_names=class_names,
                         weak_columns=[annotation] if annotation else [])


def _most_labelled_slice(vol: Volume) -> int:
    """The slice with the most foreground in the ground truth (mid slice without one)."""
    if vol.label is None:
        return vol.shape[0] // 2
    counts = (vol.label > 0).reshape(vol.shape[0], -1).sum(1)
    return int(np.argmax(counts)) if counts.any() else vol.shape[0] // 2
