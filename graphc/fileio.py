"""Atomic file writes: a crash never leaves a half-written model, checkpoint or plot."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from graphc.errors import GraphError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise GraphError(f"cannot write '{path}': {err.strerror}",
                         hint="check that the folder exists and is writable") from err


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_text(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraphError(f"no such file: '{path}'", hint="check the path") from None
    except IsADirectoryError:
        raise GraphError(f"'{path}' is a folder, not a file") from None
    except UnicodeDecodeError as err:
        raise GraphError(f"'{path}' is not UTF-8 text: {err.reason}") from None
    except OSError as err:
        raise GraphError(f"cannot read '{path}': {err.strerror}") from None
