"""Running the training step on ONNX Runtime with the state kept on the device.

Parameters, running statistics and optimizer slots live in two sets of
OrtValues, A and B, allocated once on the device. Two IOBindings are built
up front: one reads A and writes B, the other reads B and writes A. A step
binds only the batch, the learning rate and the step count, runs, and flips
which set is current: nothing is copied to NumPy except the scalar loss and
metrics. The previous set stays intact, which is what lets a non-finite step
be rolled back.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphc.errors import GraphError
from graphc.ir import Graph
from graphc.train.step import LR, NEW, STEP, TrainStep, drop_defaults


# ------------------------------------------------------------ data -> inputs
def data_inputs(graph: Graph, target: str | None) -> tuple[str, str | None]:
    """(input that receives X, input that receives y) by the documented convention.

    X goes to the first float input; y to the loss's target when that is an
    input, else to the first other input.
    """
    floats = [k for k, t in graph.inputs.items() if t.dtype.startswith("float") and k != target]
    if not floats and target in graph.inputs and graph.inputs[target].dtype.startswith("float"):
        return target, None  # the input is its own target (an autoencoder): y is not used
    if not floats:
        raise GraphError(
            "the model has no float input to feed the data to",
            hint="declare one, e.g. x = input(float32, [N, 64])",
        )
    x_name = floats[0]
    if target is not None and target in graph.inputs:
        return x_name, target
    rest = [k for k in graph.inputs if k != x_name]
    return x_name, (rest[0] if rest else None)


def fit_array(graph: Graph, name: str, arr: np.ndarray, what: str = "data") -> np.ndarray:
    """arr as the input's dtype and declared shape; reshapes when the sizes per row agree."""
    t = graph.inputs[name]
    arr = np.asarray(arr)
    want = t.shape
    if len(want) == arr.ndim and all(
        not isinstance(w, int) or w == h for w, h in zip(want[1:], arr.shape[1:])
    ):
        out = arr
    else:
        fixed = want[1:]
        if not all(isinstance(d, int) for d in fixed):
            raise GraphError(
                f"cannot feed {what} of shape {list(arr.shape)} to input '{name}' "
                f"{t}: its dims are symbolic",
                node=name,
                hint="give the input fixed sizes after the batch dim, or reshape the data",
            )
        size = int(np.prod(fixed)) if fixed else 1
        row = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
        padded = _pad_images(arr, fixed)
        if padded is not None:
            arr, row = padded, size
        if size != row:
            raise GraphError(
                f"{what} rows have {row} values (shape {list(arr.shape)}) but input '{name}' "
                f"expects {list(want)} ({size} per row)",
                node=name,
                hint="pick a data set that matches the model's input, or change the input",
            )
        out = arr.reshape((arr.shape[0],) + tuple(fixed))
    return np.ascontiguousarray(out, dtype=t.dtype)


def _pad_images(arr: np.ndarray, chw: tuple) -> np.ndarray | None:
    """Square images smaller than a [C, H, W] input, zero-padded around the centre.

    This is how LeNet-5 (32x32 inputs) trains on the 8x8 digits, as in the
    paper, where 20x20 digits were centred in a 32x32 field.
    """
    if len(chw) != 3:
        return None
    c, h, w = chw
    side = round(float(np.prod(arr.shape[1:]) / c) ** 0.5)
    if c * side * side != np.prod(arr.shape[1:]) or side > min(h, w) or side == h == w:
        return None
    img = arr.reshape(len(arr), c, side, side)
    top, left = (h - side) // 2, (w - side) // 2
    return np.pad(img, ((0, 0), (0, 0), (top, h - side - top), (left, w - side - left)))


# ------------------------------------------------------------------ sessions
def _ort_device(session) -> str:
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


