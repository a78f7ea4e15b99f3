"""Atomic writes survive a kill; stale temporary files are cleaned; outputs never land on inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from weakseg.errors import WeaksegError
from weakseg.safeio import (
    TMP_PREFIX,
    atomic_path,
    check_output_file,
    check_output_folder,
    is_within,
    remove_stale_temps,
    write_text_atomic,
)


def test_atomic_path_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "table.csv"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # the temporary file is gone
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TMP_PREFIX)
        assert tmp.name.endswith("table.csv")  # keeps the suffixes (.nii.gz writers need them)
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_kill_during_write_leaves_no_torn_file(tmp_path: Path):
    """SIGKILL in the middle of a write: the final name holds the old content (or nothing);
    the temporary file it left is removed by remove_stale_temps."""
    target = tmp_path / "case.nii.gz"
    target.write_bytes(b"previous prediction")
    code = (
        "import os, signal, sys\n"
        "from weakseg.safeio import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'x' * 100000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"previous prediction"
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert len(stale) == 1
    assert remove_stale_temps(tmp_path) == stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz"]


def test_remove_stale_temps_legacy_patterns_and_nothing_else(tmp_path: Path):
    for name in (".last.pt.abc123", f"{TMP_PREFIX}1234-best.pt", "last.pt", "notes.txt"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path, legacy=(".last.pt.*",))
    assert sorted(p.name for p in removed) == sorted([".last.pt.abc123",
                                                      f"{TMP_PREFIX}1234-best.pt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.txt"]
    assert remove_stale_temps(tmp_path / "missing") == []


def test_output_checks(tmp_path: Path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(WeaksegError, match="is an existing file"):
        check_output_folder(f, "--out")
    with pytest.raises(WeaksegError, match="is a file, so the folder cannot be created"):
        check_output_folder(f / "sub", "--out")
    assert check_output_folder(tmp_path / "new" / "run", "--out") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(WeaksegError, match="is a folder"):
        check_output_file(tmp_path, "--out", ".csv")
    with pytest.raises(WeaksegError, match="must end in .csv"):
        check_output_file(f, "--out", ".csv")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(WeaksegError, match="not writable"):
            check_output_folder(locked / "run", "--out")


def test_is_within(tmp_path: Path):
    assert is_within(tmp_path / "a" / "b", tmp_path)
    assert is_within(tmp_path, tmp_path)
    assert not is_within(tmp_path, tmp_path / "a")
    assert not is_within(tmp_path.parent / (tmp_path.name + "x"), tmp_path)
