"""Estimated label distributions of training slices: the file of ``weakseg estimate-priors``.

Curriculum domain adaptation (METHODS.md D3, :mod:`weakseg.adapt.curriculum`) first
estimates, for every training slice of the domain adapted to, its class fractions and the
class fractions of every cell of a square ``g × g`` grid over it, then trains the network to
match them (``label_distribution`` loss). The estimates live in one ``.npz`` file, keyed by
**slice identity** (volume key and slice index), so training finds each slice's row
whatever its selection or order:

==================  ========================  =========================================
array               shape                     what it is
==================  ========================  =========================================
``format``          ()                        :data:`ESTIMATES_FORMAT`
``keys``            ``(N,)`` str              volume key of each slice
``index``           ``(N,)`` int64            slice index in its volume
``fractions``       ``(N, C)`` float32        class fractions of the slice (rows sum to 1)
``cell_fractions``  ``(N, C, g, g)`` float32  class fractions of each grid cell
``class_names``     ``(C,)`` str              the classes, in order
``size``            ()                        the training canvas ``S`` of the slices
``spacing``         ``(2,)`` or ``(0,)``      its pixel size in mm (empty: square resize)
``method``          ()                        how the fractions were estimated
``source``          ()                        what estimated them (the checkpoint)
``masks``           ``(N, S, S)`` int16       optional: a pseudo-mask per slice (class
                                              index, ``-100`` where it abstains), e.g. the
                                              CAM masks of ``weakseg cam`` (C13)
``mae``             ``(C,)`` float64          optional: the estimator's own mean absolute
                                              error of each class fraction on held-out
                                              labelled slices (size regressor)
``mae_slices``      ()                        optional: how many slices ``mae`` averages
``mask_dice``       ``(C,)`` float64          optional: Dice of ``masks`` against the
                                              slices' full label maps, per class, pooled
                                              over the slices (a diagnostic of the masks'
                                              quality where the truth is known, as on
                                              ACDC; NaN for a class absent from both)
==================  ========================  =========================================

The fractions are of the slice **on the training grid** (resampled and centred on the
``S × S`` canvas as :func:`weakseg.data.slices.build_slices` does, padding included), the
same pixels the training loss measures; training refuses a file made for another canvas,
spacing or class set. Files are written atomically and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weakseg.data.priors import ESTIMATED_PRIORS, PRIOR_KEYS, PRIOR_REGISTRY
from weakseg.errors import WeaksegError
from weakseg.safeio import atomic_path

__all__ = [
    "ESTIMATES_FORMAT",
    "Estimates",
    "estimated_entries",
    "file_digest",
    "load_estimates",
    "save_estimates",
]

ESTIMATES_FORMAT = "weakseg-estimates-v1"
_ARRAYS = ("format", "keys", "index", "fractions", "cell_fractions", "class_names", "size",
           "spacing", "method", "source")


@dataclass(frozen=True)
class Estimates:
    """Estimated class fractions of ``N`` slices (see the module docstring for the fields)."""

    keys: list[str]
    index: list[int]
    fractions: np.ndarray
    cell_fractions: np.ndarray
    class_names: list[str]
    size: int
    spacing: tuple[float, float] | None
    method: str = ""
    source: str = ""
    masks: np.ndarray | None = None
    mae: np.ndarray | None = None
    mae_slices: int = 0
    mask_dice: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, c = len(self.keys), len(self.class_names)
        if self.masks is not None and self.masks.shape != (n, self.size, self.size):
            raise WeaksegError(f"estimates of {n} slices on a {self.size}² canvas need masks "
                               f"({n}, {self.size}, {self.size}); got {self.masks.shape}")
        if len(self.index) != n or self.fractions.shape != (n, c) or (
                self.cell_fractions.ndim != 4 or self.cell_fractions.shape[:2] != (n, c)
                or self.cell_fractions.shape[2] != self.cell_fractions.shape[3]):
            raise WeaksegError(
                f"estimates of {n} slices and {c} classes need index ({n},), fractions "
                f"({n}, {c}) and cell_fractions ({n}, {c}, g, g); got index "
                f"({len(self.index)},), fractions {self.fractions.shape}, cell_fractions "
                f"{self.cell_fractions.shape}")

    @property
    def grid(self) -> int:
        """The grid size ``g`` of :attr:`cell_fractions`."""
        return int(self.cell_fractions.shape[-1])

    def __len__(self) -> int:
        return len(self.keys)


def save_estimates(estimates: Estimates, path: str | Path) -> Path:
    """Write ``estimates`` to ``path`` (``.npz``) atomically; returns the path."""
    path = Path(path)
    arrays = {
        "format": np.asarray(ESTIMATES_FORMAT),
        "keys": np.asarray(estimates.keys, dtype=str),
        "index": np.asarray(estimates.index, dtype=np.int64),
        "fractions": np.asarray(estimates.fractions, dtype=np.float32),
        "cell_fractions": np.asarray(estimates.cell_fractions, dtype=np.float32),
        "class_names": np.asarray(estimates.class_names, dtype=str),
        "size": np.asarray(estimates.size, dtype=np.int64),
        "spacing": np.asarray(estimates.spacing or (), dtype=np.float64),
        "method": np.asarray(estimates.method),
        "source": np.asarray(estimates.source),
    }
    if estimates.mae is not None:
        arrays["mae"] = np.asarray(estimates.mae, dtype=np.float64)
        arrays["mae_slices"] = np.asarray(estimates.mae_slices, dtype=np.int64)
    if estimates.masks is not None:
        arrays["masks"] = np.asarray(estimates.masks, dtype=np.int16)
    if estimates.mask_dice is not None:
        arrays["mask_dice"] = np.asarray(estimates.mask_dice, dtype=np.float64)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return path


def load_estimates(path: str | Path, *, where: str = "estimates") -> Estimates:
    """Read a file of :func:`save_estimates`; one-line errors name ``where`` (the config
    key) and the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise WeaksegError(f"{where}: estimates file {path} {what}; write it with 'weakseg "
                           "estimate-priors --checkpoint SOURCE_RUN/best.pt --config CONFIG "
                           "--out FILE.npz'")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _ARRAYS if k not in z.files]
            if missing or str(z["format"]) != ESTIMATES_FORMAT:
                raise WeaksegError(
                    f"{where}: {path} is not an estimates file of weakseg estimate-priors "
                    f"({f'no {missing}' if missing else 'format ' + str(z['format'])})")
            spacing = tuple(float(v) for v in z["spacing"])
            masks = z["masks"].astype(np.int64) if "masks" in z.files else None
            return Estimates(
                masks=masks,
                keys=[str(k) for k in z["keys"]], index=[int(i) for i in z["index"]],
                fractions=z["fractions"].astype(np.float32),
                cell_fractions=z["cell_fractions"].astype(np.float32),
                class_names=[str(c) for c in z["class_names"]], size=int(z["size"]),
                spacing=(spacing[0], spacing[1]) if len(spacing) == 2 else None,
                method=str(z["method"]), source=str(z["source"]),
                mae=z["mae"].astype(np.float64) if "mae" in z.files else None,
                mae_slices=int(z["mae_slices"]) if "mae_slices" in z.files else 0,
                mask_dice=(z["mask_dice"].astype(np.float64) if "mask_dice" in z.files
                           else None))
    except WeaksegError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise WeaksegError(f"{where}: cannot read {path} as an estimates file of weakseg "
                           f"estimate-priors ({type(exc).__name__})") from exc


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (to notice an estimates file replaced between a run and its resume)."""
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    except OSError as exc:
        raise WeaksegError(f"cannot read the estimates file {path} ({type(exc).__name__}); "
                           "write it with 'weakseg estimate-priors'") from exc


def estimated_entries(
    path: str | Path,
    priors: Sequence[str],
    keys: Sequence[str],
    index: Sequence[int],
    *,
    class_names: Sequence[str],
    size: int,
    spacing: tuple[float, float] | None,
    where: str = "data.target",
    params: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, torch.Tensor]:
    """The batch entries of the estimated ``priors`` (names of
    :data:`~weakseg.data.priors.ESTIMATED_PRIORS`) for the slices ``(keys[i], index[i])``,
    read from the estimates file ``path``: ``fractions`` ``(N, C)``, ``cell_fractions``
    ``(N, C, g, g)`` float32, ``bounds`` ``(N, C, 2)`` (``bounds_from_estimates``: the
    fractions mapped by the prior's ``derive`` with its ``params``, defaults filled in), in
    the order of ``keys``.

    Raises:
        WeaksegError: the file is missing or unreadable, was made for other classes or
            another training grid (``size``, ``spacing``), its grid does not divide
            ``size``, or lacks some of the slices (the first ones are named).
    """
    est = load_estimates(path, where=f"{where}.estimates")
    name = f"{where}.estimates {path}"
    if list(est.class_names) != list(class_names):
        raise WeaksegError(f"{name} has classes {est.class_names}, this data "
                           f"{list(class_names)}; estimate with a source run on the same classes")
    same_spacing = (est.spacing is None and spacing is None) or (
        est.spacing is not None and spacing is not None
        and np.allclose(est.spacing, spacing, rtol=0, atol=1e-6))
    if est.size != size or not same_spacing:
        def grid(s: int, sp: tuple[float, float] | None) -> str:
            return f"{s}² canvas at " + (f"{sp[0]:g} × {sp[1]:g} mm" if sp else "square resize")
        raise WeaksegError(f"{name} was estimated on a {grid(est.size, est.spacing)}, this run "
                           f"trains on a {grid(size, spacing)}; estimate again with this config")
    if size % est.grid:
        raise WeaksegError(f"{name} has a {est.grid} × {est.grid} grid, which does not divide "
                           f"the {size}² slices into equal cells")
    rows = {(k, int(i)): r for r, (k, i) in enumerate(zip(est.keys, est.index, strict=True))}
    found = [rows.get((k, int(i))) for k, i in zip(keys, index, strict=True)]
    missing = [f"{k} slice {i}" for k, i, r in zip(keys, index, found, strict=True) if r is None]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        raise WeaksegError(f"{name} has no estimate for {len(missing)} of the {len(keys)} "
                           f"training slices ({shown}); estimate again with this config")
    take = np.asarray(found, dtype=np.int64)
    out: dict[str, torch.Tensor] = {}
    for prior in priors:
        if prior not in ESTIMATED_PRIORS:
            raise WeaksegError(f"prior '{prior}' is not read from an estimates file; those are "
                               f"{', '.join(ESTIMATED_PRIORS)}")
        field = str(PRIOR_REGISTRY.get(prior).estimated)
        if getattr(est, field) is None:
            raise WeaksegError(f"{name} has no {field} (prior '{prior}' reads them); write a "
                               "file with them, e.g. 'weakseg cam' for estimated_masks")
        entry = PRIOR_REGISTRY.get(prior)
        values = getattr(est, str(entry.estimated))[take]
        if entry.derive is not None:
            values = entry.derive(values, {**entry.params, **(params or {}).get(prior, {})},
                                  size)
        values = np.ascontiguousarray(values, dtype=np.float32)
        out[PRIOR_KEYS[prior]] = torch.from_numpy(values)
    return out
