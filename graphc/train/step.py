"""The whole training step as one graph: forward, loss, gradients, update.

`build_step(graph, StepConfig(...))` returns a `TrainStep` whose `.graph` is
an ordinary graphc Graph (so it can be rendered, optimized and exported like
any other) and whose `.export()` is a standard ONNX model.

Naming convention of the exported step (docs/training.md):

inputs
    the batch (the model file's inputs, e.g. `x`, `y`), then `lr` (scalar,
    the learning rate of this step) and `step` (int64 scalar: the number of
    updates already made, 0 for the first), then every trained parameter by
    its own name (`fc1.weight`), every running statistic (`bn1.running_mean`)
    and every optimizer slot `opt.<slot>.<param>` (`opt.m.fc1.weight`).
    Parameters, statistics and slots carry their initial values as defaults
    (initializers), so a fresh step runs from the batch alone.
outputs
    `loss` (the model's loss on the batch, before regularization), metrics
    (`correct`: how many rows of the batch the classifier got right;
    `penalty`: the L1/L2 term; `grad_norm`: the global gradient norm when
    clipping by norm), then `new.<name>` for every carried input: feed
    `new.fc1.weight` back as `fc1.weight` for the next step.
flat state
    after `fuse_optimizer_update` (-O2), groups of parameters and their slots
    are carried as flat buffers (`params.flat0`, `opt.m.params.flat0`) in
    place of their members: `meta["flat_state"]` of the step graph (and the
    exported metadata) records the layout; `carried` follows it, `init`,
    `params` and `slots` keep the logical names, and graphc.train.layout
    packs and unpacks.

Frozen parameters are constants (initializers) of the step: never inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.autodiff import grad
from graphc.builder import Builder, Tensor
from graphc.errors import GraphError
from graphc.infer import infer
from graphc.ir import Graph, Param, TensorType
from graphc.ops.registry import get_op
from graphc.train import layout as flat_layout
from graphc.train.optimizers import Optimizer, get_optimizer, hyperparameters

LR, STEP = "lr", "step"
NEW = "new."
SLOT = "opt."


@dataclass
class StepConfig:
    """Everything `graphc compile --train` and `graphc train` let a user choose."""

    optimizer: str = "adam"
    lr: float | None = None  # default: the optimizer's usual learning rate
    hyper: dict[str, float] = field(default_factory=dict)  # momentum, beta1, eps, …
    l1: float = 0.0  # adds l1 * sum|w| over weight tensors (rank >= 2)
    l2: float = 0.0  # adds l2 * sum w^2 over weight tensors (rank >= 2)
    clip_value: float | None = None  # clamp every gradient element to [-c, c]
    clip_norm: float | None = None  # rescale all gradients when their global norm exceeds c

    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else get_optimizer(self.optimizer).default_lr)


@dataclass
class TrainStep:
    graph: Graph  # the training step as IR
    source: Graph  # the model it was built from (training=False everywhere)
    config: StepConfig
    optimizer: Optimizer
    hyper: dict[str, float]
    data_inputs: list[str]  # batch inputs, in order
    params: list[str]  # trained parameters
    stats: list[str]  # running statistics updated by the step
    slots: list[str]  # optimizer slots, `opt.<slot>.<param>`
    frozen: list[str]  # parameters held constant
    metrics: list[str]  # step outputs after the loss
    loss: str  # the model's loss value
    pred: str | None  # what the loss compares (logits), when found
    target: str | None  # the label input the loss reads, when found
    task: str  # "classification" (integer labels) or "regression"
    init: dict[str, np.ndarray] = field(default_factory=dict)  # carried inputs' start values

    @property
    def logical(self) -> list[str]:
        """The carried tensors by their own names: parameters, statistics, slots."""
        return self.params + self.stats + self.slots

    @property
    def layout(self) -> flat_layout.Layout:
        """The flat buffers the step carries in place of their members (often none)."""
        return flat_layout.layout_of(self.graph.meta)

    @property
    def carried(self) -> list[str]:
        """Inputs fed back from `new.<name>` outputs every step (flat buffers included)."""
        return flat_layout.carried_names(self.logical, self.layout)

    def pack(self, values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """Logical values (`prefix`: "new." for step outputs) -> the step's carried names."""
        return flat_layout.pack(values, self.layout, prefix)

    def unpack(self, values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """The step's carried values (or outputs, prefix "new.") -> logical names."""
        return flat_layout.unpack(values, self.layout, prefix)

    @property
    def outputs(self) -> list[str]:
        return ["loss"] + self.metrics + [NEW + k for k in self.carried]

    @property
    def inputs(self) -> list[str]:
        return self.data_inputs + [LR, STEP] + self.carried

    def export(self, *, defaults: bool = True):
        """The step as an onnx.ModelProto (checked); see the module doc for names."""
        return export_step(self, defaults=defaults)


# --------------------------------------------------------------------- loss
def find_loss_node(graph: Graph):
    """The loss op (category "losses") the graph's loss value comes from, or None."""
    producers = graph.producers()
    stack, seen = [graph.loss], set()
    while stack:
        v = stack.pop(0)
        if v in seen or v not in producers:
            continue
        seen.add(v)
        node = producers[v]
        if get_op(node.op, node.loc).category == "losses":
            return node
        stack.extend(i for i in node.inputs if i and i not in graph.params)
    return None


def _set_training(g: Graph, step_value: str | None) -> list[tuple[str, list[str]]]:
    """Switch training-only ops to training mode; returns (node, new state outputs)."""
    updates = []
    for node in g.nodes.values():
        op = get_op(node.op, node.loc)
        if not op.training_only:
            continue
        eval_outs = op.num_outputs(node.attrs)
        node.attrs["training"] = True
        n_out = op.num_outputs(node.attrs)
        node.outputs = [node.name] + [f"{node.name}:{i}" for i in range(1, n_out)]
        names = op.input_names()
        if "seed" in names and step_value is not None:
            i = names.index("seed")
            if i < len(node.inputs) and not node.inputs[i]:
                node.inputs[i] = step_value
        stats = [f"{node.name}.{p.name}" for p in op.active_params(node.attrs) if p.state]
        if stats:
            extra = node.outputs[eval_outs:]
            if len(extra) != len(stats):
                raise GraphError(
                    f"{node.op} '{node.name}' returns {len(extra)} state outputs in training but "
                    f"owns {len(stats)} running statistics",
                    loc=node.loc,
                    node=node.name,
                    hint="the op's declaration must return one new value per state parameter",
                )
            updates.append((node.name, list(zip(stats, extra))))
    return updates


def _needs_seed(g: Graph) -> bool:
    for node in g.nodes.values():
        op = get_op(node.op, node.loc)
        if op.training_only and "seed" in op.input_names():
            return True
    return False


def _regularization(b: Builder, params: list[str], cfg: StepConfig) -> Tensor | None:
    """l1 * sum|w| + l2 * sum w^2 over weight tensors (biases and gains are left alone)."""
    if not (cfg.l1 or cfg.l2):
        return None
    terms = []
    for name in params:
        w = Tensor(b, name)
        if w.rank < 2:
            continue
        if cfg.l1:
            terms.append(b.reduce_sum(b.abs(w)) * cfg.l1)
        if cfg.l2:
            terms.append(b.reduce_sum(b.square(w)) * cfg.l2)
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else b.add_n(*terms)


def _correct(b: Builder, logits: Tensor, labels: Tensor) -> Tensor:
    """How many rows have the label's logit at the row maximum (standard ONNX ops only)."""
    onehot = b.one_hot(labels, depth=logits.shape[1], dtype=logits.dtype)
    picked = b.reduce_sum(onehot * logits, axes=(1,))
    top = b.reduce_max(logits, axes=(1,))
    return b.reduce_sum(b.cast(b.greater_equal(picked, top), to=logits.dtype))


def _clip(b: Builder, grads: dict[str, Tensor], cfg: StepConfig):
    norm = None
    if cfg.clip_value is not None:
        c = float(cfg.clip_value)
        if c <= 0:
            raise GraphError(f"--clip-value must be positive, got {c}")
        grads = {k: b.clip(g, min=-c, max=c) for k, g in grads.items()}
    if cfg.clip_norm is not None:
        c = float(cfg.clip_norm)
        if c <= 0:
            raise GraphError(f"--clip-norm must be positive, got {c}")
        sq = [b.reduce_sum(b.square(g)) for g in grads.values()]
        norm = b.sqrt(sq[0] if len(sq) == 1 else b.add_n(*sq))
        limit = b.scalar(c, like=norm)
        # scale = c / max(norm, c): 1 while the norm is within bounds
        scale = limit / b.maximum(norm, limit)
        grads = {k: g * scale for k, g in grads.items()}
    return grads, norm


def build_step(graph: Graph, config: StepConfig | None = None) -> TrainStep:
    """Build the training step of a model that has a loss (`minimize(...)`)."""
    cfg = config or StepConfig()
    opt = get_optimizer(cfg.optimizer)
    hyper = hyperparameters(opt, cfg.hyper)
    if graph.loss is None:
        raise GraphError(
            "the model has no loss to train",
            hint="add `minimize(cross_entropy(logits, y))` to the model file",
        )
    for reserved in (LR, STEP):
        if reserved in graph.value_names():
            raise GraphError(
                f"the name '{reserved}' is reserved for the training step's input",
                node=reserved,
                hint=f"rename the model's '{reserved}'",
            )
    g = graph.copy()
    g.param_values()  # initialize once, so the step's defaults equal the model's
    for name, p in graph.params.items():
        if p.value is None:
            p.value = g.params[name].value
    data_inputs = list(g.inputs)
    if _needs_seed(g):
        g.inputs[STEP] = TensorType("int64", ())
    stat_updates = _set_training(g, STEP if STEP in g.inputs else None)
    infer(g)
    for name, p in graph.params.items():  # frozen set on the Param alone (the Python API)
        if p.frozen and name in g.params:
            g.params[name].frozen = True
    params = [k for k, p in g.params.items() if not p.frozen and not p.state]
    stats = [k for k, p in g.params.items() if p.state]
    frozen = [k for k, p in g.params.items() if p.frozen and not p.state]
    if not params and not frozen:
        raise GraphError(
            f"'{g.name}' has no parameters: there is nothing to train",
            hint="add a layer with weights (linear, conv2d, ...); to differentiate with "
            "respect to inputs, use `graphc compile --grad --wrt NAME`",
        )
    if not params:
        raise GraphError(
            "every parameter is frozen: there is nothing to train",
            hint="unfreeze at least one layer (remove frozen=True)",
        )
    loss_node = find_loss_node(g)
    pred = loss_node.inputs[0] if loss_node is not None else None
    target = loss_node.inputs[1] if loss_node is not None and len(loss_node.inputs) > 1 else None
    classification = (
        loss_node is not None
        and target in g.types
        and g.types[target].dtype in ("int64", "int32")
        and g.types[pred].rank == 2
    )

    b = Builder(g, prefix="reg_", tags={"train": True})
    penalty = _regularization(b, params, cfg)
    objective = g.loss
    if penalty is not None:
        objective = b.op("add", Tensor(b, g.loss), penalty, name="objective").name
    bg = grad(g, loss=objective, wrt=params)
    b = Builder(bg, prefix="opt_", tags={"train": True})
    dtype = bg.params[params[0]].dtype
    lr = b.input(LR, (), dtype)
    step = Tensor(b, STEP) if STEP in bg.inputs else b.input(STEP, (), "int64")
    t = b.cast(step, to=dtype) + 1.0
    grads = {k: Tensor(b, bg.meta["grads"][k]) for k in params}
    grads, norm = _clip(b, grads, cfg)

    metrics: list[str] = []
    for reserved in ("loss", "penalty", "correct", "grad_norm"):
        if reserved != g.loss and reserved in bg.value_names():
            raise GraphError(
                f"the name '{reserved}' is reserved for a training-step output",
                node=reserved,
                hint=f"rename the model's '{reserved}'",
            )
    # outputs are named by identity nodes; export folds them into their producers
    if g.loss != "loss":
        b.identity(Tensor(b, g.loss), name="loss")
    if penalty is not None:
        metrics.append(b.identity(Tensor(b, penalty.name), name="penalty").name)
    if classification:
        metrics.append(
            b.identity(_correct(b, Tensor(b, pred), Tensor(b, target)), name="correct").name
        )
    if norm is not None:
        metrics.append(b.identity(norm, name="grad_norm").name)

    init: dict[str, np.ndarray] = {}
    slots: list[str] = []
    for name in params:
        p = bg.params[name]
        state = {}
        for s in opt.slots:
            sname = f"{SLOT}{s}.{name}"
            zero = np.zeros(p.shape, dtype=p.dtype)
            bg.params[sname] = Param(
                sname, p.shape, p.dtype, "zeros", frozen=True, value=zero, state=True
            )
            bg.types[sname] = p.type
            state[s] = Tensor(b, sname)
            slots.append(sname)
            init[sname] = zero
        b.prefix = f"opt_{name}_"
        new_p, new_s = opt.update(b, Tensor(b, name), grads[name], state, lr, t, hyper)
        b.identity(new_p, name=NEW + name)
        for s in opt.slots:
            b.identity(new_s[s], name=f"{NEW}{SLOT}{s}.{name}")
    for _node, pairs in stat_updates:
        for stat, value in pairs:
            b.identity(Tensor(b, value), name=NEW + stat)
    for name in params + stats:
        init[name] = bg.params[name].value
    for name in frozen:
        bg.constants[name] = bg.params.pop(name).value
    bg.meta["train_step"] = True
    ts = TrainStep(
        graph=bg,
        source=graph,
        config=cfg,
        optimizer=opt,
        hyper=hyper,
        data_inputs=list(data_inputs),
        params=params,
        stats=stats,
        slots=slots,
        frozen=frozen,
        metrics=metrics,
        loss=g.loss,
        pred=pred,
        target=target,
        task="classification" if classification else "regression",
        init=init,
    )
    bg.outputs = ts.outputs  # loss, metrics, then new.* in carried order
    return ts


# ------------------------------------------------------------------- export
def export_step(ts: TrainStep, *, defaults: bool = True):
    """The step as ONNX: inputs and outputs named and ordered as the module doc says."""
    from graphc.export import export

    g = ts.graph
    model = export(
        g,
        outputs=ts.outputs,
        params_as_inputs=True,
        keep_inputs=True,
        input_order=ts.data_inputs + [LR, STEP],
        check=False,
        doc=f"graphc training step ({ts.optimizer.name})",
    )
    _order_inputs(model, ts.inputs)
    _fold_output_identities(model)
    lr_default = np.asarray(ts.config.learning_rate(), dtype=g.type(LR).dtype)
    if defaults:
        _add_default(model, LR, lr_default)
        _add_default(model, STEP, np.asarray(0, dtype=np.int64))
    else:
        drop_defaults(model)
    _set_metadata(model, ts)
    from graphc.export import check_model

    check_model(model)
    return model


def _order_inputs(model, order: list[str]) -> None:
    by_name = {i.name: i for i in model.graph.input}
    missing = [k for k in order if k not in by_name]
    if missing:
        raise GraphError(
            "the exported step lacks input(s): " + ", ".join(missing),
            hint="this is a graphc bug; please report it with the model file",
        )
    ordered = [by_name[k] for k in order] + [i for i in model.graph.input if i.name not in order]
    del model.graph.input[:]
    model.graph.input.extend(ordered)


def drop_defaults(model) -> None:
    """Remove the initializers that give graph inputs default values (inputs stay required)."""
    inputs = {i.name for i in model.graph.input}
    inits = [t for t in model.graph.initializer if t.name not in inputs]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def _add_default(model, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    if not any(t.name == name for t in model.graph.initializer):
        model.graph.initializer.append(numpy_helper.from_array(value, name))


def _fold_output_identities(model) -> None:
    """Name the producing node's output after the graph output instead of copying it.

    Export adds `Identity(real) -> name` for every output; for the step's
    parameters that would be a full copy of every tensor on every step.
    """
    while _fold_once(model.graph):
        pass


def _fold_once(graph) -> bool:
    outputs = {o.name for o in graph.output}
    sources = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    produced = {o for n in graph.node for o in n.output}
    renames: dict[str, str] = {}
    drop = []
    for n in graph.node:
        if n.op_type != "Identity" or n.output[0] not in outputs:
            continue
        src = n.input[0]
        if src in sources or src in outputs or src in renames or src not in produced:
            continue
        renames[src] = n.output[0]
        drop.append(n)
    for n in drop:
        graph.node.remove(n)
    for n in graph.node:
        for i, v in enumerate(n.input):
            if v in renames:
                n.input[i] = renames[v]
        for i, v in enumerate(n.output):
            if v in renames:
                n.output[i] = renames[v]
    return bool(drop)


def _set_metadata(model, ts: TrainStep) -> None:
    import json

    meta = {
        "optimizer": ts.optimizer.name,
        "hyper": ts.hyper,
        "lr": ts.config.learning_rate(),
        "l1": ts.config.l1,
        "l2": ts.config.l2,
        "clip_value": ts.config.clip_value,
        "clip_norm": ts.config.clip_norm,
        "data_inputs": ts.data_inputs,
        "params": ts.params,
        "stats": ts.stats,
        "slots": ts.slots,
        "frozen": ts.frozen,
        "metrics": ts.metrics,
        "task": ts.task,
        "carried": ts.carried,
        "flat_state": ts.layout,
    }
    entry = model.metadata_props.add()
    entry.key = "graphc.train_step"
    entry.value = json.dumps(meta)


def step_summary(ts: TrainStep) -> dict[str, Any]:
    """Counts for messages: parameters trained, frozen, state and slots."""
    count = lambda names, src: int(sum(np.prod(src[k].shape) for k in names))
    vals = {**ts.init, **ts.graph.constants}
    return {
        "trained": count(ts.params, vals),
        "frozen": count(ts.frozen, vals),
        "slots": count(ts.slots, vals),
        "stats": count(ts.stats, vals),
    }
