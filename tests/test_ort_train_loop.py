"""The training loop on ONNX Runtime: export naming, resume, non-finite stops, frozen
parameters, training-vs-evaluation graphs, metrics, schedules, data, CLI and Python API."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphc
from conftest import run_cli
from graphc import Builder, GraphError
from graphc.train import Model, data
from graphc.train.cli_args import freeze, load_weights
from graphc.train.loop import TrainConfig, Trainer
from graphc.train.metrics import confusion_matrix, macro_f1, roc_auc
from graphc.train.schedules import make_schedule
from graphc.train.step import StepConfig, build_step


def mlp(hidden=16, norm=False, dropout=0.0, head="fc2"):
    b = Builder("mlp")
    x = b.input("x", ["N", 64])
    y = b.input("y", ["N"], dtype="int64")
    h = b.linear(x, hidden, name="fc1")
    if norm:
        h = b.batch_norm(h, name="bn")
    h = b.relu(h)
    if dropout:
        h = b.dropout(h, rate=dropout, name="drop")
    logits = b.linear(h, 10, name=head)
    b.output(logits)
    b.minimize(b.cross_entropy(logits, y, name="loss"))
    return b.graph


@pytest.fixture(scope="module")
def digits():
    return data.digits(seed=0)


# ------------------------------------------------------------------ export
def test_step_export_naming_and_defaults():
    import onnxruntime as ort

    ts = build_step(mlp(), StepConfig("adam", lr=0.01))
    model = ts.export()
    ins = [i.name for i in model.graph.input]
    assert ins[:4] == ["x", "y", "lr", "step"]
    assert ins[4:8] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert "opt.m.fc1.weight" in ins and "opt.v.fc2.bias" in ins
    outs = [o.name for o in model.graph.output]
    assert outs[:2] == ["loss", "correct"]
    assert set(outs[2:]) == {"new." + k for k in ins[4:]}
    assert {n.domain for n in model.graph.node} <= {""}  # standard ONNX ops only
    # no output is a copy of another value: the Identity before each output is folded away
    assert not any(
        n.op_type == "Identity" and n.output[0].startswith("new.") for n in model.graph.node
    )
    # parameters, slots, lr and step have defaults: the batch alone runs a step
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    got = dict(zip(outs, sess.run(None, {"x": x, "y": np.arange(5)})))
    assert np.isfinite(got["loss"]) and 0 <= got["correct"] <= 5
    assert not np.allclose(got["new.fc1.weight"], ts.init["fc1.weight"])


def test_reserved_names_and_missing_loss():
    b = Builder("m")
    x = b.input("x", ["N", 2])
    b.output(b.linear(x, 2, name="fc"))
    with pytest.raises(GraphError, match="no loss"):
        build_step(b.graph)
    with pytest.raises(GraphError, match=r"(?s)unknown optimizer 'adan'.*adam"):
        build_step(mlp(), StepConfig("adan"))


# ------------------------------------------------------------------ resume
def test_resume_is_bit_for_bit(tmp_path, digits):
    """Stop mid-epoch, resume from the checkpoint: same parameters and slots as one run."""
    x, y = digits.train
    x, y = x[:400], y[:400]
    cfg = {"epochs": 3, "batch_size": 64, "schedule": "cosine", "warmup": 3, "verbose": 0}
    step_cfg = StepConfig("adam", lr=0.01)
    g = mlp(norm=True, dropout=0.2)  # dropout masks follow the step; bn stats are carried

    full = Trainer(build_step(g, step_cfg), threads=1)
    r_full = full.fit(x, y, TrainConfig(**cfg))
    path = str(tmp_path / "ck.npz")
    first = Trainer(build_step(g, step_cfg), threads=1)
    r1 = first.fit(x, y, TrainConfig(**cfg, checkpoint=path, max_steps=10))  # epoch 2, batch 4
    assert r1.stopped == "max_steps" and r1.step == 10
    second = Trainer(build_step(g, step_cfg), threads=1)
    r2 = second.fit(x, y, TrainConfig(**cfg, checkpoint=path, resume=True))
    assert r2.stopped == "done" and r2.step == r_full.step == 21
    a, b = full.runner.state(), second.runner.state()
    assert set(a) == set(b) and "bn.running_mean" in a and "opt.v.fc1.weight" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [h["loss"] for h in r2.history] == [h["loss"] for h in r_full.history]
    # and the run did train: the state moved away from the start
    assert not np.array_equal(a["fc1.weight"], full.ts.init["fc1.weight"])


def test_resume_rejects_another_model(tmp_path, digits):
    path = str(tmp_path / "ck.npz")
    t = Trainer(build_step(mlp(), StepConfig("sgd")), threads=1)
    t.fit(*digits.train, TrainConfig(epochs=1, batch_size=256, verbose=0, checkpoint=path))
    other = Trainer(build_step(mlp(), StepConfig("adam")), threads=1)
    with pytest.raises(GraphError, match="does not match this model and optimizer"):
        other.fit(
            *digits.train,
            TrainConfig(epochs=2, batch_size=256, verbose=0, checkpoint=path, resume=True),
        )


def test_early_stopping_restores_the_best_epoch(digits):
    """min_delta so large that no epoch after the first counts as better: stop after
    1 + patience epochs and end with epoch 1's parameters (equal to a 1-epoch run)."""
    g, step_cfg = mlp(), StepConfig("adam", lr=0.01)
    t = Trainer(build_step(g, step_cfg), threads=1)
    r = t.fit(
        *digits.train,
        TrainConfig(epochs=10, batch_size=128, verbose=0, patience=2, min_delta=100.0),
        validation=digits.val,
    )
    assert r.stopped == "early_stopping" and r.epoch == 3 and r.best_epoch == 1
    one = Trainer(build_step(g, step_cfg), threads=1)
    one.fit(*digits.train, TrainConfig(epochs=1, batch_size=128, verbose=0))
    np.testing.assert_array_equal(t.runner.state()["fc1.weight"], one.runner.state()["fc1.weight"])
    with pytest.raises(GraphError, match="early stopping needs validation data"):
        t.fit(*digits.train, TrainConfig(epochs=1, patience=1, verbose=0))


