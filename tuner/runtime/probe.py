"""Measured, not guessed: whether channels_last makes a ResNet50 training step faster on this CPU.

On GPUs channels_last always pays (tensor cores want NHWC). On CPUs it depends on the chip, and on
one machine type even on the day, whether it is faster or slower than PyTorch's default layout (the
figures are in README.md's Speed section). So with `channels_last='auto'`, a CPU run whose backbone
runs every step times a few training steps both ways once, and remembers the answer per CPU model,
thread count, torch version and image size in $TUNER_HOME/probes.json; later runs on the same
machine reuse it.

`TrainingStep` is also what `tuner bench` times for its CPU settings table.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.sampling import seeded
from ..model.resnet import new_resnet50
from ..paths import atomic_write, tuner_home

PROBE_FILE = "probes.json"
# Faster at all in the measurement: use it. Near 1 the pick is a coin toss that costs nothing either
# way; what matters is catching CPUs where channels_last is clearly slower, which some are.
MIN_SPEEDUP = 1.0
PROBE_BATCH = 4
PROBE_STEPS = 5  # timed steps per layout, alternating: enough for a median, few enough for a first run to bear


class TrainingStep:
    """One SGD step of a ResNet50 (or a no-grad forward) on a fixed synthetic CPU batch."""

    def __init__(self, image_size: int, batch: int, channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                 inference: bool = False, seed: int = 0):
        # seeded() restores the global generator afterwards and holds the lock that keeps another studio
        # session's seeded block from running meanwhile: a probe shifts nobody's random numbers.
        with seeded(seed):
            self.model = new_resnet50(1000)
            self.x = torch.randn(batch, 3, image_size, image_size)
            self.y = torch.randint(0, 1000, (batch,))
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.001, momentum=0.9)
        self.amp_dtype, self.inference, self.batch = amp_dtype, inference, batch

    def __call__(self) -> None:
        with torch.autocast("cpu", dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            if self.inference:
                with torch.no_grad():
                    self.model.eval()(self.x)
                return
            loss = nn.functional.cross_entropy(self.model.train()(self.x).float(), self.y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def rate(self, steps: int) -> float:
        """Images/s over `steps` steps (call once before, to leave oneDNN's first-call setup out)."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self()
        return self.batch * steps / (time.perf_counter() - t0)


def measure_channels_last(image_size: int, batch: int = PROBE_BATCH, steps: int = PROBE_STEPS) -> float:
    """channels_last training speed over the default layout's (above 1: channels_last is faster).

    The layouts alternate step by step (each going first in turn) and the medians of the single-step
    times are compared, so a burst of load from elsewhere on a shared machine hits both sides alike
    and one slow step does not decide.
    """
    batch = probe_batch(image_size, batch)
    default = TrainingStep(image_size, batch)
    nhwc = TrainingStep(image_size, batch, channels_last=True)
    default()  # warm-up: oneDNN builds its primitives on the first call
    nhwc()
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(steps):
        for channels_last in ((False, True) if i % 2 == 0 else (True, False)):
            step = nhwc if channels_last else default
            t0 = time.perf_counter()
            step()
            times[channels_last].append(time.perf_counter() - t0)
    return statistics.median(times[False]) / statistics.median(times[True])


def probe_batch(image_size: int, batch: int = PROBE_BATCH) -> int:
    """Fewer images per step above 224 px, so the probe costs about the same at any size."""
    return max(2, min(batch, round(batch * (224 / image_size) ** 2)))


@dataclass(frozen=True)
class LayoutChoice:
    channels_last: bool
    speedup: float | None  # channels_last over the default layout as measured here; None: not measured
    measured_now: bool = False  # this call ran the probe (a first run at this size on this machine)

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "default layout"
        if self.speedup is None:
            return layout
        return f"{layout} (channels_last measured {self.speedup:.2f}x on this CPU)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(image_size: int) -> str:
    return f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {image_size} px"


def probes_path() -> Path:
    return tuner_home() / PROBE_FILE


def _read_probes() -> dict:
    try:
        probes = json.loads(probes_path().read_text())
    except (OSError, ValueError):
        return {}  # none yet, or a damaged file: measure again and rewrite it
    return probes if isinstance(probes, dict) else {}


def remembered_speedup(image_size: int) -> float | None:
    entry = _read_probes().get(machine_key(image_size))
    speedup = entry.get("channels_last_speedup") if isinstance(entry, dict) else None
    return float(speedup) if isinstance(speedup, (int, float)) and speedup > 0 else None


def cpu_channels_last(image_size: int) -> LayoutChoice:
    """The layout for CPU training at `image_size`: remembered for this machine, else measured now
    (a few training steps in each layout, once per machine and size)."""
    speedup = remembered_speedup(image_size)
    if speedup is not None:
        return LayoutChoice(speedup >= MIN_SPEEDUP, speedup)
    try:
        speedup = measure_channels_last(image_size)
    except (RuntimeError, MemoryError):  # e.g. out of memory at a large size: the run itself decides that
        return LayoutChoice(False, None)
    probes = _read_probes()  # again: another run may have added its own answer meanwhile
    probes[machine_key(image_size)] = {"channels_last_speedup": round(speedup, 3),
                                       "measured": time.strftime("%Y-%m-%d %H:%M")}
    try:
        atomic_write(probes_path(), lambda tmp: Path(tmp).write_text(json.dumps(probes, indent=1)))
    except OSError:
        pass  # a read-only home: the answer still holds for this run
    return LayoutChoice(speedup >= MIN_SPEEDUP, speedup, measured_now=True)
