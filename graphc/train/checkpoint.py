"""Checkpoints: every carried tensor plus the loop's position, in one .npz, written atomically.

A checkpoint holds the parameters, running statistics and optimizer slots
(`carried/<name>`), the best parameters so far when early stopping keeps
them (`best/<name>`), and a JSON record of the position: step, epoch, batch
within the epoch (the data order is a function of the seed and the epoch),
the epoch's running sums, the history and the early-stopping state.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

from graphc.errors import GraphError
from graphc.fileio import atomic_write_bytes

FORMAT = "graphc-checkpoint-1"


def save(
    path: str,
    carried: dict[str, np.ndarray],
    meta: dict[str, Any],
    best: dict[str, np.ndarray] | None = None,
) -> None:
    arrays = {f"carried/{k}": np.asarray(v) for k, v in carried.items()}
    for k, v in (best or {}).items():
        arrays[f"best/{k}"] = np.asarray(v)
    arrays["meta"] = np.asarray(json.dumps({"format": FORMAT, **meta}))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
    """(carried tensors, position record, best tensors)."""
    if not os.path.exists(path):
        raise GraphError(
            f"no checkpoint at '{path}'",
            hint="train without --resume first, or pass --checkpoint PATH",
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            carried = {k[len("carried/") :]: f[k] for k in f.files if k.startswith("carried/")}
            best = {k[len("best/") :]: f[k] for k in f.files if k.startswith("best/")}
    except (OSError, ValueError, KeyError) as err:
        raise GraphError(f"'{path}' is not a graphc checkpoint: {err}") from None
    if meta.get("format") != FORMAT:
        raise GraphError(f"'{path}' is not a graphc checkpoint (format {meta.get('format')!r})")
    return carried, meta, best


def check_compatible(
    path: str, carried: dict[str, np.ndarray], expected: dict[str, tuple[tuple[int, ...], str]]
) -> None:
    """The checkpoint must hold exactly the tensors this training step carries."""
    missing = [k for k in expected if k not in carried]
    extra = [k for k in carried if k not in expected]
    if missing or extra:
        what = []
        if missing:
            what.append("lacks " + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
        if extra:
            what.append("has unknown " + ", ".join(extra[:5]) + (" …" if len(extra) > 5 else ""))
        raise GraphError(
            f"checkpoint '{path}' does not match this model and optimizer: " + "; ".join(what),
            hint="resume with the same model file and --optimizer as the run that wrote it",
        )
    for k, (shape, dtype) in expected.items():
        a = carried[k]
        if tuple(a.shape) != tuple(shape) or str(a.dtype) != dtype:
            raise GraphError(
                f"checkpoint '{path}': '{k}' is {a.dtype}{list(a.shape)}, the model "
                f"needs {dtype}{list(shape)}",
                hint="resume with the same model file as the run that wrote it",
            )