# ------------------------------------------------------------- non-finite
def test_nonfinite_loss_stops_and_keeps_the_checkpoint(tmp_path, digits):
    path = tmp_path / "ck.npz"
    # epoch 1 trains normally; the step schedule then multiplies the rate by 1e12
    cfg = TrainConfig(
        epochs=3,
        batch_size=128,
        verbose=0,
        checkpoint=str(path),
        schedule="step",
        step_epochs=1,
        gamma=1e12,
    )
    t = Trainer(build_step(mlp(), StepConfig("sgd", lr=0.5)), threads=1)
    with pytest.raises(GraphError) as err:
        t.fit(*digits.train, cfg)
    msg = err.value.message
    assert "training stopped at step" in msg and "epoch 2" in msg
    assert "first non-finite value" in msg or "already non-finite" in msg
    assert "last good checkpoint" in msg
    from graphc.train import checkpoint

    carried, meta, _ = checkpoint.load(str(path))
    assert meta["epoch"] == 1 and all(np.all(np.isfinite(v)) for v in carried.values())
    # the runner rolled back to the last finite state
    assert all(np.all(np.isfinite(v)) for v in t.runner.state().values())


def test_nonfinite_names_the_first_bad_tensor():
    """log of a negative value: the message names the log node, not the loss."""
    b = Builder("m")
    x = b.input("x", ["N", 3])
    t = b.input("t", ["N", 1])
    h = b.linear(x, 1, name="fc")
    logh = b.log(h, name="logh")
    b.output(logh)
    b.minimize(b.mse(logh, t, name="loss"))
    tr = Trainer(build_step(b.graph, StepConfig("sgd", lr=0.1)), threads=1)
    xs = -np.abs(np.random.default_rng(0).normal(size=(8, 3))).astype(np.float32)
    state = tr.runner.state()
    state["fc.weight"] = np.abs(state["fc.weight"])
    state["fc.bias"][:] = 0
    tr.runner.set_state(state)
    with pytest.raises(GraphError, match=r"(?s)step 0.*first non-finite value: 'logh'"):
        tr.fit(xs, np.zeros((8, 1), np.float32), TrainConfig(epochs=1, batch_size=8, verbose=0))


