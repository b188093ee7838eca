"""graphc train FILE --data NAME -o trained.onnx: train a model on ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub):
    from graphc.train import add_train_args
    from graphc.train.data import DATASETS
    from graphc.train.schedules import SCHEDULES

    p = sub.add_parser(
        "train",
        help="train a model file and write the trained ONNX model",
        description="Build the model's training step (one ONNX model), run it on ONNX Runtime "
        "over mini-batches and write the trained inference model (plain ONNX with "
        "the learned weights).",
    )
    p.add_argument("file", help="a .gc model file with minimize(loss)")
    p.add_argument(
        "--data",
        required=True,
        metavar="NAME|FILE",
        help="data set: " + ", ".join(DATASETS) + ", or a .npz (x, y) / .csv (label last) file",
    )
    p.add_argument("-o", "--output", default=None, help="where to write the trained .onnx model")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--val-split",
        type=float,
        default=0.1,
        help="fraction of the training data held out for validation (default 0.1)",
    )
    p.add_argument(
        "--test-split",
        type=float,
        default=0.2,
        help="fraction of the data held out for the final test (default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="data split and order (default 0)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the data order every epoch")
    p.add_argument(
        "--schedule",
        default="constant",
        choices=SCHEDULES,
        help="learning-rate schedule (default constant)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="STEPS",
        help="linear learning-rate warm-up over this many steps",
    )
    p.add_argument(
        "--step-epochs",
        type=int,
        default=10,
        help="step schedule: multiply the rate by --gamma every this many epochs",
    )
    p.add_argument("--gamma", type=float, default=0.1, help="step schedule's factor")
    p.add_argument("--min-lr", type=float, default=0.0, help="cosine schedule's final rate")
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early stopping: stop after this many epochs without improvement",
    )
    p.add_argument("--monitor", default="val_loss", choices=("val_loss", "val_accuracy"))
    p.add_argument("--min-delta", type=float, default=0.0)
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="write a checkpoint (.npz) after every epoch and on Ctrl-C",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="also checkpoint every this many steps",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from --checkpoint exactly where it stopped"
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps in all (checkpointed; resumable)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="N|auto",
        help="ONNX Runtime intra-op threads (default: all cores); auto times the "
        "first step with all cores and with one and keeps the faster",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="FILE.json",
        help="write final train/validation/test loss and metrics as JSON",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or epoch lines")
    add_train_args(p)
    try:
        from graphc.passes import add_opt_args
    except ImportError:
        pass
    else:
        add_opt_args(p)
    return p


def run(args) -> int:
    from graphc.cli.common import load_graph
    from graphc.errors import GraphError
    from graphc.export import save
    from graphc.fileio import atomic_write_text
    from graphc.train import data
    from graphc.train.cli_args import step_from_args
    from graphc.train.loop import TrainConfig, Trainer
    from graphc.train.runner import data_inputs, export_trained
    from graphc.train.step import step_summary

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    if args.epochs < 1 or args.batch_size < 1:
        raise GraphError("--epochs and --batch-size must be at least 1")
    g = load_graph(args.file)
    optimize = None
    if getattr(args, "opt_level", None) is not None:
        from graphc.passes import optimize_from_args

        optimize = lambda graph: optimize_from_args(graph, args)
    ts = step_from_args(g, args, optimize, log)
    x_name, _ = data_inputs(ts.source, ts.target)
    ds = data.load(
        args.data,
        seed=args.seed,
        val_split=args.val_split,
        test_split=args.test_split,
        input_shape=ts.source.inputs[x_name].shape,
    )
    log(f"data: {ds.describe()}")
    log(
        f"model: {len(ts.params)} trained tensors ({step_summary(ts)['trained']:,} values), "
        f"{len(ts.frozen)} frozen; optimizer {ts.optimizer.name}, lr "
        f"{ts.config.learning_rate():g}"
    )
    if ds.task != ts.task and not (ds.task == "classification" and ts.task == "regression"):
        raise GraphError(
            f"the data set '{ds.name}' is a {ds.task} task but the model's loss "
            f"expects {ts.task} targets",
            hint="use cross_entropy with integer labels for classes, mse for values",
        )
    trainer = Trainer(ts, args.device, args.threads)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        shuffle=not args.no_shuffle,
        seed=args.seed,
        schedule=args.schedule,
        warmup=args.warmup,
        step_epochs=args.step_epochs,
        gamma=args.gamma,
        min_lr=args.min_lr,
        patience=args.patience,
        min_delta=args.min_delta,
        monitor=args.monitor,
        checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        max_steps=args.max_steps,
        verbose=0 if args.quiet else 1,
    )
    result = trainer.fit(ds.train[0], ds.train[1], cfg, validation=ds.val)
    if args.threads == "auto":
        log(f"threads: auto chose {trainer.runner.threads}")
    if result.stopped == "interrupted":
        return 130
    report = {
        "model": args.file,
        "data": ds.name,
        "optimizer": ts.optimizer.name,
        "hyperparameters": ts.hyper,
        "lr": ts.config.learning_rate(),
        "epochs_run": result.epoch,
        "steps": result.step,
        "stopped": result.stopped,
        "best_epoch": result.best_epoch,
        "time_s": result.time_s,
    }
    for part, split in (("train", ds.train), ("validation", ds.val), ("test", ds.test)):
        if split is not None and len(split[0]):
            report[part] = trainer.evaluate(*split)
    lines = []
    for part in ("train", "validation", "test"):
        if part in report:
            r = report[part]
            acc = f", accuracy {r['accuracy']:.4f}" if "accuracy" in r else ""
            lines.append(f"{part}: loss {r['loss']:.4f}{acc}")
    if result.stopped == "max_steps":
        lines.append(f"stopped after {result.step} steps (--max-steps); continue with --resume")
    print("\n".join(lines))
    state = trainer.runner.state()
    if args.output:
        save(export_trained(ts, state), args.output)
        print(f"wrote {args.output} (trained inference model)")
    if args.report:
        report["history"] = result.history
        atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.report}")
    return 0


def _threads(text: str):
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("needs at least 1 thread")
    return n
