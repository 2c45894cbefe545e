"""The CUDA paths: mixed precision (bf16, fp16 with a gradient scaler), channels_last, pinned memory,
torch.compile, checkpoints that move between a GPU and a CPU, and the benchmark's GPU item.

CI and the 2-core development machines have no GPU, and the default test run hides any GPU (see
conftest.py), so every test here skips there with the reason. On a machine with a CUDA GPU run
`TUNER_TEST_GPU=1 python -m pytest` after `pip install -r requirements.txt -r requirements-test.txt`
(add requirements-gpu.txt for the TensorRT tests): that pass runs only the tests marked gpu.
Not yet run on a GPU (no session has had one so far); with "cuda" replaced by "cpu" and fp16 left out,
the same tests pass on a CPU, which checks the tests themselves.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import GPU_SKIP_REASON, make_image_folder
from test_train import StopAfter

from tuner.bench.gpu import training_share_of_peak
from tuner.bench.settings import BenchSettings
from tuner.bench.suite import run_bench
from tuner.config import AugmentConfig, TrainConfig
from tuner.data.discover import discover_dataset
from tuner.events import EpochEnd, RunStarted, StageStarted
from tuner.infer.predict import Predictor
from tuner.model.checkpoint import load_checkpoint
from tuner.runtime.setup import compile_blocker
from tuner.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=GPU_SKIP_REASON)]

GPU_SIZE = 64  # small enough to be quick, large enough that every stage keeps a spatial extent


@pytest.fixture
def colours(tmp_path):
    return make_image_folder(tmp_path / "data", {"red": 12, "green": 12, "blue": 12}, size=72)


def gpu_config(tmp_path, data, name, **overrides) -> TrainConfig:
    values = dict(data=str(data), out=str(tmp_path / name), weights="random", device="cuda", image_size=GPU_SIZE,
                  epochs=3, batch_size=8, augment=AugmentConfig.from_preset("none"), num_workers=2, seed=3,
                  cache_dir=str(tmp_path / "features"))
    values.update(overrides)
    return TrainConfig(**values)


def assert_same_picks_but_near_ties(probs: torch.Tensor, reference: torch.Tensor, tie: float = 0.02) -> None:
    """Same top-1 everywhere, except where the reference's top two were within `tie` of each other
    (TF32 rounding on the GPU may then pick the other one)."""
    for row, ref in zip(probs.cpu(), reference):
        if row.argmax() != ref.argmax():
            assert ref.max() - ref[row.argmax()] <= tie, (row, ref)


def history(events) -> list[dict]:
    return [e.row() for e in events if isinstance(e, EpochEnd)]


def val_images(data) -> list[str]:
    spec = discover_dataset(str(data), val_ratio=0.2, seed=3)
    return [s.path for s in spec.val]


@pytest.mark.parametrize("amp, dtype_name", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_mixed_precision_training_learns_and_its_checkpoint_runs_on_a_cpu(tmp_path, colours, amp, dtype_name,
                                                                          monkeypatch):
    events = list(train(gpu_config(tmp_path, colours, amp, trainable="all", amp=amp, feature_cache="off")))
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.device.startswith("cuda") and f"mixed precision {dtype_name}" in started.device
    rows = history(events)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns (fp16: the scaler keeps gradients alive)
    state = load_checkpoint(tmp_path / amp / "last.pt")
    # Master weights stay fp32 under autocast: the checkpoint is the same file a CPU run writes.
    assert all(v.dtype == torch.float32 for v in state["model_state"].values() if v.is_floating_point())
    assert all(v.device.type == "cpu" for v in state["model_state"].values())

    images = val_images(colours)
    # train() turned TF32 on for the process (10-bit mantissas, as fast as fp16): off for this comparison,
    # so both sides are true fp32 and differ only in summation order.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    on_gpu = Predictor.from_checkpoint(tmp_path / amp / "best.pt", device="cuda").probabilities(images)
    on_cpu = Predictor.from_checkpoint(tmp_path / amp / "best.pt", device="cpu", backend="torch").probabilities(images)
    assert on_gpu.shape == on_cpu.shape == (len(images), 3)
    assert_same_picks_but_near_ties(on_gpu, on_cpu)
    assert (on_gpu.cpu() - on_cpu).abs().max() < 1e-3


def test_fp32_on_the_gpu_follows_the_cpu_run(tmp_path, colours):
    """Same data, order and seed: a GPU run without autocast lands where the CPU run does, up to TF32 rounding."""
    common = dict(trainable="layer4", amp="off", feature_cache="off", epochs=2)
    gpu = list(train(gpu_config(tmp_path, colours, "gpu", **common)))
    cpu = list(train(gpu_config(tmp_path, colours, "cpu", device="cpu", channels_last="off", num_workers=0,
                                **common)))
    for g, c in zip(history(gpu), history(cpu), strict=True):
        assert g["train_loss"] == pytest.approx(c["train_loss"], rel=0.05)
        assert g["val_loss"] == pytest.approx(c["val_loss"], rel=0.05)
    fc_gpu = load_checkpoint(tmp_path / "gpu" / "last.pt")["model_state"]["fc.weight"]
    fc_cpu = load_checkpoint(tmp_path / "cpu" / "last.pt")["model_state"]["fc.weight"]
    assert float((fc_gpu - fc_cpu).norm() / fc_cpu.norm()) < 0.05


def test_the_feature_cache_on_the_gpu_matches_the_plain_gpu_loop(tmp_path, colours):
    common = dict(trainable="head", amp="off")
    cached = list(train(gpu_config(tmp_path, colours, "cached", **common)))
    plain = list(train(gpu_config(tmp_path, colours, "plain", feature_cache="off", **common)))
    assert "cache" in next(e for e in cached if isinstance(e, StageStarted)).fast_path
    n_val = next(e for e in cached if isinstance(e, RunStarted)).num_val
    for c, p in zip(history(cached), history(plain), strict=True):
        assert c["train_loss"] == pytest.approx(p["train_loss"], rel=1e-2)
        # Other batch shapes, so other cuDNN kernels (TF32): a near-tie among the images may flip.
        assert abs(c["val_acc"] - p["val_acc"]) <= 1 / n_val + 1e-9
    a = load_checkpoint(tmp_path / "cached" / "last.pt")["model_state"]["fc.weight"]
    b = load_checkpoint(tmp_path / "plain" / "last.pt")["model_state"]["fc.weight"]
    assert float((a - b).norm() / b.norm()) < 1e-2


def test_a_run_stopped_on_the_gpu_resumes_on_a_cpu(tmp_path, colours):
    """Train on a rented GPU, stop, carry last.pt home: the optimizer state and scaler come along."""
    config = gpu_config(tmp_path, colours, "run", trainable="layer4", amp="fp16", feature_cache="off", epochs=2)
    stopper = StopAfter(5)
    events = list(stopper.watch(train(config, stop=stopper.event)))
    assert events[-1].status == "stopped"
    at_cpu = dataclasses.replace(config, device="cpu", amp="off", num_workers=0)
    resumed = list(train(at_cpu, resume=True))
    assert resumed[-1].status == "completed"
    assert next(e for e in resumed if isinstance(e, RunStarted)).device.startswith("cpu")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2


@pytest.mark.skipif(bool(compile_blocker(torch.device("cuda"))), reason="torch.compile needs a C compiler here: "
                    "install build-essential to cover this test")
def test_torch_compile_trains_on_the_gpu(tmp_path, colours):
    events = list(train(gpu_config(tmp_path, colours, "compiled", trainable="all", compile=True, epochs=2,
                                   feature_cache="off")))
    rows = history(events)
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows)
    state = load_checkpoint(tmp_path / "compiled" / "last.pt")["model_state"]
    assert not any(k.startswith("_orig_mod.") for k in state)  # compiled or not, the same state_dict names


def test_the_benchmarks_gpu_item_times_both_recipes_and_reports_the_share_of_peak(tmp_path):
    settings = BenchSettings.quick_settings(items=("gpu",), gpu_peak_tflops=100.0)
    entry = run_bench(settings, workdir=tmp_path)["items"][0]
    assert entry["id"] == "gpu" and not entry["skipped"]
    assert entry["tuner"] > 0 and entry["plain"] > 0
    assert entry["ratio"] == pytest.approx(entry["tuner"] / entry["plain"], rel=1e-9)
    details = entry["details"]
    assert details["share_of_peak"] == pytest.approx(
        training_share_of_peak(entry["tuner"], settings.image_size, 100.0), rel=1e-9)
    assert details["gpu"] == torch.cuda.get_device_name(0)
