"""Where training runs: device, mixed precision, loader workers, and the torchrun process group.

Under `torchrun`, each process reads RANK/WORLD_SIZE/LOCAL_RANK from the environment and joins one
process group (NCCL on CUDA, gloo on CPU); torchrun does the launching and restarts, we do no
process management of our own. Without torchrun, everything here is a single process.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import TrainConfig
from ..errors import TunerError
from . import probe


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    channels_last: bool
    num_workers: int
    layout_note: str = ""  # why this memory layout (a CPU's measured channels_last speed-up), for describe()
    gpu_note: str = ""  # why a machine with an NVIDIA driver trains on its CPU (device='auto'), said as a warning
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_process_group: bool = False  # this run started the process group, so it ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        text = f"{self.device.type}"
        if self.device.type == "cuda":
            text += f" ({torch.cuda.get_device_name(self.device)})"
        text += f", {'mixed precision ' + str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else 'fp32'}"
        if self.layout_note:
            text += f", {self.layout_note}"
        if self.distributed:
            text += f", rank {self.rank} of {self.world_size} ({dist.get_backend()})"
        return text

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


def world_from_env() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def setup_runtime(config: TrainConfig) -> Runtime:
    rank, world_size, local_rank = world_from_env()
    if config.device == "cuda" and not torch.cuda.is_available():
        why = cuda_unusable_reason()
        raise TunerError("device='cuda' was asked for but no CUDA GPU is visible" + (f" ({why})" if why else "")
                         + ": use device='auto' or 'cpu'.")
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        count = torch.cuda.device_count()
        if world_size > 1 and local_rank >= count:
            # NCCL needs a GPU of its own per process; without this check set_device fails with
            # "invalid device ordinal".
            raise TunerError(f"This process is local rank {local_rank}, but this machine shows {count} CUDA GPU"
                             f"{'s' if count != 1 else ''}: start one process per GPU (torchrun "
                             f"--nproc_per_node={count}), or train on the CPUs with --device cpu.")
        device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world_size > 1 and config.sync_bn and not use_cuda:
        raise TunerError("sync_bn needs CUDA GPUs (NCCL): SyncBatchNorm does not run on CPUs. Drop --sync-bn, or "
                         "keep BatchNorm frozen (trainable stages' BatchNorm then uses each rank's batch).")
    if config.compile and (blocker := compile_blocker(device)):  # before a process group exists to be ended
        raise TunerError(blocker)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=10),
                                device_id=device if use_cuda else None)
        owns = True
    channels_last, layout_note = pick_channels_last(config, device, world_size)
    return Runtime(device=device, amp_dtype=pick_amp(config.amp, device), channels_last=channels_last,
                   layout_note=layout_note, num_workers=pick_workers(config.num_workers, device, world_size), rank=rank,
                   world_size=world_size, local_rank=local_rank, owns_process_group=owns,
                   # Only when tuner chose the CPU: asked-for CPUs and GPUs hidden on purpose need no reason.
                   gpu_note=cuda_unusable_reason() if config.device == "auto" and not use_cuda and not gpus_hidden()
                   else "")


# Oldest Linux driver each CUDA major version runs on (NVIDIA's minor-version compatibility table).
MIN_DRIVER_FOR_CUDA = {11: 450, 12: 525, 13: 580}
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # the host kernel's driver, seen in containers too
NVIDIA_DEVICE_NODE = Path("/dev/nvidiactl")  # present only where the GPUs are passed in


def gpus_hidden() -> bool:
    """GPUs hidden on purpose: CUDA_VISIBLE_DEVICES set to nothing, or to -1 (the usual idioms)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1")


def nvidia_driver_version() -> int | None:
    """The loaded NVIDIA kernel driver's major version (e.g. 580), from /proc; None when unknown."""
    try:
        text = NVIDIA_DRIVER_FILE.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for [\w-]+)?\s+(\d+)\.\d+", text)
    return int(match.group(1)) if match else None


