"""The parts a training run is made of, each on its own: the schedule, the recipe's policies, the
checkpoint format they are saved in, and a session driven by a loop other than the run's."""

from __future__ import annotations

import math

import pytest
import torch
from test_train import tiny_config

from tuner.data.discover import discover_dataset
from tuner.model.checkpoint import RESUME_KEYS, load_checkpoint, save_checkpoint
from tuner.model.weights import resolve_weights
from tuner.runtime.setup import setup_runtime
from tuner.train import run_to_end
from tuner.train.loop import train_step
from tuner.train.policies import BestEpoch, TwoStage
from tuner.train.schedule import lr_factor, lr_scheduler, resume_schedule
from tuner.train.session import build_session

# What a checkpoint held when the run was one class (b0a73e5): checkpoints written since must keep
# loading there, and those written then must resume here.
CHECKPOINT_KEYS = {
    "format", "format_version", "tuner_version", "arch", "model_state", "classes", "image_size", "mean", "std",
    "weights_source", "config", "epoch", "next_batch", "partial_epoch", "history", "best_val_acc",
    "best_val_loss", "best_epoch", "stale_epochs", "best_metrics", "batchnorm_measured", "optimizer_state",
    "scheduler_state", "scaler_state", "rng_state", "data",
}


def test_warm_up_rises_linearly_then_cosine_falls_to_zero_at_the_last_step():
    plan = dict(steps_per_epoch=4, epochs=3, warmup_epochs=1, scheduler="cosine")
    assert [lr_factor(step, **plan) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, **plan) == 1.0
    assert lr_factor(8, **plan) == pytest.approx(0.5)  # half-way through the 8 steps after warm-up
    assert lr_factor(12, **plan) == pytest.approx(0.0)


def test_the_step_schedule_decays_every_step_size_epochs_and_none_keeps_the_rate():
    step = dict(steps_per_epoch=2, epochs=6, scheduler="step", gamma=0.5, step_size=2)
    assert [lr_factor(s, **step) for s in range(0, 12, 2)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert {lr_factor(s, steps_per_epoch=2, epochs=6, scheduler="none") for s in range(12)} == {1.0}


def test_resuming_with_more_epochs_stretches_the_schedule(tmp_path):
    config = tiny_config(tmp_path, tmp_path, epochs=2, scheduler="cosine", lr=0.1)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weight], "name": "head"}], lr=0.1)
    scheduler = lr_scheduler(optimizer, config, steps_per_epoch=1)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # the 2-epoch plan has ended
    saved = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}

    longer = tiny_config(tmp_path, tmp_path, epochs=4, scheduler="cosine", lr=0.1)
    optimizer = torch.optim.SGD([{"params": [weight], "name": "head"}], lr=0.1)
    scheduler = lr_scheduler(optimizer, longer, steps_per_epoch=1)
    optimizer.load_state_dict(saved["optimizer"])
    resume_schedule(scheduler, saved["scheduler"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))


def test_the_two_stage_recipe_trains_the_head_first_then_the_deeper_stages():
    recipe = TwoStage(head_epochs=2, trainable="layer3")
    assert [recipe.stage_for(epoch) for epoch in range(4)] == ["head", "head", "layer3", "layer3"]
    assert TwoStage(head_epochs=0, trainable="layer4").stage_for(0) == "layer4"


def test_best_epoch_counts_epochs_without_improvement_and_stops_after_its_patience():
    best = BestEpoch(patience=2)
    assert best.update(1, {"accuracy": 0.5, "loss": 1.0})
    assert best.update(2, {"accuracy": 0.5, "loss": 0.8})  # same accuracy, clearly lower loss
    assert not best.update(3, {"accuracy": 0.5, "loss": 0.8})  # a tie is no improvement
    assert not best.should_stop
    assert not best.update(4, {"accuracy": 0.25, "loss": 0.5})
    assert best.should_stop and (best.best_epoch, best.stale_epochs) == (2, 2)
    assert not BestEpoch(patience=0).should_stop


