"""Writing files without ever leaving a torn one, and refusing paths that would lose data.

Every file weakseg writes (checkpoints, predictions, CSV tables, configs) goes through
:func:`atomic_path`: the content is written to a temporary name in the target folder, flushed,
then renamed over the final name (``os.replace`` is atomic on POSIX and Windows). A kill at any
moment leaves the old file or the new one, never a half-written file under the final name. The
temporary names start with :data:`TMP_PREFIX`, so :func:`remove_stale_temps` can remove those a
killed process left behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from weakseg.errors import WeaksegError

__all__ = [
    "TMP_PREFIX",
    "atomic_path",
    "check_output_file",
    "check_output_folder",
    "is_within",
    "remove_stale_temps",
    "write_text_atomic",
]

TMP_PREFIX = ".weakseg-tmp-"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary name keeps ``path``'s suffixes (``.nii.gz`` writers choose compression by
    name). On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}-{path.name}"
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale_temps(folder: str | Path, legacy: Iterable[str] = ()) -> list[Path]:
    """Delete temporary files a killed weakseg process left in ``folder`` (not recursive).

    ``legacy`` adds glob patterns of older temporary names (e.g. ``".last.pt.*"``).
    Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for pattern in (f"{TMP_PREFIX}*", *legacy):
        for p in folder.glob(pattern):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _nearest_existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(path: str | Path, option: str) -> Path:
    """Check that ``path`` can be an output folder: not an existing file, and writable."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise WeaksegError(f"{option} {path} is an existing file; give a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise WeaksegError(f"{option} {path}: {base} is a file, so the folder cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        raise WeaksegError(f"{option} {path}: {base} is not writable; choose another folder")
    return path


def check_output_file(path: str | Path, option: str, suffix: str) -> Path:
    """Check that ``path`` can be written as a ``suffix`` file: not a folder, right suffix,
    in a writable folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise WeaksegError(f"{option} {path} is a folder; give a file name ending in {suffix}")
    if not path.name.endswith(suffix):
        raise WeaksegError(f"{option} {path} must end in {suffix}, e.g. {path.stem}{suffix}")
    base = _nearest_existing(path.parent)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise WeaksegError(f"{option} {path}: cannot write in {base}; choose another place")
    return path
