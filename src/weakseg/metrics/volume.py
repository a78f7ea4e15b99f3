"""Per-volume segmentation metrics (Dice, HD95, ASD) with voxel spacing.

:func:`volume_metrics` scores one predicted label map against its ground truth,
class by class; :class:`VolumeMetrics` accumulates those scores over many volumes
(MONAI-style ``update`` / ``compute`` / ``reset``) and exports them as rows, a CSV
file or a printable table.

Surface distances come from MONAI (``compute_hausdorff_distance`` and
``compute_average_surface_distance``); MONAI is imported on first use because
importing it takes more than a second. MONAI's HD95 uses ``torch.quantile``, which
rejects more than 2**24 surface voxels per direction (only very large, very noisy
masks reach that).

Conventions, per class (also in :func:`volume_metrics`):

* pred and gt both empty: Dice 1, HD95 0, ASD 0 (a correct "absent").
* exactly one of them empty: Dice 0 and HD95 = ASD = the diagonal of the volume
  (``sqrt(sum((shape * spacing) ** 2))``), the worst case, so means stay finite
  and misses are penalised.
* ``spacing=None`` means unit spacing: distances are in voxels, otherwise in the
  unit of ``spacing`` (mm). Spacing is given in array-axis order (``(z, y, x)``
  for ``(Z, H, W)`` arrays).
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from weakseg.errors import WeaksegError
from weakseg.safeio import atomic_path

__all__ = ["METRIC_NAMES", "VolumeMetrics", "volume_metrics"]

#: Names of the metrics returned by :func:`volume_metrics`, in column order.
METRIC_NAMES: tuple[str, ...] = ("dice", "hd95", "asd")


def _check_labels(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    """Validate ``pred`` / ``gt`` and return them as int64 arrays."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise WeaksegError(
            f"prediction and ground truth must have the same shape, got {pred.shape} and {gt.shape}"
        )
    if pred.ndim not in (2, 3):
        raise WeaksegError(f"label maps must be 2D or 3D, got shape {pred.shape}")
    if pred.size == 0:
        raise WeaksegError(f"label maps must not be empty, got shape {pred.shape}")
    out = []
    for name, arr in (("prediction", pred), ("ground truth", gt)):
        if arr.dtype == bool:
            arr = arr.astype(np.int64)
        elif np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise WeaksegError(
                    f"{name} must hold integer class indices, got non-integer values"
                )
            arr = arr.astype(np.int64)
        elif not np.issubdtype(arr.dtype, np.integer):
            raise WeaksegError(f"{name} must be an integer label map, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            raise WeaksegError(
                f"{name} values must be in [0, {num_classes - 1}] for num_classes={num_classes}, "
                f"got values in [{lo}, {hi}]"
            )
        out.append(arr.astype(np.int64, copy=False))
    return tuple(out)


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> list[float]:
    """Return spacing as a list of ``ndim`` positive Python floats (unit when ``None``)."""
    if spacing is None:
        return [1.0] * ndim
    try:
        values = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise WeaksegError(f"spacing must be a sequence of numbers, got {spacing!r}") from None
    if len(values) != ndim:
        raise WeaksegError(
            f"spacing must have one value per array axis ({ndim}), got {len(values)}: {values}"
        )
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise WeaksegError(f"spacing values must be finite and positive, got {values}")
    return values