# ------------------------------------------------- training vs evaluation
def test_batch_norm_and_dropout_train_vs_eval():
    g = mlp(norm=True, dropout=0.5)
    ts = build_step(g, StepConfig("sgd", lr=0.0))
    nodes = ts.graph.nodes
    assert ts.source.nodes["drop"].attrs["training"] is False
    # in the step, dropout is expanded into its training-mode mask arithmetic
    assert any(
        n.tags.get("expanded_from") == "drop" and n.op in ("mod", "bitwise_xor", "mul")
        for n in nodes.values()
    ) or any(n.attrs.get("training") for n in nodes.values() if n.op in ("batch_norm", "dropout"))
    assert ts.stats == ["bn.running_mean", "bn.running_var"]
    tr = Trainer(ts, threads=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 64)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    tr.runner.step({"x": x, "y": y}, 0.0, 0)
    st = tr.runner.state()
    # running stats: momentum 0.9 blend of the batch mean / unbiased variance (lr 0: fc1 fixed)
    h = x @ ts.init["fc1.weight"] + ts.init["fc1.bias"]
    np.testing.assert_allclose(st["bn.running_mean"], 0.1 * h.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st["bn.running_var"], 0.9 + 0.1 * h.var(0, ddof=1), rtol=1e-4)
    # evaluation: running statistics, no dropout -> deterministic and equal to NumPy
    out = tr.predict(x)
    np.testing.assert_array_equal(out, tr.predict(x))
    hn = (h - st["bn.running_mean"]) / np.sqrt(st["bn.running_var"] + 1e-5)
    hn = hn * st["bn.gamma"] + st["bn.beta"] if "bn.gamma" in st else hn
    ref = np.maximum(hn, 0) @ st["fc2.weight"] + st["fc2.bias"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- frozen
def test_transfer_learning_freeze_and_train_the_head(tmp_path, digits):
    base = Model(mlp()).compile("adam", lr=0.01, threads=1)
    base.fit(*digits.train, batch_size=64, epochs=10, verbose=0)
    np.savez(tmp_path / "w.npz", **base.get_weights())
    g = mlp(head="head")  # a new head: its weights are not in the file
    loaded, skipped = load_weights(g, str(tmp_path / "w.npz"))
    assert set(loaded) == {"fc1.weight", "fc1.bias"} and not skipped
    freeze(g, "fc1")
    ts = build_step(g, StepConfig("adam", lr=0.01))
    assert ts.frozen == ["fc1.weight", "fc1.bias"] and ts.params == ["head.weight", "head.bias"]
    assert "fc1.weight" not in [i.name for i in ts.export().graph.input]
    tr = Trainer(ts, threads=1)
    tr.fit(*digits.train, TrainConfig(epochs=10, batch_size=64, verbose=0))
    st = tr.runner.state()
    assert "fc1.weight" not in st
    assert not np.array_equal(st["head.weight"], ts.init["head.weight"])
    assert tr.evaluate(*digits.test)["accuracy"] > 0.9  # the trained body's features work
    model = onnx_session(tr)
    w1 = {t.name: t for t in model.graph.initializer}["fc1.weight"]
    from onnx import numpy_helper

    np.testing.assert_array_equal(numpy_helper.to_array(w1), base.get_weights()["fc1.weight"])
    with pytest.raises(GraphError, match=r"(?s)no parameter starts with 'fc9'.*fc1"):
        freeze(mlp(), "fc9")


def onnx_session(tr):
    from graphc.train.runner import export_trained

    return export_trained(tr.ts, tr.runner.state())


# ----------------------------------------------------------------- metrics
def test_metrics_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    scores = rng.normal(size=(200, 4)) + np.eye(4)[y] * 1.5
    scores[:20] = np.round(scores[:20])  # ties
    pred = scores.argmax(1)
    np.testing.assert_array_equal(confusion_matrix(y, pred, 4), sk.confusion_matrix(y, pred))
    assert macro_f1(y, pred, 4) == pytest.approx(sk.f1_score(y, pred, average="macro"))
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    assert roc_auc(y, probs) == pytest.approx(sk.roc_auc_score(y, probs, multi_class="ovr"))
    yb = (y > 1).astype(int)
    s = np.round(scores[:, 0], 1)
    assert roc_auc(yb, s) == pytest.approx(sk.roc_auc_score(yb, s))
    assert roc_auc(yb, np.stack([-s, s], 1)) == pytest.approx(sk.roc_auc_score(yb, s))


def test_schedules():
    cos = make_schedule("cosine", 1.0, epochs=10, steps_per_epoch=10, warmup=10, min_lr=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(55) == pytest.approx(0.55)
    assert cos(100) == pytest.approx(0.1)
    st = make_schedule("step", 0.5, epochs=10, steps_per_epoch=4, step_epochs=2, gamma=0.1)
    assert [st(k) for k in (0, 7, 8, 16)] == pytest.approx([0.5, 0.5, 0.05, 0.005])
    with pytest.raises(GraphError, match="unknown learning-rate schedule"):
        make_schedule("linear", 1.0, epochs=1, steps_per_epoch=1)


# -------------------------------------------------------------------- data
def test_data_sets_and_files(tmp_path):
    for name in ("xor", "circles", "spirals", "moons"):
        ds = data.load(name)
        assert ds.train[0].shape[1] == 2 and set(np.unique(ds.train[1])) == {0, 1}
    par = data.load("parity", input_shape=("N", 12, 1))
    assert par.train[0].shape[1:] == (12, 1)
    np.testing.assert_array_equal(par.train[1], par.train[0].sum((1, 2)) % 2)
    add = data.load("adding", input_shape=("N", 7, 2))
    x, y = add.train
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * x[..., 1]).sum(1), rtol=1e-6)
    np.savez(tmp_path / "d.npz", x=np.ones((50, 3)), y=np.arange(50) % 3)
    ds = data.load(str(tmp_path / "d.npz"))
    assert ds.task == "classification" and ds.num_classes == 3
    (tmp_path / "d.csv").write_text(
        "a,b,label\n" + "\n".join(f"{i},{-i},{i % 2}" for i in range(30))
    )
    ds = data.load(str(tmp_path / "d.csv"), test_split=0, val_split=0)
    assert ds.train[0].shape == (30, 2) and ds.train[1].dtype == np.int64
    with pytest.raises(GraphError, match=r"(?s)unknown data set 'digit'.*digits"):
        data.load("digit")


