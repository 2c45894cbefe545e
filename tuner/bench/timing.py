"""How both sides are timed: alternating repeats, blocks of calls, and the phases of a `train()` run."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

from ..events import Progress, work_of
from .settings import BenchSettings


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def alternate(r: int, plain: Callable[[], Any], ours: Callable[[], Any]) -> tuple[Any, Any]:
    """Run both sides, plain first in even repeats and tuner first in odd ones (order effects cancel)."""
    if r % 2 == 0:
        p = plain()
        return p, ours()
    t = ours()
    return plain(), t


def alternate_runs(repeats: int, plain: Callable[[int], Any], ours: Callable[[int], Any]) -> tuple[list, list]:
    """Both sides `repeats` times (each called with the repeat's number), alternating as `alternate`
    does; returns each side's results in repeat order."""
    pairs = [alternate(r, lambda: plain(r), lambda: ours(r)) for r in range(repeats)]
    return [p for p, _ in pairs], [t for _, t in pairs]


def latency_blocks(settings: BenchSettings, plain: Callable[[], Any], ours: Callable[[], Any]):
    """Median latency (ms) of blocks of calls, plain and tuner alternating block by block."""
    s = settings
    ratios, ours_ms, plain_ms = [], [], []
    for f in (plain, ours, plain, ours):  # warm-up: first-call allocations and kernel choices
        f()
    for r in range(s.repeats):
        def block(f: Callable[[], Any]) -> float:
            times = []
            for _ in range(s.latency_calls):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            return statistics.median(times) * 1000

        p, t = alternate(r, lambda: block(plain), lambda: block(ours))
        plain_ms.append(p)
        ours_ms.append(t)
        ratios.append(p / t)
    return ratios, ours_ms, plain_ms


def train_phase_seconds(timed: list[tuple[float, Any]]) -> dict[int, float]:
    """Seconds of each epoch's training phase, from `train()`'s timestamped events.

    The events are consumed as they come, so an epoch's training phase starts when the event before
    its first training step was handed over and ends with its last step's Progress event: data
    loading and steps count, validation and checkpoint writing do not (the plain loop is timed alike).
    """
    phases: dict[int, list[float]] = {}
    previous = None
    for t, event in timed:
        if isinstance(event, Progress) and event.phase == "train":
            if event.epoch not in phases and previous is not None:
                phases[event.epoch] = [previous, t]
            elif event.epoch in phases:
                phases[event.epoch][1] = t
        previous = t
    return {epoch: end - begin for epoch, (begin, end) in phases.items()}


def time_breakdown(timed: list[tuple[float, Any]], start: float) -> dict[str, float]:
    """Where a `train()` run's time went: each gap between events is charged to the work the event
    that ends it closes (`events.work_of`)."""
    spent: dict[str, float] = {}
    previous = start
    for t, event in timed:
        kind = work_of(event)
        spent[kind] = spent.get(kind, 0.0) + (t - previous)
        previous = t
    return {k: round(v, 3) for k, v in spent.items()}
