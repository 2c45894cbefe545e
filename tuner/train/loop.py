"""The training loop over a session: epochs of train steps, validation, checkpoints and stop handling,
as a generator of the events of `tuner.events`.

A stop request is honoured between two batches: the loop saves `last.pt` at that exact point (epoch
and batch, with the epoch's running totals), so a resume continues where it stopped. Under torchrun
every rank runs the loop and takes the same decisions (stop requests and metrics are reduced over the
ranks); rank 0 alone writes files (`RunFolder`).

`train_step` and `validate` take their pieces as arguments, for callers with a loop of their own.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from ..data.health import normalised_exclusions
from ..errors import TunerError
from ..events import EpochEnd, Event, Finished, Message, Progress
from ..metrics import confusion_matrix, per_class_report
from ..model.resnet import set_train_mode
from ..runtime.setup import Runtime, all_reduce_sum
from .checkpointing import RunFolder, Start, checkpoint_state
from .policies import BestEpoch, TwoStage
from .session import Session


class StopSignal(Protocol):
    def is_set(self) -> bool: ...


def stop_check(stop: StopSignal | None, runtime: Runtime) -> Callable[[], bool]:
    """Whether to stop now. Under torchrun it is a collective: any rank's stop stops all, at the same batch,
    so every rank must ask at the same points."""
    def requested() -> bool:
        asked = bool(stop is not None and stop.is_set())
        if runtime.distributed:
            asked = all_reduce_sum([float(asked)], runtime)[0] > 0
        return asked
    return requested


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   scheduler: torch.optim.lr_scheduler.LRScheduler) -> bool:
    """Backward, optimizer step and schedule step; False when the gradient scaler skipped the step.

    With fp16 the scaler skips the optimizer step when the gradients overflowed at its loss scale
    (usual in the first steps; it then lowers the scale). The schedule waits too, as the optimizer
    did: stepping it anyway is what PyTorch warns about ("lr_scheduler.step() before optimizer.step()").
    """
    scaler.scale(loss).backward()
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    stepped = scale is None or scaler.get_scale() >= scale  # a skipped step lowers the scale
    if stepped:
        scheduler.step()
    return stepped


def train_step(session: Session, scheduler: torch.optim.lr_scheduler.LRScheduler, x: torch.Tensor,
               y: torch.Tensor) -> tuple[float, float]:
    """One optimizer step of the session's module on batch (x, y), then one step of `scheduler`:
    the batch's mean loss and its count of correct predictions."""
    runtime = session.runtime
    x = x.to(runtime.device, non_blocking=True)
    y = y.to(runtime.device, non_blocking=True)
    if runtime.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        logits = session.module(x)
        loss = session.loss_fn(logits.float(), y)
    session.optimizer.zero_grad(set_to_none=True)
    optimizer_step(loss, session.optimizer, session.scaler, scheduler)
    return float(loss.detach()), float((logits.detach().argmax(1) == y).sum())


@torch.no_grad()
def validate(session: Session, epoch: int) -> Iterator[Event]:
    """Loss, accuracy, confusion matrix and per-class report on the validation split (all ranks);
    yields Progress, returns the metrics."""
    runtime, classes = session.runtime, session.spec.classes
    session.model.eval()
    count, source, head = session.val_batches()
    loss_sum, labels, preds = 0.0, [], []
    for step, (x, y) in enumerate(source):
        x, y = x.to(runtime.device), y.to(runtime.device)
        if runtime.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = head(x).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        labels.append(y.cpu())
        preds.append(logits.argmax(1).cpu())
        yield Progress("val", epoch + 1, step + 1, count)
    cm = confusion_matrix(torch.cat(labels).numpy() if labels else np.zeros(0),
                          torch.cat(preds).numpy() if preds else np.zeros(0), len(classes))
    flat = all_reduce_sum(cm.reshape(-1).astype(np.float64).tolist() + [loss_sum], runtime)
    cm = np.asarray(flat[:-1]).reshape(cm.shape).astype(np.int64)
    total = int(cm.sum())
    return {"accuracy": float(np.trace(cm) / max(total, 1)), "loss": flat[-1] / max(total, 1), "count": total,
            "confusion_matrix": cm.tolist(), "per_class": per_class_report(cm, classes).to_dict(orient="records")}