def test_best_epoch_saves_under_the_checkpoints_keys_and_reads_them_back():
    best = BestEpoch(patience=3)
    best.update(1, {"accuracy": 0.75, "loss": 0.4, "count": 4})
    best.update(2, {"accuracy": 0.5, "loss": 0.9, "count": 4})
    state = best.state_dict()
    assert set(state) == {"best_val_acc", "best_val_loss", "best_epoch", "stale_epochs", "best_metrics"}
    assert set(state) <= CHECKPOINT_KEYS
    again = BestEpoch(patience=3)
    again.load_state_dict({"epoch": 2, **state})  # a whole checkpoint: the other keys are not its
    assert again.state_dict() == state
    fresh = BestEpoch()
    fresh.load_state_dict({})  # a checkpoint from before these keys existed: as if nothing was best yet
    assert fresh.state_dict() == BestEpoch().state_dict()


def test_a_checkpoint_holds_the_same_keys_and_format_version_as_before(tmp_path, tiny_dataset):
    run_to_end(tiny_config(tmp_path / "run", tiny_dataset, epochs=1))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert set(state) == CHECKPOINT_KEYS
    assert state["format_version"] == 1


def test_a_checkpoint_with_only_the_earlier_keys_resumes(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "run", tiny_dataset, epochs=1)
    run_to_end(config)
    last = tmp_path / "run" / "last.pt"
    written = torch.load(last, weights_only=True)
    save_checkpoint({k: v for k, v in written.items() if k in CHECKPOINT_KEYS - {"format", "format_version"}}, last)
    finished = run_to_end(tiny_config(tmp_path / "run", tiny_dataset, epochs=2), resume=True)
    assert finished.status == "completed"
    state = load_checkpoint(last)
    assert set(state) == CHECKPOINT_KEYS and state["epoch"] == 2
    assert state["history"][0] == written["history"][0]  # the first epoch's row came from the checkpoint
    assert state["best_epoch"] >= written["best_epoch"] == 1


def test_a_checkpoint_without_the_optional_keys_resumes_with_their_defaults(tmp_path, tiny_dataset):
    run_to_end(tiny_config(tmp_path / "run", tiny_dataset, epochs=1))
    last = tmp_path / "run" / "last.pt"
    written = torch.load(last, weights_only=True)
    save_checkpoint({k: written[k] for k in RESUME_KEYS}, last)
    finished = run_to_end(tiny_config(tmp_path / "run", tiny_dataset, epochs=2), resume=True)
    assert finished.status == "completed" and finished.best_epoch == 2  # nothing was best before
    assert [row["epoch"] for row in load_checkpoint(last)["history"]] == [2]


def test_an_lr_sweep_drives_a_session_with_its_own_schedule_and_writes_no_files(tmp_path, tiny_dataset):
    # What an LR finder needs: the run's model, optimizer and loaders, another schedule, no run files.
    config = tiny_config(tmp_path / "run", tiny_dataset, feature_cache="off", lr=1e-4).validate()
    runtime = setup_runtime(config)
    spec = discover_dataset(tiny_dataset, config.val_ratio, config.seed)
    session = build_session(config, spec, resolve_weights(config.weights), runtime)
    list(session.start_stage(config.trainable, 0, stop_requested=lambda: False))
    sweep = torch.optim.lr_scheduler.LambdaLR(session.optimizer, lambda step: 10.0 ** step)
    rates, losses = [], []
    for x, y in session.train_batches():
        rates.append(session.head_lr())
        loss, _ = train_step(session, sweep, x, y)
        losses.append(loss)
    assert rates == pytest.approx([1e-4 * 10 ** k for k in range(session.steps_per_epoch)])
    assert all(math.isfinite(loss) for loss in losses[:2])
    assert not (tmp_path / "run").exists()
