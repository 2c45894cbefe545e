"""The frozen-backbone cache: compute what frozen stages output once, not every epoch.

While the backbone is frozen (trainable='head', or the head-only first stage of a two-stage run)
and its BatchNorm keeps its statistics, the backbone is a fixed function of the image. Its 2048-d
features are computed once per image (per augmented view, when augmentation is on) and the head
trains on them: seconds instead of minutes per epoch on a CPU. When only some stages are frozen and
augmentation is off, the frozen prefix's output is cached instead, within a memory budget.

Same inputs, same numbers: view v of image i is the augmentation the plain path applies in epoch v
(see `data.sample_seed`), so with cache_views >= epochs the cached run sees exactly the plain run's
images; with fewer views, epoch e reuses view e % views. Caches are keyed by the frozen weights, the
dataset files, the transform and image size, and saved under the cache folder for the next run.

On a CPU the frozen stages run through ONNX Runtime when it is installed (`extraction_backend`),
which extracts faster than eager PyTorch (the README's speed section has the figures). Its features
differ from eager ones by float rounding only (the export is checked against PyTorch first), and the
backend is part of the cache key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..config import TrainConfig
from ..data.images import ImageDataset
from ..data.transforms import describe_transform
from ..export.ort import OnnxModel, OnnxRuntimeUnavailable, resolve_backend
from ..model.resnet import STAGES, backbone_forward, stage_of, trainable_stages
from ..paths import atomic_write, tuner_home
from ..runtime.setup import Runtime, all_reduce_sum

# Output channels and downsampling of each stage's output, for memory estimates.
STAGE_OUTPUT = {"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 16)}
PREFIX_FOR = {"layer4": "layer3", "layer3": "layer2", "layer2": "layer1"}  # trainable -> last frozen stage
FEATURES_VERSION = 2  # 2: the extraction backend is part of the key


@dataclass
class CachePlan:
    until: str  # last frozen stage whose output is cached; 'layer4' means pooled 2048-d features
    views: int  # augmented views of each training image
    augmented: bool = False  # whether the training views are augmented

    def describe(self) -> str:
        what = "backbone features" if self.until == "layer4" else f"outputs of the frozen stages up to {self.until}"
        text = f"feature cache on: {what} computed once per image"
        if self.augmented:
            text += (f", {self.views} augmented views per image reused across epochs" if self.views > 1 else
                     ", one augmented view per image reused every epoch (raise cache_views for more variety)")
        return text


def plan_cache(config: TrainConfig, trainable_now: str, n_images: int) -> tuple[CachePlan | None, str]:
    """Whether this stage of training can use a cache, and a sentence saying why (not)."""
    if config.feature_cache == "off":
        return None, "feature cache off (as asked)"
    if config.bn == "train":
        return None, "feature cache off: frozen BatchNorm layers update their statistics (bn='train')"
    if trainable_now == "head":
        views = config.cache_views if config.augment.enabled else 1
        need = views * n_images * prefix_bytes("layer4", config.image_size)
        if need > config.cache_budget_mb * 2**20:
            return None, (f"feature cache off: {views} view(s) of {n_images} images need {need / 2**20:.0f} MiB, "
                          f"more than cache_budget_mb={config.cache_budget_mb}")
        return CachePlan("layer4", views, augmented=config.augment.enabled), ""
    if trainable_now not in PREFIX_FOR:
        return None, f"feature cache off: trainable={trainable_now} leaves too little frozen to be worth caching"
    if config.augment.enabled:
        return None, ("feature cache off: augmentation changes every image each epoch; with augmentation 'none' the "
                      "frozen stages' outputs would be cached")
    prefix = PREFIX_FOR[trainable_now]
    need = n_images * prefix_bytes(prefix, config.image_size)
    if need > config.cache_budget_mb * 2**20:
        return None, (f"feature cache off: the frozen stages' outputs need {need / 2**20:.0f} MiB, more than "
                      f"cache_budget_mb={config.cache_budget_mb}")
    return CachePlan(prefix, 1), ""


def output_shape(until: str, image_size: int) -> tuple[int, ...]:
    """Shape of one image's cached tensor (each stride-2 step rounds up, as ResNet's padding does)."""
    if until == "layer4":
        return (2048,)
    channels, stride = STAGE_OUTPUT[until]
    side = -(-image_size // stride)
    return (channels, side, side)


def prefix_bytes(stage: str, image_size: int) -> int:
    return 4 * int(torch.Size(output_shape(stage, image_size)).numel())


def frozen_fingerprint(model: nn.Module, until: str) -> str:
    """Hash of every tensor (weights and BatchNorm statistics) in the stages up to `until`."""
    stages = STAGES[: STAGES.index(until) + 1]
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if stage_of(name) in stages:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def extraction_backend(runtime: Runtime, until: str = "layer4") -> str:
    """What computes the frozen stages: ONNX Runtime for the whole backbone on a CPU in fp32 when
    installed, else PyTorch.

    Mixed precision and GPUs stay with PyTorch (autocast is a PyTorch feature; the GPU path is fast
    already), and so do torchrun ranks, which would each ask ORT for every core. Prefix caches stay
    with PyTorch too: the stages trained on top of them use batch statistics, which amplify the float
    rounding between the backends into visible differences in layer4's weights within two epochs.
    Extracting a prefix is a small part of such a run anyway (the unfrozen stages train every epoch).

    ORT's features differ from eager ones by float rounding (about 1e-5 of their norm). A head trained
    on them usually lands as close to the eager-trained head, but not always: where the softmax is
    saturated (large features, e.g. a random backbone's), a sample whose top two logits nearly tie can
    tip the other way in one step, and the head then ends about 1% away. Any other change of rounding
    (another CPU's kernels, other thread counts) does the same, so only the eager backend is expected to
    reproduce the plain loop's weights to 1e-5.
    """
    if runtime.amp_dtype is not None or runtime.distributed or until != "layer4":
        return "torch"
    return resolve_backend("auto", runtime.device)


def cache_key(model: nn.Module, plan: CachePlan, data_fingerprint: str, train_ds: ImageDataset,
              val_ds: ImageDataset, runtime: Runtime, seed: int, backend: str | None = None) -> str:
    backend = backend or extraction_backend(runtime, plan.until)
    parts = [f"v{FEATURES_VERSION}", frozen_fingerprint(model, plan.until), data_fingerprint, plan.until,
             str(plan.views), str(seed), describe_transform(train_ds.transform), describe_transform(val_ds.transform),
             str(runtime.amp_dtype), runtime.device.type, str(runtime.channels_last), backend]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def cache_folder(config: TrainConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else tuner_home() / "features"


@dataclass
class FeatureStore:
    plan: CachePlan
    train: torch.Tensor  # [views, n_train, ...]
    val: torch.Tensor  # [n_val, ...]
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    from_disk: bool = False
    # Why eager PyTorch computed the features where ONNX Runtime was meant to ("" when it was not meant to,
    # or did): said in the run's log, and the features are not saved, as they belong under another key.
    fallback: str = ""

    def train_batch(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor([i for i, _ in keys])
        view = keys[0][1] % self.plan.views
        return self.train[view, index.to(self.train.device)], self.train_labels[index]


class BackbonePrefix(nn.Module):
    """The stages of `model` up to `until`, sharing its modules: what the cache stands in for.

    Holding only those stages keeps later stages and the head out of the exported graph and out of
    its cache key, so one export of a frozen ImageNet backbone serves every dataset and head.
    """

    def __init__(self, model: nn.Module, until: str):
        super().__init__()
        self.until = until
        for name in ("conv1", "bn1", "relu", "maxpool"):
            setattr(self, name, getattr(model, name))
        for stage in STAGES[1: STAGES.index(until) + 1]:
            setattr(self, stage, getattr(model, stage))
        if until == "layer4":
            self.avgpool = model.avgpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return backbone_forward(self, x, self.until)


def build_store(model: nn.Module, plan: CachePlan, train_ds: ImageDataset, val_ds: ImageDataset, image_size: int,
                runtime: Runtime, key: str, folder: Path, batch_size: int, backend: str | None = None) -> Iterator:
    """Load the cache from disk or compute it; yields (done, total) progress, returns a FeatureStore.

    `backend` must be the one `key` was made with (default: `extraction_backend(runtime)`).
    """
    path = folder / f"{key}.pt"
    saved = _read_saved(path, plan, len(train_ds), len(val_ds), image_size)
    if runtime.distributed:
        # Every rank must take the same branch, or the extraction's all-reduce waits forever: use the
        # file only if every rank could read it (a node-local cache folder may hold it on one node only).
        if all_reduce_sum([float(saved is not None)], runtime)[0] < runtime.world_size:
            saved = None
    if saved is not None:
        return FeatureStore(plan, saved["train"], saved["val"], _labels(train_ds), _labels(val_ds), True)
    backend = backend or extraction_backend(runtime, plan.until)
    total = plan.views * len(train_ds) + len(val_ds)
    forward = _frozen_forward(model, plan.until, image_size, runtime, backend)
    done = 0
    train_views = []
    for view in range(plan.views):
        part = yield from _extract(forward, train_ds, plan.until, image_size, runtime, batch_size, view, done, total)
        done += len(train_ds)
        train_views.append(part)
    val = yield from _extract(forward, val_ds, plan.until, image_size, runtime, batch_size, 0, done, total)
    store = FeatureStore(plan, torch.stack(train_views), val, _labels(train_ds), _labels(val_ds),
                         fallback=forward.fallback)
    if runtime.is_main and not forward.fallback:  # a fallback's features belong to another key
        payload = {"train": store.train.cpu(), "val": store.val.cpu()}
        try:
            atomic_write(path, lambda tmp: torch.save(payload, tmp))
        except (OSError, RuntimeError):  # torch.save reports a full disk as RuntimeError
            pass  # no room to keep it: this run still has it in memory
    return store


def _read_saved(path: Path, plan: CachePlan, n_train: int, n_val: int, image_size: int) -> dict | None:
    """A cache file's tensors when it is there, readable and of the expected shapes; else None (recompute)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        shape = output_shape(plan.until, image_size)
        if (tuple(saved["train"].shape) == (plan.views, n_train, *shape)
                and tuple(saved["val"].shape) == (n_val, *shape)):
            return saved
    except Exception:  # noqa: BLE001 - a damaged or foreign cache file is recomputed, whatever the damage
        pass
    return None


def _labels(ds: ImageDataset) -> torch.Tensor:
    return torch.tensor([s.label for s in ds.samples], dtype=torch.long)


class _FrozenForward:
    """Images -> frozen-stage outputs, through ONNX Runtime or eager PyTorch; `backend` says which ran."""

    def __init__(self, prefix: BackbonePrefix, runtime: Runtime, onnx: OnnxModel | None, fallback: str = ""):
        self.prefix, self.runtime, self.onnx = prefix, runtime, onnx
        self.backend = "onnxruntime" if onnx else "torch"
        self.fallback = fallback  # why ONNX Runtime was asked for and not used

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onnx is not None:
            return self.onnx(x).to(self.runtime.device)
        x = x.to(self.runtime.device, non_blocking=True)
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.runtime.autocast():
            return self.prefix(x).float()


def _frozen_forward(model: nn.Module, until: str, image_size: int, runtime: Runtime, backend: str) -> _FrozenForward:
    prefix = BackbonePrefix(model, until)
    if backend == "onnxruntime":
        try:
            return _FrozenForward(prefix, runtime, OnnxModel(prefix, image_size, f"backbone-{until}"))
        except OnnxRuntimeUnavailable as exc:  # eager PyTorch computes the same features, only slower
            return _FrozenForward(prefix, runtime, None, fallback=str(exc))
    return _FrozenForward(prefix, runtime, None)


@torch.no_grad()
def _extract(forward: _FrozenForward, ds: ImageDataset, until: str, image_size: int, runtime: Runtime,
             batch_size: int, view: int, done: int, total: int) -> Iterator:
    """Frozen-stage outputs for every image of `ds` (view `view`). Under torchrun each rank computes
    every world_size-th image and one all-reduce assembles the whole tensor on every rank."""
    mine = list(range(runtime.rank, len(ds), runtime.world_size))
    out = torch.zeros((len(ds), *output_shape(until, image_size)), dtype=torch.float32, device=runtime.device)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=[[(i, view) for i in mine[s:s + batch_size]] for s in range(0, len(mine), batch_size)],
        num_workers=runtime.num_workers)
    position = 0
    for x, _ in loader:
        feats = forward(x)
        index = torch.tensor(mine[position:position + len(x)], device=runtime.device)
        out[index] = feats.contiguous()
        position += len(x)
        yield min(total, done + position * runtime.world_size), total
    if runtime.distributed:
        dist.all_reduce(out)  # each image was computed by exactly one rank; the others hold zeros there
    return out


def cached_stages(plan: CachePlan) -> tuple[str, ...]:
    """The stages the cache stands in for (all of them frozen while it is used)."""
    return STAGES[: STAGES.index(plan.until) + 1]


def check_plan_frozen(plan: CachePlan, trainable_now: str) -> None:
    overlap = set(cached_stages(plan)) & set(trainable_stages(trainable_now))
    if overlap:  # a programming error, not a user error: the cache would hide learning stages
        raise RuntimeError(f"feature cache covers training stages {sorted(overlap)}")
