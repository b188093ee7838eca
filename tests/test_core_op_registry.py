"""Registry-wide facet checks that need no runtime: every op's declaration is coherent.

The value checks (ONNX Runtime vs NumPy, gradients vs finite differences) are
in test_ort_ops.py and test_ort_op_grads.py; here, the facets other stages
trust without checking: key attributes exist, the FLOP rule runs on every
test case, in-place/alias facts name real inputs and outputs.
"""

from __future__ import annotations

import pytest

from graphc.infer import split_inputs
from graphc.ops import REGISTRY
from graphc.ops.registry import InferCtx
from op_cases import NODE, MissingHints, build, cases_for


def _cases(opname: str):
    try:
        return cases_for(REGISTRY[opname])
    except MissingHints as err:
        pytest.fail(str(err))


@pytest.mark.parametrize("opname", sorted(REGISTRY))
def test_declaration_is_coherent(opname: str) -> None:
    op = REGISTRY[opname]
    assert op.doc.strip(), f"{opname}: add doc= (renders, the editor and `graphc ops` show it)"
    assert op.category, f"{opname}: no category"
    unknown = [k for k in op.key_attrs if k not in op.attrs]
    assert not unknown, f"{opname}: key_attrs {unknown} are not attributes"
    assert op.lower is not None or op.decompose is not None, (
        f"{opname}: neither an ONNX lowering nor a decomposition: it cannot be exported"
    )
    for case in _cases(opname):
        g = build(case, "float32", symbolic_batch=False)
        node = g.nodes[NODE]
        n_in = len(split_inputs(node)[0]) + len(split_inputs(node)[1])
        for facts, what in ((op.inplace, "inplace"), (op.aliases, "aliases")):
            for out, inp in facts.items():
                assert out < len(node.outputs) and inp < n_in, (
                    f"{case.id}: {what} {{{out}: {inp}}} names a missing output or input"
                )
                assert g.type(node.outputs[out]) == g.type(node.inputs[inp]) or what == "aliases", (
                    f"{case.id}: in-place output {out} differs in type from input {inp}"
                )


@pytest.mark.parametrize("opname", sorted(k for k, op in REGISTRY.items() if op.flops))
def test_flops_rule_runs_on_every_case(opname: str) -> None:
    op = REGISTRY[opname]
    for case in _cases(opname):
        g = build(case, "float32", symbolic_batch=False)
        node = g.nodes[NODE]
        types = [g.types[v] if v else None for v in node.inputs]
        ctx = InferCtx(op, node.name, types, node.attrs, node.loc)
        flops = op.flops(ctx, [g.types[o] for o in node.outputs])
        assert isinstance(flops, int) and flops >= 0, f"{case.id}: flops {flops!r}"
