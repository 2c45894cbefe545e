"""Item 4: GPU training images/s with tuner's settings against plain FP32 eager, and the share of peak."""

from __future__ import annotations

import statistics
import time
from typing import Any

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
from ..runtime.setup import compile_blocker, setup_runtime
from .report import item_entry
from .settings import TARGETS, BenchSettings
from .timing import alternate
from .workspace import BenchContext

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

_DEFAULT_FLAGS: tuple[bool, bool, bool] | None = None  # PyTorch's flags before any tuner code set them


def bench_gpu(ctx: BenchContext) -> dict[str, Any]:
    """Item 4: GPU training images/s, tuner's settings vs plain FP32 eager, and the share of peak."""
    s = ctx.settings
    if not torch.cuda.is_available():
        return item_entry("gpu", "GPU training images/s (tuner's settings vs plain FP32 eager)", "img/s", None, None,
                          [], met=None, target=f">= {TARGETS['gpu']:g}x", higher_is_better=True, skipped=NO_GPU)
    device = torch.device("cuda")
    ratios, ours, plains, compiled = [], [], [], []
    compile_skipped = compile_blocker(device) if s.gpu_compile else ""  # measured without it, and says why
    for r in range(s.repeats):
        p, t = alternate(r, lambda: gpu_training_rate(device, s, tuner_settings=False),
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
    return item_entry(
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
    s = settings
    flags = backend_flags()
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


def remember_default_flags() -> None:
    """Keep PyTorch's backend flags as they are before any benchmark runs: the plain side's settings."""
    global _DEFAULT_FLAGS

    if _DEFAULT_FLAGS is None:
        _DEFAULT_FLAGS = backend_flags()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backend_flags() -> tuple[bool, bool, bool]:
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def _restore_backend_flags(flags: tuple[bool, bool, bool]) -> None:
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