def cuda_unusable_reason() -> str:
    """Why PyTorch sees no CUDA GPU on a machine with an NVIDIA driver; '' when no driver is seen (or CUDA works).

    Without this a CUDA build of torch quietly behaves like a CPU-only one, and a run meant for the GPU
    takes hours on the CPU. The usual causes, told apart where the machine shows them: a driver older
    than torch's CUDA version, a container started without its GPUs, GPUs hidden by CUDA_VISIBLE_DEVICES.
    """
    if torch.cuda.is_available():
        return ""
    if gpus_hidden():
        return f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
    if not (NVIDIA_DRIVER_FILE.exists() or shutil.which("nvidia-smi")):
        return ""
    if torch.version.cuda is None:
        return "an NVIDIA driver is installed, but this PyTorch is a CPU-only build: install a CUDA build of torch"
    cuda = torch.version.cuda
    driver, needed = nvidia_driver_version(), MIN_DRIVER_FOR_CUDA.get(int(cuda.split(".")[0]))
    if driver is not None and needed is not None and driver < needed:
        return (f"NVIDIA driver {driver} is older than this torch's CUDA {cuda} needs ({needed} or newer): update the "
                "driver, or install the torch build for your driver's CUDA version (pytorch.org, Get started)")
    if NVIDIA_DRIVER_FILE.exists() and not NVIDIA_DEVICE_NODE.exists():
        return ("the host has an NVIDIA driver but no GPU is passed into this container: start it with "
                "`docker run --gpus all` (NVIDIA container toolkit)")
    return (f"an NVIDIA driver is installed, but PyTorch cannot use the GPU: check that `nvidia-smi` lists it, that "
            f"CUDA_VISIBLE_DEVICES does not hide it, and that the driver supports CUDA {cuda} (this torch's build)")


def compile_blocker(device: torch.device) -> str:
    """Why torch.compile cannot run here ('' when it can). It builds code while training: Inductor
    compiles C++ for a CPU, and Triton compiles a small C launcher for a GPU. Without a compiler the
    first training step would end in an Inductor traceback."""
    if device.type == "cuda":  # what Triton looks for
        need, found = "a C compiler", os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
    else:  # what Inductor's C++ backend looks for
        need, found = "a C++ compiler", os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if found:
        return ""
    return (f"compile=True (--compile) needs {need} while training (torch.compile generates and builds code), and "
            "none was found: install one (Debian/Ubuntu: apt-get install build-essential; the Docker image: build "
            "it with --build-arg APT_PACKAGES=build-essential), or train without --compile.")


def pick_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "fp16":
            raise TunerError("amp='fp16' needs a CUDA GPU: use amp='bf16' or 'off' on the CPU.")
        # On CPUs bf16 autocast is slower than fp32 unless the chip has AMX/AVX512-BF16; only on request.
        return torch.bfloat16 if amp == "bf16" else None
    if amp == "fp16":
        return torch.float16
    # Native bf16 needs Ampere or newer; older cards only emulate it (slowly), so they get fp16 + a scaler.
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def pick_channels_last(config: TrainConfig, device: torch.device, world_size: int = 1) -> tuple[bool, str]:
    """(use channels_last, a note for the run's description)."""
    if config.channels_last != "auto":
        return config.channels_last == "on", f"channels_last {config.channels_last} (asked for)"
    if device.type == "cuda":
        return True, "channels_last"  # tensor cores want NHWC
    if config.trainable == "head" and config.feature_cache != "off":
        return False, ""  # the backbone runs once per image into the feature cache: nothing to gain
    if world_size > 1:
        # DDP needs the same layout in every rank, and ranks probing at once would time each other's
        # load; a remembered answer could differ between machines. So: PyTorch's default layout.
        return False, "default layout (channels_last is not measured under torchrun: --channels-last on)"
    # CPUs differ, and one machine type can measure either way: measure once per machine and size.
    choice = probe.cpu_channels_last(config.image_size)
    return choice.channels_last, choice.describe()


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pick_workers(requested: int, device: torch.device, world_size: int) -> int:
    if requested >= 0:
        return requested
    per_rank = max(1, cpu_count() // max(1, world_size))
    if device.type == "cuda":
        return min(8, max(2, per_rank - 1))
    # On a CPU the model needs the cores: loader workers only help when there are cores to spare.
    return 0 if per_rank <= 4 else min(4, per_rank // 4)


def all_reduce_sum(values: list[float], runtime: Runtime) -> list[float]:
    """Sum numbers over ranks (a no-op in one process)."""
    if not runtime.distributed:
        return values
    device = runtime.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def end_process_group(runtime: Runtime, finished_cleanly: bool) -> None:
    """End the process group this run started (no-op otherwise).

    After a clean finish every rank first meets at a barrier. Why: a gloo worker thread releases the
    tensor of the last Python-issued collective (e.g. an all_reduce of metrics) shortly *after* the
    caller has its result, and that release needs the GIL. If the interpreter begins shutting down
    before the worker gets the GIL (a few milliseconds), the thread is torn down inside a noexcept
    destructor and the process aborts ("terminate called without an active exception", SIGABRT) after
    all its work is saved; torchrun then reports the whole job as failed. We saw it in 1 of ~10-30
    2-rank CPU runs. The barrier's own tensor is created in C++ and needs no GIL, and while a rank
    waits in it the GIL is free, so the worker finishes first. A rank that failed skips the barrier:
    the others would wait for it until the timeout.
    """
    if not runtime.owns_process_group:
        return
    if finished_cleanly:
        dist.barrier()
    dist.destroy_process_group()
