"""The flat layout of a training step's carried state, and packing to and from it.

`fuse_optimizer_update` (graphc.passes.fuse_optimizer) stores groups of
parameters, and their optimizer slots, as single flat buffers that the step
carries instead of the members: `params.flat0` holds `fc1.weight`,
`fc1.bias`, … raveled and concatenated in order; `opt.m.params.flat0` holds
their `opt.m.*` slots in the same order. The layout is recorded in the step
graph's `meta["flat_state"]` and in the exported step's metadata:

    [{"buffer": "params.flat0", "dtype": "float32",
      "members": [["fc1.weight", [16, 12]], ["fc1.bias", [16]], ...]},
     {"buffer": "opt.m.params.flat0", "dtype": "float32",
      "members": [["opt.m.fc1.weight", [16, 12]], ...]}, ...]

Everything outside the step — checkpoints, `StepRunner.state()`, exported
weights — uses the logical names; `pack` and `unpack` convert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from graphc.errors import GraphError

Layout = list[dict[str, Any]]
KEY = "flat_state"


def layout_of(meta: Mapping[str, Any]) -> Layout:
    """The flat layout a step graph's meta records (empty when nothing is flat)."""
    return list(meta.get(KEY) or ())


def carried_names(logical: Iterable[str], layout: Layout) -> list[str]:
    """The step's carried names: each flat buffer at the position of its first member."""
    owner = {m: e["buffer"] for e in layout for m, _shape in e["members"]}
    out: list[str] = []
    for name in logical:
        k = owner.get(name, name)
        if k not in out:
            out.append(k)
    return out


def pack(values: Mapping[str, Any], layout: Layout, prefix: str = "") -> dict[str, Any]:
    """Logical values -> carried values: members concatenated into their buffers.

    `prefix` handles step-output dicts (`"new."`). A buffer already present
    under its own name is kept as it is.
    """
    out = dict(values)
    for e in layout:
        buf = prefix + e["buffer"]
        names = [prefix + m for m, _shape in e["members"]]
        if buf in out:
            for k in names:
                out.pop(k, None)
            continue
        missing = [k for k in names if k not in out]
        if missing:
            raise GraphError(
                f"cannot pack '{buf}': missing " + ", ".join(missing[:5]),
                hint="give every member of the flat buffer a value",
            )
        parts = []
        for (_m, shape), k in zip(e["members"], names):
            a = np.asarray(out.pop(k))
            if tuple(a.shape) != tuple(shape):
                raise GraphError(
                    f"'{k}' has shape {list(a.shape)}, the flat layout of '{buf}' needs "
                    f"{list(shape)}",
                    hint="load values of the model the step was built from",
                )
            parts.append(a.reshape(-1))
        out[buf] = np.concatenate(parts).astype(e["dtype"], copy=False)
    return out


def unpack(values: Mapping[str, Any], layout: Layout, prefix: str = "") -> dict[str, Any]:
    """Carried values -> logical values: each buffer split into its members (as copies)."""
    out = dict(values)
    for e in layout:
        buf = prefix + e["buffer"]
        if buf not in out:
            continue
        flat = np.asarray(out.pop(buf)).reshape(-1)
        start = 0
        for m, shape in e["members"]:
            size = int(np.prod(shape, dtype=np.int64))
            out[prefix + m] = flat[start : start + size].reshape(shape).copy()
            start += size
        if start != flat.size:
            raise GraphError(
                f"'{buf}' holds {flat.size} values, its layout {start}",
                hint="the values do not belong to this training step",
            )
    return out
