"""The op table: every registered op, one-node graph, ONNX Runtime vs the NumPy reference.

For each op (parametrized over graphc.ops.REGISTRY) and each case in its test
hints, Hypothesis varies the batch size and the random data. The graph is
built once per case with a symbolic batch dim "N", exported with parameters
as inputs and loaded into one ORT session; each example then checks

- the inferred output dtypes and shapes (with N bound to the batch size)
  equal what ONNX Runtime returns, and what the NumPy reference returns;
- ORT's values equal the reference (`graphc.interp.evaluate`) to
  rtol = atol = 1e-5 in float32 (or the case's `tol`), 1e-10 in float64 (or
  the case's `tol64`).

Every case runs with float inputs in float32 and again in float64 (ONNX
Runtime lacks float64 kernels for some ops; lowerings must work around that).

An op with no test hints fails here: adding an op without tests is a defect.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphc.export import export
from graphc.interp import evaluate
from graphc.ops import REGISTRY
from graphc.runtime import make_session, run
from graphc.shapes import concrete
from op_cases import BATCH_DIM, Case, MissingHints, build, cases_for, draw_inputs, randomize_params

FLOATS = ("float32", "float64")
TOL = {"float32": 1e-5, "float64": 1e-10}


@functools.cache
def _compiled(opname: str, dtype: str):
    """(cases, [(graph, session)]) per op and dtype: built and loaded once, reused by every
    example."""
    cases = cases_for(REGISTRY[opname])
    out = []
    for case in cases:
        g = build(case, dtype)
        randomize_params(g, np.random.default_rng(0))
        model = export(g, params_as_inputs=True, keep_inputs=True)
        out.append((g, make_session(model, threads=1)))
    return cases, out


def _check_case(case: Case, g, sess, batch: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    feeds = draw_inputs(case, g, batch, rng)
    params = randomize_params(g, rng)
    wanted = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
    got = run(sess, {k: v for k, v in {**feeds, **params}.items() if k in wanted})
    ref = evaluate(g, feeds, outputs=g.outputs, params=params, rng=np.random.default_rng(seed))
    sizes = {BATCH_DIM: batch} if case.batch else {}
    for name in g.outputs:
        t = g.type(name)
        shape = concrete(t.shape, sizes)
        where = f"{case.id} batch={batch} seed={seed} output {name!r}"
        assert str(got[name].dtype) == t.dtype, (
            f"{where}: ORT dtype {got[name].dtype}, inferred {t}"
        )
        assert got[name].shape == shape, f"{where}: ORT shape {got[name].shape}, inferred {t}"
        assert str(ref[name].dtype) == t.dtype, f"{where}: reference dtype {ref[name].dtype}"
        assert ref[name].shape == shape, f"{where}: reference shape {ref[name].shape}"
        tol = _tolerance(case, t.dtype)
        if case.stats:
            _compare_stats(got[name], ref[name], tol, where)
        elif t.dtype.startswith("float"):
            np.testing.assert_allclose(got[name], ref[name], rtol=tol, atol=tol, err_msg=where)
        else:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=where)


def _tolerance(case: Case, dtype: str) -> float:
    """For an output dtype: the case's `tol64` (float64) or `tol`, else the default."""
    if dtype == "float64":
        return case.tol64 if case.tol64 is not None else TOL["float64"]
    return case.tol if case.tol is not None else TOL["float32"]


def _compare_stats(a: np.ndarray, b: np.ndarray, tol: float, where: str) -> None:
    """Random ops: mean, standard deviation and share of zeros agree within tol."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    for what, f in (("mean", np.mean), ("std", np.std), ("zero share", lambda v: np.mean(v == 0))):
        assert abs(f(a) - f(b)) <= tol * max(1.0, abs(f(b))), (
            f"{where}: {what} {f(a):.4g} (ORT) vs {f(b):.4g} (NumPy)"
        )


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("opname", sorted(REGISTRY))
@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(batch=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_op_matches_ort(opname: str, dtype: str, batch: int, seed: int) -> None:
    try:
        cases, compiled = _compiled(opname, dtype)
    except MissingHints as err:
        pytest.fail(str(err))
    for case, (g, sess) in zip(cases, compiled):
        _check_case(case, g, sess, batch, seed)


def test_missing_hints_fail_the_table() -> None:
    from graphc.ops.registry import OpDef

    bare = OpDef(name="bare", inputs=("x",), attrs={}, infer=lambda c: c.x, reference=lambda x: x)
    with pytest.raises(MissingHints, match="no test hints"):
        cases_for(bare)
    with pytest.raises(MissingHints, match="no cases"):
        cases_for(
            OpDef(
                name="b2",
                inputs=("x",),
                attrs={},
                infer=lambda c: c.x,
                reference=lambda x: x,
                test={"grad": True},
            )
        )


def test_table_catches_a_wrong_lowering(monkeypatch) -> None:
    """A lowering that computes the wrong function fails the comparison."""
    op = REGISTRY["elu"]
    monkeypatch.setattr(op, "lower", lambda e, n, x: e.op("Relu", [x]))
    case = cases_for(op)[0]
    g = build(case, "float32")
    sess = make_session(export(g, params_as_inputs=True, keep_inputs=True), threads=1)
    with pytest.raises(AssertionError, match="elu"):
        _check_case(case, g, sess, batch=3, seed=0)


def test_table_catches_a_wrong_shape_rule(monkeypatch) -> None:
    """An inferred shape that differs from what ORT returns fails the table."""
    from graphc.ir import TensorType

    op = REGISTRY["argmax"]
    monkeypatch.setattr(op, "infer", lambda c: TensorType("int64", c.x.shape[:1] + (1,)))
    case = cases_for(op)[0]
    g = build(case, "float32")
    sess = make_session(export(g, params_as_inputs=True, keep_inputs=True, check=False), threads=1)
    with pytest.raises(AssertionError, match="shape"):
        _check_case(case, g, sess, batch=3, seed=0)
