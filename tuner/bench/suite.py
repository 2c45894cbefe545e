"""Benchmarks: tuner's fast paths against the plain PyTorch loops a user would write, side by side.

`python -m tuner bench` (or `python bench/run.py`) measures, in one run on the machine at hand:

1. head-only training, N epochs: tuner's `train()` with its defaults (frozen-backbone feature cache,
   ONNX Runtime extraction on a CPU) against the plain loop of the PyTorch transfer-learning
   tutorial (frozen torchvision ResNet50, SGD on `fc`, a full forward pass every epoch); wall time,
   and the best validation accuracy of both sides (equal accuracy is part of the claim);
2. prediction latency at batch 1 on the CPU, image file to top-5: `Predictor.predict` against eager
   PyTorch (the model forward alone is reported beside it);
3. full fine-tune throughput (training images/s, every stage trains): `train()` against the plain loop;
4. on a CUDA GPU: training images/s with tuner's GPU settings (mixed precision, channels_last, cuDNN
   autotuning, pinned memory and non-blocking copies) against plain FP32 eager, and the share of the
   GPU's peak that reaches;

plus the measurements behind tuner's CPU defaults (channels_last, bf16 autocast, loader workers).

The machine may be shared, so each item runs both sides alternately, `repeats` times, and reports
the median ratio with its spread (min-max over repeats). Both sides start from the same backbone
weights: torchvision's ImageNet file when it is cached, else a random ResNet50 whose BatchNorm
statistics are measured on the training images (saved once; both sides load that file). The data is
the demo dataset's generator, rendered at the benchmark's image size into train/ and val/ folders.

Benchmarks are never tests: tests (tests/test_bench.py) check what this module reports, not how
fast anything is. Nothing heavy is imported until a benchmark runs, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import TunerError

BENCH_VERSION = 1
ITEMS = ("head", "predict", "finetune", "gpu", "settings")
TARGETS = {"head": 8.0, "predict": 2.0, "finetune": 1.0, "gpu": 2.5}
RESNET50_GMACS_224 = 4.1  # forward multiply-accumulates per 224 px image; training is about 3x a forward
NO_GPU = "skipped: no CUDA GPU on this machine"
# Dense BF16 (FP16 where the card has no BF16) tensor-core peak in TFLOP/s, from the vendors' data
# sheets, matched against torch.cuda.get_device_name(); the first matching entry wins.
GPU_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("V100", 125.0),
    ("T4", 65.0),
)
MLPERF_H100_SHARE = 0.17  # MLPerf Training's ResNet50 on H100s reaches about this share of peak


@dataclass
class BenchSettings:
    """What to measure and at which size. `quick_settings()` is the smoke-test size (seconds, not minutes)."""

    image_size: int = 224
    epochs: int = 10  # item 1
    finetune_epochs: int = 2  # item 3: the first epoch is warm-up, later ones are measured
    train_per_class: int = 40  # demo images per class (4 classes) in train/ ...
    val_per_class: int = 10  # ... and in val/
    batch_size: int = 32
    repeats: int = 3
    latency_calls: int = 20  # item 2: calls per timed block
    settings_steps: int = 3  # synthetic training steps per setting checked
    settings_batch: int = 8
    gpu_batch_size: int = 128
    gpu_steps: int = 30
    gpu_warmup: int = 10
    gpu_compile: bool = False  # also measure tuner's settings with torch.compile
    gpu_peak_tflops: float = 0.0  # 0: look the card up in GPU_PEAK_TFLOPS
    items: tuple[str, ...] = ITEMS
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_settings(cls, **changes: Any) -> "BenchSettings":
        values = dict(image_size=32, epochs=2, finetune_epochs=1, train_per_class=6, val_per_class=3, batch_size=8,
                      repeats=1, latency_calls=3, settings_steps=1, settings_batch=4, gpu_batch_size=8, gpu_steps=2,
                      gpu_warmup=1, quick=True)
        values.update(changes)
        return cls(**values)

    def validate(self) -> "BenchSettings":
        for name in ("epochs", "finetune_epochs", "repeats", "latency_calls", "settings_steps", "gpu_steps"):
            if getattr(self, name) < 1:
                raise TunerError(f"bench: {name}={getattr(self, name)}: use at least 1.")
        if not 16 <= self.image_size <= 1024:
            raise TunerError(f"bench: image_size={self.image_size} is out of range: use 16 to 1024 pixels.")
        if self.train_per_class < 2 or self.val_per_class < 1:
            raise TunerError("bench: use at least 2 training and 1 validation image per class.")
        if self.batch_size < 2 or self.settings_batch < 2 or self.gpu_batch_size < 2:
            raise TunerError("bench: batch sizes must be at least 2 (BatchNorm trains on batch statistics).")
        if (4 * self.train_per_class) % self.batch_size == 1:
            # The plain loops keep the last partial batch (DataLoader's default), and BatchNorm in train
            # mode cannot normalise a batch of one image.
            raise TunerError(f"bench: {4 * self.train_per_class} training images leave a last batch of one image "
                             f"at batch_size={self.batch_size}: change train_per_class or batch_size.")
        unknown = set(self.items) - set(ITEMS)
        if unknown or not self.items:
            raise TunerError(f"bench: unknown items {sorted(unknown)}: choose from {', '.join(ITEMS)}.")
        return self


# ---- small helpers ---------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """The machine the numbers belong to: CPU model and cores, memory, library versions, GPU."""
    import torch
    import torchvision

    from ..runtime.setup import cpu_count

    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    flags = _cpu_flags()
    cores = cpu_count()
    info = {
        "cpu": cpu, "cores": cores, "memory_gib": memory_gib,
        "cpu_features": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        "python": platform.python_version(), "os": platform.platform(terse=True),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "onnxruntime": ort_version,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def describe_machine(info: dict[str, Any]) -> str:
    text = (f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; torch {info['torch']}, "
            f"torchvision {info['torchvision']}, onnxruntime {info['onnxruntime']}")
    return text + (f"; GPU {info['gpu']}" if info.get("gpu") else "; no GPU")


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


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


def make_dataset(folder: Path, settings: BenchSettings) -> Path:
    """train/ and val/ folders of demo images rendered at the size the loaders resize them to."""
    from ..data.demo import write_demo_dataset
    from ..data.transforms import resize_size

    if not (folder / ".complete").is_file():
        px = max(resize_size(settings.image_size), 40)
        write_demo_dataset(folder / "train", settings.train_per_class, size=px, seed=settings.seed)
        write_demo_dataset(folder / "val", settings.val_per_class, size=px, seed=settings.seed + 1)
        (folder / ".complete").write_text("bench data\n")
    return folder


def backbone_weights(folder: Path, data: Path, settings: BenchSettings) -> tuple[Path, str]:
    """The weights both sides start from: ImageNet when cached; else a calibrated random backbone."""
    import torch
    import torchvision

    from ..data.discover import discover_dataset
    from ..data.images import ImageCache, ImageDataset
    from ..data.transforms import eval_transform, resize_size
    from ..model.resnet import calibrate_batchnorm
    from ..model.weights import resolve_weights

    source = resolve_weights("imagenet", allow_download=False)
    if source.pretrained:
        return Path(source.path), f"ImageNet weights ({Path(source.path).name})"
    path = folder / f"random-calibrated-{settings.image_size}.pth"
    if not path.is_file():
        # A random ResNet50's BatchNorm holds init values; frozen, its activations grow without bound,
        # and neither side could learn anything. Measured statistics make it a sane fixed backbone.
        torch.manual_seed(settings.seed)
        model = torchvision.models.resnet50()
        spec = discover_dataset(data)
        ds = ImageDataset(spec.train, eval_transform(settings.image_size), ImageCache(resize_size(settings.image_size)))
        order = list(range(len(ds)))[:128]
        chunks = [order[i:i + 32] for i in range(0, len(order), 32)]
        with torch.no_grad():
            calibrate_batchnorm(model, (torch.stack([ds[i][0] for i in c]) for c in chunks if len(c) > 1))
        torch.save(model.state_dict(), path)
    return path, ("a random ResNet50 with BatchNorm statistics measured on the training images (no ImageNet "
                  "weights in the torch hub cache here; speed does not depend on the weights)")


# ---- the plain loops (written as a user's notebook would) ---------------------------------------------

def _plain_transforms(image_size: int, augment: bool):
    from torchvision import transforms as T

    normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if augment:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    return T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), normalize])


def plain_model(weights: Path, num_classes: int, freeze: bool):
    import torch
    import torchvision
    from torch import nn

    model = torchvision.models.resnet50()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    if freeze:
        for p in model.parameters():
            p.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def plain_train(data: Path, weights: Path, image_size: int, epochs: int, batch_size: int, head_only: bool,
                seed: int = 0, lr: float = 0.01) -> dict[str, Any]:
    """The PyTorch transfer-learning tutorial's loop: ImageFolder, DataLoader with its defaults,
    SGD with momentum, model.train() / model.eval(), a full forward pass every batch of every epoch.

    Returns wall time, per-epoch training-phase seconds, best and final validation accuracy, and the
    best epoch's weights (kept in memory during the loop, as the tutorial does).
    """
    import torch
    from torch import nn
    from torchvision import datasets

    start = time.perf_counter()
    torch.manual_seed(seed)
    train_ds = datasets.ImageFolder(data / "train", _plain_transforms(image_size, augment=True))
    val_ds = datasets.ImageFolder(data / "val", _plain_transforms(image_size, augment=False))
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=batch_size)
    model = plain_model(weights, len(train_ds.classes), freeze=head_only)
    params = model.fc.parameters() if head_only else model.parameters()
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    best_acc, best_state, accs, train_seconds = -1.0, None, [], []
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        train_seconds.append(time.perf_counter() - t0)
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
        acc = correct / len(val_ds)
        accs.append(acc)
        if acc > best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    return {"seconds": time.perf_counter() - start, "train_seconds": train_seconds, "best_val_acc": best_acc,
            "final_val_acc": accs[-1], "val_accs": accs, "n_train": len(train_ds), "n_val": len(val_ds),
            "best_state": best_state, "classes": train_ds.classes}


# ---- tuner's side ------------------------------------------------------------------------------------

def tuner_train(config, home: Path) -> dict[str, Any]:
    """Run `train()` to the end from a cold TUNER_HOME; wall time, events with timestamps, accuracy."""
    from ..events import Finished
    from ..train.run import train

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


def train_phase_seconds(timed: list[tuple[float, Any]]) -> dict[int, float]:
    """Seconds of each epoch's training phase, from `train()`'s timestamped events.

    The events are consumed as they come, so an epoch's training phase starts when the event before
    its first training step was handed over and ends with its last step's Progress event: data
    loading and steps count, validation and checkpoint writing do not (the plain loop is timed alike).
    """
    from ..events import Progress

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
    """Where a `train()` run's time went: each gap between events is charged to the event that ends
    it (the loop yields right after the work an event reports), by Progress phase or event kind."""
    from ..events import CheckpointSaved, Progress

    spent: dict[str, float] = {}
    previous = start
    for t, event in timed:
        if isinstance(event, Progress):
            kind = event.phase
        elif isinstance(event, CheckpointSaved):
            kind = "checkpoints"
        else:
            kind = "setup and other"
        spent[kind] = spent.get(kind, 0.0) + (t - previous)
        previous = t
    return {k: round(v, 3) for k, v in spent.items()}


def _tuner_config(data: Path, out: Path, weights: Path, settings: BenchSettings, **changes: Any):
    from ..config import TrainConfig

    values = dict(data=str(data), out=str(out), weights=str(weights), image_size=settings.image_size,
                  batch_size=settings.batch_size, seed=settings.seed, cache_dir=str(out.parent / f"{out.name}-cache"))
    values.update(changes)
    return TrainConfig(**values)


# ---- the items --------------------------------------------------------------------------------------

def bench_head_only(ctx: "_Context") -> dict[str, Any]:
    """Item 1: head-only training for `epochs` epochs, wall time and best validation accuracy."""
    s = ctx.settings
    ratios, tuner_s, plain_s, runs = [], [], [], []
    for r in range(s.repeats):
        def plain() -> dict[str, Any]:
            return plain_train(ctx.data, ctx.weights, s.image_size, s.epochs, s.batch_size, head_only=True,
                               seed=s.seed)

        def ours() -> dict[str, Any]:
            config = _tuner_config(ctx.data, ctx.work / f"head-{r}", ctx.weights, ctx.settings, trainable="head",
                                   epochs=s.epochs)
            return tuner_train(config, ctx.work / f"home-head-{r}")

        p, t = _alternate(r, plain, ours)
        ratios.append(p["seconds"] / t["seconds"])
        tuner_s.append(t["seconds"])
        plain_s.append(p["seconds"])
        runs.append((p, t))
    # The accuracies of the last repeat are reported (every repeat trains the same way: same seed).
    p, t = runs[-1]
    plain_path = ctx.work / "head-plain-best.pth"
    _save_state(p["best_state"], plain_path)
    tolerance = 1.0 / p["n_val"]  # one validation image
    accuracy_ok = t["best_val_acc"] >= p["best_val_acc"] - tolerance - 1e-9
    ratio = statistics.median(ratios)
    return _item(
        "head", f"head-only training, {s.epochs} epochs, {s.image_size} px, {p['n_train']}+{p['n_val']} images: "
        "wall time (best val acc)", "s", statistics.median(tuner_s), statistics.median(plain_s), ratios,
        met=ratio >= TARGETS["head"] and accuracy_ok,
        target=f">= {TARGETS['head']:g}x, val acc not lower",
        tuner_text=f"{statistics.median(tuner_s):.1f} s (acc {t['best_val_acc']:.3f})",
        plain_text=f"{statistics.median(plain_s):.1f} s (acc {p['best_val_acc']:.3f})",
        details={"tuner_best_val_acc": t["best_val_acc"], "plain_best_val_acc": p["best_val_acc"],
                 "tuner_final_val_acc": t["final_val_acc"], "plain_final_val_acc": p["final_val_acc"],
                 "accuracy_tolerance": tolerance, "accuracy_ok": accuracy_ok,
                 "n_train": p["n_train"], "n_val": p["n_val"], "epochs": s.epochs,
                 "tuner_seconds": tuner_s, "plain_seconds": plain_s,
                 "tuner_checkpoint": t["checkpoint"], "plain_weights": str(plain_path),
                 "plain_recipe": "frozen torchvision resnet50, SGD(fc, lr=0.01, momentum=0.9), StepLR(7, 0.1), "
                                 "RandomResizedCrop+flip, DataLoader defaults, model.train() each epoch",
                 "tuner_recipe": "train(trainable='head') with its defaults (AdamW, cosine, light augmentation, "
                                 "feature cache, ONNX Runtime extraction on a CPU), cold caches each repeat",
                 "fast_path": _fast_path(t), "tuner_breakdown_s": t["breakdown"]})


def _fast_path(run: dict[str, Any]) -> str:
    from ..events import StageStarted

    return next((e.fast_path for _, e in run["timed"] if isinstance(e, StageStarted)), "")


def _save_state(state: dict, path: Path) -> None:
    import torch

    torch.save(state, path)


def bench_predict(ctx: "_Context") -> dict[str, Any]:
    """Item 2: batch-1 latency on the CPU, JPEG file to top-5, Predictor vs an eager notebook."""
    import random

    import torch
    from PIL import Image

    from ..data.demo import demo_image
    from ..export.ort import OnnxModel, onnxruntime_installed
    from ..infer.predict import Predictor

    s = ctx.settings
    classes = ["circles", "squares", "stripes", "triangles"]
    image = ctx.work / "photo.jpg"
    demo_image("circles", random.Random(7), size=2 * s.image_size).save(image, quality=90)
    torch.manual_seed(s.seed)
    model = plain_model(ctx.weights, len(classes), freeze=False).eval()
    transform = _plain_transforms(s.image_size, augment=False)

    @torch.no_grad()
    def plain_probabilities() -> torch.Tensor:
        x = transform(Image.open(image).convert("RGB")).unsqueeze(0)
        return torch.softmax(model(x), dim=1)[0]

    def plain_predict() -> list[tuple[str, float]]:
        values, indices = plain_probabilities().topk(min(5, len(classes)))
        return [(classes[i], float(v)) for v, i in zip(values, indices)]

    with tuner_home(ctx.work / "home-predict"):
        predictor = Predictor(copy.deepcopy(model), classes, s.image_size, "bench", device="cpu")
        t0 = time.perf_counter()
        predictor.predict([str(image)], top_k=5)
        first_call = time.perf_counter() - t0  # includes the one-time ONNX export and check
        if predictor.backend_note:
            raise TunerError(f"bench: the predictor fell back to PyTorch ({predictor.backend_note})")
        expected = plain_probabilities()
        got = predictor.probabilities([str(image)])[0]
        if not torch.allclose(got, expected, atol=1e-3):  # ONNX Runtime rounds differently, by ~1e-6 here
            raise TunerError("bench: tuner's probabilities differ from eager PyTorch's; not timing a wrong answer "
                             f"(max difference {float((got - expected).abs().max()):.3g})")

        def ours() -> None:
            predictor.predict([str(image)], top_k=5)

        ratios, tuner_ms, plain_ms = _latency_blocks(ctx, plain_predict, ours)
        # The model alone, on one preprocessed tensor: how much of the gap is the runtime itself.
        x = transform(Image.open(image).convert("RGB")).unsqueeze(0)
        fwd_ratios, fwd_tuner, fwd_plain = [], [], []
        if onnxruntime_installed():
            onnx = OnnxModel(model, s.image_size, "classifier")  # the file the predictor exported
            with torch.no_grad():
                fwd_ratios, fwd_tuner, fwd_plain = _latency_blocks(ctx, lambda: model(x), lambda: onnx(x))
    ratio = statistics.median(ratios)
    return _item(
        "predict", f"prediction latency, batch 1, CPU, {s.image_size} px model, {2 * s.image_size} px JPEG to "
        "top-5", "ms", statistics.median(tuner_ms), statistics.median(plain_ms), ratios,
        met=ratio >= TARGETS["predict"], target=f">= {TARGETS['predict']:g}x",
        details={"backend": predictor.backend, "first_call_ms": first_call * 1000,
                 "tuner_ms": tuner_ms, "plain_ms": plain_ms,
                 "forward_only": ({"tuner_ms": statistics.median(fwd_tuner), "plain_ms": statistics.median(fwd_plain),
                                   "ratio": statistics.median(fwd_ratios), "ratios": fwd_ratios}
                                  if fwd_ratios else None),
                 "plain_recipe": "torchvision transforms on PIL, model.eval(), torch.no_grad(), fp32, default threads",
                 "calls_per_block": s.latency_calls})


def _latency_blocks(ctx: "_Context", plain: Callable[[], Any], ours: Callable[[], Any]):
    """Median latency (ms) of blocks of calls, plain and tuner alternating block by block."""
    s = ctx.settings
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

        p, t = _alternate(r, lambda: block(plain), lambda: block(ours))
        plain_ms.append(p)
        ours_ms.append(t)
        ratios.append(p / t)
    return ratios, ours_ms, plain_ms


def bench_finetune(ctx: "_Context") -> dict[str, Any]:
    """Item 3: full fine-tune (every stage trains), training images/s after a warm-up epoch."""
    from ..events import RunStarted

    s = ctx.settings
    ratios, ours, plains, runtimes = [], [], [], []
    measured = range(2, s.finetune_epochs + 1) if s.finetune_epochs > 1 else range(1, 2)
    for r in range(s.repeats):
        def plain() -> float:
            run = plain_train(ctx.data, ctx.weights, s.image_size, s.finetune_epochs, s.batch_size, head_only=False,
                              seed=s.seed, lr=0.001)
            return run["n_train"] * len(measured) / sum(run["train_seconds"][e - 1] for e in measured)

        def tuner() -> float:
            config = _tuner_config(ctx.data, ctx.work / f"finetune-{r}", ctx.weights, s, trainable="all",
                                   epochs=s.finetune_epochs)
            run = tuner_train(config, ctx.work / f"home-finetune-{r}")
            runtimes.append(next(e.device for _, e in run["timed"] if isinstance(e, RunStarted)))
            phases = train_phase_seconds(run["timed"])
            return _trained_images(ctx) * len(measured) / sum(phases[e] for e in measured)

        p, t = _alternate(r, plain, tuner)
        plains.append(p)
        ours.append(t)
        ratios.append(t / p)
    ratio = statistics.median(ratios)
    return _item(
        "finetune", f"full fine-tune, {s.image_size} px, batch {s.batch_size}: training images/s", "img/s",
        statistics.median(ours), statistics.median(plains), ratios, met=ratio >= TARGETS["finetune"],
        target=f">= {TARGETS['finetune']:g}x", higher_is_better=True,
        details={"tuner_img_s": ours, "plain_img_s": plains, "measured_epochs": list(measured),
                 "plain_recipe": "torchvision resnet50, SGD(all, lr=0.001, momentum=0.9), RandomResizedCrop+flip, "
                                 "DataLoader defaults",
                 "tuner_recipe": "train(trainable='all') with its defaults (AdamW, light augmentation, images "
                                 "decoded once, loader workers, precision and memory layout chosen for the "
                                 "machine; each run starts from an empty TUNER_HOME, so it measures the layout "
                                 "first, outside the timed epochs)",
                 "tuner_runtime": runtimes})


def _trained_images(ctx: "_Context") -> int:
    """Images one epoch of train() steps on (a last batch of one is dropped; validate() refuses that)."""
    return 4 * ctx.settings.train_per_class


def bench_gpu(ctx: "_Context") -> dict[str, Any]:
    """Item 4: GPU training images/s, tuner's settings vs plain FP32 eager, and the share of peak."""
    import torch

    s = ctx.settings
    if not torch.cuda.is_available():
        return _item("gpu", "GPU training images/s (tuner's settings vs plain FP32 eager)", "img/s", None, None, [],
                     met=None, target=f">= {TARGETS['gpu']:g}x", higher_is_better=True, skipped=NO_GPU)
    from ..runtime.setup import compile_blocker

    device = torch.device("cuda")
    ratios, ours, plains, compiled = [], [], [], []
    compile_skipped = compile_blocker(device) if s.gpu_compile else ""  # measured without it, and says why
    for r in range(s.repeats):
        p, t = _alternate(r, lambda: gpu_training_rate(device, s, tuner_settings=False),
                          lambda: gpu_training_rate(device, s, tuner_settings=True))
        plains.append(p)
        ours.append(t)
        ratios.append(t / p)
        if s.gpu_compile and not compile_skipped:
            compiled.append(gpu_training_rate(device, s, tuner_settings=True, compile=True))
    name = torch.cuda.get_device_name(device)
    peak = s.gpu_peak_tflops or gpu_peak_tflops(name)
    best = max(statistics.median(ours), statistics.median(compiled) if compiled else 0.0)
    share = training_share_of_peak(best, s.image_size, peak) if peak else None
    ratio = statistics.median(ratios)
    share_text = (f"{share:.1%} of {peak:g} TFLOP/s peak (MLPerf on H100: about {MLPERF_H100_SHARE:.0%})" if share
                  else f"peak of {name} unknown: pass --gpu-peak-tflops")
    return _item(
        "gpu", f"GPU training images/s, {s.image_size} px, batch {s.gpu_batch_size} ({name}); {share_text}", "img/s",
        statistics.median(ours), statistics.median(plains), ratios, met=ratio >= TARGETS["gpu"],
        target=f">= {TARGETS['gpu']:g}x", higher_is_better=True,
        details={"gpu": name, "tuner_img_s": ours, "plain_img_s": plains, "compiled_img_s": compiled or None,
                 "compile_skipped": compile_skipped or None,
                 "peak_tflops": peak or None, "share_of_peak": share,
                 "flops_per_image": training_flops_per_image(s.image_size),
                 "tuner_settings": "autocast bf16 (fp16 + GradScaler before Ampere), channels_last, "
                                   "cudnn.benchmark, TF32, pinned memory + non_blocking copies, AdamW",
                 "plain_recipe": "fp32, contiguous, PyTorch's default backend flags, pageable copies, SGD"})