def _crop_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``mask`` (non-empty) grown by ``margin`` voxels, clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo = max(int(hits[0]) - margin, 0)
        hi = min(int(hits[-1]) + 1 + margin, mask.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def _surface_distances(p: np.ndarray, g: np.ndarray, spacing: list[float]) -> tuple[float, float]:
    """HD95 and symmetric ASD of two non-empty binary masks, via MONAI."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    y_pred = p[None, None].astype(np.float32)
    y = g[None, None].astype(np.float32)
    with warnings.catch_warnings():
        # MONAI >= 1.5 passes a deprecated argument to itself on every call.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd95 = compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, spacing=spacing
        )
        asd = compute_average_surface_distance(
            y_pred, y, include_background=True, symmetric=True, spacing=spacing
        )
    return float(hd95.reshape(-1)[0]), float(asd.reshape(-1)[0])


def volume_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    include_background: bool = False,
) -> dict[str, np.ndarray]:
    """Dice, HD95 and ASD of one predicted label map against its ground truth.

    Args:
        pred: integer class map, 2D ``(H, W)`` or 3D ``(Z, H, W)``, values in
            ``[0, num_classes)`` (float arrays holding whole numbers are accepted).
        gt: ground-truth class map of the same shape and value range.
        num_classes: number of classes including background (class 0).
        spacing: voxel size per array axis (e.g. ``(z, y, x)`` in mm), or ``None``
            for unit spacing (distances in voxels).
        include_background: also score class 0.

    Returns:
        ``{"dice": ..., "hd95": ..., "asd": ...}``, each a float64 array with one
        value per scored class: classes ``1..num_classes-1``, or ``0..num_classes-1``
        with ``include_background``.

    Definitions: Dice is ``2|P∩G| / (|P|+|G|)``. Surfaces are the mask voxels
    removed by one binary erosion; distances are between surface-voxel centres.
    HD95 is MONAI's: the larger of the two directed 95th percentiles (pred→gt and
    gt→pred). ASD is the symmetric average surface distance: the mean of all
    pred→gt and gt→pred surface distances together.

    Empty-mask conventions, per class: pred and gt both empty gives Dice 1,
    HD95 0, ASD 0; exactly one empty gives Dice 0 and HD95 = ASD = the diagonal
    of the volume, ``sqrt(sum((shape * spacing) ** 2))``, so means stay finite
    and missed structures are penalised.

    Raises:
        WeaksegError: on mismatched shapes, non-2D/3D or non-integer maps,
            values out of range, or bad ``spacing`` / ``num_classes``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise WeaksegError(f"num_classes must be an integer, got {num_classes!r}")
    num_classes = int(num_classes)
    min_classes = 1 if include_background else 2
    if num_classes < min_classes:
        raise WeaksegError(
            f"num_classes must be at least {min_classes} "
            f"(include_background={include_background}), got {num_classes}"
        )
    pred, gt = _check_labels(pred, gt, num_classes)
    sp = _check_spacing(spacing, pred.ndim)
    diagonal = float(np.sqrt(np.sum((np.asarray(pred.shape, dtype=np.float64) * sp) ** 2)))

    # Confusion matrix in one pass: rows = gt class, columns = pred class.
    confusion = np.bincount(
        (gt * num_classes + pred).ravel(), minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    inter = np.diag(confusion).astype(np.float64)
    gt_count = confusion.sum(axis=1)
    pred_count = confusion.sum(axis=0)

    classes = range(0 if include_background else 1, num_classes)
    dice = np.empty(len(classes), dtype=np.float64)
    hd95 = np.empty(len(classes), dtype=np.float64)
    asd = np.empty(len(classes), dtype=np.float64)
    for i, c in enumerate(classes):
        has_p, has_g = pred_count[c] > 0, gt_count[c] > 0
        if not has_p and not has_g:
            dice[i], hd95[i], asd[i] = 1.0, 0.0, 0.0
        elif not (has_p and has_g):
            dice[i], hd95[i], asd[i] = 0.0, diagonal, diagonal
        else:
            dice[i] = 2.0 * inter[c] / float(pred_count[c] + gt_count[c])
            p, g = pred == c, gt == c
            box = _crop_box(p | g)  # distances are translation invariant
            hd95[i], asd[i] = _surface_distances(p[box], g[box], sp)
    return {"dice": dice, "hd95": hd95, "asd": asd}


class VolumeMetrics:
    """Accumulates :func:`volume_metrics` over volumes, MONAI-style.

    Example::

        vm = VolumeMetrics(["background", "RV", "MYO", "LV"])
        for vol, pred in zip(volumes, preds):
            vm.update(pred, vol.label, key=vol.key, spacing=vol.spacing)
        print(vm.format_table())
        vm.write_csv("metrics.csv")

    Args:
        class_names: one name per class, the first being background (scored only
            with ``include_background``). Names are used in column names
            (``dice_<name>``) and must be unique.
        include_background: also score class 0.
    """

    def __init__(self, class_names: Sequence[str], *, include_background: bool = False) -> None:
        names = [str(n) for n in class_names]
        if isinstance(class_names, str) or len(names) < 2:
            raise WeaksegError(
                f"class_names must list at least 2 classes (background first), got {class_names!r}"
            )
        if any(not n.strip() for n in names) or len(set(names)) != len(names):
            raise WeaksegError(f"class_names must be unique and non-empty, got {names}")
        if "mean" in names[0 if include_background else 1 :]:
            raise WeaksegError("a class cannot be named 'mean' (reserved for the mean column)")
        self.class_names: list[str] = names
        self.include_background = bool(include_background)
        self.scored_names: list[str] = names if include_background else names[1:]
        self._keys: list[str] = []
        self._scores: dict[str, list[np.ndarray]] = {m: [] for m in METRIC_NAMES}
        self._units: set[str] = set()

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    @property
    def columns(self) -> list[str]:
        """Column names of :meth:`rows` and the CSV, ``"key"`` first."""
        cols = ["key"]
        for m in METRIC_NAMES:
            cols += [f"{m}_{n}" for n in self.scored_names] + [f"{m}_mean"]
        return cols

    def __len__(self) -> int:
        return len(self._keys)

    def reset(self) -> None:
        """Forget all volumes added so far."""
        self._keys.clear()
        for values in self._scores.values():
            values.clear()
        self._units.clear()

    def update(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        *,
        key: str,
        spacing: Sequence[float] | None = None,
    ) -> dict[str, float | str]:
        """Score one volume (see :func:`volume_metrics`) and return its row.

        Raises:
            WeaksegError: on bad input or a ``key`` already added since the last reset.
        """
        key = str(key)
        if key in self._keys:
            raise WeaksegError(
                f"volume {key!r} was already added; keys must be unique (or reset())"
            )
        scores = volume_metrics(
            pred,
            gt,
            num_classes=self.num_classes,
            spacing=spacing,
            include_background=self.include_background,
        )
        self._keys.append(key)
        for m in METRIC_NAMES:
            self._scores[m].append(scores[m])
        self._units.add("voxels" if spacing is None else "mm")
        return self._row(key, {m: scores[m] for m in METRIC_NAMES})

    def _row(self, key: str, scores: dict[str, np.ndarray]) -> dict[str, float | str]:
        row: dict[str, float | str] = {"key": key}
        for m in METRIC_NAMES:
            for name, value in zip(self.scored_names, scores[m], strict=True):
                row[f"{m}_{name}"] = float(value)
            row[f"{m}_mean"] = float(np.mean(scores[m]))
        return row

    def _table(self, metric: str) -> np.ndarray:
        """``(volumes, scored classes)`` array of one metric."""
        if not self._keys:
            raise WeaksegError("no volumes were scored yet; call update() first")
        return np.stack(self._scores[metric])

    def rows(self) -> list[dict[str, float | str]]:
        """One dict per volume, in update order, with the keys of :attr:`columns`."""
        return [
            self._row(key, {m: self._scores[m][i] for m in METRIC_NAMES})
            for i, key in enumerate(self._keys)
        ]

    def compute(self) -> dict[str, float]:
        """Means over volumes: ``<metric>_<class>`` and ``<metric>_mean`` (over classes).

        ``<metric>_mean`` is the mean over classes of the per-class means, which is
        also the mean over volumes of each row's ``<metric>_mean``.

        Raises:
            WeaksegError: when no volume was added.
        """
        out: dict[str, float] = {}
        for m in METRIC_NAMES:
            per_class = self._table(m).mean(axis=0)
            for name, value in zip(self.scored_names, per_class, strict=True):
                out[f"{m}_{name}"] = float(value)
            out[f"{m}_mean"] = float(per_class.mean())
        return out

    def write_csv(self, path: str | Path) -> Path:
        """Write per-volume rows plus a final ``mean`` row to ``path``; return the path."""
        means = self.compute()
        path = Path(path)
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows())
            writer.writerow({"key": "mean", **means})
        return path

    def format_table(self, digits: int = 3) -> str:
        """Plain-text table: one row per class and a mean row, ``mean ± std`` over volumes.

        The std is the population std (``ddof=0``) over volumes; the ``mean`` row
        uses each volume's mean over classes.
        """
        stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for m in METRIC_NAMES:
            table = self._table(m)
            per_volume = table.mean(axis=1, keepdims=True)
            full = np.concatenate([table, per_volume], axis=1)
            stats[m] = (full.mean(axis=0), full.std(axis=0))
        labels = [*self.scored_names, "mean"]
        header = ["class", "Dice", "HD95", "ASD"]
        body = [
            [label]
            + [f"{stats[m][0][i]:.{digits}f} ± {stats[m][1][i]:.{digits}f}" for m in METRIC_NAMES]
            for i, label in enumerate(labels)
        ]
        widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]

        def fmt(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            return "  ".join([first, *rest]).rstrip()

        lines = [fmt(header), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in body[:-1]]
        lines += ["  ".join("-" * w for w in widths), fmt(body[-1])]
        units = " and ".join(sorted(self._units))
        lines.append(f"({len(self)} volumes; distances in {units})")
        return "\n".join(lines)
