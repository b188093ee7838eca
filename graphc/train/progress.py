"""The progress bar (on stderr, redrawn in place) and the per-epoch summary lines."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_rate(samples_per_s: float) -> str:
    if samples_per_s >= 1e6:
        return f"{samples_per_s / 1e6:.1f}M/s"
    if samples_per_s >= 1e3:
        return f"{samples_per_s / 1e3:.1f}k/s"
    return f"{samples_per_s:.0f}/s"


class Progress:
    """`epoch 3/20 [#######.......] 12/23  loss 0.1234  acc 0.967  45.1k/s`.

    verbose=0 prints nothing, 1 prints the bar (only on a terminal) and one
    summary line per epoch, 2 prints the summary lines only.
    """

    def __init__(
        self,
        epochs: int,
        batches: int,
        verbose: int = 1,
        stream: TextIO | None = None,
        width: int = 24,
    ) -> None:
        self.epochs = epochs
        self.batches = batches
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.width = width
        self.bar = verbose == 1 and getattr(self.stream, "isatty", lambda: False)()
        self._last = 0.0
        self._drawn = False

    def update(
        self, epoch: int, batch: int, loss: float, acc: float | None, samples_per_s: float
    ) -> None:
        if not self.bar:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and batch < self.batches:
            return
        self._last = now
        done = int(self.width * batch / max(self.batches, 1))
        bar = "#" * done + "." * (self.width - done)
        text = (
            f"\repoch {epoch}/{self.epochs} [{bar}] {batch}/{self.batches}  loss {loss:.4f}"
            + (f"  acc {acc:.3f}" if acc is not None else "")
            + f"  {_fmt_rate(samples_per_s)}"
        )
        self.stream.write(text)
        self.stream.flush()
        self._drawn = True

    def summary(self, record: dict) -> None:
        if not self.verbose:
            return
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False
        parts = [f"epoch {record['epoch']}/{self.epochs}", f"loss {record['loss']:.4f}"]
        if record.get("accuracy") is not None:
            parts.append(f"acc {record['accuracy']:.4f}")
        if record.get("val_loss") is not None:
            parts.append(f"val_loss {record['val_loss']:.4f}")
        if record.get("val_accuracy") is not None:
            parts.append(f"val_acc {record['val_accuracy']:.4f}")
        parts.append(f"lr {record['lr']:.3g}")
        parts.append(f"{record['time_s']:.2f}s ({_fmt_rate(record['samples_per_s'])})")
        self.stream.write("  ".join(parts) + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.verbose:
            if self._drawn:
                self.stream.write("\r\033[K")
                self._drawn = False
            self.stream.write(text + "\n")
            self.stream.flush()
