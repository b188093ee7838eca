"""Every bundled sample compiles, passes the ONNX checker, runs, and has correct gradients."""

import numpy as np
import onnx
import pytest

import graphc
from conftest import SAMPLES
from graphc.export import export
from graphc.feeds import random_feeds
from graphc.gradcheck import gradcheck
from graphc.interp import evaluate
from graphc.runtime import make_session, run


def test_samples_exist():
    names = {p.stem for p in SAMPLES}
    assert {
        "perceptron",
        "xor",
        "mlp_digits",
        "lenet5",
        "vgg_small",
        "resnet_small",
        "separable_cnn",
        "rnn_sequence",
        "lstm_sequence",
        "gru_sequence",
    } <= names


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_compiles_and_runs_like_the_reference(path):
    g = graphc.load(str(path))
    text = path.read_text()
    assert text.startswith("#"), "each sample starts with a header comment saying what it is"
    model = export(g)
    onnx.checker.check_model(model, full_check=True)
    feeds = random_feeds(g, batch=2)
    sess = make_session(model)
    got = run(sess, {k: v for k, v in feeds.items() if k in {i.name for i in model.graph.input}})
    want = evaluate(g, feeds, outputs=g.outputs)
    for name in g.outputs:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "path", [p for p in SAMPLES if "minimize(" in p.read_text()], ids=lambda p: p.stem
)
def test_sample_gradcheck(path):
    g = graphc.load(str(path))
    results = gradcheck(g, batch=2, coords=4)
    bad = [(r.target, r.rel_error) for r in results if r.rel_error > 1e-6]
    assert not bad
