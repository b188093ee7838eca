"""The training loop: mini-batches, epochs, validation, schedules, early stopping, checkpoints.

Everything that decides what a step computes is a function of counters
saved in the checkpoint — the data order of an epoch is a permutation drawn
from (seed, epoch), the learning rate a function of the step, dropout's seed
the step itself — so `resume=True` continues bit-for-bit where a run stopped.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from graphc.errors import GraphError
from graphc.train import checkpoint as ckpt
from graphc.train.metrics import classification_report
from graphc.train.progress import Progress
from graphc.train.runner import Evaluator, StepRunner, data_inputs, first_nonfinite, fit_array
from graphc.train.schedules import make_schedule
from graphc.train.step import TrainStep


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    shuffle: bool = True
    seed: int = 0
    schedule: str = "constant"  # constant, step, cosine
    warmup: int = 0  # steps of linear warm-up
    step_epochs: int = 10  # step schedule: decay every this many epochs
    gamma: float = 0.1  # step schedule: decay factor
    min_lr: float = 0.0  # cosine schedule: final learning rate
    patience: int | None = None  # early stopping: epochs without improvement
    min_delta: float = 0.0
    monitor: str = "val_loss"  # val_loss (min) or val_accuracy (max)
    restore_best: bool = True  # early stopping: end with the best epoch's parameters
    checkpoint: str | None = None  # path of the .npz checkpoint
    checkpoint_every: int = 0  # also every this many steps (0: at epoch ends only)
    resume: bool = False
    max_steps: int | None = None  # stop after this many steps in all (checkpointed, resumable)
    verbose: int = 1


@dataclass
class FitResult:
    history: list[dict]
    step: int
    epoch: int
    stopped: str  # done, early_stopping, interrupted, max_steps
    time_s: float
    best_epoch: int | None = None
    extra: dict = field(default_factory=dict)


class Trainer:
    """One training step's sessions plus the loop around them."""

    def __init__(
        self,
        ts: TrainStep,
        device: str = "cpu",
        threads: int | str | None = None,
        profile: str | None = None,
    ) -> None:
        self.ts = ts
        self.runner = StepRunner(ts, device, threads, profile=profile)
        self.evaluator = Evaluator(ts, self.runner, device, threads)
        self.x_name, self.y_name = data_inputs(ts.source, ts.target)
        self.step_count = 0

    # ------------------------------------------------------------- data
    def feeds(self, x: np.ndarray, y: np.ndarray | None) -> dict[str, np.ndarray]:
        g = self.ts.source
        out = {self.x_name: fit_array(g, self.x_name, x, "X")}
        if y is not None and self.y_name is not None:
            out[self.y_name] = fit_array(g, self.y_name, y, "y")
        missing = [k for k in self.ts.data_inputs if k not in out]
        if y is not None and missing:
            raise GraphError(
                "the model has inputs the data does not provide: " + ", ".join(missing),
                hint="training feeds X to the first float input and y to the loss's target",
            )
        return out

    # ---------------------------------------------------------- evaluation
    def evaluate(
        self, x: np.ndarray, y: np.ndarray, batch_size: int = 1024, full: bool = True
    ) -> dict:
        """Loss (and for classifiers accuracy, macro F1, ROC AUC, confusion matrix)."""
        feeds = self.feeds(x, y)
        outs = (self.ts.loss,) + ((self.ts.pred,) if self.ts.task == "classification" else ())
        vals = self.evaluator.run(outs, feeds, batch_size)
        res = {"loss": float(vals[0])}
        if self.ts.task == "classification":
            labels = feeds[self.y_name]
            if full:
                res.update(classification_report(labels, vals[1]))
            else:
                res["accuracy"] = float(np.mean(vals[1].argmax(1) == labels))
        return res

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        feeds = self.feeds(x, None)
        outs = tuple(self.ts.source.outputs) or (self.ts.pred,)
        return self.evaluator.run(outs[:1], feeds, batch_size)[0]

    # --------------------------------------------------------------- loop
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        cfg: TrainConfig,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        on_step: Callable[[dict], bool | None] | None = None,
        on_epoch: Callable[[dict], bool | None] | None = None,
    ) -> FitResult:
        """Train on (x, y). `on_step` gets {step, epoch, batch, batches, loss, accuracy,
        samples_per_s} after every step, `on_epoch` the epoch's record (what the summary
        line prints); either may return True to stop as Ctrl-C does (checkpoint, resumable).
        """
        feeds_all = self.feeds(x, y)
        n = len(x)
        if n == 0:
            raise GraphError("the training data is empty")
        bs = max(1, min(cfg.batch_size, n))
        batches = math.ceil(n / bs)
        lr_of = make_schedule(
            cfg.schedule,
            self.ts.config.learning_rate(),
            epochs=cfg.epochs,
            steps_per_epoch=batches,
            warmup=cfg.warmup,
            step_epochs=cfg.step_epochs,
            gamma=cfg.gamma,
            min_lr=cfg.min_lr,
        )
        if cfg.patience is not None and validation is None:
            raise GraphError(
                "early stopping needs validation data",
                hint="give validation data (or --val-split), or drop --patience",
            )
        classify = self.ts.task == "classification"
        pos = {
            "step": 0,
            "epoch": 0,
            "batch": 0,
            "sums": [0.0, 0.0, 0, 0.0],
            "history": [],
            "early": {"best": None, "best_epoch": None, "wait": 0},
        }
        best_state: dict[str, np.ndarray] = {}
        if cfg.resume:
            if not cfg.checkpoint:
                raise GraphError("--resume needs --checkpoint PATH")
            carried, meta, best_state = ckpt.load(cfg.checkpoint)
            ckpt.check_compatible(
                cfg.checkpoint,
                carried,
                {k: (tuple(v.shape), str(v.dtype)) for k, v in self.ts.init.items()},
            )
            if meta.get("seed") != cfg.seed or meta.get("batch_size") != bs:
                raise GraphError(
                    f"checkpoint '{cfg.checkpoint}' was written with seed {meta.get('seed')} and "
                    f"batch size {meta.get('batch_size')}; this run has {cfg.seed} and {bs}",
                    hint="resume with the same --seed and --batch-size",
                )
            self.runner.set_state(carried)
            if isinstance(meta.get("threads"), int):
                self.runner.use_threads(meta["threads"])  # the same kernels' summation order
            for k in pos:
                pos[k] = meta[k]
        progress = Progress(cfg.epochs, batches, cfg.verbose)
        stop = _StopFlag()
        stopped = "done"
        t_start = time.perf_counter()

        def save() -> None:
            if cfg.checkpoint:
                ckpt.save(
                    cfg.checkpoint,
                    self.runner.state(),
                    {
                        **pos,
                        "seed": cfg.seed,
                        "batch_size": bs,
                        "optimizer": self.ts.optimizer.name,
                        "threads": self.runner.threads,
                    },
                    best_state,
                )

        with stop:
            while pos["epoch"] < cfg.epochs and stopped == "done":
                epoch = pos["epoch"]
                order = (
                    np.random.default_rng([cfg.seed, epoch]).permutation(n)
                    if cfg.shuffle
                    else np.arange(n)
                )
                t_epoch = time.perf_counter() - pos["sums"][3]
                while pos["batch"] < batches:
                    if stop.set:
                        stopped = "interrupted"
                        break
                    if cfg.max_steps is not None and pos["step"] >= cfg.max_steps:
                        stopped = "max_steps"
                        break
                    k = pos["batch"]
                    idx = order[k * bs : (k + 1) * bs]
                    batch = {name: a[idx] for name, a in feeds_all.items()}
                    lr = lr_of(pos["step"])
                    vals = self.runner.step(batch, lr, pos["step"])
                    if not math.isfinite(vals[0]):
                        self.runner.rollback()
                        raise self._nonfinite(batch, lr, pos, vals[0], cfg)
                    s = pos["sums"]
                    s[0] += vals[0] * len(idx)
                    if classify:
                        s[1] += vals[self.runner.scalar_names.index("correct")]
                    s[2] += len(idx)
                    pos["step"] += 1
                    pos["batch"] += 1
                    s[3] = time.perf_counter() - t_epoch
                    progress.update(
                        epoch + 1,
                        pos["batch"],
                        s[0] / s[2],
                        s[1] / s[2] if classify else None,
                        s[2] / max(s[3], 1e-9),
                    )
                    if on_step is not None and on_step(
                        {
                            "step": pos["step"],
                            "epoch": epoch + 1,
                            "batch": pos["batch"],
                            "batches": batches,
                            "loss": s[0] / s[2],
                            "accuracy": s[1] / s[2] if classify else None,
                            "samples_per_s": s[2] / max(s[3], 1e-9),
                        }
                    ):
                        stop.set = True
                    if cfg.checkpoint_every and pos["step"] % cfg.checkpoint_every == 0:
                        save()
                if pos["batch"] < batches:
                    break
                record = self._end_epoch(epoch, pos, lr_of, validation, classify)
                progress.summary(record)
                if on_epoch is not None and on_epoch(record):
                    stop.set = True
                if cfg.patience is not None and self._early(cfg, pos, record, best_state):
                    stopped = "early_stopping"
                elif stop.set and pos["epoch"] < cfg.epochs:
                    stopped = "interrupted"
                save()
        if stopped in ("interrupted", "max_steps"):
            save()
            if stopped == "interrupted":
                progress.message(
                    f"interrupted at step {pos['step']}"
                    + (
                        f"; checkpoint saved to {cfg.checkpoint} (continue with --resume)"
                        if cfg.checkpoint
                        else ""
                    )
                )
        early = pos["early"]
        if stopped == "early_stopping":
            progress.message(
                f"early stopping: no improvement in {cfg.monitor} for "
                f"{cfg.patience} epochs (best: epoch {early['best_epoch']})"
            )
        if (
            early["best_epoch"] is not None
            and cfg.restore_best
            and best_state
            and stopped in ("done", "early_stopping")
        ):
            self.runner.set_state(best_state)
        self.step_count = pos["step"]
        return FitResult(
            pos["history"],
            pos["step"],
            pos["epoch"],
            stopped,
            time.perf_counter() - t_start,
            early["best_epoch"],
        )

    def _end_epoch(self, epoch: int, pos: dict, lr_of, validation, classify: bool) -> dict:
        s = pos["sums"]
        record = {
            "epoch": epoch + 1,
            "step": pos["step"],
            "loss": s[0] / s[2],
            "accuracy": s[1] / s[2] if classify else None,
            "lr": lr_of(max(pos["step"] - 1, 0)),
            "time_s": s[3],
            "samples_per_s": s[2] / max(s[3], 1e-9),
        }
        if validation is not None:
            v = self.evaluate(validation[0], validation[1], full=False)
            record["val_loss"] = v["loss"]
            record["val_accuracy"] = v.get("accuracy")
        pos["history"].append(record)
        pos["epoch"] += 1
        pos["batch"] = 0
        pos["sums"] = [0.0, 0.0, 0, 0.0]
        return record

    def _early(self, cfg: TrainConfig, pos: dict, record: dict, best_state: dict) -> bool:
        """Update early-stopping state; True when patience has run out."""
        if cfg.monitor not in ("val_loss", "val_accuracy"):
            raise GraphError(f"cannot monitor '{cfg.monitor}'", hint="use val_loss or val_accuracy")
        value = record.get(cfg.monitor)
        if value is None:
            raise GraphError(
                f"'{cfg.monitor}' is not measured for this model", hint="monitor val_loss"
            )
        sign = -1.0 if cfg.monitor == "val_accuracy" else 1.0
        e = pos["early"]
        if e["best"] is None or sign * value < sign * e["best"] - cfg.min_delta:
            e["best"], e["best_epoch"], e["wait"] = value, record["epoch"], 0
            if cfg.restore_best:
                best_state.clear()
                best_state.update(self.runner.state())
            return False
        e["wait"] += 1
        return e["wait"] >= cfg.patience

    def _nonfinite(self, batch, lr, pos, loss, cfg) -> GraphError:
        err = first_nonfinite(self.ts, batch, self.runner.state(), lr, pos["step"])
        kept = f"; the last good checkpoint '{cfg.checkpoint}' is kept" if cfg.checkpoint else ""
        return GraphError(
            f"training stopped at step {pos['step']} (epoch {pos['epoch'] + 1}, batch "
            f"{pos['batch'] + 1}): the loss is {loss}. {err.message}{kept}",
            loc=err.loc,
            node=err.node,
            hint=err.hint
            or "lower the learning rate (--lr), clip gradients (--clip-norm 1.0) "
            "or check the data for extreme values",
        )


class _StopFlag:
    """Turns Ctrl-C into a request to stop after the current step (then checkpoint)."""

    def __init__(self) -> None:
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