class Loop:
    """The epochs of one run from `start`: the two-stage recipe of the session's config, `best` deciding
    on best.pt and early stopping, checkpoints saved into `folder`."""

    def __init__(self, session: Session, scheduler: torch.optim.lr_scheduler.LRScheduler, folder: RunFolder,
                 stop_requested: Callable[[], bool], start: Start, best: BestEpoch):
        config = session.config
        self.session = session
        self.scheduler = scheduler
        self.folder = folder
        self.stop_requested = stop_requested
        self.start = start
        self.history = list(start.history)
        self.recipe = TwoStage(config.head_epochs, config.trainable)
        self.best = best
        self.last_lr: float | None = None  # the rate the latest step used

    def run(self) -> Iterator[Event]:
        """Read the images, measure BatchNorm statistics when needed, then train the remaining epochs."""
        session, start = self.session, self.start
        yield from session.decode_images(self.stop_requested)
        if not session.batchnorm_measured and not self.stop_requested():
            yield from session.calibrate_batchnorm(self.stop_requested)
        if self.stop_requested():  # stopped while reading images: nothing trained yet, the checkpoint says so
            yield from self._stopped(start.epoch, start.next_batch, start.partial)
            return
        yield from self._epochs()

    def _epochs(self) -> Iterator[Event]:
        session, config, start = self.session, self.session.config, self.start
        stage = None
        for epoch in range(start.epoch, config.epochs):
            if self.recipe.stage_for(epoch) != stage:
                stage = self.recipe.stage_for(epoch)
                if epoch > start.epoch:
                    yield Message("info", f"Epoch {epoch + 1}: unfreezing down to {stage} (two-stage recipe).")
                yield from session.start_stage(stage, epoch, self.stop_requested)
                if self.stop_requested():
                    if epoch == start.epoch:
                        yield from self._stopped(epoch, start.next_batch, start.partial)
                    else:
                        yield from self._stopped(epoch, 0, None)
                    return
            t0 = time.perf_counter()
            first = start.next_batch if epoch == start.epoch else 0
            # Running totals of this epoch; a copy, so the resumed epoch's totals never leak into the next.
            sums = dict(start.partial) if (epoch == start.epoch and start.partial) else {
                "loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
            set_train_mode(session.model, stage, config.bn)
            session.sampler.set_epoch(epoch, first)
            for step, (x, y) in enumerate(session.train_batches(), start=first):
                if self.stop_requested():
                    sums["seconds"] += time.perf_counter() - t0
                    yield from self._stopped(epoch, step, sums)
                    return
                self.last_lr = session.head_lr()  # the rate this step uses (history records what each epoch used)
                loss, correct = train_step(session, self.scheduler, x, y)
                sums["loss"] += loss * len(y)
                sums["correct"] += correct
                sums["seen"] += len(y)
                yield Progress("train", epoch + 1, step + 1, session.steps_per_epoch,
                               sums["loss"] / sums["seen"], sums["correct"] / sums["seen"])
            loss_sum, correct_sum, seen = all_reduce_sum([sums["loss"], sums["correct"], sums["seen"]],
                                                         session.runtime)
            val = yield from validate(session, epoch)
            if not (math.isfinite(loss_sum) and math.isfinite(val["loss"])):  # reduced: every rank stops here
                raise TunerError(
                    f"Training diverged in epoch {epoch + 1}: its loss is {loss_sum / max(seen, 1):.3g} (validation "
                    f"{val['loss']:.3g}), so the weights are no longer usable. Start again with a lower learning rate "
                    f"(lr={config.base_lr:g} now; try lr={config.base_lr / 10:g}); "
                    + ("this epoch was not saved, earlier checkpoints are kept." if epoch else "nothing was saved."))
            seconds = sums["seconds"] + time.perf_counter() - t0
            improved = self.best.update(epoch + 1, val)
            lr = self.last_lr if self.last_lr is not None else session.head_lr()
            end = EpochEnd(epoch + 1, config.epochs, loss_sum / max(seen, 1), correct_sum / max(seen, 1),
                           val["loss"], val["accuracy"], lr, seconds, improved)
            self.history.append(end.row())
            yield end
            yield from self._save(epoch + 1, 0, None, best=improved)
            if self.best.should_stop:
                yield Message("info", f"Early stopping: validation has not improved for {self.best.stale_epochs} "
                              "epochs.")
                yield self.finish("early_stopped", epoch + 1)
                return
            if epoch + 1 < config.epochs and self.stop_requested():  # no collective after the last epoch
                yield self.finish("stopped", epoch + 1)
                return
        yield self.finish("completed", config.epochs)

    def _save(self, epoch: int, next_batch: int, partial: dict | None, best: bool = False) -> Iterator[Event]:
        yield from self.folder.save(lambda: checkpoint_state(self.session, self.scheduler, self.best, self.history,
                                                             epoch, next_batch, partial), best)

    def _stopped(self, epoch: int, next_batch: int, partial: dict | None) -> Iterator[Event]:
        yield Message("info", f"Stopped in epoch {epoch + 1} after {next_batch} of {self.session.steps_per_epoch} "
                      "batches; resume to continue from there.")
        yield from self._save(epoch, next_batch, partial)
        yield self.finish("stopped", epoch)

    def finish(self, status: str, epochs_done: int) -> Finished:
        """Write metrics.json and say how the run ended."""
        session, best = self.session, self.best
        metrics = {
            "status": status, "epochs_done": epochs_done, "epochs": session.config.epochs,
            "best_epoch": best.best_epoch, "best_val_acc": max(best.best_val_acc, 0.0) if best.best_epoch else None,
            "best_val_loss": best.best_val_loss if best.best_epoch else None,
            "final": self.history[-1] if self.history else None, "classes": list(session.spec.classes),
            "best": best.best_metrics, "weights": session.source.to_dict(), "device": session.runtime.describe(),
            "excluded": normalised_exclusions(session.config.exclude),
        }
        self.folder.write_metrics(metrics)
        return Finished(status, epochs_done, metrics["best_val_acc"] or 0.0, best.best_epoch, str(self.folder.out),
                        str(self.folder.best_checkpoint()), metrics)
