"""Helpers shared by CLI commands: loading models, reading --input arrays."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from graphc.errors import GraphError


def load_graph(path: str):
    """Parse a .gc file (the CLI's model argument)."""
    from graphc.parser import parse_file

    if not os.path.exists(path):
        raise GraphError(f"no such file: '{path}'", hint="check the path")
    if path.endswith(".onnx"):
        raise GraphError(f"'{path}' is an ONNX model; this command needs a .gc model file")
    return parse_file(path)


def parse_inputs(items: list[str] | None) -> dict[str, np.ndarray]:
    """--input NAME=FILE.npy | NAME=FILE.npz[:key] | NAME=NUMBER."""
    feeds: dict[str, np.ndarray] = {}
    for item in items or []:
        if "=" not in item:
            raise GraphError(
                f"--input '{item}' is not NAME=FILE.npy", hint="e.g. --input x=batch.npy"
            )
        name, src = item.split("=", 1)
        feeds[name] = _load_array(src, name)
    return feeds


def _load_array(src: str, name: str) -> Any:
    try:
        return np.asarray(float(src))
    except ValueError:
        pass
    path, _, key = src.partition(":")
    if not os.path.exists(path):
        raise GraphError(f"--input {name}: no such file '{path}'")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise GraphError(f"--input {name}: cannot read '{path}' as .npy/.npz: {err}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        key = key or (name if name in keys else keys[0] if len(keys) == 1 else "")
        if key not in keys:
            raise GraphError(
                f"--input {name}: '{path}' has arrays {keys}", hint=f"pick one: {name}={path}:KEY"
            )
        return data[key]
    return data
