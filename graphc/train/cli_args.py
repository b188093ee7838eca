"""Command-line options for the training step.

Shared by `graphc compile --train` and `graphc train`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from graphc.errors import GraphError
from graphc.ir import Graph
from graphc.train.optimizers import optimizer_names
from graphc.train.step import StepConfig, TrainStep, build_step

# CLI flag -> hyperparameter name (each optimizer accepts the ones it declares)
HYPER_FLAGS = {
    "momentum": "momentum",
    "beta1": "beta1",
    "beta2": "beta2",
    "eps": "eps",
    "rho": "rho",
    "weight_decay": "weight_decay",
}


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """--optimizer, --lr, hyperparameters, --l1/--l2, --clip-value/--clip-norm, weights."""
    g = parser.add_argument_group("training step")
    g.add_argument(
        "--optimizer",
        default="adam",
        choices=optimizer_names(),
        metavar="NAME",
        help="update rule: " + ", ".join(optimizer_names()) + " (default adam)",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: the optimizer's usual one, e.g. adam 1e-3)",
    )
    g.add_argument("--momentum", type=float, default=None, help="momentum, nesterov (0.9)")
    g.add_argument("--beta1", type=float, default=None, help="adam, adamw (0.9)")
    g.add_argument("--beta2", type=float, default=None, help="adam, adamw (0.999)")
    g.add_argument("--eps", type=float, default=None, help="rmsprop, adagrad, adadelta, adam")
    g.add_argument("--rho", type=float, default=None, help="rmsprop (0.99), adadelta (0.9)")
    g.add_argument(
        "--weight-decay", type=float, default=None, help="adamw's decoupled weight decay (0.01)"
    )
    g.add_argument("--l1", type=float, default=0.0, help="add l1 * sum|w| over weight tensors")
    g.add_argument("--l2", type=float, default=0.0, help="add l2 * sum w^2 over weight tensors")
    g.add_argument(
        "--clip-value",
        type=float,
        default=None,
        metavar="C",
        help="clamp every gradient element to [-C, C]",
    )
    g.add_argument(
        "--clip-norm",
        type=float,
        default=None,
        metavar="C",
        help="rescale the gradients when their global L2 norm exceeds C",
    )
    g.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="start from these weights (.npz of arrays by parameter name, or a "
        ".onnx model's initializers); names that do not match are skipped",
    )
    g.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="LAYER",
        help="keep this layer's parameters fixed (repeatable; a prefix such as 'fc1' or 'conv')",
    )


def step_config_from_args(args: argparse.Namespace) -> StepConfig:
    hyper = {
        name: getattr(args, flag)
        for flag, name in HYPER_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    return StepConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        hyper=hyper,
        l1=args.l1,
        l2=args.l2,
        clip_value=args.clip_value,
        clip_norm=args.clip_norm,
    )


def prepare_graph(graph: Graph, args: argparse.Namespace, log=None) -> Graph:
    """Apply --weights and --freeze to a parsed model (returns it)."""
    if getattr(args, "weights", None):
        loaded, skipped = load_weights(graph, args.weights)
        if log:
            log(
                f"loaded {len(loaded)} parameter(s) from {args.weights}"
                + (f"; skipped {', '.join(skipped)}" if skipped else "")
            )
    for prefix in getattr(args, "freeze", []) or []:
        freeze(graph, prefix)
    return graph


def build_step_from_args(
    graph: Graph, args: argparse.Namespace, optimize: Callable[[Graph], Graph] | None = None
):
    """The exported training step (onnx.ModelProto) for `graphc compile --train`."""
    ts = step_from_args(graph, args, optimize)
    return ts.export()


def step_from_args(
    graph: Graph,
    args: argparse.Namespace,
    optimize: Callable[[Graph], Graph] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainStep:
    prepare_graph(graph, args, log)
    ts = build_step(graph, step_config_from_args(args))
    if optimize is not None:
        ts.graph = optimize(ts.graph)
    return ts


# ------------------------------------------------------------------ weights
def read_weights(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".onnx"):
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.load(path)
        except Exception as err:  # onnx raises several kinds
            raise GraphError(f"cannot read '{path}' as ONNX: {err}") from None
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise GraphError(f"no such weights file: '{path}'") from None
    except (OSError, ValueError) as err:
        raise GraphError(
            f"cannot read '{path}' as .npz weights: {err}",
            hint="save with np.savez(path, **{'fc1.weight': w, ...})",
        ) from None
    # a graphc checkpoint stores parameters as carried/<name>
    return {k.removeprefix("carried/"): v for k, v in out.items()}


def load_weights(graph: Graph, path: str) -> tuple[list[str], list[str]]:
    """Set parameter values by name; (loaded names, skipped names with the reason)."""
    values = read_weights(path)
    loaded, skipped = [], []
    for name, p in graph.params.items():
        if name not in values:
            continue
        v = values[name]
        if tuple(v.shape) != tuple(p.shape):
            skipped.append(f"{name} (shape {list(v.shape)} vs {list(p.shape)})")
            continue
        p.value = np.asarray(v, dtype=p.dtype)
        loaded.append(name)
    if not loaded:
        raise GraphError(
            f"'{path}' holds no weights for this model's parameters",
            hint="parameters are named <layer>.<param>, e.g. fc1.weight; "
            "model parameters: " + ", ".join(list(graph.params)[:6]),
        )
    return loaded, skipped


def freeze(graph: Graph, prefix: str) -> list[str]:
    names = [k for k in graph.params if k.startswith(prefix)]
    if not names:
        from graphc.errors import closest

        layers = sorted({k.rsplit(".", 1)[0] for k in graph.params})
        near = closest(prefix, layers)
        raise GraphError(
            f"--freeze {prefix}: no parameter starts with '{prefix}'",
            hint=(f"did you mean '{near}'? " if near else "") + "layers: " + ", ".join(layers),
        )
    for k in names:
        graph.params[k].frozen = True
    # the layer attribute is what inference reads when it re-creates parameters
    owners = {k.rsplit(".", 1)[0] for k in names}
    for node in graph.nodes.values():
        if node.name in owners and "frozen" in node.attrs:
            node.attrs["frozen"] = True
    return names
