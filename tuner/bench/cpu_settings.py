"""The CPU settings table: the measurements behind tuner's CPU defaults (channels_last, bf16, workers)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..runtime.probe import TrainingStep
from ..runtime.setup import pick_workers
from .settings import BenchSettings
from .timing import alternate, spread, train_phase_seconds
from .tuner_side import tuner_config, tuner_train
from .workspace import BenchContext


def bench_settings(ctx: BenchContext) -> dict[str, Any]:
    """The measurements behind tuner's CPU defaults: channels_last, bf16 autocast, loader workers."""
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
            plain_rate, other_rate = alternate(r, rate(**base), rate(**variant))
            ratios.append(other_rate / plain_rate)
        rows[name] = {"speedup": spread(ratios), "default": default}
    workers = pick_workers(-1, device, 1)
    other = 2 if workers == 0 else 0
    ratios = []
    for r in range(s.repeats):
        def run(n: int, tag: str) -> Callable[[], float]:
            def go() -> float:
                config = tuner_config(ctx.data, ctx.work / f"workers-{n}-{r}-{tag}", ctx.weights, s,
                                      trainable="all", epochs=1, num_workers=n)
                phases = train_phase_seconds(tuner_train(config, ctx.work / f"home-workers-{r}")["timed"])
                return s.trained_images / phases[1]
            return go

        base, alt = alternate(r, run(workers, "default"), run(other, "other"))
        ratios.append(alt / base)
    rows[f"{other} loader workers instead of {workers} (full fine-tune epoch)"] = {
        "speedup": spread(ratios), "default": f"{workers} workers"}
    return {"id": "settings", "name": f"CPU settings at {s.image_size} px: speed-up of each setting over tuner's "
            "default on this machine (above 1: faster)", "rows": rows}


def cpu_step_rate(settings: BenchSettings, channels_last: bool = False, amp_dtype=None,
                  inference: bool = False) -> float:
    """Images/s of a full ResNet50 training step (or a no-grad forward) on synthetic CPU batches."""
    s = settings
    step = TrainingStep(s.image_size, s.settings_batch, channels_last, amp_dtype, inference, seed=s.seed)
    step()  # warm-up: oneDNN primitive creation
    return step.rate(s.settings_steps)