class StepRunner:
    """The training step's session plus the double-buffered device state.

    `threads="auto"` (CPU): ONNX Runtime's intra-op pool pays off for big
    kernels (a 1024x1024 matmul) and costs more than it gains on graphs of
    many tiny ones (an unrolled LSTM: ~1,000 nodes of a few microseconds).
    The first step then times the step with all cores and with one thread, on
    the real batch, and keeps the faster session (`self.threads` says which).
    """

    def __init__(
        self,
        ts: TrainStep,
        device: str = "cpu",
        threads: int | str | None = None,
        profile: str | None = None,
    ) -> None:
        import os

        from graphc.runtime import make_session

        self.ts = ts
        model = ts.export(defaults=False)
        auto = threads == "auto"
        if auto:
            threads = os.cpu_count() or 1
        elif threads is not None and not isinstance(threads, int):
            raise GraphError(f"threads must be a number or 'auto', got {threads!r}")
        self.threads = threads
        self.session = make_session(model, device, threads=threads, profile=profile)
        self.device = _ort_device(self.session)
        self._candidates: dict[int, object] = {}
        if auto and self.device == "cpu" and threads > 1:
            self._candidates = {
                threads: self.session,
                1: make_session(model, device, threads=1, profile=profile),
            }
        self.lr_dtype = np.dtype(ts.graph.type(LR).dtype)
        self.scalar_names = ["loss"] + ts.metrics
        self.buffers: list[dict] = [{}, {}]
        self.cur = 0
        self.set_state(ts.init)

    def _ortvalue(self, arr: np.ndarray):
        # allocated by ONNX Runtime (64-byte aligned), then filled: on the CPU,
        # ortvalue_from_numpy would share NumPy's memory, which is only 16-byte aligned, and
        # every other step would read misaligned parameters
        arr = np.asarray(arr)
        v = self._empty(arr.shape, arr.dtype)
        v.update_inplace(np.ascontiguousarray(arr))
        return v

    def _empty(self, shape, dtype):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_shape_and_type(
            list(shape), np.dtype(dtype), self.device, 0
        )

    def set_state(self, values: Mapping[str, np.ndarray]) -> None:
        """Load carried tensors (parameters, statistics, slots) onto the device.

        `values` uses the logical names (`fc1.weight`, `opt.m.fc1.weight`); a
        step with flat state gets them packed into its buffers here.
        """
        carried = self.ts.carried
        missing = [k for k in self.ts.logical if k not in values and k not in carried]
        if missing:
            raise GraphError("missing values for " + ", ".join(missing))
        values = self.ts.pack(values)
        self.buffers = [
            {k: self._ortvalue(values[k]) for k in carried},
            {k: self._empty(values[k].shape, values[k].dtype) for k in carried},
        ]
        self.cur = 0
        self.scalars = {
            k: self._empty(self.ts.graph.type(k).shape, self.ts.graph.type(k).dtype)
            for k in self.scalar_names
        }
        self.bindings = self._bind(self.session)

    def _bind(self, session) -> list:
        """Two IOBindings over the buffers: A -> B and B -> A."""
        carried = self.ts.carried
        bindings = []
        for side in (0, 1):
            io = session.io_binding()
            for k in carried:
                io.bind_ortvalue_input(k, self.buffers[side][k])
                io.bind_ortvalue_output(NEW + k, self.buffers[1 - side][k])
            for k, v in self.scalars.items():
                io.bind_ortvalue_output(k, v)
            bindings.append(io)
        return bindings

    def use_threads(self, threads: int) -> None:
        """Settle an automatic thread choice (a resumed run reuses the original's)."""
        if self._candidates:
            if threads not in self._candidates:
                raise GraphError(
                    f"this runner can use {sorted(self._candidates)} threads, not {threads}"
                )
            self.session = self._candidates[threads]
            self.bindings = self._bind(self.session)
            self.threads = threads
            self._candidates = {}

    def _tune(self, feeds, lr, step, repeats: int = 7) -> None:
        """Time the first step under each candidate session; keep the fastest.

        The timed runs read the current buffers and write the other ones without
        flipping, so they leave the state as it was.
        """
        import time

        best = None
        for n, session in self._candidates.items():
            io = self._bind(session)[self.cur]
            self._bind_batch(io, feeds, lr, step)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                session.run_with_iobinding(io)
                times.append(time.perf_counter() - t0)
            t = float(np.median(times[2:]))
            if best is None or t < best[0]:
                best = (t, n)
        self.use_threads(best[1])

    def _bind_batch(self, io, feeds, lr, step) -> None:
        for k, v in feeds.items():
            io.bind_cpu_input(k, v)
        io.bind_cpu_input(LR, np.asarray(lr, dtype=self.lr_dtype))
        io.bind_cpu_input(STEP, np.asarray(step, dtype=np.int64))

    def step(self, feeds: Mapping[str, np.ndarray], lr: float, step: int) -> list[float]:
        """Run one step; returns [loss, *metrics] as floats."""
        if self._candidates:
            self._tune(feeds, lr, step)
        io = self.bindings[self.cur]
        self._bind_batch(io, feeds, lr, step)
        self.session.run_with_iobinding(io)
        self.cur ^= 1
        return [float(self.scalars[k].numpy()) for k in self.scalar_names]

    def rollback(self) -> None:
        """Make the inputs of the last step current again (its outputs are discarded)."""
        self.cur ^= 1

    def current(self, name: str):
        """The device buffer of a carried tensor, by its carried name (a flat buffer's)."""
        return self.buffers[self.cur][name]

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the carried tensors by their logical names (to NumPy: for checkpoints
        and export only); flat buffers are unpacked, so every -O level saves alike."""
        return self.ts.unpack({k: v.numpy().copy() for k, v in self.buffers[self.cur].items()})


class Evaluator:
    """Evaluation and prediction sessions over the model in inference mode.

    They read the parameters straight from the step runner's current device
    buffers, so evaluating after an epoch copies no weights. When the step
    carries parameters as flat buffers, the inference graph reads the same
    buffers and splits them with one `unflatten` (see `_inference_graph`).
    """

    def __init__(
        self,
        ts: TrainStep,
        runner: StepRunner | None,
        device: str = "cpu",
        threads: int | str | None = None,  # "auto": what the step runner measured
    ) -> None:
        self.ts = ts
        self.runner = runner
        self.graph = _inference_graph(ts)
        self.device = device
        self.threads = threads
        self._sessions: dict[tuple, object] = {}

    def _session(self, outputs: tuple[str, ...]):
        if outputs not in self._sessions:
            from graphc.export import export
            from graphc.runtime import make_session

            model = export(self.graph, outputs=list(outputs), params_as_inputs=True)
            drop_defaults(model)  # parameters are bound from the device buffers each time
            threads = self.threads
            if threads == "auto":  # what the step runner measured (all cores until it has)
                threads = self.runner.threads if self.runner is not None else None
            self._sessions[outputs] = make_session(model, self.device, threads=threads)
        return self._sessions[outputs]

    def run(
        self,
        outputs: tuple[str, ...],
        feeds: Mapping[str, np.ndarray],
        batch_size: int = 1024,
        state: Mapping[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Outputs over the whole data, in batches; batch results are concatenated."""
        sess = self._session(outputs)
        if state is None and self.runner is None:
            state = self.ts.init
        if state is not None:
            state = self.ts.pack(state)
        n = len(next(iter(feeds.values())))
        names = {i.name for i in sess.get_inputs()}
        parts: list[list[np.ndarray]] = [[] for _ in outputs]
        weights = []
        for start in range(0, n, batch_size):
            io = sess.io_binding()
            for k, v in feeds.items():
                if k in names:
                    io.bind_cpu_input(k, v[start : start + batch_size])
            for k in names - set(feeds):
                if state is not None:
                    io.bind_cpu_input(k, np.asarray(state[k]))
                else:
                    io.bind_ortvalue_input(k, self.runner.current(k))
            for k in outputs:
                io.bind_output(k, "cpu")
            sess.run_with_iobinding(io)
            for i, v in enumerate(io.copy_outputs_to_cpu()):
                parts[i].append(v)
            weights.append(min(batch_size, n - start))
        out = []
        for p in parts:
            if p[0].ndim == 0:  # a scalar per batch (the mean loss): weight by batch size
                out.append(np.asarray(np.average([float(v) for v in p], weights=weights)))
            else:
                out.append(np.concatenate(p))
        return out


def _inference_graph(ts: TrainStep) -> Graph:
    """The source model (training mode off) with frozen parameters as constants.

    Parameters the step carries in a flat buffer are read from that buffer
    here too (one `unflatten` node first), so the evaluator binds the
    runner's buffers as they are, without unpacking them each time.
    """
    from graphc.infer import infer_node
    from graphc.ir import Node, Param

    g = ts.source.copy()
    for name in ts.frozen:
        p = g.params.pop(name)
        g.constants[name] = p.value if p.value is not None else p.initial_value(g.seed)
    packed = ts.pack(ts.init) if ts.layout else {}
    for e in ts.layout:
        members = [m for m, _shape in e["members"]]
        if not all(m in g.params for m in members):
            continue  # an optimizer slot's buffer: inference does not read slots
        buf = e["buffer"]
        total = sum(int(np.prod(shape)) for _m, shape in e["members"])
        g.params[buf] = Param(buf, (total,), e["dtype"], "zeros", value=packed[buf])
        g.types[buf] = g.params[buf].type
        node = g.unique_name(f"{buf}.unflatten")
        parts = [node] + [f"{node}:{i}" for i in range(1, len(members))]
        rename = dict(zip(members, parts))
        for n in g.nodes.values():
            n.inputs = [rename.get(v, v) for v in n.inputs]
        for m in members:
            del g.params[m]
            g.types.pop(m, None)
        shapes = tuple(tuple(shape) for _m, shape in e["members"])
        unflat = Node(node, "unflatten", [buf], parts, {"shapes": shapes}, None, [], {})
        g.add_node(unflat)
        infer_node(g, unflat)
    return g


