"""Training under torchrun (DistributedDataParallel) with gloo on the CPU: 2 ranks, tiny model inputs.

Every test launches real `torchrun` processes, as users do, with a timeout so a hang fails the test
instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY_SIZE, make_image_folder

from tuner.cli.flags import command_for, config_from_args
from tuner.cli.parser import build_parser
from tuner.config import AugmentConfig, TrainConfig
from tuner.model.checkpoint import load_checkpoint
from tuner.train import run_to_end

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, script: list[str] | None = None, nproc: int = 2,
             monitor_s: float | None = None) -> subprocess.CompletedProcess:
    target = script or ["-m", "tuner"]
    monitor = [f"--monitor-interval={monitor_s}"] if monitor_s else []
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", *monitor, *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=env)


@pytest.fixture
def even_dataset(tmp_path):
    # 3 classes x 5 images: 4 train + 1 val each, so 12 training images split evenly into batches of 6.
    return make_image_folder(tmp_path / "data", {"a": 5, "b": 5, "c": 5})


def train_args(data, out, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--image-size", str(TINY_SIZE), "--batch-size", "6",
            "--augment", "none", "--weights", "random", "--workers", "0", *extra]


def single_process(data, out, **overrides) -> dict:
    config = TrainConfig(data=str(data), out=str(out), image_size=TINY_SIZE, batch_size=6, weights="random",
                         augment=AugmentConfig.from_preset("none"), num_workers=0, **overrides)
    run_to_end(config)
    return load_checkpoint(out / "last.pt")


def test_two_ranks_with_half_batches_match_one_process_with_the_whole_batch(tmp_path, even_dataset):
    # The full model runs under DDP (no cache); BatchNorm is frozen, so only the averaging of gradients
    # over ranks can make a difference, and it must not.
    result = torchrun(*train_args(even_dataset, tmp_path / "ddp", "--epochs", "1", "--feature-cache", "off"))
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    one = single_process(even_dataset, tmp_path / "one", epochs=1, feature_cache="off")
    assert torch.allclose(ddp["model_state"]["fc.weight"], one["model_state"]["fc.weight"], atol=1e-6)
    assert ddp["history"][0]["val_acc"] == one["history"][0]["val_acc"]
    assert ddp["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-5)


def test_a_two_rank_run_writes_one_set_of_files_and_resumes(tmp_path, even_dataset):
    out = tmp_path / "run"
    result = torchrun(*train_args(even_dataset, out, "--epochs", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "best.pt", "history.csv", "last.pt", "metrics.json"]
    assert result.stderr.count("Completed after 1 epoch;") == 1  # rank 0 alone reports
    assert "rank 0 of 2 (gloo)" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["best"]["count"] == 3  # val reduced over both ranks
    assert "feature cache on" in result.stderr

    # The feature cache under 2 ranks (each computes half the images, one all-reduce shares them) trains
    # the same head as one process does (to float rounding: one process extracts through ONNX Runtime).
    one = single_process(even_dataset, tmp_path / "one", epochs=1)
    ddp = load_checkpoint(out / "last.pt")
    assert torch.allclose(ddp["model_state"]["fc.weight"], one["model_state"]["fc.weight"], atol=1e-5)

    result = torchrun("train", "--out", str(out), "--resume", "--epochs", "2")  # the run's own data and settings
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(pd.read_csv(out / "history.csv").epoch) == [1, 2]
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


SAVE_EACH_RANKS_MODEL = """
import os, sys, torch
import tuner.train.loop
original = tuner.train.loop.Loop.finish
def finish_and_save(self, status, epochs_done):
    torch.save(self.session.model.state_dict(), os.path.join(os.environ["RANK_STATES"], os.environ["RANK"] + ".pt"))
    return original(self, status, epochs_done)
