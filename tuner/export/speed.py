"""The export's speed table: batch-1 latency and batched throughput of each timed format beside PyTorch
eager on the same device, measured one after the other in one call on this machine."""

from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import torch
from torch import nn

BENCH_BATCH = 16  # the "larger batch" of the throughput column


EAGER_LABELS = {"cpu": "pytorch (eager, cpu)", "cuda": "pytorch (eager, cuda)"}


def add_speedups(rows: list[dict], devices: list[str]) -> None:
    """Each row's speed-ups against PyTorch eager on the same device kind (`devices[i]`: "cpu"/"cuda"),
    so a GPU engine is compared with PyTorch on that GPU, not with the CPU; the CPU row when there is none."""
    by_format = {row["format"]: row for row in rows}
    for row, device in zip(rows, devices):
        base = by_format.get(EAGER_LABELS[device]) or by_format[EAGER_LABELS["cpu"]]
        row["latency_speedup"] = round(base["batch1_ms"] / row["batch1_ms"], 2) if row["batch1_ms"] else None
        row["throughput_speedup"] = round(row["throughput_img_s"] / base["throughput_img_s"], 2) \
            if base["throughput_img_s"] else None


def measure_speed(model: nn.Module, formats: Sequence[tuple[str, Callable, str]], image_size: int,
              repeats: int = 10) -> list[dict]:
    """Latency at batch 1 and throughput at BENCH_BATCH, for PyTorch eager and each of `formats`, given as
    (row label, runner, device kind) with the runners the export verified (ratios are what to compare,
    not absolute times)."""
    def timed(run, x, repeats: int) -> float:
        run(x)  # warm-up: first calls allocate and pick kernels
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    x1 = torch.randn(1, 3, image_size, image_size)
    xb = torch.randn(BENCH_BATCH, 3, image_size, image_size)
    runners: list[tuple[str, Callable, str]] = []  # (row label, runner, device kind)

    def eager(x):
        with torch.inference_mode():
            return model(x)
    runners.append((EAGER_LABELS["cpu"], eager, "cpu"))
    if torch.cuda.is_available():  # the fair baseline for a GPU engine is PyTorch on the same GPU
        gpu_model = copy.deepcopy(model).cuda().eval()

        def eager_cuda(x):
            with torch.inference_mode():
                out = gpu_model(x.cuda(non_blocking=True))
                torch.cuda.synchronize()
                return out
        runners.append((EAGER_LABELS["cuda"], eager_cuda, "cuda"))
    runners.extend(formats)
    rows = []
    for name, run, _ in runners:
        latency = timed(run, x1, repeats)
        batch_time = timed(run, xb, max(3, repeats // 3))
        rows.append({"format": name, "batch1_ms": round(latency * 1000, 2), "batch": BENCH_BATCH,
                     "throughput_img_s": round(BENCH_BATCH / batch_time, 1)})
    add_speedups(rows, [device for _, _, device in runners])
    return rows
