"""Learning-rate schedules: pure functions of the step count.

Being functions of the step alone (not of mutable state) is what makes a
resumed run bit-for-bit identical to an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from graphc.errors import GraphError

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class Schedule:
    """lr(step) = warm-up ramp, then the chosen decay of the base rate."""

    base: float
    kind: str = "constant"
    total_steps: int = 1  # for cosine: where it reaches min_lr
    steps_per_epoch: int = 1
    warmup: int = 0  # steps of linear ramp from base/warmup up to base
    step_epochs: int = 10  # for step decay: multiply by gamma every this many epochs
    gamma: float = 0.1
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.base * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.base
        if self.kind == "step":
            epoch = step // max(self.steps_per_epoch, 1)
            return self.base * self.gamma ** (epoch // max(self.step_epochs, 1))
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup, 1)
            frac = min(max(step - self.warmup, 0) / span, 1.0)
            return self.min_lr + (self.base - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        raise GraphError(f"unknown schedule '{self.kind}'", hint="use " + ", ".join(SCHEDULES))


def make_schedule(
    kind: str,
    base: float,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup: int = 0,
    step_epochs: int = 10,
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> Callable[[int], float]:
    if kind not in SCHEDULES:
        raise GraphError(
            f"unknown learning-rate schedule '{kind}'", hint="use one of: " + ", ".join(SCHEDULES)
        )
    if base <= 0:
        raise GraphError(f"the learning rate must be positive, got {base}")
    return Schedule(
        base, kind, epochs * steps_per_epoch, steps_per_epoch, warmup, step_epochs, gamma, min_lr
    )
