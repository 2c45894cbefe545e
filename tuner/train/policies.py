"""The training recipe's decisions, apart from the loop that follows them.

`TwoStage` says which stage trains in each epoch (the head first for `head_epochs`, then down to
`trainable`); it follows from the config alone, so there is nothing of it to save. `BestEpoch` keeps
the best validation result and counts the epochs since (early stopping); its `state_dict()` is saved
at the top level of every checkpoint under the keys it has always had there (`best_val_acc`,
`best_val_loss`, `best_epoch`, `stale_epochs`, `best_metrics`), and `load_state_dict()` reads them
back, with defaults for a checkpoint that lacks any of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TwoStage:
    head_epochs: int  # 0: every epoch trains down to `trainable`
    trainable: str

    def stage_for(self, epoch: int) -> str:
        """The deepest stage that trains in `epoch` (0-based)."""
        return "head" if epoch < self.head_epochs else self.trainable


class BestEpoch:
    """The best epoch so far, and early stopping after `patience` epochs without a better one (0: never)."""

    def __init__(self, patience: int = 0):
        self.patience = patience
        self.best_val_acc = -1.0
        self.best_val_loss = math.inf
        self.best_epoch = 0  # 1-based; 0: none yet
        self.stale_epochs = 0
        self.best_metrics: dict[str, Any] = {}

    def better(self, accuracy: float, loss: float) -> bool:
        """Higher val accuracy wins; at equal accuracy, a clearly lower loss (noise does not count)."""
        if accuracy != self.best_val_acc:
            return accuracy > self.best_val_acc
        return loss < self.best_val_loss - 1e-6 * max(1.0, abs(self.best_val_loss))

    def update(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Record epoch `epoch`'s (1-based) validation `metrics` (accuracy, loss, ...); True if it is the new best."""
        improved = self.better(metrics["accuracy"], metrics["loss"])
        if improved:
            self.best_val_acc, self.best_val_loss, self.best_epoch = metrics["accuracy"], metrics["loss"], epoch
            self.best_metrics = metrics
            self.stale_epochs = 0
        else:
            self.stale_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.stale_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_acc": self.best_val_acc, "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch,
                "stale_epochs": self.stale_epochs, "best_metrics": self.best_metrics}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the saved values from `state` (a checkpoint: other keys are ignored); patience stays as set."""
        self.best_val_acc = float(state.get("best_val_acc", -1.0))
        self.best_val_loss = float(state.get("best_val_loss", math.inf))
        self.best_epoch = int(state.get("best_epoch", 0))
        self.stale_epochs = int(state.get("stale_epochs", 0))
        self.best_metrics = dict(state.get("best_metrics", {}))
