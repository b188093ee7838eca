"""Training: the whole training step as one ONNX model, and the loop that runs it.

    from graphc.train import Model
    model = Model("samples/mlp_digits.gc")
    model.compile(optimizer="adam", lr=1e-3)
    model.fit(x, y, batch_size=32, epochs=20, validation_data=(xv, yv))
    model.evaluate(xt, yt); model.predict(xt); model.save("trained.onnx")

`build_step` builds the step graph; `Trainer` runs it on ONNX Runtime; see
docs/training.md for the step's input/output naming convention. Importing
this package does not import onnx or onnxruntime.
"""

from graphc.train.cli_args import add_train_args, build_step_from_args, step_from_args
from graphc.train.optimizers import OPTIMIZERS, get_optimizer, optimizer_names
from graphc.train.step import StepConfig, TrainStep, build_step


def __getattr__(name: str):
    # the runtime side imports onnxruntime: load it on first use
    if name == "Model":
        from graphc.train.api import Model

        return Model
    if name in ("Trainer", "TrainConfig", "FitResult"):
        from graphc.train import loop

        return getattr(loop, name)
    raise AttributeError(name)


__all__ = [
    "OPTIMIZERS",
    "FitResult",
    "Model",
    "StepConfig",
    "TrainConfig",
    "TrainStep",
    "Trainer",
    "add_train_args",
    "build_step",
    "build_step_from_args",
    "get_optimizer",
    "optimizer_names",
    "step_from_args",
]