tuner.train.loop.Loop.finish = finish_and_save
from tuner.cli import main
sys.exit(main())
"""


def test_the_two_stage_recipe_under_two_ranks_trains_the_unfrozen_stage_in_step(tmp_path, even_dataset,
                                                                                 imagenet_weights_file,
                                                                                 monkeypatch):
    # Stage 1 trains the head on cached features (DDP around the head alone); stage 2 wraps the model in
    # a new DDP with layer4 unfrozen. A DDP kept from stage 1 would not average layer4's gradients: each
    # rank would step on its own half of the batch and the ranks' copies of layer4 would drift apart.
    script = tmp_path / "save_each_ranks_model.py"
    script.write_text(SAVE_EACH_RANKS_MODEL)
    monkeypatch.setenv("RANK_STATES", str(tmp_path))
    out = tmp_path / "run"
    result = torchrun(*train_args(even_dataset, out, "--weights", "imagenet", "--trainable", "layer4",
                                  "--head-epochs", "1", "--epochs", "2"), script=[str(script)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("unfreezing down to layer4 (two-stage recipe)") == 1  # rank 0 alone reports
    assert result.stderr.count("Completed after 2 epochs") == 1
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    original = torch.load(imagenet_weights_file, weights_only=True)
    saved = load_checkpoint(out / "last.pt")["model_state"]
    for key in ("layer4.2.conv3.weight", "layer4.0.bn1.weight", "fc.weight"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # gradients averaged: the ranks stay in step
        assert torch.equal(saved[key], ranks[0][key]), key
    assert not torch.equal(saved["layer4.2.conv3.weight"], original["layer4.2.conv3.weight"])  # trained
    for key in ("conv1.weight", "layer3.5.conv3.weight", "layer3.5.bn3.running_mean"):
        assert torch.equal(saved[key], original[key]), key  # frozen in both stages


FAIL_ON_RANK_1 = """
import os, sys
import tuner.train.loop
original = tuner.train.loop.train_step
def failing(session, scheduler, x, y):
    if os.environ["RANK"] == "1":
        raise RuntimeError("simulated failure on rank 1")
    return original(session, scheduler, x, y)
tuner.train.loop.train_step = failing
from tuner.cli import main
sys.exit(main())
"""


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path, even_dataset):
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(FAIL_ON_RANK_1)
    result = torchrun(*train_args(even_dataset, tmp_path / "run", "--epochs", "1", "--feature-cache", "off"),
                      script=[str(script)])
    assert result.returncode != 0  # and it returned within the timeout: no hang
    assert "simulated failure on rank 1" in result.stderr


def test_sync_bn_on_cpus_is_refused_with_the_reason(tmp_path, even_dataset):
    # Each rank refuses before the process group exists, so the two are not in step; torchrun ends the
    # other workers once it sees one fail, which could cut off the slower rank's line on a loaded machine
    # (seen once in CI). Looking every 3 s instead of 0.1 s gives both ranks time to say it.
    result = torchrun(*train_args(even_dataset, tmp_path / "run", "--epochs", "1", "--trainable", "layer4",
                                  "--sync-bn"), monitor_s=3)
    assert result.returncode != 0  # each worker exits 2 with one line; torchrun itself then exits 1
    assert result.stderr.count("error: sync_bn needs CUDA GPUs") == 2
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr


def test_the_torchrun_command_is_ready_to_paste():
    config = TrainConfig(data="/data/pets", out="runs/pets", trainable="layer3", epochs=20, batch_size=256,
                         sync_bn=True)
    command = command_for(config, launcher="torchrun --nproc_per_node=8 -m tuner")
    words = shlex.split(command)
    assert words[:4] == ["torchrun", "--nproc_per_node=8", "-m", "tuner"]
    assert config_from_args(build_parser().parse_args(words[4:])) == config.validate()


@pytest.mark.parametrize("finished_cleanly", [True, False])
def test_ending_the_process_group_meets_at_a_barrier_only_after_a_clean_finish(monkeypatch, finished_cleanly):
    # The barrier lets gloo's worker threads release the last collective's tensors before the interpreter
    # shuts down (else a rank can abort at exit, failing a finished job); after a failure it would wait
    # for the failed rank until the timeout, so then the group is only destroyed.
    import torch.distributed as dist

    from tuner.runtime.setup import Runtime, end_process_group

    calls = []
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    runtime = Runtime(device=torch.device("cpu"), amp_dtype=None, channels_last=False, num_workers=0,
                      rank=1, world_size=2, owns_process_group=True)
    end_process_group(runtime, finished_cleanly)
    assert calls == (["barrier", "destroy"] if finished_cleanly else ["destroy"])
    calls.clear()
    end_process_group(Runtime(device=torch.device("cpu"), amp_dtype=None, channels_last=False, num_workers=0,
                              rank=1, world_size=2, owns_process_group=False), True)
    assert calls == []  # a group someone else started is theirs to end
