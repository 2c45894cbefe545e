"""The events a training run yields, which the CLI, the studio and the benchmark render.

    for event in train(config, stop=threading.Event()):
        ...  # RunStarted, Message, StageStarted, Progress, EpochEnd, CheckpointSaved, Finished
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


@dataclass
class Event:
    def to_dict(self) -> dict[str, Any]:
        return {"event": type(self).__name__, **asdict(self)}


@dataclass
class RunStarted(Event):
    out: str
    classes: list[str]
    num_train: int
    num_val: int
    device: str
    weights: dict[str, Any]
    weights_report: str
    start_epoch: int
    start_batch: int
    epochs: int
    rank: int = 0
    world_size: int = 1


@dataclass
class Message(Event):
    level: str  # "info" | "warning"
    text: str


@dataclass
class StageStarted(Event):
    epoch: int  # 1-based epoch this stage starts with
    trainable: str
    trainable_params: int
    total_params: int
    fast_path: str  # what each batch runs through (the feature cache, or the full model and why)


# What each Progress phase is doing, in the words the CLI and the studio show.
PHASES = {"decode": "Reading images", "batchnorm": "Measuring BatchNorm statistics (random backbone, once)",
          "features": "Computing backbone features (once)", "train": "Training", "val": "Validating",
          "pixels": "Checking every image's pixels", "neighbours": "Comparing images in feature space",
          "folds": "Cross-validating a head on the features"}


@dataclass
class Progress(Event):
    phase: str  # a key of PHASES; epoch 0: before the first epoch
    epoch: int  # 1-based
    step: int
    steps: int
    loss: float | None = None
    acc: float | None = None


@dataclass
class EpochEnd(Event):
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    improved: bool

    def row(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in HISTORY_COLUMNS}


@dataclass
class CheckpointSaved(Event):
    path: str
    kind: str  # "last" | "best"


@dataclass
class Finished(Event):
    status: str  # "completed" | "early_stopped" | "stopped"
    epochs_done: int
    best_val_acc: float
    best_epoch: int
    out: str
    checkpoint: str  # best.pt when there is one, else last.pt
    metrics: dict[str, Any] = field(default_factory=dict)


def drain(steps: Iterator, on_step: Callable[[Any], None] | None = None) -> Any:
    """Run a generator that yields progress to its end and return what it returns, handing each
    yielded item to `on_step` (for callers that want a result and, at most, a callback)."""
    while True:
        try:
            item = next(steps)
        except StopIteration as finished:
            return finished.value
        if on_step is not None:
            on_step(item)
