"""Picture of CAM pseudo-masks: raw CAM vs thresholded vs refined mask vs ground truth (C13)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from weakseg.report.plots import _COLORS, _rgb, overlay_rgb
from weakseg.safeio import atomic_path

__all__ = ["cam_rgb", "plot_cams"]


def cam_rgb(image: np.ndarray, cams: np.ndarray, tags: np.ndarray | None = None,
            alpha: float = 0.6) -> np.ndarray:
    """``image`` ``(H, W)`` as RGB with the CAMs ``(C, H, W)`` of the foreground classes
    (present per ``tags`` ``(C,)``) blended in, each in its class colour, by its value."""
    rgb = overlay_rgb(image, None)
    out = rgb.copy()
    for c in range(1, cams.shape[0]):
        if tags is not None and not tags[c]:
            continue
        weight = alpha * np.clip(cams[c], 0.0, 1.0)[..., None]
        out = (1 - weight) * out + weight * _COLORS[c % len(_COLORS)]
    return np.clip(out, 0.0, 1.0)


def plot_cams(
    path: str | Path,
    images: np.ndarray,
    cams: np.ndarray,
    columns: dict[str, np.ndarray],
    *,
    tags: np.ndarray | None = None,
    row_titles: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """One row per slice: the image, its raw CAMs (present classes), then one column per
    label map of ``columns`` (e.g. ``threshold``, ``refined``, ``ground truth``).

    Args:
        images: ``(N, H, W)``; cams: ``(N, C, H, W)`` in ``[0, 1]``; columns: title →
            ``(N, H, W)`` label maps (negative values uncoloured); tags: ``(N, C)`` bool.

    Returns:
        ``path`` (a PNG written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n, m = len(images), 2 + len(columns)
    fig, axes = plt.subplots(n, m, figsize=(2.4 * m, 2.4 * n + 0.4), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(overlay_rgb(images[i], None))
        axes[i, 1].imshow(cam_rgb(images[i], cams[i], None if tags is None else tags[i]))
        for j, maps in enumerate(columns.values(), start=2):
            axes[i, j].imshow(overlay_rgb(images[i], maps[i]))
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
    for j, title in enumerate(["image", "raw CAM", *columns]):
        axes[0, j].set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if class_names:
        handles = [Patch(color=_rgb(_COLORS[k % len(_COLORS)]), label=name)
                   for k, name in enumerate(class_names) if k > 0]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if class_names else 0, 1, 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
