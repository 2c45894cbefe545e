"""The training loop: a generator of typed events that the CLI and the studio render.

    for event in train(config, stop=threading.Event()):
        ...  # RunStarted, Message, StageStarted, Progress, EpochEnd, CheckpointSaved, Finished

After every epoch `last.pt` is written (and `best.pt` when validation improved), atomically, with
`history.csv` beside them; `metrics.json` is written when the run ends (completed, stopped or early-stopped). A stop request is honoured between two batches: the
run writes `last.pt` at that exact point (epoch and batch), so `resume=True` continues where it
stopped, and on a CPU with a fixed seed an interrupted-then-resumed run matches an uninterrupted one.

Under torchrun every rank runs this loop; rank 0 alone writes files, and the metrics in the events
are reduced over all ranks so every rank agrees.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import __version__
from ..config import TrainConfig
from ..data.discover import DatasetSpec, dataset_folder, prepare_dataset
from ..data.images import ImageCache, ImageDataset
from ..data.sampling import EpochBatchSampler, class_weights, seeded
from ..data.transforms import MEAN, STD, eval_transform, resize_size, train_transform
from ..errors import TunerError
from ..events import (
    HISTORY_COLUMNS,
    CheckpointSaved,
    EpochEnd,
    Event,
    Finished,
    Message,
    Progress,
    RunStarted,
    StageStarted,
)
from ..metrics import confusion_matrix, per_class_report
from ..model.checkpoint import RESUME_KEYS, load_checkpoint, save_checkpoint
from ..model.resnet import (
    build_model,
    count_parameters,
    forward_from,
    freeze,
    make_optimizer,
    measuring_batchnorm,
    new_resnet50,
    parameter_groups,
    set_train_mode,
)
from ..model.weights import WeightsSource, resolve_weights
from ..paths import atomic_write, output_folder, same_file_as
from ..runtime.setup import (
    Runtime,
    all_reduce_sum,
    barrier,
    end_process_group,
    setup_runtime,
    world_from_env,
)
from .features import (
    FeatureStore,
    build_store,
    cache_folder,
    cache_key,
    check_plan_frozen,
    plan_cache,
)

IMAGE_CACHE_BYTES = 1 << 30  # decoded images kept in memory; beyond this they are decoded every epoch


RUN_FILES = ("last.pt", "best.pt", "history.csv", "metrics.json")


# Settings that may differ when resuming (how long, and on what machine); everything else comes from
# the checkpoint, so a resumed run is the same run.
RESUME_OVERRIDABLE = ("epochs", "early_stopping", "device", "num_workers", "out", "data", "cache_dir", "amp",
                      "channels_last", "compile")


class StopSignal(Protocol):
    def is_set(self) -> bool: ...


def train(config: TrainConfig, stop: StopSignal | None = None, resume: bool = False,
          spec: DatasetSpec | None = None, overwrite: bool = False,
          given: set[str] | None = None) -> Iterator[Event]:
    """Train as `config` says, yielding events; see the module docstring.

    With resume=True the run's saved settings apply; `given` names the settings the caller set on
    purpose (the CLI passes the flags typed), and only those may override the saved ones. None means
    every field of `config` was set on purpose (API callers that pass a complete config).
    """
    yield from _Run(config, stop, resume, spec, overwrite, given).events()


def run_to_end(config: TrainConfig, **kwargs: Any) -> Finished:
    """Consume `train()` and return its Finished event (for scripts and tests)."""
    last = None
    for event in train(config, **kwargs):
        last = event
    assert isinstance(last, Finished)
    return last


def merge_resume_config(saved: dict[str, Any], asked: TrainConfig,
                        given: set[str] | None = None) -> tuple[TrainConfig, list[str]]:
    """The checkpoint's config, with the few settings that may change on resume taken from `asked`.

    Returns the merged config and the settings the caller gave that were ignored because they would
    make it a different run.
    """
    config = TrainConfig.from_dict(saved)
    asked_values = asked.to_dict()
    given = set(asked_values) if given is None else set(given)
    ignored = []
    for name in sorted(given):
        value = asked_values[name]
        if name in RESUME_OVERRIDABLE:
            setattr(config, name, value)
        elif value != saved.get(name):
            ignored.append(name)
    return config.validate(), ignored


class _FinishFrom(nn.Module):
    """The rest of the model after a cached stage: what trains while the cache stands in for the rest."""

    def __init__(self, model: nn.Module, after: str):
        super().__init__()
        self.model = model
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_from(self.model, x, self.after)


class _Run:
    def __init__(self, config: TrainConfig, stop: StopSignal | None, resume: bool, spec: DatasetSpec | None,
                 overwrite: bool, given: set[str] | None):
        self.config = config.validate()
        self.stop = stop
        self.resume = resume
        self.spec = spec
        self.overwrite = overwrite
        self.overwrite_pending = False  # an --overwrite whose old files are still to be deleted
        self.asked = self.config  # what the caller gave: a resume names the values it ignores
        self.given = given
        self.out = Path(config.out)
        self.history: list[dict[str, float]] = []
        self.best_val_acc = -1.0
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.stale_epochs = 0
        self.best_metrics: dict[str, Any] = {}
        self.store: FeatureStore | None = None
        self.ignored_on_resume: list[str] = []
        self.last_lr: float | None = None  # the rate the latest step used
        # False while a random backbone's BatchNorm statistics are still to be measured; a checkpoint saved
        # then (a stop before the first batch) says so, and its resume measures them.
        self.batchnorm_measured = True
        # Set up in events(): where it runs, the starting weights, the model and what wraps it for training.
        self.runtime: Runtime
        self.source: WeightsSource
        self.model: nn.Module
        self.module: nn.Module

    # -- setup --
    def events(self) -> Iterator[Event]:
        lock = hold_run_lock(self.out) if world_from_env()[0] == 0 else None
        finished_cleanly = False
        try:
            yield from self._events()
            finished_cleanly = True
        finally:
            if lock is not None:
                lock.close()  # closing the file releases the lock (so does the process ending)
            if getattr(self, "runtime", None) is not None:
                end_process_group(self.runtime, finished_cleanly)

    def _events(self) -> Iterator[Event]:
        saved = self._load_resume_state()
        config = self.config
        self.runtime = runtime = setup_runtime(config)
        if self.spec is None:
            self.spec = self._dataset_on_all_ranks()
        spec = self.spec
        if saved and list(saved["classes"]) != spec.classes:
            raise TunerError(f"The dataset's classes ({', '.join(spec.classes)}) differ from the checkpoint's "
                             f"({', '.join(saved['classes'])}): resume with the data the run started with.")
        if runtime.distributed and config.batch_size % runtime.world_size:
            raise TunerError(f"batch_size={config.batch_size} does not split evenly over {runtime.world_size} "
                             f"processes: use a multiple of {runtime.world_size} (it is the global batch).")

        if saved:
            self.source = WeightsSource(**saved["weights_source"])
            self.model = new_resnet50(len(spec.classes))
            self.model.load_state_dict(saved["model_state"])
            report = "resumed from last.pt"
        else:
            self.source = resolve_weights(config.weights) if runtime.is_main or not runtime.distributed else None
            self.source = self._same_on_all_ranks(self.source)
            with seeded(config.seed):  # the random parts of the model (a random backbone) follow the seed
                built = build_model(len(spec.classes), self.source)
            self.model = built.model
            report = built.report.summary() if built.report else "random initialisation"
        model = self.model.to(runtime.device)
        if runtime.channels_last:
            model.to(memory_format=torch.channels_last)
        if config.sync_bn and runtime.distributed:
            self.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

        self.image_cache = ImageCache(resize_size(config.image_size), IMAGE_CACHE_BYTES)
        self.train_ds = ImageDataset(spec.train, train_transform(config.augment, config.image_size),
                                     self.image_cache, config.seed)
        self.val_ds = ImageDataset(spec.val, eval_transform(config.image_size), self.image_cache, config.seed)
        self.sampler = EpochBatchSampler([s.label for s in spec.train], config.batch_size // runtime.world_size,
                                         config.seed, balanced=config.imbalance == "sampler",
                                         rank=runtime.rank, world_size=runtime.world_size)
        self.steps_per_epoch = len(self.sampler.batches(0))
        weight = class_weights([s.label for s in spec.train], len(spec.classes)) if config.imbalance == "loss" else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight.to(runtime.device) if weight is not None else None,
                                           label_smoothing=config.label_smoothing)
        self.groups = parameter_groups(model, config, self.source.pretrained)
        self.optimizer = make_optimizer(self.groups, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)

        start_epoch, start_batch, partial = 0, 0, None
        if saved:
            start_epoch, start_batch, partial = self._restore(saved)

        yield RunStarted(str(self.out), spec.classes, len(spec.train), len(spec.val), runtime.describe(),
                         self.source.to_dict(), report, start_epoch, start_batch, config.epochs,
                         runtime.rank, runtime.world_size)
        if not self.source.pretrained and not saved:  # a resume continues from trained weights: no warning
            yield Message("warning", self.source.message)
        if runtime.gpu_note:
            yield Message("warning", f"Training on the CPU: {runtime.gpu_note}.")
        for text in spec.warnings:
            yield Message("warning", text)
        if self.ignored_on_resume:
            config_values = self.asked.to_dict()
            yield Message("warning", "Resuming keeps the run's own settings, so these were ignored: "
                          + ", ".join(f"{name}={config_values[name]!r}" for name in self.ignored_on_resume)
                          + ". On resume only how long and where the run trains may change (epochs, early "
                          "stopping, device, workers, precision, paths); start a new run to change the others.")
        if start_epoch >= config.epochs:
            yield Message("info", f"The run has finished all {config.epochs} epochs already: raise epochs to "
                          "train longer.")
            yield self._finish("completed", start_epoch)
            return
        yield from self._decode_images()
        measured = bool(saved.get("batchnorm_measured", True)) if saved else False
        self.batchnorm_measured = measured or self.source.pretrained or config.bn != "frozen"  # nothing to measure
        if not self.batchnorm_measured and not self._stop_requested():
            yield from self._calibrate_batchnorm()
        if self._stop_requested():  # stopped while reading images: nothing trained yet, the checkpoint says so
            yield from self._stopped(start_epoch, start_batch, partial)
            return
        yield from self._epochs(start_epoch, start_batch, partial)

    def _calibrate_batchnorm(self, max_images: int = 128) -> Iterator[Event]:
        """Random weights carry no BatchNorm statistics worth freezing: measure them on training images."""
        plain = ImageDataset(self.spec.train, eval_transform(self.config.image_size), self.image_cache)
        # The same images on every rank (not each rank's shard); rank 0's result is broadcast anyway.
        order = torch.randperm(len(plain), generator=torch.Generator().manual_seed(self.config.seed))[:max_images]
        order = order.tolist()
        bs = max(2, min(32, self.config.batch_size))
        chunks = [order[i:i + bs] for i in range(0, len(order), bs)]
        chunks = [c for c in chunks if len(c) > 1]  # BatchNorm needs two images to measure a variance
        yield Message("info", f"No pretrained BatchNorm statistics: measuring them on {sum(map(len, chunks))} "
                      "training images before freezing (no learning happens in this pass).")
        # Before the first batch, so a stop in this pass puts back the untouched statistics: the checkpoint
        # then holds the model as it was built, and its resume measures them from the start.
        before = {name: b.clone() for name, b in self.model.named_buffers()}
        with measuring_batchnorm(self.model):
            for done, chunk in enumerate(chunks):
                if self._stop_requested():
                    for name, b in self.model.named_buffers():
                        b.copy_(before[name])
                    self.batchnorm_measured = False
                    return
                self.model(torch.stack([plain[i][0] for i in chunk]).to(self.runtime.device))
                yield Progress("batchnorm", 0, done + 1, len(chunks))
        self.batchnorm_measured = True
        if self.runtime.distributed:  # every rank must freeze the same statistics
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _decode_images(self, chunk: int = 256) -> Iterator[Event]:
        """Decode and presize every image once, before loader workers fork and share the result."""
        paths = [s.path for s in self.spec.train + self.spec.val]
        for start in range(0, len(paths), chunk):
            if self.image_cache.full or self._stop_requested():
                break
            self.image_cache.warm(paths[start:start + chunk])
            yield Progress("decode", 0, min(start + chunk, len(paths)), len(paths))

    def _load_resume_state(self) -> dict[str, Any] | None:
        last = self.out / "last.pt"
        if not self.resume:
            existing = [name for name in RUN_FILES if (self.out / name).exists()]
            if existing and not self.overwrite:
                raise TunerError(f"{self.out} already holds a run ({', '.join(existing)}): resume it with --resume, "
                                 "or choose a new --out folder (or --overwrite to start over there).")
            # The old run's files go when this run first saves (_replace_overwritten_run): a start that fails
            # its checks (a mistyped --data, a refused setting) must not have deleted them already.
            self.overwrite_pending = bool(existing)
            return None
        if not last.is_file():
            raise TunerError(f"Nothing to resume in {self.out}: it has no last.pt. Start without --resume.")
        try:
            saved = load_checkpoint(last, required=RESUME_KEYS)
        except TunerError as exc:
            raise TunerError(f"{exc} To start over in {self.out}, use --overwrite (overwrite=True); to keep its "
                             "files, train into another folder.") from None
        self.config, self.ignored_on_resume = merge_resume_config(saved.get("config", {}), self.config, self.given)
        return saved

    def _dataset_on_all_ranks(self) -> DatasetSpec:
        """One process discovers and validates the dataset; under torchrun rank 0 does it and sends the
        result, so every rank trains on the identical sample list (a second look could differ, and
        ranks with different step counts would hang). Other nodes only materialise the demo data or an
        unpacked zip at the same path, which the sample list refers to."""
        config, runtime = self.config, self.runtime
        if not runtime.distributed:
            return prepare_dataset(config.data, self.out, config.val_ratio, config.seed)
        import torch.distributed as dist

        if runtime.is_main:
            box: list[Any] = [prepare_dataset(config.data, self.out, config.val_ratio, config.seed)]
        else:
            if runtime.local_rank == 0:
                dataset_folder(config.data, self.out)
            box = [None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _same_on_all_ranks(self, source: WeightsSource | None) -> WeightsSource:
        """Rank 0 resolves (and maybe downloads) the weights; the others wait and use its answer."""
        if not self.runtime.distributed:
            assert source is not None
            return source
        import torch.distributed as dist
        box = [source.to_dict() if source else None]
        dist.broadcast_object_list(box, src=0)
        return WeightsSource(**box[0])

    def _restore(self, saved: dict[str, Any]) -> tuple[int, int, dict | None]:
        self.optimizer.load_state_dict(saved["optimizer_state"])
        self.scheduler.load_state_dict(saved["scheduler_state"])
        # The saved rates follow the schedule as the run first planned it. Resuming with more epochs
        # stretches the plan (a finished cosine schedule ended at 0, which would waste the next step),
        # so the next step's rates are computed again; with the same epochs they come out the same.
        factor = self._lr_factor(self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor
        if saved.get("scaler_state"):
            self.scaler.load_state_dict(saved["scaler_state"])
        self.history = list(saved.get("history", []))
        self.best_val_acc = float(saved.get("best_val_acc", -1.0))
        self.best_val_loss = float(saved.get("best_val_loss", math.inf))
        self.best_epoch = int(saved.get("best_epoch", 0))
        self.stale_epochs = int(saved.get("stale_epochs", 0))
        self.best_metrics = dict(saved.get("best_metrics", {}))
        # rng_state is kept for the record but not put back: every random choice of a run is derived
        # from its seed (data order, augmentation, model init), and the global generators belong to
        # the whole process, which in the studio serves other sessions too.
        return int(saved["epoch"]), int(saved.get("next_batch", 0)), saved.get("partial_epoch")

    def _lr_factor(self, step: int) -> float:
        """Learning-rate multiplier per optimizer step: linear warm-up, then none/step/cosine."""
        c = self.config
        warmup = c.warmup_epochs * self.steps_per_epoch
        total = max(1, c.epochs * self.steps_per_epoch)
        if step < warmup:
            return (step + 1) / warmup
        if c.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if c.scheduler == "step":
            return c.gamma ** ((step // self.steps_per_epoch) // c.step_size)
        return 1.0

    # -- epochs --
    def _stage_for(self, epoch: int) -> str:
        return "head" if epoch < self.config.head_epochs else self.config.trainable

    def _start_stage(self, trainable: str, epoch: int) -> Iterator[Event]:
        config, runtime = self.config, self.runtime
        freeze(self.model, trainable)
        set_train_mode(self.model, trainable, config.bn)
        plan, why = plan_cache(config, trainable, len(self.train_ds) + len(self.val_ds))
        self.store = None
        if plan:
            check_plan_frozen(plan, trainable)
            key = cache_key(self.model, plan, self.spec.fingerprint(), self.train_ds, self.val_ds, runtime, config.seed)
            builder = build_store(self.model, plan, self.train_ds, self.val_ds, config.image_size, runtime, key,
                                  cache_folder(config), max(config.batch_size, 32))
            try:
                while True:
                    done, total = next(builder)
                    yield Progress("features", epoch + 1, done, total)
                    # Ranks may extract different batch counts, so only a single process stops mid-way.
                    if not runtime.distributed and self._stop_requested():
                        return
            except StopIteration as finished:
                self.store = finished.value
            why = plan.describe() + (" (loaded from the cache folder)" if self.store.from_disk else "")
            if self.store.fallback:
                why += f" (computed by PyTorch, not ONNX Runtime: {self.store.fallback})"
        module: nn.Module = _FinishFrom(self.model, plan.until) if plan else self.model
        if config.compile and not plan:
            module = torch.compile(module)
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids)
        self.module = module
        trainable_params = count_parameters(p for p in self.model.parameters() if p.requires_grad)
        yield StageStarted(epoch + 1, trainable, trainable_params, count_parameters(self.model.parameters()),
                           why or "full forward pass every batch")

    def _epochs(self, start_epoch: int, start_batch: int, partial: dict | None) -> Iterator[Event]:
        config = self.config
        stage = None
        for epoch in range(start_epoch, config.epochs):
            if self._stage_for(epoch) != stage:
                stage = self._stage_for(epoch)
                if epoch > start_epoch:
                    yield Message("info", f"Epoch {epoch + 1}: unfreezing down to {stage} (two-stage recipe).")
                yield from self._start_stage(stage, epoch)
                if self._stop_requested():
                    if epoch == start_epoch:
                        yield from self._stopped(epoch, start_batch, partial)
                    else:
                        yield from self._stopped(epoch, 0, None)
                    return
            t0 = time.perf_counter()
            first = start_batch if epoch == start_epoch else 0
            # Running totals of this epoch; a copy, so the resumed epoch's totals never leak into the next.
            sums = dict(partial) if (epoch == start_epoch and partial) else {"loss": 0.0, "correct": 0.0, "seen": 0.0,
                                                                             "seconds": 0.0}
            set_train_mode(self.model, stage, config.bn)
            self.sampler.set_epoch(epoch, first)
            step = first
            for step, (x, y) in enumerate(self._train_batches(), start=first):
                if self._stop_requested():
                    sums["seconds"] += time.perf_counter() - t0
                    yield from self._stopped(epoch, step, sums)
                    return
                loss, correct = self._train_step(x, y)
                sums["loss"] += loss * len(y)
                sums["correct"] += correct
                sums["seen"] += len(y)
                yield Progress("train", epoch + 1, step + 1, self.steps_per_epoch,
                               sums["loss"] / sums["seen"], sums["correct"] / sums["seen"])
            loss_sum, correct_sum, seen = all_reduce_sum([sums["loss"], sums["correct"], sums["seen"]], self.runtime)
            val = yield from self._validate(epoch)
            if not (math.isfinite(loss_sum) and math.isfinite(val["loss"])):  # reduced: every rank stops here
                raise TunerError(
                    f"Training diverged in epoch {epoch + 1}: its loss is {loss_sum / max(seen, 1):.3g} (validation "
                    f"{val['loss']:.3g}), so the weights are no longer usable. Start again with a lower learning rate "
                    f"(lr={config.base_lr:g} now; try lr={config.base_lr / 10:g}); "
                    + ("this epoch was not saved, earlier checkpoints are kept." if epoch else "nothing was saved."))
            seconds = sums["seconds"] + time.perf_counter() - t0
            improved = self._better(val["accuracy"], val["loss"])
            end = EpochEnd(epoch + 1, config.epochs, loss_sum / max(seen, 1), correct_sum / max(seen, 1),
                           val["loss"], val["accuracy"], self.last_lr if self.last_lr is not None else self._head_lr(), seconds, improved)
            self.history.append(end.row())
            if improved:
                self.best_val_acc, self.best_val_loss, self.best_epoch = val["accuracy"], val["loss"], epoch + 1
                self.best_metrics = val
                self.stale_epochs = 0
            else:
                self.stale_epochs += 1
            yield end
            yield from self._save(epoch + 1, 0, None, best=improved)
            if config.early_stopping and self.stale_epochs >= config.early_stopping:
                yield Message("info", f"Early stopping: validation has not improved for {self.stale_epochs} epochs.")
                yield self._finish("early_stopped", epoch + 1)
                return
            if epoch + 1 < config.epochs and self._stop_requested():  # no collective after the last epoch
                yield self._finish("stopped", epoch + 1)
                return
        yield self._finish("completed", config.epochs)

    def _train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.store is not None:
            for keys in self.sampler:
                yield self.store.train_batch(keys)
            return
        loader = torch.utils.data.DataLoader(self.train_ds, batch_sampler=self.sampler,
                                             num_workers=self.runtime.num_workers,
                                             pin_memory=self.runtime.device.type == "cuda")
        yield from loader

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        runtime = self.runtime
        x = x.to(runtime.device, non_blocking=True)
        y = y.to(runtime.device, non_blocking=True)
        if runtime.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = self.module(x)
            loss = self.loss_fn(logits.float(), y)
        self.last_lr = self._head_lr()  # the rate this step uses (history records what each epoch used)
        self.optimizer.zero_grad(set_to_none=True)
        optimizer_step(loss, self.optimizer, self.scaler, self.scheduler)
        return float(loss.detach()), float((logits.detach().argmax(1) == y).sum())

    @torch.no_grad()
    def _validate(self, epoch: int) -> Iterator:
        """Loss, accuracy, confusion matrix and per-class report on the validation split (all ranks)."""
        runtime, classes = self.runtime, self.spec.classes
        self.model.eval()
        n = len(self.val_ds)
        mine = list(range(runtime.rank, n, runtime.world_size))
        bs = max(self.config.batch_size // runtime.world_size, 1) * 2
        batches = [mine[i:i + bs] for i in range(0, len(mine), bs)]
        loss_sum, labels, preds = 0.0, [], []
        if self.store is not None:
            source = ((self.store.val[torch.tensor(b, device=self.store.val.device)], self.store.val_labels[b])
                      for b in batches)
            head = _FinishFrom(self.model, self.store.plan.until)
        else:
            source = iter(torch.utils.data.DataLoader(self.val_ds, batch_sampler=batches,
                                                      num_workers=self.runtime.num_workers))
            head = self.model
        for step, (x, y) in enumerate(source):
            x, y = x.to(runtime.device), y.to(runtime.device)
            if runtime.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                logits = head(x).float()
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            labels.append(y.cpu())
            preds.append(logits.argmax(1).cpu())
            yield Progress("val", epoch + 1, step + 1, len(batches))
        cm = confusion_matrix(torch.cat(labels).numpy() if labels else np.zeros(0),
                              torch.cat(preds).numpy() if preds else np.zeros(0), len(classes))
        flat = all_reduce_sum(cm.reshape(-1).astype(np.float64).tolist() + [loss_sum], runtime)
        cm = np.asarray(flat[:-1]).reshape(cm.shape).astype(np.int64)
        count = int(cm.sum())
        return {"accuracy": float(np.trace(cm) / max(count, 1)), "loss": flat[-1] / max(count, 1), "count": count,
                "confusion_matrix": cm.tolist(),
                "per_class": per_class_report(cm, classes).to_dict(orient="records")}

    def _better(self, accuracy: float, loss: float) -> bool:
        """Higher val accuracy wins; at equal accuracy, a clearly lower loss (noise does not count)."""
        if accuracy != self.best_val_acc:
            return accuracy > self.best_val_acc
        return loss < self.best_val_loss - 1e-6 * max(1.0, abs(self.best_val_loss))

    def _head_lr(self) -> float:
        return next(g["lr"] for g in self.optimizer.param_groups if g["name"].startswith("head"))

    def _stop_requested(self) -> bool:
        asked = bool(self.stop is not None and self.stop.is_set())
        if self.runtime.distributed:  # any rank's stop stops all, at the same batch
            asked = all_reduce_sum([float(asked)], self.runtime)[0] > 0
        return asked

    # -- saving --
    def _state(self, epoch: int, next_batch: int, partial: dict | None) -> dict[str, Any]:
        model = self.model
        return {
            "tuner_version": __version__, "arch": "resnet50",
            # Contiguous whatever layout trained it (channels_last), so the file is the same everywhere.
            "model_state": {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                            for k, v in model.state_dict().items()},
            "classes": list(self.spec.classes), "image_size": self.config.image_size,
            "mean": list(MEAN), "std": list(STD), "weights_source": self.source.to_dict(),
            "config": self.config.to_dict(), "epoch": epoch, "next_batch": next_batch, "partial_epoch": partial,
            "history": list(self.history), "best_val_acc": self.best_val_acc, "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch, "stale_epochs": self.stale_epochs, "best_metrics": self.best_metrics,
            "batchnorm_measured": self.batchnorm_measured,
            "optimizer_state": self.optimizer.state_dict(), "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng_state": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
            "data": {"root": self.spec.root, "layout": self.spec.layout,
                     "train": len(self.spec.train), "val": len(self.spec.val)},
        }

    def _replace_overwritten_run(self) -> None:
        """Delete the files of the run that --overwrite replaces: only the files a run writes (anything
        else in the folder stays), and only once this run has something of its own to save."""
        if self.overwrite_pending and self.runtime.is_main:
            for name in RUN_FILES:
                (self.out / name).unlink(missing_ok=True)
        self.overwrite_pending = False

    def _save(self, epoch: int, next_batch: int, partial: dict | None, best: bool = False) -> Iterator[Event]:
        self._replace_overwritten_run()
        if self.runtime.is_main:
            state = self._state(epoch, next_batch, partial)
            last = save_checkpoint(state, self.out / "last.pt")
            yield CheckpointSaved(str(last), "last")
            if best:  # the same state: link it rather than write it twice (head-only epochs are mostly I/O)
                yield CheckpointSaved(str(same_file_as(last, self.out / "best.pt")), "best")
            self._write_history()
        barrier(self.runtime)

    def _stopped(self, epoch: int, next_batch: int, partial: dict | None) -> Iterator[Event]:
        yield Message("info", f"Stopped in epoch {epoch + 1} after {next_batch} of {self.steps_per_epoch} batches; "
                      "resume to continue from there.")
        yield from self._save(epoch, next_batch, partial)
        yield self._finish("stopped", epoch)

    def _write_history(self) -> None:
        frame = pd.DataFrame(self.history, columns=HISTORY_COLUMNS)
        atomic_write(self.out / "history.csv", lambda tmp: frame.to_csv(tmp, index=False))

    def _finish(self, status: str, epochs_done: int) -> Finished:
        best = self.out / "best.pt"
        metrics = {
            "status": status, "epochs_done": epochs_done, "epochs": self.config.epochs,
            "best_epoch": self.best_epoch, "best_val_acc": max(self.best_val_acc, 0.0) if self.best_epoch else None,
            "best_val_loss": self.best_val_loss if self.best_epoch else None,
            "final": self.history[-1] if self.history else None, "classes": list(self.spec.classes),
            "best": self.best_metrics, "weights": self.source.to_dict(), "device": self.runtime.describe(),
        }
        self._replace_overwritten_run()
        if self.runtime.is_main:
            atomic_write(self.out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
        checkpoint = best if best.is_file() else self.out / "last.pt"
        return Finished(status, epochs_done, metrics["best_val_acc"] or 0.0, self.best_epoch, str(self.out),
                        str(checkpoint), metrics)


def read_history(out: str | Path) -> list[dict[str, float]]:
    """A run folder's history.csv as the rows EpochEnd.row() gives (the studio redraws a resumed run's
    curves from its first epoch); [] when there is none yet."""
    path = Path(out) / "history.csv"
    if not path.is_file():
        return []
    frame = pd.read_csv(path).astype(float).astype({"epoch": int})
    return frame.to_dict("records")


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


def hold_run_lock(out: Path):
    """Lock `out` for this run: a second run (another process or another studio session) into the same
    folder is refused instead of overwriting this one's checkpoints. The lock dies with the process."""
    import fcntl

    output_folder(out)
    handle = open(out / ".tuner.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise TunerError(f"Another run is writing into {out} right now: wait for it, stop it, or choose another "
                         "--out folder.") from None
    return handle
