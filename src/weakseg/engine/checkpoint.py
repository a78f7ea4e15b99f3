"""Atomic, resumable checkpoints as plain state dicts (never pickled modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from weakseg.errors import WeaksegError
from weakseg.safeio import atomic_path

__all__ = ["CHECKPOINT_FORMAT", "LEGACY_TEMPS", "load_checkpoint", "save_atomic"]

CHECKPOINT_FORMAT = "weakseg-checkpoint-v1"
#: What every checkpoint holds besides the format tag (``last.pt`` holds more).
REQUIRED_KEYS = ("config", "model", "class_names", "in_channels", "size", "epoch")
#: Temporary names of checkpoints written by earlier versions (removed as stale temps).
LEGACY_TEMPS = (".last.pt.*", ".best.pt.*")


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write ``obj`` with ``torch.save`` to a temp file, fsync, then rename over ``path``.

    A crash at any moment leaves either the old or the new file, never a torn one.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a weakseg checkpoint (``weights_only``: no code is unpickled)."""
    path = Path(path).expanduser()
    if path.is_dir():
        hint = " (it holds best.pt)" if (path / "best.pt").is_file() else ""
        raise WeaksegError(f"checkpoint {path} is a folder{hint}; give the .pt file, e.g. "
                           f"{path / 'best.pt'}")
    if not path.is_file():
        raise WeaksegError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeaksegError(
            f"cannot read checkpoint {path} ({type(exc).__name__}): not a weakseg checkpoint, "
            "damaged, or refused as unsafe to load (only plain tensors and values are "
            "accepted); use a best.pt or last.pt written by 'weakseg train'"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WeaksegError(f"{path} is not a weakseg checkpoint (made by 'weakseg train')")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise WeaksegError(
            f"checkpoint {path} lacks {', '.join(repr(k) for k in missing)}: damaged or "
            "edited by hand; use the best.pt or last.pt of the run as written"
        )
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise WeaksegError(f"checkpoint {path} has a malformed 'config' or 'model' entry; "
                           "use the file as written by 'weakseg train'")
    return ckpt
