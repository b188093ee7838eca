"""Random inputs for a graph: normal floats, and integer labels in their valid range.

Used by `graphc run --random`, gradient checks, benchmarks and tests.
"""

from __future__ import annotations

import numpy as np


def random_feeds(
    graph, batch: int = 4, seed: int = 0, float_dtype: str | None = None
) -> dict[str, np.ndarray]:
    """Random inputs for a graph: normal floats; integer labels in their valid range."""
    from graphc.shapes import concrete

    rng = np.random.default_rng(seed)
    feeds = {}
    sizes = {d: batch for t in graph.inputs.values() for d in t.shape if isinstance(d, str)}
    highs = label_ranges(graph)
    for name, t in graph.inputs.items():
        shape = concrete(t.shape, sizes, default=batch)
        if t.dtype.startswith("int"):
            feeds[name] = rng.integers(0, highs.get(name, 2), shape).astype(t.dtype)
        elif t.dtype == "bool":
            feeds[name] = rng.random(shape) > 0.5
        else:
            feeds[name] = rng.standard_normal(shape).astype(float_dtype or t.dtype)
    return feeds


def label_ranges(graph) -> dict[str, int]:
    """Integer inputs used as class labels: how many classes (from the logits' width)."""
    out = {}
    for node in graph.nodes.values():
        for v in node.inputs[1:]:
            if v in graph.inputs and graph.inputs[v].dtype.startswith("int"):
                first = graph.types.get(node.inputs[0])
                if first is not None and first.rank >= 2 and isinstance(first.shape[-1], int):
                    out[v] = first.shape[-1]
        if "depth" in node.attrs and node.inputs and node.inputs[0] in graph.inputs:
            out[node.inputs[0]] = node.attrs["depth"]
    return out
