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
5. the data check (`tuner doctor`, issue 16) against one head-only training run of tuner at its
   defaults on the same images (1,000 at 128 px), each from cold caches: wall time, check/training;

plus the measurements behind tuner's CPU defaults (channels_last, bf16 autocast, loader workers).

The machine may be shared, so each item runs both sides alternately, `repeats` times, and reports
the median ratio with its spread (min-max over repeats). Both sides start from the same backbone
weights: torchvision's ImageNet file when it is cached, else a random ResNet50 whose BatchNorm
statistics are measured on the training images (saved once; both sides load that file). The data is
the demo dataset's generator, rendered at the benchmark's image size into train/ and val/ folders.

This module runs the chosen items (`run_bench`) and is the command line (`add_arguments`,
`cmd_bench`, `main`); each item lives in its own module. Benchmarks are never tests: tests
(tests/test_bench.py) check what the benchmark reports, not how fast anything is.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import TunerError
from .cpu_settings import bench_settings
from .doctor import bench_doctor
from .gpu import bench_gpu, remember_default_flags
from .machine import load_average, machine_info
from .predict import bench_predict
from .report import format_table, write_report
from .settings import ITEMS, BenchSettings, add_arguments, settings_from_args
from .training import bench_finetune, bench_head_only
from .workspace import BenchContext, backbone_weights, make_dataset

BENCH_VERSION = 1

RUNNERS: dict[str, Callable[[BenchContext], dict[str, Any]]] = {
    "head": bench_head_only, "predict": bench_predict, "finetune": bench_finetune, "gpu": bench_gpu,
    "doctor": bench_doctor, "settings": bench_settings}


def run_bench(settings: BenchSettings, workdir: str | os.PathLike | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the chosen items and return the report (plain data, as written to JSON).

    `workdir` keeps the data, runs and checkpoints (tests read them back); None uses a temporary
    folder that is deleted afterwards.
    """
    settings.validate()
    remember_default_flags()
    log = log or (lambda text: None)
    temporary = workdir is None
    work = Path(tempfile.mkdtemp(prefix="tuner-bench-")) if temporary else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = load_average()
    try:
        ctx = BenchContext(settings, work)
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
            "load_average": {"start": load_before, "end": load_average()},
            "items": [r for r in results if r["id"] != "settings"],
            "cpu_settings": next((r for r in results if r["id"] == "settings"), None),
            "workdir": None if temporary else str(work),
        }
        return report
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


# ---- command line (shared by `python -m tuner bench` and bench/run.py) ---------------------------------

def cmd_bench(args: argparse.Namespace) -> int:
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
    args = build_parser().parse_args(argv)
    try:
        return cmd_bench(args)
    except TunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
