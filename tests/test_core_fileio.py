"""Atomic writes: all or nothing, and the permissions a user expects."""

import os
import stat

import pytest

from graphc.errors import GraphError
from graphc.fileio import atomic_write_text, read_text


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "model.gc"
    atomic_write_text(path, "a")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    atomic_write_text(path, "b")
    assert path.read_text() == "b" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["model.gc"]  # no temporary file left


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.gc"
    path.write_text("old")

    def boom(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(GraphError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gc"]


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(GraphError, match="no such file"):
        read_text(tmp_path / "nope.gc")
    (tmp_path / "bin.gc").write_bytes(b"\xff\xfe")
    with pytest.raises(GraphError, match="not UTF-8"):
        read_text(tmp_path / "bin.gc")
