"""Numbers for `graphc render --values`: run the graph, format values for edge labels.

Forward values come from the NumPy interpreter (`graphc.interp.evaluate`).
The gradient of the loss with respect to *every* intermediate value (the red
numbers of the lecture figures, dL/dz for each edge z) comes from the same
autodiff the compiler uses: each value v gets a zero "probe" input p added
to it (v' = v + p, read by v's consumers instead of v), so dL/dp = dL/dv
and the probes are ordinary gradient targets. The forward numbers do not
change, since every probe is zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphc.builder import Builder, Tensor
from graphc.errors import GraphError
from graphc.interp import evaluate
from graphc.ir import Graph
from graphc.shapes import FLOAT_DTYPES, concrete

PROBE = "__probe__"


def parse_input_spec(spec: str) -> tuple[str, np.ndarray]:
    """`name=3.0`, `name=[1, 2]` or `name=file.npy` -> (name, array)."""
    name, sep, text = spec.partition("=")
    name, text = name.strip(), text.strip()
    if not sep or not name or not text:
        raise GraphError(
            f"bad --input '{spec}'",
            hint="write --input name=3.0, --input name=[1,2] or --input name=x.npy",
        )
    if text.endswith(".npy"):
        try:
            return name, np.load(text, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise GraphError(
                f"cannot read '{text}' for input '{name}': {err}",
                hint="give a .npy file written by numpy.save",
            ) from None
    import json

    try:
        return name, np.asarray(json.loads(text))
    except ValueError:
        raise GraphError(
            f"bad value for input '{name}': {text!r}",
            hint="a number (3.0), a JSON list ([1, 2]) or a .npy file",
        ) from None


def make_feeds(
    graph: Graph,
    given: Mapping[str, np.ndarray] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    batch: int = 4,
    seed: int = 0,
    int_highs: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Feeds for every graph input: the given arrays, random draws for the rest.

    Symbolic dims take their size from `dims`, from the given arrays, or
    `batch`. Float inputs are standard normal; integer inputs (labels) are
    drawn in [0, int_highs[name]) (default 2, which every classifier accepts).
    """
    given = dict(given or {})
    for k in given:
        if k not in graph.inputs:
            from graphc.errors import closest

            near = closest(k, graph.inputs)
            raise GraphError(
                f"--input names '{k}', which is not an input of the graph",
                hint=f"did you mean '{near}'?" if near else "inputs: " + ", ".join(graph.inputs),
            )
    sizes = dict(dims or {})
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, t in graph.inputs.items():
        if name in given:
            arr = np.asarray(given[name], dtype=t.dtype)
            if arr.ndim != len(t.shape):
                raise GraphError(
                    f"input '{name}' should have rank {len(t.shape)} "
                    f"({t}), got shape {list(arr.shape)}",
                    node=name,
                )
            for d, n in zip(t.shape, arr.shape):
                if isinstance(d, str) and d.isidentifier():
                    sizes.setdefault(d, n)
            feeds[name] = arr
    for name, t in graph.inputs.items():
        if name in feeds:
            continue
        shape = concrete(t.shape, sizes, default=batch)
        if t.dtype in FLOAT_DTYPES:
            feeds[name] = rng.standard_normal(shape).astype(t.dtype)
        elif t.dtype == "bool":
            feeds[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            high = (int_highs or {}).get(name, 2)
            feeds[name] = rng.integers(0, high, shape).astype(t.dtype)
    return feeds


def _loss_ancestors(graph: Graph) -> set[str]:
    producers = graph.producers()
    seen: set[str] = set()
    stack = [graph.loss]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in producers:
            stack.extend(i for i in producers[v].inputs if i)
    return seen


def value_gradients(
    graph: Graph, feeds: Mapping[str, np.ndarray], env: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """dLoss/dv for every float value v the loss depends on (inputs, params, node outputs)."""
    from graphc.autodiff import grad

    if graph.loss is None:
        return {}
    g = graph.copy()
    needed = _loss_ancestors(g)
    b = Builder(g, prefix=PROBE)
    consumers = g.consumers()
    targets: dict[str, str] = {}
    for name in list(g.inputs) + list(g.params):
        if name in needed and g.type(name).dtype in FLOAT_DTYPES:
            targets[name] = name
    probe_feeds = {}
    for node in list(g.topo_order()):
        for v in node.outputs:
            if v not in needed or g.type(v).dtype not in FLOAT_DTYPES or v not in env:
                continue
            t = g.type(v)
            p = b.input(f"{PROBE}{v}", t.shape, t.dtype)
            probed = b.op("add", Tensor(b, v), p, name=f"{PROBE}{v}__sum")
            for reader in consumers.get(v, []):
                reader.inputs = [probed.name if x == v else x for x in reader.inputs]
            if g.loss == v:
                g.loss = probed.name
            targets[v] = p.name
            probe_feeds[p.name] = np.zeros_like(np.asarray(env[v]))
    if not targets:
        return {}
    try:
        bg = grad(g, wrt=list(targets.values()))
    except GraphError:
        return {}  # not differentiable (a step function, an integer path): values only
    got = evaluate(bg, {**feeds, **probe_feeds}, outputs=list(bg.meta["grads"].values()))
    return {v: got[bg.meta["grads"][t]] for v, t in targets.items()}


def fmt_number(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.4g}"


def fmt_value(arr: np.ndarray) -> str:
    """Scalars as numbers, tiny tensors in full, larger ones as mean and spread."""
    a = np.asarray(arr)
    if a.dtype == bool:
        return f"{int(a.sum())}/{a.size} true"
    if a.size == 1:
        x = a.reshape(-1)[0].item()
        return str(x) if isinstance(x, int) else fmt_number(float(x))
    if a.size <= 4:
        flat = a.reshape(-1).tolist()
        return "[" + ", ".join(str(x) if isinstance(x, int) else f"{x:.3g}" for x in flat) + "]"
    if np.issubdtype(a.dtype, np.integer):
        return f"ints {a.min()}..{a.max()}"
    af = a.astype(np.float64)
    return f"\u03bc {fmt_number(float(af.mean()))}  \u03c3 {fmt_number(float(af.std()))}"
