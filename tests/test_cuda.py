"""The CUDA path of ONNX Runtime: same results as the CPU (runs only where a GPU answers)."""

import numpy as np
import pytest

import graphc
from conftest import SAMPLES
from graphc.export import export
from graphc.feeds import random_feeds
from graphc.runtime import cuda_available, make_session, run

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not cuda_available(), reason="no CUDA device here"),
]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_inference_on_cuda_matches_cpu(path):
    g = graphc.load(str(path))
    model = export(g)
    names = {i.name for i in model.graph.input}
    feeds = {k: v for k, v in random_feeds(g, batch=4).items() if k in names}
    cpu = run(make_session(model, "cpu"), feeds)
    gpu_session = make_session(model, "cuda")
    assert gpu_session.get_providers()[0] == "CUDAExecutionProvider"
    gpu = run(gpu_session, feeds)
    for k in cpu:
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits", "lstm_sequence"])
def test_backward_on_cuda_matches_cpu(samples_dir, name):
    g = graphc.load(str(samples_dir / f"{name}.gc"))
    bg = graphc.grad(g)
    outputs = [bg.loss] + list(bg.meta["grads"].values())
    model = export(bg, outputs=outputs, params_as_inputs=True, keep_inputs=True)
    feeds = random_feeds(g, batch=8)
    cpu = run(make_session(model, "cpu"), feeds)
    gpu = run(make_session(model, "cuda"), feeds)
    for k in outputs:
        scale = max(1e-3, float(np.abs(cpu[k]).max()))
        assert float(np.abs(gpu[k] - cpu[k]).max()) / scale < 1e-3, k
