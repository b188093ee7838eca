"""A Keras-like Python API over the training step.

    model = Model("samples/mlp_digits.gc")           # or a Graph, or a Builder's graph
    model.compile(optimizer="adam", lr=1e-3)          # loss: the file's minimize(...)
    history = model.fit(x, y, batch_size=32, epochs=20, validation_data=(xv, yv))
    model.evaluate(xt, yt)    # {"loss": ..., "accuracy": ..., "macro_f1": ..., ...}
    model.predict(xt)         # the model's first output (logits)
    model.save("trained.onnx")

A graph without a loss gets one from `compile(loss="cross_entropy")` (or
"mse"): the loss compares the graph's first output with a new target input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.errors import GraphError
from graphc.ir import Graph
from graphc.train.loop import FitResult, TrainConfig, Trainer
from graphc.train.step import StepConfig, TrainStep, build_step

LOSSES = ("cross_entropy", "mse")


class History:
    """What fit returns: `history.history["loss"]`, one value per epoch (as Keras)."""

    def __init__(self, result: FitResult) -> None:
        self.result = result
        self.epochs = [r["epoch"] for r in result.history]
        keys = sorted({k for r in result.history for k, v in r.items() if v is not None})
        self.history = {k: [r.get(k) for r in result.history] for k in keys if k != "epoch"}

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epochs)}, stopped={self.result.stopped!r})"


class Model:
    def __init__(self, graph: Graph | str) -> None:
        if isinstance(graph, str):
            from graphc.parser import parse_file

            graph = parse_file(graph)
        self.graph = graph
        self.step: TrainStep | None = None
        self.trainer: Trainer | None = None

    def compile(
        self,
        optimizer: str = "adam",
        loss: str | None = None,
        *,
        lr: float | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        clip_value: float | None = None,
        clip_norm: float | None = None,
        device: str = "cpu",
        threads: int | None = None,
        **hyper: float,
    ) -> Model:
        """Build the training step; `hyper` holds momentum, beta1, beta2, eps, rho, …"""
        g = self.graph
        if loss is not None:
            g = _with_loss(g, loss)
        elif g.loss is None:
            raise GraphError(
                "the model has no loss",
                hint="compile(loss='cross_entropy') or add minimize(...) to the model file",
            )
        cfg = StepConfig(
            optimizer=optimizer,
            lr=lr,
            hyper=hyper,
            l1=l1,
            l2=l2,
            clip_value=clip_value,
            clip_norm=clip_norm,
        )
        self.step = build_step(g, cfg)
        self.trainer = Trainer(self.step, device, threads)
        return self

    def _need(self) -> Trainer:
        if self.trainer is None:
            raise GraphError("the model is not compiled", hint="call model.compile(...) first")
        return self.trainer

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 32,
        epochs: int = 1,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        verbose: int = 1,
        on_step=None,
        on_epoch=None,
        **options: Any,
    ) -> History:
        """Train; `options` are TrainConfig fields (schedule, warmup, patience, checkpoint, …);
        `on_step`/`on_epoch` are callbacks (see Trainer.fit)."""
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            verbose=verbose,
            **options,
        )
        return History(
            self._need().fit(
                x, y, cfg, validation=validation_data, on_step=on_step, on_epoch=on_epoch
            )
        )

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> dict:
        return self._need().evaluate(x, y, batch_size)

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        return self._need().predict(x, batch_size)

    def get_weights(self) -> dict[str, np.ndarray]:
        """Current trained parameters and running statistics (optimizer slots left out)."""
        t = self._need()
        state = t.runner.state()
        return {k: state[k] for k in self.step.params + self.step.stats}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        t = self._need()
        state = t.runner.state()
        for k, v in weights.items():
            if k not in state:
                raise GraphError(f"the model has no parameter '{k}'")
            state[k] = np.asarray(v, dtype=state[k].dtype).reshape(state[k].shape)
        t.runner.set_state(state)

    def to_onnx(self):
        from graphc.train.runner import export_trained

        return export_trained(self.step, self._need().runner.state())

    def save(self, path: str) -> None:
        """Write the trained inference model (plain ONNX with the learned weights)."""
        from graphc.export import save

        save(self.to_onnx(), path)


def _with_loss(graph: Graph, loss: str) -> Graph:
    """A copy of the graph minimizing `loss` between its first output and a new target input."""
    from graphc.builder import Builder, Tensor

    if loss not in LOSSES:
        raise GraphError(f"unknown loss '{loss}'", hint="use " + " or ".join(LOSSES))
    if not graph.outputs:
        raise GraphError("the model has no output to compute a loss on", hint="add output(logits)")
    g = graph.copy()
    b = Builder(g)
    pred = Tensor(b, g.outputs[0])
    name = g.unique_name("target")
    if loss == "cross_entropy":
        target = b.input(name, pred.shape[:1], "int64")
    else:
        target = b.input(name, pred.shape, pred.dtype)
    b.minimize(b.op(loss, pred, target, name=g.unique_name("loss")))
    return g
