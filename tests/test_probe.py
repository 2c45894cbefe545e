"""channels_last on a CPU is measured once per machine and image size, remembered, and used only where
the backbone runs every step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_SIZE

from tuner.config import AugmentConfig, TrainConfig
from tuner.events import EpochEnd, RunStarted
from tuner.model.checkpoint import load_checkpoint
from tuner.runtime import probe
from tuner.runtime.probe import (
    measure_channels_last as real_measure_channels_last,  # before conftest pins it
)
from tuner.runtime.setup import pick_channels_last, setup_runtime
from tuner.train import train


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def measured(monkeypatch):
    """Replace the timing with a fixed answer, and count how often it is asked for."""
    calls = []

    def fake(image_size, *args, **kwargs):
        calls.append(image_size)
        return fake.speedup

    fake.speedup = 1.2
    monkeypatch.setattr(probe, "measure_channels_last", fake)
    return fake, calls


def test_the_answer_is_measured_once_and_remembered_per_image_size(home, measured):
    fake, calls = measured
    first = probe.cpu_channels_last(64)
    again = probe.cpu_channels_last(64)
    assert first == probe.LayoutChoice(True, 1.2, measured_now=True)
    assert again == probe.LayoutChoice(True, 1.2, measured_now=False)
    assert calls == [64]
    probe.cpu_channels_last(96)  # another size is another measurement
    assert calls == [64, 96]
    saved = json.loads((home / probe.PROBE_FILE).read_text())
    assert saved[probe.machine_key(64)]["channels_last_speedup"] == 1.2
    assert "torch " + torch.__version__ in probe.machine_key(64) and "64 px" in probe.machine_key(64)


@pytest.mark.parametrize("speedup, chosen", [(probe.MIN_SPEEDUP, True), (1.02, True), (0.98, False), (0.8, False)])
def test_channels_last_only_when_measurably_faster(home, measured, speedup, chosen):
    fake, _ = measured
    fake.speedup = speedup
    choice = probe.cpu_channels_last(64)
    assert choice.channels_last is chosen
    assert f"channels_last measured {speedup:.2f}x" in choice.describe()


def test_a_damaged_probe_file_is_measured_again_and_rewritten(home, measured):
    (home / probe.PROBE_FILE).write_text("{not json")
    assert probe.cpu_channels_last(64).measured_now
    assert probe.machine_key(64) in json.loads((home / probe.PROBE_FILE).read_text())


def test_the_real_measurement_is_a_ratio_and_leaves_the_random_numbers_alone():
    state = torch.get_rng_state()
    ratio = real_measure_channels_last(32, batch=2, steps=3)
    assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0  # a ratio of two times; no timing asked of it
    assert torch.equal(torch.get_rng_state(), state)  # a first run (probing) and a second give the same model


def cpu_config(**changes) -> TrainConfig:
    return TrainConfig(**{"device": "cpu", "image_size": 64, **changes})


def test_runs_that_train_the_backbone_on_a_cpu_use_the_measured_layout(home, measured):
    fake, calls = measured
    runtime = setup_runtime(cpu_config(trainable="layer4"))
    assert runtime.channels_last and calls == [64]
    assert "channels_last (channels_last measured 1.20x on this CPU)" in runtime.describe()
    fake.speedup = 0.9
    assert setup_runtime(cpu_config(trainable="all", image_size=96)).channels_last is False
    # Head-only on the frozen plain path runs the backbone every step too, so it is measured.
    setup_runtime(cpu_config(trainable="head", feature_cache="off", image_size=128))
    assert calls == [64, 96, 128]


def test_no_measurement_where_the_layout_is_given_or_cannot_matter(home, measured):
    _, calls = measured
    assert setup_runtime(cpu_config(trainable="head")).channels_last is False  # features cached once
    assert setup_runtime(cpu_config(trainable="all", channels_last="on")).channels_last is True
    assert "channels_last off (asked for)" in setup_runtime(cpu_config(trainable="all", channels_last="off")).describe()
    assert calls == []


def test_under_torchrun_nothing_is_measured_and_every_rank_gets_the_default_layout(home, measured):
    _, calls = measured
    on, note = pick_channels_last(cpu_config(trainable="all"), torch.device("cpu"), world_size=2)
    assert not on and "torchrun" in note and calls == []


def test_a_probe_that_fails_leaves_the_default_layout_and_nothing_remembered(home, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setattr(probe, "measure_channels_last", out_of_memory)
    assert probe.cpu_channels_last(512) == probe.LayoutChoice(False, None)
    assert not (home / probe.PROBE_FILE).exists()


def test_the_probe_takes_fewer_images_per_step_above_224_px():
    assert probe.probe_batch(32) == probe.probe_batch(224) == probe.PROBE_BATCH
    assert probe.probe_batch(320) == 2 and probe.probe_batch(1024) == 2  # BatchNorm training needs 2


def test_training_in_channels_last_on_a_cpu_follows_the_default_layout(tmp_path, tiny_dataset):
    """Same data, seed and steps: the layouts differ only in summation order inside the kernels.

    One epoch at a small learning rate: this tiny setup (batch 4, BatchNorm over 1x1 maps in layer4)
    amplifies rounding quickly, and Adam turns near-zero gradient differences into full-size steps on
    the fresh head (its weights differ by ~2.5% after one epoch, deterministically), so the losses and
    a trained backbone layer are compared. Measured here: losses within 4e-4, conv3 within 3e-4."""
    runs = {}
    for layout in ("off", "on"):
        config = TrainConfig(data=str(tiny_dataset), out=str(tmp_path / layout), weights="random", seed=1,
                             image_size=TINY_SIZE, epochs=1, batch_size=4, lr=1e-4,
                             augment=AugmentConfig.from_preset("none"), num_workers=0, trainable="layer4",
                             feature_cache="off", channels_last=layout)
        events = list(train(config))
        assert ("channels_last on" in next(e for e in events if isinstance(e, RunStarted)).device) is (layout == "on")
        runs[layout] = ([e.row() for e in events if isinstance(e, EpochEnd)],
                        load_checkpoint(tmp_path / layout / "last.pt")["model_state"])
    (rows_off, state_off), (rows_on, state_on) = runs["off"], runs["on"]
    for a, b in zip(rows_on, rows_off, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=3e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=3e-3)
    on, off = state_on["layer4.2.conv3.weight"], state_off["layer4.2.conv3.weight"]
    assert float((on - off).norm() / off.norm()) < 3e-3
    assert all(v.is_contiguous() for v in state_on.values())  # checkpoints are stored in the usual layout
