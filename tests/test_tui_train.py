"""Training from the editor: a background worker, a live curve, a stop key."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("textual")

from textual.widgets import Input

from graphc.tui.app import GraphApp
from graphc.tui.document import Document
from graphc.tui.train_screen import TrainScreen

XOR = """\
x = input(float32, [N, 2])
y = input(int64, [N])
fc1 = linear(x, 8, init="xavier")
h = tanh(fc1)
logits = linear(h, 2, init="xavier")
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""


async def _start(pilot, args: str) -> TrainScreen:
    await pilot.press("T")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, TrainScreen)
    field = screen.query_one("#train-args", Input)
    field.value = args
    field.focus()
    await pilot.press("enter")
    return screen


async def _wait(pilot, cond, timeout: float = 60.0) -> None:
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, "timed out"
        await pilot.pause(0.05)


def test_training_runs_in_background_and_learns(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)

    async def session() -> None:
        app = GraphApp(document=Document.open(path), engine="simple", autosave_s=0, watch_s=0)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await _start(pilot, "xor 15 16 0.05")
            await _wait(
                pilot,
                lambda: not screen.running and screen.log_lines and "done" in screen.log_lines[-1],
            )
            epochs = [ln for ln in screen.log_lines if ln.startswith("epoch")]
            assert len(epochs) == 15
            acc = float(epochs[-1].split("accuracy ")[1].split(",")[0])
            assert acc > 0.85, epochs[-1]  # XOR is learned, so the steps really trained
            assert len(screen.losses) > 15 * 10 and screen.losses[-1] < screen.losses[0]
            assert len(screen.accs) == 15

    asyncio.run(session())


def test_stop_key_stops_training(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)

    async def session() -> None:
        app = GraphApp(document=Document.open(path), engine="simple", autosave_s=0, watch_s=0)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await _start(pilot, "xor 100000 1 0.01")
            await _wait(pilot, lambda: len(screen.losses) > 20)
            await pilot.press("x")  # the UI still answers keys while the worker trains
            await _wait(pilot, lambda: not screen.running)
            assert any(ln.startswith("stopped at step") for ln in screen.log_lines)
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, TrainScreen)

    asyncio.run(session())


def test_closing_while_training_stops_it_and_the_editor_lives_on(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)

    async def session() -> None:
        app = GraphApp(document=Document.open(path), engine="simple", autosave_s=0, watch_s=0)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await _start(pilot, "xor 100000 1 0.01")
            await _wait(pilot, lambda: len(screen.losses) > 5)
            await pilot.press("escape")
            await _wait(pilot, lambda: not screen.running)
            await pilot.pause(0.2)
            assert app.is_running and not isinstance(app.screen, TrainScreen)
            await pilot.press("down")  # still answers keys
            assert app.selected is not None

    asyncio.run(session())
