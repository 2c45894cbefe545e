"""The machine the numbers belong to, and how busy it was while they were measured."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch
import torchvision

from ..runtime.probe import cpu_model
from ..runtime.setup import cpu_count


def machine_info() -> dict[str, Any]:
    """The machine the numbers belong to: CPU model and cores, memory, library versions, GPU."""
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None

    memory_gib = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    flags = _cpu_flags()
    return {
        "cpu": cpu_model(), "cores": cpu_count(), "memory_gib": memory_gib,
        "cpu_features": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        "python": platform.python_version(), "os": platform.platform(terse=True),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "onnxruntime": ort_version,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


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


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None
