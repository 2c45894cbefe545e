"""channels_last on a CPU is measured once per machine and image size, remembered, and used only where
the backbone runs every step."""

from __future__ import annotations

import json

import pytest
import torch

from tuner import probe
from tuner.config import TrainConfig
from tuner.runtime import setup_runtime


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


def test_without_measuring_an_unknown_size_gets_the_default_layout(home, measured):
    _, calls = measured
    assert probe.cpu_channels_last(64, measure_if_unknown=False) == probe.LayoutChoice(False, None)
    assert calls == []


def test_the_real_measurement_is_a_ratio_and_leaves_the_random_numbers_alone():
    state = torch.get_rng_state()
    ratio = probe.measure_channels_last(32, batch=2, steps=3)
    assert 0.1 < ratio < 10
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
