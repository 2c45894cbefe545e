"""The events a training run yields, and the one place that puts them in words.

    for event in train(config, stop=threading.Event()):
        ...  # RunStarted, Message, StageStarted, Progress, EpochEnd, CheckpointSaved, Finished

`describe(event, style)` is the text the CLI prints and the studio logs for an event; `EpochEnd.row()`
is its row in history.csv, the studio's curves and the benchmark's tables; `work_of(event)` names the
work the event closes, which the benchmark charges its time to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping

from .errors import rename_settings

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


# How the studio's log names a run's end (the CLI says the status itself).
FINISHED_WORDS = {"completed": "Finished", "early_stopped": "Stopped early (no better validation accuracy)",
                  "stopped": "Stopped on request"}


def describe(event: Event, style: Literal["cli", "log"], names: Mapping[str, str] | None = None,
             resumed: bool = False) -> str | None:
    """The line(s) that tell a person about `event`, or None for an event shown otherwise (Progress
    is drawn as a bar or status from PHASES; CheckpointSaved is said by the run's last line).

    style: "cli" for terse terminal lines (columns a person scans epoch after epoch, as in a log
    file), "log" for the studio's log in sentences. Users of both know their texts, so each keeps its
    wording; what an event says is decided here, once.
    names: the words the user knows settings by (the CLI's flags: lr -> --lr); settings in the
    engine's texts (`trainable=head`) are renamed to them.
    resumed: the log says where a resumed run continues even when that is its very start (the CLI
    says it whenever the start is not the first batch).
    """
    cli = style == "cli"
    if isinstance(event, RunStarted):
        if cli:
            where = (f" (resuming at epoch {event.start_epoch + 1}, batch {event.start_batch})"
                     if event.start_epoch or event.start_batch else "")
            weights = (f"{event.weights['message']} ({event.weights_report})" if event.weights["pretrained"]
                       else "random initialisation (see the warning below)")
            return (f"Training on {event.num_train} images ({event.num_val} for validation), {len(event.classes)} "
                    f"classes: {', '.join(event.classes)}{where}\nDevice: {event.device}. Weights: {weights}.")
        lines = [f"Training on {event.device}: {len(event.classes)} classes, {event.num_train} training and "
                 f"{event.num_val} validation images."]
        if event.weights_report:
            lines.append(f"Weights: {event.weights_report}")
        if resumed:
            lines.append(f"Resuming at epoch {event.start_epoch + 1}"
                         + (f", batch {event.start_batch + 1}" if event.start_batch else "") + ".")
        return "\n".join(lines)
    if isinstance(event, Message):
        warning = ("warning: " if cli else "Warning: ") if event.level == "warning" else ""
        return warning + rename_settings(event.text, names or {})
    if isinstance(event, StageStarted):
        return (f"{'Epoch' if cli else 'From epoch'} {event.epoch}: training {event.trainable_params:,} of "
                f"{event.total_params:,} parameters "
                + rename_settings(f"(trainable={event.trainable}); {event.fast_path}.", names or {}))
    if isinstance(event, EpochEnd):
        if cli:
            return (f"epoch {event.epoch}/{event.epochs}  train loss {event.train_loss:.4f} acc {event.train_acc:.1%}"
                    f"  val loss {event.val_loss:.4f} acc {event.val_acc:.1%}  lr {event.lr:.3g}  "
                    f"{event.seconds:.1f}s{'  *best' if event.improved else ''}")
        return (f"Epoch {event.epoch}/{event.epochs}: train loss {event.train_loss:.3f}, acc {event.train_acc:.1%}; "
                f"val loss {event.val_loss:.3f}, acc {event.val_acc:.1%}{' (best so far)' if event.improved else ''}; "
                f"{event.seconds:.1f}s")
    if isinstance(event, Finished):
        epochs = f"{event.epochs_done} epoch{'' if event.epochs_done == 1 else 's'}"
        best = (f"best {'val' if cli else 'validation'} accuracy {event.best_val_acc:.1%} (epoch {event.best_epoch})"
                if event.best_epoch else "no epoch validated yet")  # nothing to report before epoch 1
        if cli:
            status = event.status.replace("_", " ").capitalize()
            return f"{status} after {epochs}; {best}. Checkpoint: {event.checkpoint}"
        return f"{FINISHED_WORDS.get(event.status, event.status)}: {best}, {epochs} done"
    return None


def work_of(event: Event) -> str:
    """The work that ends when `event` is yielded (the loop yields right after the work an event reports):
    a Progress phase (decode, batchnorm, features, train, val), "checkpoints", or "setup and other"."""
    if isinstance(event, Progress):
        return event.phase
    if isinstance(event, CheckpointSaved):
        return "checkpoints"
    return "setup and other"


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
