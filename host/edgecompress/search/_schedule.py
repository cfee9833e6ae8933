"""Cooling schedules: the constraint threshold of each round (Chen, Tung, Vedula & Mori, ECCV 2018)."""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["exponential", "linear", "one-step"]
SCHEDULES: tuple[str, ...] = ("exponential", "linear", "one-step")


def thresholds(
    base: float, budget: float, rounds: int, schedule: Schedule = "exponential", alpha: float = 0.5
) -> list[float]:
    """Threshold c_t for t = 0..T-1, cooling from the base model's value L0 down to the budget C.

    exponential: c_t = C + (L0 - C) e^{-alpha (t+1)} - (L0 - C) e^{-alpha T}  (ends exactly at C)
    linear:      c_t = L0 + (t+1)/T (C - L0)
    one-step:    c = C for a single round.
    A budget the base model already meets stays at C in every round.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    if schedule == "one-step":
        return [budget]
    if base <= budget:
        return [budget] * rounds
    gap = base - budget
    if schedule == "exponential":
        if alpha <= 0:
            raise ValueError("alpha must be positive")
        tail = gap * math.exp(-alpha * rounds)
        values = [budget + gap * math.exp(-alpha * (t + 1)) - tail for t in range(rounds)]
    elif schedule == "linear":
        values = [base + (t + 1) / rounds * (budget - base) for t in range(rounds)]
    else:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    values[-1] = budget  # exact, whatever the rounding
    return values
