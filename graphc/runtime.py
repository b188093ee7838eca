"""Running exported models on ONNX Runtime, on the CPU or an NVIDIA GPU."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from graphc.errors import GraphError

DEVICES = ("cpu", "cuda")
_warned = False


def providers_for(device: str) -> list[str]:
    """Execution providers for a device; CUDA falls back to CPU with a one-line notice."""
    global _warned
    import onnxruntime as ort

    if device not in DEVICES:
        raise GraphError(f"unknown device '{device}'", hint="use cpu or cuda")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if cuda_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if not _warned:
        avail = ", ".join(ort.get_available_providers())
        print(
            f"graphc: CUDA is not available here (providers: {avail}); running on the CPU",
            file=sys.stderr,
        )
        _warned = True
    return ["CPUExecutionProvider"]


def cuda_available() -> bool:
    """True when onnxruntime-gpu is installed and a CUDA device answers."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def session_options(
    threads: int | None = None, *, optimize: bool = True, profile: str | None = None
):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return so


def make_session(
    model: Any,
    device: str = "cpu",
    *,
    threads: int | None = None,
    optimize: bool = True,
    profile: str | None = None,
):
    """An InferenceSession for a ModelProto, bytes or path."""
    import onnxruntime as ort

    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    try:
        return ort.InferenceSession(
            data,
            session_options(threads, optimize=optimize, profile=profile),
            providers=providers_for(device),
        )
    except Exception as err:  # onnxruntime raises its own exception types
        raise GraphError(f"ONNX Runtime could not load the model: {err}") from err


def run(
    session, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Run a session; checks feed names and shapes first for a clear message."""
    expected = {i.name: i for i in session.get_inputs()}
    optional = {i.name: i for i in session.get_overridable_initializers()}
    for name in feeds:
        if name not in expected and name not in optional:
            raise GraphError(
                f"the model has no input '{name}'", hint="inputs: " + ", ".join(expected)
            )
    missing = [k for k in expected if k not in feeds]
    if missing:
        raise GraphError(
            "missing input(s): " + ", ".join(missing), hint="pass each as --input NAME=FILE.npy"
        )
    for name, value in feeds.items():
        _check_shape(name, np.shape(value), (expected.get(name) or optional[name]).shape)
    names = outputs or [o.name for o in session.get_outputs()]
    try:
        vals = session.run(names, dict(feeds))
    except Exception as err:
        raise GraphError(f"ONNX Runtime failed: {err}") from err
    return dict(zip(names, vals))


def _check_shape(name: str, got: tuple, want: list) -> None:
    from graphc.shapes import fmt_shape

    ok = len(got) == len(want) and all(not isinstance(w, int) or w == g for g, w in zip(got, want))
    if not ok:
        raise GraphError(
            f"input '{name}' has shape {fmt_shape(got)}, the model expects "
            f"{fmt_shape(tuple(w if w is not None else '?' for w in want))}",
            hint="named dims (N, T) take any size; numbered ones must match",
        )
