"""Where training runs: the checks that turn a GPU machine's setup problems into one clear message.

They run without a GPU: where a test needs a machine with GPUs, torch.cuda's answers are patched.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
from test_train import tiny_config

from tuner.config import TrainConfig
from tuner.errors import TunerError
from tuner.events import Message
from tuner.runtime import setup as runtime
from tuner.runtime.setup import compile_blocker, cuda_unusable_reason, setup_runtime
from tuner.train import run_to_end, train
from tuner.train.loop import optimizer_step


def never(*args, **kwargs):
    raise AssertionError("reached after the check that should have refused")


def test_more_processes_than_gpus_are_refused_with_the_torchrun_setting_to_use(monkeypatch):
    # Without the check, set_device fails with CUDA's bare "invalid device ordinal".
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", never)
    monkeypatch.setattr(dist, "init_process_group", never)
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    with pytest.raises(TunerError, match=r"local rank 1, but this machine shows 1 CUDA GPU: .*--nproc_per_node=1"
                                         r".*--device cpu"):
        setup_runtime(TrainConfig(device="cuda"))


def test_a_gpu_that_pytorch_cannot_use_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU" in cuda_unusable_reason()
    with pytest.raises(TunerError, match=r"no CUDA GPU is visible \(CUDA_VISIBLE_DEVICES='-1' hides every GPU\)"):
        setup_runtime(TrainConfig(device="cuda"))

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    driver = tmp_path / "version"
    monkeypatch.setattr(runtime, "NVIDIA_DRIVER_FILE", driver)
    monkeypatch.setattr(runtime, "NVIDIA_DEVICE_NODE", tmp_path / "nvidiactl")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    driver.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n")
    (tmp_path / "nvidiactl").touch()
    reason = cuda_unusable_reason()
    assert "NVIDIA driver 535 is older than this torch's CUDA 13.0 needs (580 or newer)" in reason

    driver.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build\n")
    assert "NVIDIA driver 570 is older" in cuda_unusable_reason()  # the open kernel module's wording
    driver.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n")
    assert "driver supports CUDA 13.0" in cuda_unusable_reason()  # new enough: the other causes are named
    (tmp_path / "nvidiactl").unlink()  # the host's driver shows in a container, its GPUs only when passed in
    assert "docker run --gpus all" in cuda_unusable_reason()

    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in cuda_unusable_reason()

    driver.unlink()
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    assert cuda_unusable_reason() == ""  # no driver: a CPU machine, nothing to explain


def test_training_on_the_cpu_of_a_machine_with_an_unusable_gpu_warns_why(tmp_path, tiny_dataset, monkeypatch):
    # The test run hides GPUs on purpose (no warning then); here they count as not hidden, and the
    # machine's reason is made up, so the run trains on the CPU wherever the test runs.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "gpus_hidden", lambda: False)
    monkeypatch.setattr(runtime, "cuda_unusable_reason", lambda: "the driver is older than CUDA 13.0 needs")
    events = list(train(tiny_config(tmp_path / "run", tiny_dataset, epochs=1)))  # device="auto"
    warned = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert "Training on the CPU: the driver is older than CUDA 13.0 needs." in warned

    assert setup_runtime(TrainConfig(device="cpu")).gpu_note == ""  # the CPU was asked for: nothing to explain
    monkeypatch.setattr(runtime, "gpus_hidden", lambda: True)
    assert setup_runtime(TrainConfig(device="auto")).gpu_note == ""


def test_compile_without_a_compiler_is_refused_before_training(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    assert "needs a C compiler" in compile_blocker(torch.device("cuda"))  # Triton's launcher is C
    with pytest.raises(TunerError, match=r"needs a C\+\+ compiler .*apt-get install build-essential.*without "
                                         r"--compile"):
        run_to_end(tiny_config(tmp_path / "run", tiny_dataset, epochs=1, compile=True, device="cpu"))
    assert not (tmp_path / "run" / "last.pt").exists()

    monkeypatch.setattr(runtime.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert compile_blocker(torch.device("cpu")) == compile_blocker(torch.device("cuda")) == ""
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    monkeypatch.setenv("CXX", "/opt/llvm/bin/clang++")  # a compiler named by the variable Inductor reads
    assert compile_blocker(torch.device("cpu")) == ""


def test_a_step_the_fp16_scaler_skips_does_not_advance_the_schedule():
    # The CPU's GradScaler behaves as the CUDA one does: gradients that overflow at the loss scale make
    # it skip optimizer.step(); then the schedule must wait too (and PyTorch has nothing to warn about).
    def step(init_scale: float, gradient_size: float) -> tuple[bool, torch.optim.lr_scheduler.LambdaLR, float]:
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.SGD([weight], lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0 / (n + 1))
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stepped = optimizer_step((weight * gradient_size).sum(), optimizer, scaler, scheduler)
        assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
        return stepped, scheduler, float(weight.detach()[0])

    stepped, scheduler, value = step(init_scale=2.0 ** 100, gradient_size=1e30)  # 1e30 x 2^100: inf
    assert not stepped and scheduler.last_epoch == 0 and value == 1.0
    stepped, scheduler, value = step(init_scale=1.0, gradient_size=1.0)
    assert stepped and scheduler.last_epoch == 1 and value == pytest.approx(0.9)