def gpu_peak_tflops(name: str) -> float:
    for key, tflops in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return 0.0


def training_flops_per_image(image_size: int) -> float:
    """Forward + backward FLOPs of one image: 3 x forward MACs x 2 FLOPs/MAC, scaled by pixel count."""
    return 3 * 2 * RESNET50_GMACS_224 * 1e9 * (image_size / 224) ** 2


def training_share_of_peak(images_per_s: float, image_size: int, peak_tflops: float) -> float:
    return images_per_s * training_flops_per_image(image_size) / (peak_tflops * 1e12)


def gpu_training_rate(device, settings: BenchSettings, tuner_settings: bool, compile: bool = False) -> float:
    """Training images/s on synthetic batches (data loading is not what this measures).

    tuner_settings=True trains the way `train()` does on that device: its runtime (mixed precision,
    channels_last, cuDNN autotuning, TF32), its optimizer, pinned host memory and non-blocking copies.
    False is a plain FP32 loop with PyTorch's default flags. Works on any device (tests use the CPU).
    """
    import torch
    import torchvision
    from torch import nn

    from ..config import TrainConfig
    from ..model.resnet import (
        freeze,
        make_optimizer,
        new_resnet50,
        parameter_groups,
        set_train_mode,
    )
    from ..runtime.setup import setup_runtime

    s = settings
    flags = _backend_flags()
    try:
        torch.manual_seed(s.seed)
        cuda = device.type == "cuda"
        x_host = torch.randn(s.gpu_batch_size, 3, s.image_size, s.image_size)
        y_host = torch.randint(0, 1000, (s.gpu_batch_size,))
        if tuner_settings:
            config = TrainConfig(trainable="all", device=device.type, batch_size=s.gpu_batch_size,
                                 image_size=s.image_size)
            runtime = setup_runtime(config)
            model = new_resnet50(1000).to(runtime.device)
            if runtime.channels_last:
                model = model.to(memory_format=torch.channels_last)
            freeze(model, "all")
            set_train_mode(model, "all")
            optimizer = make_optimizer(parameter_groups(model, config, pretrained=True), config)
            scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
            module = torch.compile(model) if compile else model
            if cuda:
                x_host, y_host = x_host.pin_memory(), y_host.pin_memory()

            def step() -> None:
                x = x_host.to(runtime.device, non_blocking=True)
                y = y_host.to(runtime.device, non_blocking=True)
                if runtime.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with runtime.autocast():
                    loss = nn.functional.cross_entropy(module(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
        else:
            _restore_backend_flags(_DEFAULT_FLAGS or flags)
            model = torchvision.models.resnet50().to(device).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)

            def step() -> None:
                x, y = x_host.to(device), y_host.to(device)
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        for _ in range(s.gpu_warmup):  # cuDNN autotuning, compilation, allocator growth
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(s.gpu_steps):
            step()
        _sync(device)
        return s.gpu_batch_size * s.gpu_steps / (time.perf_counter() - t0)
    finally:
        _restore_backend_flags(flags)  # setup_runtime sets process-wide flags; the plain side gets defaults


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _backend_flags() -> tuple[bool, bool, bool]:
    import torch

    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def _restore_backend_flags(flags: tuple[bool, bool, bool]) -> None:
    import torch

    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


_DEFAULT_FLAGS: tuple[bool, bool, bool] | None = None  # PyTorch's flags before any tuner code set them


def bench_settings(ctx: "_Context") -> dict[str, Any]:
    """The measurements behind tuner's CPU defaults: channels_last, bf16 autocast, loader workers."""
    import torch

    from ..runtime.setup import pick_workers

    s = ctx.settings
    rows = {}
    device = torch.device("cpu")

    def rate(**kw: Any) -> Callable[[], float]:
        return lambda: cpu_step_rate(s, **kw)

    for name, base, variant, default in (
            ("channels_last (training step)", {}, {"channels_last": True},
             "measured on each machine, once per image size (probes.json)"),
            ("bf16 autocast (training step)", {}, {"amp_dtype": torch.bfloat16}, "off (amp='bf16' asks for it)"),
            ("channels_last (inference)", {"inference": True}, {"inference": True, "channels_last": True},
             "off (prediction runs in ONNX Runtime)")):
        ratios = []
        for r in range(s.repeats):
            plain_rate, other_rate = _alternate(r, rate(**base), rate(**variant))
            ratios.append(other_rate / plain_rate)
        rows[name] = {"speedup": spread(ratios), "default": default}
    workers = pick_workers(-1, device, 1)
    other = 2 if workers == 0 else 0
    ratios = []
    for r in range(s.repeats):
        def run(n: int, tag: str) -> Callable[[], float]:
            def go() -> float:
                config = _tuner_config(ctx.data, ctx.work / f"workers-{n}-{r}-{tag}", ctx.weights, s,
                                       trainable="all", epochs=1, num_workers=n)
                phases = train_phase_seconds(tuner_train(config, ctx.work / f"home-workers-{r}")["timed"])
                return _trained_images(ctx) / phases[1]
            return go

        base, alt = _alternate(r, run(workers, "default"), run(other, "other"))
        ratios.append(alt / base)
    rows[f"{other} loader workers instead of {workers} (full fine-tune epoch)"] = {
        "speedup": spread(ratios), "default": f"{workers} workers"}
    return {"id": "settings", "name": f"CPU settings at {s.image_size} px: speed-up of each setting over tuner's "
            "default on this machine (above 1: faster)", "rows": rows}


def cpu_step_rate(settings: BenchSettings, channels_last: bool = False, amp_dtype=None,
                  inference: bool = False) -> float:
    """Images/s of a full ResNet50 training step (or a no-grad forward) on synthetic CPU batches."""
    from ..runtime.probe import TrainingStep

    s = settings
    step = TrainingStep(s.image_size, s.settings_batch, channels_last, amp_dtype, inference, seed=s.seed)
    step()  # warm-up: oneDNN primitive creation
    return step.rate(s.settings_steps)


def _alternate(r: int, plain: Callable[[], Any], ours: Callable[[], Any]) -> tuple[Any, Any]:
    """Run both sides, plain first in even repeats and tuner first in odd ones (order effects cancel)."""
    if r % 2 == 0:
        p = plain()
        return p, ours()
    t = ours()
    return plain(), t


def _item(item_id: str, name: str, unit: str, tuner: float | None, plain: float | None, ratios: list[float],
          met: bool | None, target: str, higher_is_better: bool = False, skipped: str = "",
          tuner_text: str = "", plain_text: str = "", details: dict[str, Any] | None = None) -> dict[str, Any]:
    fmt = (lambda v: f"{v:.1f} {unit}") if unit != "img/s" else (lambda v: f"{v:.2f} {unit}")
    return {"id": item_id, "name": name, "unit": unit, "tuner": tuner, "plain": plain,
            "ratio": statistics.median(ratios) if ratios else None,
            "ratio_spread": spread(ratios) if ratios else None, "ratios": ratios,
            "ratio_means": "tuner/plain" if higher_is_better else "plain/tuner (time: above 1 means tuner is faster)",
            "target": target, "met": met, "skipped": skipped or None,
            "tuner_text": tuner_text or (fmt(tuner) if tuner is not None else ""),
            "plain_text": plain_text or (fmt(plain) if plain is not None else ""),
            "details": details or {}}


# ---- running and reporting ----------------------------------------------------------------------------

@dataclass
class _Context:
    settings: BenchSettings
    work: Path
    data: Path = field(default_factory=Path)
    weights: Path = field(default_factory=Path)
    weights_text: str = ""


RUNNERS: dict[str, Callable[[_Context], dict[str, Any]]] = {
    "head": bench_head_only, "predict": bench_predict, "finetune": bench_finetune, "gpu": bench_gpu,
    "settings": bench_settings}


def run_bench(settings: BenchSettings, workdir: str | os.PathLike | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the chosen items and return the report (plain data, as written to JSON).

    `workdir` keeps the data, runs and checkpoints (tests read them back); None uses a temporary
    folder that is deleted afterwards.
    """
    global _DEFAULT_FLAGS

    settings.validate()
    if _DEFAULT_FLAGS is None:
        _DEFAULT_FLAGS = _backend_flags()
    log = log or (lambda text: None)
    temporary = workdir is None
    work = Path(tempfile.mkdtemp(prefix="tuner-bench-")) if temporary else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = _load_average()
    try:
        ctx = _Context(settings, work)
        ctx.data = make_dataset(work / "data", settings)
        ctx.weights, ctx.weights_text = backbone_weights(work, ctx.data, settings)
        results = []
        for name in ITEMS:
            if name not in settings.items:
                continue
            log(f"measuring: {name} ...")
            t0 = time.perf_counter()
            results.append(RUNNERS[name](ctx))
            log(f"  done in {time.perf_counter() - t0:.0f} s")
        report = {
            "bench_version": BENCH_VERSION, "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
            "machine": machine_info(), "settings": dataclasses.asdict(settings),
            "weights": ctx.weights_text, "seconds": time.time() - started,
            # Other work on the machine slows both sides, and not always equally: say how busy it was.
            "load_average": {"start": load_before, "end": _load_average()},
            "items": [r for r in results if r["id"] != "settings"],
            "cpu_settings": next((r for r in results if r["id"] == "settings"), None),
            "workdir": None if temporary else str(work),
        }
        return report
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of the items, then the CPU settings, then the machine."""
    lines = ["| # | measurement | tuner | plain PyTorch | ratio (min-max) | target | met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for item in report["items"]:
        number = ITEMS.index(item["id"]) + 1  # the numbering, also when only some items ran
        if item["skipped"]:
            lines.append(f"| {number} | {item['name']} | {item['skipped']} | | | {item['target']} | - |")
            continue
        sp = item["ratio_spread"]
        ratio = f"{item['ratio']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f})"
        met = "yes" if item["met"] else "no"
        lines.append(f"| {number} | {item['name']} | {item['tuner_text']} | {item['plain_text']} | {ratio} | "
                     f"{item['target']} | {met} |")
    extra = []
    for item in report["items"]:
        fwd = item["details"].get("forward_only") if item["id"] == "predict" else None
        if fwd:
            extra.append(f"Item 2, model forward alone: ONNX Runtime {fwd['tuner_ms']:.1f} ms, eager PyTorch "
                         f"{fwd['plain_ms']:.1f} ms ({fwd['ratio']:.2f}x); first call with the ONNX export: "
                         f"{item['details']['first_call_ms']:.0f} ms.")
        if item["id"] == "gpu" and not item["skipped"]:
            compiled, skipped = item["details"].get("compiled_img_s"), item["details"].get("compile_skipped")
            if compiled:
                extra.append(f"Item 4 with torch.compile: {statistics.median(compiled):.1f} img/s (the share of peak "
                             "uses the faster of the two).")
            elif skipped:
                extra.append(f"Item 4 without torch.compile: {skipped}")
    settings = report.get("cpu_settings")
    if settings:
        extra.append("")
        extra.append(f"{settings['name']}:")
        extra.append("")
        extra.append("| setting | speed-up (min-max) | tuner's CPU default |")
        extra.append("| --- | --- | --- |")
        for name, row in settings["rows"].items():
            sp = row["speedup"]
            extra.append(f"| {name} | {sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f}) | {row['default']} |")
    extra.append("")
    extra.append(f"Machine: {describe_machine(report['machine'])}. Backbone: {report['weights']}. "
                 f"Repeats: {report['settings']['repeats']} (ratios are medians). {report['date']}; load average "
                 f"(1 min) {_load_text(report)}.")
    return "\n".join(lines + ([""] + extra if extra else []))


def _load_text(report: dict[str, Any]) -> str:
    load = report.get("load_average") or {}
    if not load.get("start") or not load.get("end"):
        return "unknown"
    return f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end"


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    from ..paths import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ---- command line (shared by `python -m tuner bench` and bench/run.py) ---------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes (32 px, a few images, 1 repeat): a smoke run in "
                   "seconds; the numbers mean nothing")
    p.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)}")
    p.add_argument("--image-size", type=int, help="pixels for every item (default 224; --quick: 32)")
    p.add_argument("--epochs", type=int, help="item 1's epochs (default 10)")
    p.add_argument("--finetune-epochs", type=int, help="item 3's epochs; the first is warm-up (default 2)")
    p.add_argument("--train-per-class", type=int, help="training images per class, 4 classes (default 40)")
    p.add_argument("--val-per-class", type=int, help="validation images per class (default 10)")
    p.add_argument("--batch-size", type=int, help="training batch (default 32)")
    p.add_argument("--repeats", type=int, help="times each side runs, alternating (default 3)")
    p.add_argument("--gpu-batch-size", type=int, help="item 4's batch (default 128)")
    p.add_argument("--gpu-compile", action="store_true", help="item 4: also measure with torch.compile")
    p.add_argument("--gpu-peak-tflops", type=float, help="item 4: the GPU's dense bf16 peak, when the table lacks it")
    p.add_argument("--json", default="runs/bench/latest.json", help="where the JSON report goes")
    p.add_argument("--workdir", help="keep data, runs and checkpoints here (default: a temporary folder)")


