import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "samples").glob("*.gc"))

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def samples_dir() -> Path:
    return ROOT / "samples"


def run_cli(*args: str, cwd=None, timeout: int = 300):
    """Run `python -m graphc ARGS` in a subprocess; returns CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "graphc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )
