"""`graphc render` as a user runs it: formats, modes, --values, and life without Graphviz."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc.render
from graphc.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
needs_dot = pytest.mark.skipif(
    graphc.render.dot_binary() is None, reason="Graphviz `dot` is not installed"
)


def render(*args: str) -> int:
    return main(["render", *args])


@needs_dot
def test_lecture_example_with_values(tmp_path, capsys):
    out = tmp_path / "lecture.svg"
    rc = render(
        str(SAMPLES / "lecture_example.gc"),
        "-o",
        str(out),
        "--values",
        "--input",
        "w1=-2",
        "--input",
        "w2=5",
        "--input",
        "w3=-4",
        "--direction",
        "LR",
    )
    assert rc == 0
    import xml.etree.ElementTree as ET

    texts = [
        "".join(t.itertext()) for t in ET.parse(out).getroot().iter() if t.tag.endswith("text")
    ]
    for number in ("-12", "3", "∂L: -4", "∂L: 3", "∂L: 1"):
        assert number in texts, number
    assert "wrote" in capsys.readouterr().out


def test_values_from_npy_and_dot_output(tmp_path):
    np.save(tmp_path / "w1.npy", np.asarray(1.5, dtype=np.float32))
    out = tmp_path / "g.dot"
    rc = render(
        str(SAMPLES / "lecture_example.gc"),
        "-o",
        str(out),
        "--values",
        "--input",
        f"w1={tmp_path / 'w1.npy'}",
        "--input",
        "w2=2",
        "--input",
        "w3=2",
    )
    assert rc == 0
    text = out.read_text()
    assert ">3.5</font>" in text and ">7</font>" in text  # z = 1.5 + 2, L = 2 * 3.5


def test_unknown_input_name_is_a_clear_error(tmp_path, capsys):
    rc = render(
        str(SAMPLES / "lecture_example.gc"),
        "-o",
        str(tmp_path / "g.dot"),
        "--values",
        "--input",
        "w4=1",
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "'w4'" in err and "inputs: w1, w2, w3" in err and "Traceback" not in err


def test_unknown_format_is_a_clear_error(tmp_path, capsys):
    rc = render(str(SAMPLES / "xor.gc"), "-o", str(tmp_path / "g.jpg"))
    assert rc == 2
    assert ".svg, .png, .pdf or .dot" in capsys.readouterr().err


@needs_dot
@pytest.mark.parametrize(
    "flags",
    [
        ["--backward"],
        ["--train", "--optimizer", "sgd"],
        ["--backward", "--optimized"],
        ["--train", "--collapse"],
    ],
)
def test_modes_render(tmp_path, flags):
    out = tmp_path / "g.svg"
    assert render(str(SAMPLES / "xor.gc"), "-o", str(out), *flags) == 0
    svg = out.read_text()
    assert svg.startswith("<?xml") and "</svg>" in svg
    assert "gradient" in svg  # the legend names the gradient kinds


@needs_dot
def test_memory_timeline_beside_the_graph(tmp_path):
    pytest.importorskip("graphc.passes")
    out, plot = tmp_path / "g.svg", tmp_path / "mem.svg"
    assert (
        render(
            str(SAMPLES / "mlp_digits.gc"),
            "--backward",
            "-o",
            str(out),
            "--memory",
            "--memory-plot",
            str(plot),
        )
        == 0
    )
    assert "live memory" in out.read_text() and "peak" in out.read_text()
    assert "peak" in plot.read_text()


def test_without_graphviz_writes_dot_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(graphc.render, "dot_binary", lambda: None)
    out = tmp_path / "mlp.png"
    rc = render(str(SAMPLES / "mlp_digits.gc"), "-o", str(out))
    assert rc == 2
    assert not out.exists()
    dot = tmp_path / "mlp.dot"
    assert dot.read_text().startswith('digraph "mlp_digits"')
    err = capsys.readouterr().err
    assert "install Graphviz" in err and "apt-get install graphviz" in err
    assert f"dot -Tpng {dot} -o {out}" in err


def test_without_graphviz_on_path_for_real(tmp_path):
    """The same through a real process whose PATH has no `dot`."""
    out = tmp_path / "xor.svg"
    env = dict(os.environ, PATH=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-m", "graphc", "render", str(SAMPLES / "xor.gc"), "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert (tmp_path / "xor.dot").exists() and not out.exists()
    assert "Traceback" not in r.stderr and "Graphviz" in r.stderr


def test_dot_text_is_the_same_in_every_process(tmp_path):
    """No set or hash order leaks into the output: two interpreters with different hash
    seeds write the same bytes."""
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"g{seed}.dot"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "graphc",
                "render",
                str(SAMPLES / "resnet_small.gc"),
                "--backward",
                "--collapse",
                "-o",
                str(out),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_constants_flag_draws_scalar_constants(tmp_path):
    out = tmp_path / "g.dot"
    assert render(str(SAMPLES / "xor.gc"), "--backward", "-o", str(out)) == 0
    folded = out.read_text()
    assert "a=1" in folded and 'shape="note"' not in folded
    assert render(str(SAMPLES / "xor.gc"), "--backward", "--constants", "-o", str(out)) == 0
    assert 'shape="note"' in out.read_text()


def test_large_graphs_switch_to_fast_layout(tmp_path):
    out = tmp_path / "g.dot"
    assert render(str(SAMPLES / "lstm_sequence.gc"), "--backward", "-o", str(out)) == 0
    assert 'splines="line"' in out.read_text()
    assert (
        render(str(SAMPLES / "lstm_sequence.gc"), "--backward", "--collapse", "-o", str(out)) == 0
    )
    assert 'splines="line"' not in out.read_text()


def test_freeze_dims_the_layer_and_drops_its_gradients(tmp_path):
    from graphc.render_style import KIND_STYLES

    out = tmp_path / "g.dot"
    assert (
        render(str(SAMPLES / "mlp_digits.gc"), "--backward", "--freeze", "fc1", "-o", str(out)) == 0
    )
    text = out.read_text()
    assert "fc1.weight.grad" not in text and "fc2.weight.grad" in text
    line = next(x for x in text.splitlines() if x.strip().startswith('"params:fc1"'))
    assert f'fillcolor="{KIND_STYLES["frozen"].fill}"' in line


def test_render_takes_the_optimizer_levels(tmp_path):
    """-O2 is what --optimized draws; the default draws the graph as written (-O0)."""
    outs = {}
    for name, flags in [("o0", []), ("o2", ["-O2"]), ("opt", ["--optimized"]), ("o1", ["-O1"])]:
        out = tmp_path / f"{name}.dot"
        assert render(str(SAMPLES / "xor.gc"), "--train", *flags, "-o", str(out)) == 0
        outs[name] = out.read_text()
    assert outs["o2"] == outs["opt"]
    nodes = {k: v.count("shape=") for k, v in outs.items()}
    assert nodes["o2"] < nodes["o1"] < nodes["o0"]