SETTING_ARGS = {"image_size": "image_size", "epochs": "epochs", "finetune_epochs": "finetune_epochs",
                "train_per_class": "train_per_class", "val_per_class": "val_per_class", "batch_size": "batch_size",
                "repeats": "repeats", "gpu_batch_size": "gpu_batch_size", "gpu_peak_tflops": "gpu_peak_tflops"}


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    changes = {field_name: getattr(args, arg) for arg, field_name in SETTING_ARGS.items()
               if getattr(args, arg, None) is not None}
    changes["items"] = tuple(i.strip() for i in args.items.split(",") if i.strip())
    changes["gpu_compile"] = bool(args.gpu_compile)
    return BenchSettings.quick_settings(**changes) if args.quick else BenchSettings(**changes)


def cmd_bench(args: argparse.Namespace) -> int:
    import sys

    settings = settings_from_args(args).validate()
    if Path(args.json).is_dir():  # checked before the measuring, which takes minutes, not after it
        raise TunerError(f"--json {args.json} is a folder: give the report's file name, e.g. "
                         f"{Path(args.json) / 'bench.json'}.")
    report = run_bench(settings, args.workdir, log=lambda text: print(text, file=sys.stderr, flush=True))
    path = write_report(report, args.json)
    print(format_table(report))
    print(f"\nJSON: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    try:
        return cmd_bench(args)
    except TunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
