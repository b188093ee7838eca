"""Training inside the editor: a background thread runs graphc's training step, the
screen draws the loss and accuracy curves as they come, `x` stops it.

The loop is deliberately small: it drives `graphc.train`'s StepRunner (the
exported ONNX training step on ONNX Runtime) batch by batch, so it can post
every step's loss to the UI and check the stop flag between steps. Epoch
ends evaluate on the validation split with the Trainer's own evaluator.
"""

from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, Sparkline, Static

from graphc import Graph, GraphError


def trainer_available() -> str | None:
    """None when graphc.train can run here; otherwise why not."""
    try:
        from graphc.train import data, loop, step  # noqa: F401
    except ImportError as err:
        return f"graphc.train could not be imported ({err})"
    return None


def default_dataset(graph: Graph) -> str:
    """The data set a sample's header names (`graphc train ... --data xor`), else digits."""
    for line in graph.header:
        m = re.search(r"--data\s+(\S+)", line)
        if m:
            return m.group(1)
    return "xor" if graph.name == "xor" else "digits"


class TrainScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x", "stop", "Stop"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, graph: Graph, path: Path | None) -> None:
        super().__init__()
        self.graph = graph
        self.path = path
        self.stop_flag = threading.Event()
        self.losses: list[float] = []
        self.accs: list[float] = []
        self.running = False
        self.log_lines: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="page"):
            yield Label(f"Train {self.graph.name}", classes="question")
            yield Label("data set, epochs, batch size, learning rate (enter starts):")
            yield Input(f"{default_dataset(self.graph)} 20 32 0.01", id="train-args")
            yield Label("loss (running mean per step)", classes="field")
            yield Sparkline([], id="loss-curve")
            yield Label("accuracy (per epoch)", classes="field")
            yield Sparkline([], id="acc-curve")
            yield Static("", id="train-log")
        yield Footer()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.running:
            return
        parts = event.value.split()
        try:
            name = parts[0]
            epochs = int(parts[1]) if len(parts) > 1 else 20
            batch = int(parts[2]) if len(parts) > 2 else 32
            lr = float(parts[3]) if len(parts) > 3 else None
        except (ValueError, IndexError):
            self.log_line("write: DATASET EPOCHS BATCH LR, e.g. xor 20 32 0.01")
            return
        self.running = True
        self.stop_flag.clear()
        event.input.disabled = True  # frees the keys (x stops) while the worker runs
        self.set_focus(None)
        self.run_worker(
            lambda: self._train(name, epochs, batch, lr), thread=True, group="train", exclusive=True
        )

    # ------------------------------------------------------------ worker
    def _train(self, dataset: str, epochs: int, batch: int, lr: float | None) -> None:
        try:
            self._loop(dataset, epochs, batch, lr)
        except GraphError as err:
            self.app.call_from_thread(self.log_line, f"error: {err.message}")
        except Exception as err:  # keep the editor alive whatever the trainer does
            self.app.call_from_thread(self.log_line, f"failed: {type(err).__name__}: {err}")
        finally:
            self.running = False
            self.app.call_from_thread(self._finished)

    def _finished(self) -> None:
        if not self.is_attached:  # closed while the worker was finishing a step
            return
        field = self.query_one("#train-args", Input)
        field.disabled = False

    def _loop(self, dataset: str, epochs: int, batch: int, lr: float | None) -> None:
        from graphc.train.data import load
        from graphc.train.loop import Trainer
        from graphc.train.step import StepConfig, build_step

        say = lambda msg: self.app.call_from_thread(self.log_line, msg)
        data = load(dataset, seed=0)
        say(data.describe() + "; building the training step…")
        ts = build_step(self.graph, StepConfig(lr=lr))
        trainer = Trainer(ts)
        feeds = trainer.feeds(*data.train)
        n = len(data.train[0])
        bs = max(1, min(batch, n))
        classify = ts.task == "classification"
        step = 0
        lr_value = ts.config.learning_rate()
        t0 = time.perf_counter()
        for epoch in range(epochs):
            order = np.random.default_rng([0, epoch]).permutation(n)
            total = correct = seen = 0.0
            for k in range(math.ceil(n / bs)):
                if self.stop_flag.is_set():
                    say(f"stopped at step {step} (epoch {epoch + 1})")
                    return
                idx = order[k * bs : (k + 1) * bs]
                vals = trainer.runner.step({a: v[idx] for a, v in feeds.items()}, lr_value, step)
                step += 1
                if not math.isfinite(vals[0]):
                    say(f"the loss became {vals[0]} at step {step}: lower the learning rate")
                    return
                total += vals[0] * len(idx)
                seen += len(idx)
                if classify:
                    correct += vals[trainer.runner.scalar_names.index("correct")]
                self.app.call_from_thread(self._point, vals[0], None)
            msg = f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}"
            acc = correct / seen if classify else None
            if acc is not None:
                msg += f", accuracy {acc:.3f}"
            if data.val is not None:
                v = trainer.evaluate(*data.val, full=False)
                msg += f", val loss {v['loss']:.4f}"
                if v.get("accuracy") is not None:
                    msg += f", val accuracy {v['accuracy']:.3f}"
            self.app.call_from_thread(self._point, None, acc)
            say(msg + f"  ({time.perf_counter() - t0:.1f} s)")
        say(f"done: {step} steps in {time.perf_counter() - t0:.1f} s")

    # ---------------------------------------------------------------- UI
    def _point(self, loss: float | None, acc: float | None) -> None:
        if not self.is_attached:  # closed while the worker was finishing a step
            return
        if loss is not None:
            # A running mean over the last steps: a readable curve, not minibatch noise.
            prev = self.losses[-1] if self.losses else loss
            self.losses.append(0.9 * prev + 0.1 * loss)
            self.query_one("#loss-curve", Sparkline).data = self.losses[-400:]
        if acc is not None:
            self.accs.append(acc)
            self.query_one("#acc-curve", Sparkline).data = self.accs

    def log_line(self, msg: str) -> None:
        if not self.is_attached:  # closed while the worker was finishing a step
            return
        self.log_lines.append(msg)
        self.query_one("#train-log", Static).update("\n".join(self.log_lines[-8:]))

    def action_stop(self) -> None:
        if self.running:
            self.stop_flag.set()

    def action_close(self) -> None:
        self.stop_flag.set()
        self.dismiss(None)