def test_data_shape_mismatch_is_a_clear_error(digits):
    t = Trainer(build_step(graphc.load("samples/xor.gc"), StepConfig("sgd")), threads=1)
    with pytest.raises(GraphError, match=r"(?s)rows have 64 values.*input 'x' expects"):
        t.fit(*digits.train, TrainConfig(epochs=1, verbose=0))


# ------------------------------------------------------------ API and CLI
def test_keras_like_api_solves_xor():
    ds = data.load("xor")
    model = Model("samples/xor.gc").compile("adam", lr=0.03, threads=1)
    hist = model.fit(
        *ds.train, batch_size=32, epochs=40, validation_data=ds.val, verbose=0, schedule="cosine"
    )
    assert len(hist.history["loss"]) == 40 and hist.history["loss"][-1] < hist.history["loss"][0]
    assert model.evaluate(*ds.test)["accuracy"] >= 0.95
    corners = np.array([[-3, -3], [-3, 3], [3, -3], [3, 3]], np.float32)
    assert list(model.predict(corners).argmax(1)) == [0, 1, 1, 0]


def test_api_compile_adds_a_loss():
    b = Builder("m")
    x = b.input("x", ["N", 2])
    b.output(b.linear(b.tanh(b.linear(x, 8, name="h")), 2, name="out"))
    ds = data.load("moons")
    model = Model(b.graph).compile("adam", loss="cross_entropy", lr=0.05, threads=1)
    model.fit(*ds.train, epochs=30, verbose=0)
    assert model.evaluate(*ds.test)["accuracy"] > 0.9


def test_cli_train_writes_model_and_report(tmp_path):
    import onnxruntime as ort

    out, rep = tmp_path / "xor.onnx", tmp_path / "r.json"
    r = run_cli(
        "train",
        "samples/xor.gc",
        "--data",
        "xor",
        "--epochs",
        "40",
        "--lr",
        "0.03",
        "--schedule",
        "cosine",
        "--threads",
        "1",
        "-o",
        str(out),
        "--report",
        str(rep),
    )
    assert r.returncode == 0, r.stderr
    assert "epoch 40/40" in r.stderr and "test: loss" in r.stdout
    report = json.loads(rep.read_text())
    assert report["test"]["accuracy"] >= 0.95 and len(report["history"]) == 40
    assert {"loss", "accuracy", "macro_f1", "roc_auc", "confusion_matrix"} <= set(report["train"])
    assert "validation" in report
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]
    logits = sess.run(None, {"x": np.array([[-3, -3], [3, -3]], np.float32)})[0]
    assert list(logits.argmax(1)) == [0, 1]


