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
            os.chmod(tmp, _mode_for(path))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise GraphError(
            f"cannot write '{path}': {err.strerror}",
            hint="check that the folder exists and is writable",
        ) from err


def _mode_for(path: Path) -> int:
    """Keep an existing file's permissions; new files get the usual 0666 less the umask
    (mkstemp's temporary file is 0600, which would leave outputs readable only by us)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


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
