"""Atomic, resumable checkpoints as plain state dicts (never pickled modules)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from weakseg.errors import WeaksegError

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_atomic"]

CHECKPOINT_FORMAT = "weakseg-checkpoint-v1"


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write ``obj`` with ``torch.save`` to a temp file, fsync, then rename over ``path``.

    A crash at any moment leaves either the old or the new file, never a torn one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a weakseg checkpoint (``weights_only``: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise WeaksegError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeaksegError(f"cannot read checkpoint {path}: {type(exc).__name__}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WeaksegError(f"{path} is not a weakseg checkpoint (made by 'weakseg train')")
    return ckpt