def test_cli_resume_and_errors(tmp_path):
    ck = str(tmp_path / "ck.npz")
    args = [
        "train",
        "samples/xor.gc",
        "--data",
        "xor",
        "--epochs",
        "3",
        "-q",
        "--threads",
        "1",
        "--checkpoint",
        ck,
    ]
    r = run_cli(*args, "--max-steps", "30")
    assert r.returncode == 0 and "--resume" in r.stdout
    r = run_cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "samples/xor.gc", "--data", "digits", "-q")
    assert r.returncode == 2 and "rows have 64 values" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", "samples/xor.gc", "--data", "xor", "--epochs", "1", "--threads", "auto")
    assert r.returncode == 0 and "threads: auto chose" in r.stderr, r.stderr


def test_cli_compile_train(tmp_path):
    out = tmp_path / "step.onnx"
    r = run_cli(
        "compile",
        "samples/mlp_digits.gc",
        "--train",
        "--optimizer",
        "momentum",
        "--lr",
        "0.05",
        "--momentum",
        "0.8",
        "--clip-norm",
        "1",
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    import onnx

    m = onnx.load(str(out))
    names = [i.name for i in m.graph.input]
    assert names[:4] == ["x", "y", "lr", "step"] and "opt.v.fc1.weight" in names
    assert "grad_norm" in [o.name for o in m.graph.output]
    r = run_cli(
        "compile",
        "samples/mlp_digits.gc",
        "--train",
        "--optimizer",
        "adam",
        "--momentum",
        "0.8",
        "-o",
        str(out),
    )
    assert r.returncode == 2 and "no hyperparameter 'momentum'" in r.stderr


def test_cli_ctrl_c_then_resume_matches_an_uninterrupted_run(tmp_path):
    """SIGINT mid-run: checkpoint at the last finished step, exit 130; --resume then ends
    with exactly the weights of a run that was never interrupted."""
    import signal
    import subprocess
    import sys
    import time

    import onnx
    from onnx import numpy_helper

    base = [
        sys.executable,
        "-m",
        "graphc",
        "train",
        "samples/xor.gc",
        "--data",
        "xor",
        "--epochs",
        "150",
        "--batch-size",
        "8",
        "-q",
        "--threads",
        "1",
        "-O0",
    ]
    ck = tmp_path / "ck.npz"
    proc = subprocess.Popen(
        base
        + ["--checkpoint", str(ck), "--checkpoint-every", "50", "-o", str(tmp_path / "a.onnx")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert not (tmp_path / "a.onnx").exists()
    r = subprocess.run(
        base + ["--checkpoint", str(ck), "--resume", "-o", str(tmp_path / "a.onnx")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        base + ["-o", str(tmp_path / "b.onnx")], check=False, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    weights = [
        {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / f)).graph.initializer}
        for f in ("a.onnx", "b.onnx")
    ]
    assert set(weights[0]) == set(weights[1]) and len(weights[0]) >= 4
    for k in weights[0]:
        np.testing.assert_array_equal(weights[0][k], weights[1][k], err_msg=k)


def test_progress_bar_and_epoch_summary():
    import io

    from graphc.train.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    p = Progress(epochs=2, batches=4, verbose=1, stream=s)
    p.update(1, 4, 0.5, 0.75, 12345.0)
    p.summary(
        {
            "epoch": 1,
            "loss": 0.5,
            "accuracy": 0.75,
            "val_loss": 0.6,
            "val_accuracy": 0.7,
            "lr": 0.01,
            "time_s": 0.2,
            "samples_per_s": 12345.0,
        }
    )
    text = s.getvalue()
    assert "\repoch 1/2 [" in text and "4/4" in text and "acc 0.750" in text and "12.3k/s" in text
    assert "epoch 1/2  loss 0.5000  acc 0.7500  val_loss 0.6000  val_acc 0.7000" in text
    plain = io.StringIO()  # not a terminal: summary lines only, no carriage returns
    p = Progress(epochs=2, batches=4, verbose=1, stream=plain)
    p.update(1, 4, 0.5, None, 10.0)
    assert plain.getvalue() == ""


def test_cli_weights_and_freeze(tmp_path):
    first = tmp_path / "first.onnx"
    r = run_cli(
        "train",
        "samples/mlp_digits.gc",
        "--data",
        "digits",
        "--epochs",
        "3",
        "-q",
        "--threads",
        "1",
        "-o",
        str(first),
    )
    assert r.returncode == 0, r.stderr
    second = tmp_path / "second.onnx"
    r = run_cli(
        "train",
        "samples/mlp_digits.gc",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--weights",
        str(first),
        "--freeze",
        "fc1",
        "--freeze",
        "fc2",
        "-o",
        str(second),
    )
    assert r.returncode == 0, r.stderr
    assert "loaded 6 parameter(s)" in r.stderr and "2 trained tensors" in r.stderr
    import onnx
    from onnx import numpy_helper

    a, b = (
        {t.name: numpy_helper.to_array(t) for t in onnx.load(str(f)).graph.initializer}
        for f in (first, second)
    )
    fc1 = [k for k in a if k.startswith("fc1.")]
    assert fc1 and all(np.array_equal(a[k], b[k]) for k in fc1)  # frozen: unchanged
    head = [k for k in a if k.startswith("logits.")]
    assert head and not all(np.array_equal(a[k], b[k]) for k in head)  # trained on


def test_autoencoder_feeds_x_as_its_own_target(digits):
    b = Builder("ae")
    x = b.input("x", ["N", 64])
    rec = b.linear(b.tanh(b.linear(x, 8, name="enc")), 64, name="dec")
    b.output(rec)
    b.minimize(b.mse(rec, x, name="loss"))
    model = Model(b.graph).compile("adam", lr=1e-2, threads=1)
    hist = model.fit(*digits.train, epochs=20, verbose=0)
    pred = model.predict(digits.test[0])
    mse = float(np.mean((pred - digits.test[0]) ** 2))
    assert mse == pytest.approx(model.evaluate(*digits.test)["loss"], rel=1e-4)
    # better than the mean image, the best a code that carries nothing can do
    baseline = float(np.mean((digits.test[0] - digits.train[0].mean(0)) ** 2))
    assert mse < 0.5 * baseline and hist.history["loss"][-1] < hist.history["loss"][0]


def test_callbacks_report_progress_and_can_stop(tmp_path, digits):
    """What a UI (the TUI) hooks into: per-step and per-epoch records, and a stop request."""
    steps, epochs = [], []
    t = Trainer(build_step(mlp(), StepConfig("adam", lr=0.01)), threads=1)
    path = str(tmp_path / "ck.npz")
    r = t.fit(
        *digits.train,
        TrainConfig(epochs=5, batch_size=256, verbose=0, checkpoint=path),
        validation=digits.val,
        on_step=lambda rec: steps.append(rec) and None,
        on_epoch=lambda rec: epochs.append(rec) or rec["epoch"] == 2,
    )
    assert r.stopped == "interrupted" and r.epoch == 2 and len(epochs) == 2
    assert [s["step"] for s in steps] == list(range(1, 2 * 6 + 1))  # 1295 rows: 6 batches
    assert steps[-1]["batch"] == steps[-1]["batches"] == 6 and steps[-1]["accuracy"] > 0.2
    assert epochs[-1]["val_accuracy"] is not None
    r = t.fit(
        *digits.train,
        TrainConfig(epochs=5, batch_size=256, verbose=0, checkpoint=path, resume=True),
        validation=digits.val,
        on_step=lambda rec: rec["step"] == 15,
    )
    assert r.stopped == "interrupted" and r.step == 15


def test_auto_threads_picks_one_and_keeps_the_state(digits):
    """threads='auto' times the first step both ways without changing the state."""
    x, y = digits.train[0][:64], digits.train[1][:64]
    ref = Trainer(build_step(mlp(), StepConfig("sgd", lr=0.1)), threads=2)
    auto = Trainer(build_step(mlp(), StepConfig("sgd", lr=0.1)), threads="auto")
    cfg = TrainConfig(epochs=2, batch_size=32, verbose=0, shuffle=False)
    ref.fit(x, y, cfg)
    auto.fit(x, y, cfg, validation=digits.val)  # evaluation sessions follow the choice
    assert auto.runner.threads in (1, 2) and not auto.runner._candidates
    a, b = ref.runner.state(), auto.runner.state()
    for k in a:  # tuning ran the first step several times; the result is one step's
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
