"""The command line as a user meets it: exit codes, messages, no tracebacks."""

import numpy as np
import onnx
import pytest

from conftest import run_cli


@pytest.fixture
def bad_files(tmp_path):
    files = {
        "syntax.gc": "x = input(float32, [N 2])\n",
        "unknown_op.gc": "x = input(float32, [N, 2])\nh = lienar(x, 3)\n",
        "wrong_kind.gc": "x = input(float32, [N, 2])\nh = linear(x, '64')\n",
        "shape.gc": "x = input(float32, [N, 3])\nw = input(float32, [4, 5])\nh = matmul(x, w)\n",
        "undefined.gc": "x = input(float32, [N, 2])\nh = relu(z)\n",
        "duplicate.gc": "x = input(float32, [N, 2])\nx = relu(x)\n",
        "cycle.gc": "a = relu(b)\nb = relu(a)\n",
        "import.gc": "x = __import__('os')\n",
        "attribute.gc": "y = os.system('echo pwned')\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "name, message, where",
    [
        ("syntax.gc", "syntax error", ":1:21:"),
        ("unknown_op.gc", "unknown op 'lienar'", ":2:5:"),
        ("wrong_kind.gc", "must be int", ":2:15:"),
        ("shape.gc", "inner dimensions differ", ":3:5:"),
        ("undefined.gc", "undefined name 'z'", ":2:10:"),
        ("duplicate.gc", "duplicate name 'x'", ":2:1:"),
        ("cycle.gc", "cycle", ":2:5:"),
        ("import.gc", "'__import__' is not allowed", ":1:5:"),
        ("attribute.gc", "attribute access", ":1:5:"),
    ],
)
def test_bad_model_files_exit_2_without_traceback(bad_files, name, message, where):
    r = run_cli("check", str(bad_files / name))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert message in r.stderr
    assert f"{name}{where} error:" in r.stderr


def test_missing_file_exit_2(tmp_path):
    r = run_cli("compile", str(tmp_path / "nope.gc"), "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_attribute_access_is_not_executed(bad_files, tmp_path):
    marker = tmp_path / "pwned"
    (bad_files / "evil.gc").write_text(f"y = os.system('touch {marker}')\n")
    run_cli("check", str(bad_files / "evil.gc"))
    assert not marker.exists()


def test_check_prints_summary(samples_dir):
    r = run_cli("check", str(samples_dir / "mlp_digits.gc"))
    assert r.returncode == 0, r.stderr
    assert "17,226" in r.stdout  # 64*128+128 + 128*64+64 + 64*10+10 parameters
    assert "float32[N, 10]" in r.stdout


def test_compile_and_run(samples_dir, tmp_path):
    out = tmp_path / "mlp.onnx"
    r = run_cli("compile", str(samples_dir / "mlp_digits.gc"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]
    x = np.random.default_rng(0).standard_normal((3, 64)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    r = run_cli(
        "run", str(out), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "out.npz")
    )
    assert r.returncode == 0, r.stderr
    got = np.load(tmp_path / "out.npz")["logits"]
    import graphc
    from graphc.interp import evaluate

    want = evaluate(graphc.load(str(samples_dir / "mlp_digits.gc")), {"x": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_run_wrong_input_shape_is_clear(samples_dir, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 5), "float32"))
    r = run_cli("run", str(samples_dir / "mlp_digits.gc"), "--input", f"x={tmp_path / 'x.npy'}")
    assert r.returncode == 2 and "input 'x' has shape [3, 5]" in r.stderr


def test_cuda_request_falls_back_with_notice(samples_dir):
    from graphc.runtime import cuda_available

    if cuda_available():
        pytest.skip("a GPU is present; the fallback path is not taken")
    r = run_cli("run", str(samples_dir / "xor.gc"), "--random", "--device", "cuda")
    assert r.returncode == 0, r.stderr
    notices = [line for line in r.stderr.splitlines() if "CUDA" in line]
    assert len(notices) == 1 and "running on the CPU" in notices[0]


def test_compile_grad_naming_convention(samples_dir, tmp_path):
    out = tmp_path / "grad.onnx"
    r = run_cli("compile", str(samples_dir / "xor.gc"), "--grad", "-o", str(out))
    assert r.returncode == 0, r.stderr
    m = onnx.load(str(out))
    params = ["hidden_linear.weight", "hidden_linear.bias", "logits.weight", "logits.bias"]
    assert [i.name for i in m.graph.input] == ["x", "y"] + params
    assert [o.name for o in m.graph.output] == ["loss"] + [p + ".grad" for p in params]
    assert {i.name for i in m.graph.initializer} >= set(params)  # defaults kept


def test_compile_train_o2_says_what_each_flat_buffer_holds(samples_dir, tmp_path):
    """The printed layout unpacks the -O2 step's flat default into the -O0 step's parameters."""
    from onnx import numpy_helper

    flat, plain = tmp_path / "o2.onnx", tmp_path / "o0.onnx"
    src = str(samples_dir / "xor.gc")
    r = run_cli("compile", src, "--train", "-O2", "-o", str(flat))
    assert r.returncode == 0, r.stderr
    assert run_cli("compile", src, "--train", "-O0", "-o", str(plain)).returncode == 0
    (line,) = [x for x in r.stdout.splitlines() if " holds, in order: " in x]
    buffer, members = line.strip().split(" holds, in order: ")
    inits = lambda path: {
        t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer
    }
    packed, ref = inits(str(flat))[buffer], inits(str(plain))
    at = 0
    for member in members.split("], "):
        name, _, shape = member.rstrip("]").partition(" [")
        dims = tuple(int(d) for d in shape.split(", "))
        size = int(np.prod(dims))
        np.testing.assert_array_equal(packed[at : at + size].reshape(dims), ref[name])
        at += size
    assert at == packed.size


def test_gradcheck_command(samples_dir):
    r = run_cli("gradcheck", str(samples_dir / "xor.gc"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4/4 parameters pass" in r.stdout


def test_help_for_every_command():
    from graphc.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        r = run_cli(name, "--help")
        assert r.returncode == 0 and "usage: graphc" in r.stdout


def test_docs_list_the_o2_pipeline_in_order():
    """docs/optimizer.md's -O2 row names every pass of PIPELINES[2], in pipeline order."""
    import re
    from pathlib import Path

    from graphc.passes import PASSES, PIPELINES

    text = (Path(__file__).parent.parent / "docs" / "optimizer.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| `-O2` |")]
    cleanup = PIPELINES[1]
    listed = []
    for word in re.findall(r"[a-z_]+|`-O1` clean-up", row.split("|")[2]):
        if word == "`-O1` clean-up":
            listed += cleanup
        elif word in PASSES:  # a registered pass outside -O2 named here fails below
            listed.append(word)
    assert listed == PIPELINES[2]


def test_docs_op_table_is_the_registry():
    """docs/ops.md ends with `graphc ops --markdown`: the op reference cannot drift."""
    from conftest import ROOT

    r = run_cli("ops", "--markdown")
    text = (ROOT / "docs" / "ops.md").read_text()
    assert text.endswith(r.stdout), "regenerate docs/ops.md: python -m graphc ops --markdown"
