"""A run's pieces, built from its config: model, parameter groups, optimizer, loss, datasets, sampler,
loaders, and the feature cache of the stage that trains. Building them writes no run files and holds
no lock (only `start_stage` may keep computed features in the cache folder; feature_cache='off'
computes none), so anything that needs "the same model, optimizer and loaders" builds a session: the
training loop, and e.g. a learning-rate sweep with a schedule of its own:

    session = build_session(config, spec, source, runtime)
    yield from session.start_stage("head", epoch=0, stop_requested=lambda: False)
    for x, y in session.train_batches():
        ...

The learning-rate schedule is not a piece of the session (see `schedule.py`): callers make their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import TrainConfig
from ..data.discover import DatasetSpec
from ..data.images import ImageCache, ImageDataset
from ..data.sampling import EpochBatchSampler, class_weights, seeded
from ..data.transforms import eval_transform, resize_size, train_transform
from ..errors import TunerError
from ..events import Event, Message, Progress, StageStarted
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
from ..model.weights import WeightsSource
from ..runtime.setup import Runtime
from .features import (
    FeatureStore,
    build_store,
    cache_folder,
    cache_key,
    check_plan_frozen,
    plan_cache,
)

IMAGE_CACHE_BYTES = 1 << 30  # decoded images kept in memory; beyond this they are decoded every epoch


class FinishFrom(nn.Module):
    """The rest of the model after a cached stage: what trains while the cache stands in for the rest."""

    def __init__(self, model: nn.Module, after: str):
        super().__init__()
        self.model = model
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_from(self.model, x, self.after)


@dataclass
class Session:
    config: TrainConfig
    spec: DatasetSpec
    runtime: Runtime
    source: WeightsSource
    model: nn.Module
    weights_report: str | None  # what building the model loaded; None when it came from a saved state
    # False while a random backbone's BatchNorm statistics are still to be measured; a checkpoint saved
    # then (a stop before the first batch) says so, and its resume measures them.
    batchnorm_measured: bool
    image_cache: ImageCache
    train_ds: ImageDataset
    val_ds: ImageDataset
    sampler: EpochBatchSampler
    steps_per_epoch: int
    loss_fn: nn.Module
    groups: list[dict[str, Any]]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    # Set by start_stage: the stage's feature cache (None: images every batch) and what trains on a batch
    # (the model, or the rest of it after the cache, maybe compiled or wrapped in DDP).
    store: FeatureStore | None = None
    module: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        self.module = self.model

    def start_stage(self, trainable: str, epoch: int, stop_requested: Callable[[], bool]) -> Iterator[Event]:
        """Freeze down to `trainable`, build (or load) the feature cache this stage can use, and wrap what
        trains for the runtime. A stop while a single process extracts features ends it early."""
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
                    if not runtime.distributed and stop_requested():
                        return
            except StopIteration as finished:
                self.store = finished.value
            why = plan.describe() + (" (loaded from the cache folder)" if self.store.from_disk else "")
            if self.store.fallback:
                why += f" (computed by PyTorch, not ONNX Runtime: {self.store.fallback})"
        module: nn.Module = FinishFrom(self.model, plan.until) if plan else self.model
        if config.compile and not plan:
            module = torch.compile(module)
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids)
        self.module = module
        trainable_params = count_parameters(p for p in self.model.parameters() if p.requires_grad)
        yield StageStarted(epoch + 1, trainable, trainable_params, count_parameters(self.model.parameters()),
                           why or "full forward pass every batch")

    def train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of the sampler's current epoch (`sampler.set_epoch` chooses it)."""
        if self.store is not None:
            for keys in self.sampler:
                yield self.store.train_batch(keys)
            return
        loader = torch.utils.data.DataLoader(self.train_ds, batch_sampler=self.sampler,
                                             num_workers=self.runtime.num_workers,
                                             pin_memory=self.runtime.device.type == "cuda")
        yield from loader

    def val_batches(self) -> tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]], nn.Module]:
        """This rank's share of the validation split: how many batches, the batches, and what to run them
        through (the model, or the rest of it after the feature cache)."""
        runtime = self.runtime
        n = len(self.val_ds)
        mine = list(range(runtime.rank, n, runtime.world_size))
        bs = max(self.config.batch_size // runtime.world_size, 1) * 2
        batches = [mine[i:i + bs] for i in range(0, len(mine), bs)]
        if self.store is not None:
            store = self.store
            source = ((store.val[torch.tensor(b, device=store.val.device)], store.val_labels[b]) for b in batches)
            return len(batches), source, FinishFrom(self.model, store.plan.until)
        loader = torch.utils.data.DataLoader(self.val_ds, batch_sampler=batches, num_workers=runtime.num_workers)
        return len(batches), iter(loader), self.model

    def head_lr(self) -> float:
        return next(g["lr"] for g in self.optimizer.param_groups if g["name"].startswith("head"))

    def decode_images(self, stop_requested: Callable[[], bool], chunk: int = 256) -> Iterator[Event]:
        """Decode and presize every image once, before loader workers fork and share the result."""
        paths = [s.path for s in self.spec.train + self.spec.val]
        for start in range(0, len(paths), chunk):
            if self.image_cache.full or stop_requested():
                break
            self.image_cache.warm(paths[start:start + chunk])
            yield Progress("decode", 0, min(start + chunk, len(paths)), len(paths))

    def calibrate_batchnorm(self, stop_requested: Callable[[], bool], max_images: int = 128) -> Iterator[Event]:
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
                if stop_requested():
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


def check_batch_split(config: TrainConfig, runtime: Runtime) -> None:
    """Refuse a global batch that the ranks cannot share equally."""
    if runtime.distributed and config.batch_size % runtime.world_size:
        raise TunerError(f"batch_size={config.batch_size} does not split evenly over {runtime.world_size} "
                         f"processes: use a multiple of {runtime.world_size} (it is the global batch).")


def build_session(config: TrainConfig, spec: DatasetSpec, source: WeightsSource, runtime: Runtime,
                  model_state: dict[str, torch.Tensor] | None = None, batchnorm_measured: bool = False) -> Session:
    """The run's pieces on `runtime`: the model from `source` (seeded), or from `model_state` when given
    (a resume; `batchnorm_measured` then says whether its statistics were measured)."""
    check_batch_split(config, runtime)
    if model_state is not None:
        model = new_resnet50(len(spec.classes))
        model.load_state_dict(model_state)
        report = None
    else:
        with seeded(config.seed):  # the random parts of the model (a random backbone) follow the seed
            built = build_model(len(spec.classes), source)
        model = built.model
        report = built.report.summary() if built.report else "random initialisation"
    model = model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and runtime.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    image_cache = ImageCache(resize_size(config.image_size), IMAGE_CACHE_BYTES)
    train_ds = ImageDataset(spec.train, train_transform(config.augment, config.image_size), image_cache, config.seed)
    val_ds = ImageDataset(spec.val, eval_transform(config.image_size), image_cache, config.seed)
    sampler = EpochBatchSampler([s.label for s in spec.train], config.batch_size // runtime.world_size,
                                config.seed, balanced=config.imbalance == "sampler",
                                rank=runtime.rank, world_size=runtime.world_size)
    weight = class_weights([s.label for s in spec.train], len(spec.classes)) if config.imbalance == "loss" else None
    loss_fn = nn.CrossEntropyLoss(weight=weight.to(runtime.device) if weight is not None else None,
                                  label_smoothing=config.label_smoothing)
    groups = parameter_groups(model, config, source.pretrained)
    return Session(
        config=config, spec=spec, runtime=runtime, source=source, model=model, weights_report=report,
        batchnorm_measured=batchnorm_measured or source.pretrained or config.bn != "frozen",  # nothing to measure
        image_cache=image_cache, train_ds=train_ds, val_ds=val_ds, sampler=sampler,
        steps_per_epoch=len(sampler.batches(0)), loss_fn=loss_fn, groups=groups,
        optimizer=make_optimizer(groups, config),
        scaler=torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16))
