"""tuner's side: `train()` run the way a user runs it, from a cold TUNER_HOME, with its events timed."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

from ..config import TrainConfig
from ..events import Finished, StageStarted
from ..train import train
from .settings import BenchSettings
from .timing import time_breakdown


@contextlib.contextmanager
def tuner_home(path: Path) -> Iterator[None]:
    """Point TUNER_HOME (ONNX exports, feature caches) at `path`, so a tuner run starts cold, as a
    user's first run does: its ONNX export and feature extraction count in its time."""
    before = os.environ.get("TUNER_HOME")
    os.environ["TUNER_HOME"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TUNER_HOME", None)
        else:
            os.environ["TUNER_HOME"] = before


def tuner_config(data: Path, out: Path, weights: Path, settings: BenchSettings, **changes: Any) -> TrainConfig:
    values = dict(data=str(data), out=str(out), weights=str(weights), image_size=settings.image_size,
                  batch_size=settings.batch_size, seed=settings.seed, cache_dir=str(out.parent / f"{out.name}-cache"))
    values.update(changes)
    return TrainConfig(**values)


def tuner_train(config: TrainConfig, home: Path) -> dict[str, Any]:
    """Run `train()` to the end from a cold TUNER_HOME; wall time, events with timestamps, accuracy."""
    start = time.perf_counter()
    timed: list[tuple[float, Any]] = []
    with tuner_home(home):
        for event in train(config):
            timed.append((time.perf_counter(), event))
    seconds = time.perf_counter() - start
    finished = timed[-1][1]
    assert isinstance(finished, Finished)
    final = finished.metrics.get("final") or {}
    return {"seconds": seconds, "timed": timed, "breakdown": time_breakdown(timed, start),
            "best_val_acc": finished.best_val_acc,
            "final_val_acc": final.get("val_acc"), "checkpoint": finished.checkpoint, "finished": finished}


def fast_path(run: dict[str, Any]) -> str:
    return next((e.fast_path for _, e in run["timed"] if isinstance(e, StageStarted)), "")
