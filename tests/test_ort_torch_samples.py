"""Gradients of every sample match torch.autograd (float32, 1e-5 relative).

Skipped when PyTorch is not installed.
"""

import numpy as np
import pytest

import graphc
from conftest import SAMPLES
from graphc.export import export
from graphc.feeds import random_feeds
from graphc.runtime import make_session

torch = pytest.importorskip("torch")

from torch_ref import run_graph_in_torch

# samples with parameters and a loss (the lecture example has neither parameters nor
# PyTorch-specific ops; test_ort_autodiff covers gradients with respect to inputs)
TRAINABLE = [p for p in SAMPLES if "minimize(" in p.read_text() and p.stem != "lecture_example"]


@pytest.mark.parametrize("path", TRAINABLE, ids=lambda p: p.stem)
def test_sample_gradients_match_torch(path):
    torch.manual_seed(0)
    g = graphc.load(str(path))
    rng = np.random.default_rng(0)
    params = {
        k: (v if g.params[k].state else (v + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype))
        for k, v in g.param_values().items()
    }
    feeds = random_feeds(g, batch=3, seed=1)
    if "t" in feeds and g.inputs["t"].shape[-1] == 1:
        feeds["t"] = (feeds["t"] > 0).astype("float32")  # binary targets for the perceptron
    bg = graphc.grad(g)
    targets = list(bg.meta["grads"])
    outputs = [bg.loss] + [bg.meta["grads"][t] for t in targets]
    sess = make_session(export(bg, outputs=outputs, params_as_inputs=True, keep_inputs=True))
    names = {i.name for i in sess.get_inputs()} | {
        i.name for i in sess.get_overridable_initializers()
    }
    ours = dict(
        zip(
            outputs, sess.run(outputs, {k: v for k, v in {**params, **feeds}.items() if k in names})
        )
    )
    env, P = run_graph_in_torch(g, feeds, params, torch)
    loss = env[g.loss]
    grads = torch.autograd.grad(loss, [P[t] for t in targets])
    np.testing.assert_allclose(ours[bg.loss], loss.detach().numpy(), rtol=1e-5, atol=1e-6)
    for t, tg in zip(targets, grads):
        want = tg.numpy()
        scale = max(1e-3, np.abs(want).max())
        err = np.abs(ours[bg.meta["grads"][t]] - want).max() / scale
        assert err < 1e-5, (t, err)