def trained_graph(ts: TrainStep, state: Mapping[str, np.ndarray]) -> Graph:
    """A copy of the source model holding the learned parameters and statistics."""
    g = ts.source.copy()
    for name in ts.params + ts.stats:
        g.params[name].value = np.asarray(state[name])
    return g


def export_trained(ts: TrainStep, state: Mapping[str, np.ndarray]):
    """The trained inference model: plain ONNX with the learned weights as initializers."""
    from graphc.export import export

    g = trained_graph(ts, state)
    outputs = list(g.outputs) or ([ts.pred] if ts.pred else [])
    if not outputs:
        raise GraphError(
            "the model has no outputs to export", hint="add `output(logits)` to the model file"
        )
    return export(g, outputs=outputs, doc="trained with graphc")


# ------------------------------------------------------------- diagnosis
def first_nonfinite(
    ts: TrainStep,
    feeds: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    lr: float,
    step: int,
) -> GraphError:
    """Re-run a failed step in the NumPy interpreter and name the first non-finite value."""
    from graphc.interp import evaluate

    for k in ts.logical:
        if not np.all(np.isfinite(state[k])):
            return GraphError(f"'{k}' was already non-finite before step {step}", node=k)
    for k, v in feeds.items():
        if np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v)):
            return GraphError(
                f"the input batch '{k}' holds non-finite values at step {step}",
                node=k,
                hint="clean the data (NaN or inf in the file)",
            )
    g = ts.graph
    full = dict(feeds)
    full[LR] = np.asarray(lr, dtype=g.type(LR).dtype)
    full[STEP] = np.asarray(step, dtype=np.int64)
    with np.errstate(all="ignore"):
        env = evaluate(g, full, params=ts.pack(state))  # the step reads flat buffers
    for node in g.topo_order():
        for out in node.outputs:
            v = env.get(out)
            if v is not None and v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                where = node.tags.get("grad_of")
                what = (
                    f"in the gradient of '{where}'"
                    if where
                    else "in the optimizer update"
                    if node.tags.get("train")
                    else "in the forward pass"
                )
                return GraphError(
                    f"first non-finite value: '{out}' ({node.op}, {what})",
                    loc=node.loc,
                    node=node.name,
                )
    return GraphError(
        f"the loss became non-finite at step {step}, but the NumPy reference "
        "finds no non-finite value (ONNX Runtime and NumPy round differently)"
    )
