"""The training loop on the real ResNet50 at tiny image sizes: files, stop/resume, recipes, weights."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_SIZE, make_image_folder

from tuner.config import AugmentConfig, TrainConfig
from tuner.errors import TunerError
from tuner.events import CheckpointSaved, EpochEnd, Finished, Progress, StageStarted
from tuner.model.checkpoint import load_checkpoint, model_from_checkpoint
from tuner.model.resnet import new_resnet50
from tuner.train import read_history, run_to_end, train


def tiny_config(out, data, **overrides) -> TrainConfig:
    values = dict(data=str(data), out=str(out), weights="random", image_size=TINY_SIZE, epochs=2, batch_size=4,
                  augment=AugmentConfig.from_preset("none"), num_workers=0)
    values.update(overrides)
    return TrainConfig(**values)


def collect(config, **kwargs):
    return list(train(config, **kwargs))


def test_a_run_writes_checkpoints_history_and_metrics(tmp_path, tiny_dataset):
    events = collect(tiny_config(tmp_path / "run", tiny_dataset))
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"last.pt", "best.pt", "history.csv", "metrics.json"}
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert list(history.epoch) == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["classes"] == ["blue", "green", "red"]
    assert len(metrics["best"]["confusion_matrix"]) == 3
    state = torch.load(out / "last.pt", weights_only=True)  # plain data only: loads without unpickling
    for key in ("model_state", "classes", "image_size", "mean", "std", "weights_source", "config", "epoch",
                "history", "optimizer_state", "scheduler_state", "rng_state"):
        assert key in state, key
    assert state["epoch"] == 2 and state["next_batch"] == 0
    kinds = [e.kind for e in events if isinstance(e, CheckpointSaved)]
    assert kinds.count("last") == 2 and "best" in kinds
    assert isinstance(events[-1], Finished) and events[-1].status == "completed"
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert [e.row() for e in ends] == state["history"]
    assert read_history(out) == state["history"]  # what the studio redraws a resumed run's curves from


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-links-copy"])
def test_best_pt_shares_last_pt_bytes_and_keeps_them_when_last_moves_on(tmp_path, monkeypatch, links):
    from tuner.model.checkpoint import save_checkpoint
    from tuner.paths import same_file_as

    if not links:  # a filesystem without hard links: a copy, same result
        monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError("no links here")))
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, last)
    same_file_as(last, best)
    assert best.read_bytes() == last.read_bytes() and os.path.samefile(last, best) is links
    save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, last)  # a later epoch that did not improve
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert torch.equal(torch.load(best, weights_only=True)["w"], torch.ones(3))
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp files left


def test_an_existing_run_is_not_overwritten_by_accident(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "run", tiny_dataset, epochs=1)
    run_to_end(config)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(TunerError, match="--resume"):
        run_to_end(config)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    (tmp_path / "run" / "notes.txt").write_text("mine")
    # An --overwrite that fails its checks (here a mistyped data folder) has deleted nothing yet.
    with pytest.raises(TunerError, match="not found"):
        run_to_end(dataclasses.replace(config, data=str(tmp_path / "typo")), overwrite=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert {"best.pt", "history.csv", "metrics.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    run_to_end(dataclasses.replace(config, seed=1), overwrite=True)  # another seed: other weights
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    assert (tmp_path / "run" / "last.pt").read_bytes() != before
    with pytest.raises(TunerError, match="Nothing to resume"):
        run_to_end(tiny_config(tmp_path / "empty", tiny_dataset), resume=True)


def test_a_checkpoint_that_only_predicts_or_is_damaged_cannot_be_resumed_and_says_why(tmp_path, tiny_dataset):
    from tuner.model.checkpoint import save_checkpoint

    out = tmp_path / "run"
    save_checkpoint({"model_state": {}, "classes": ["blue", "green", "red"], "image_size": TINY_SIZE,
                     "mean": [0.5] * 3, "std": [0.5] * 3}, out / "last.pt")
    with pytest.raises(TunerError, match=r"last.pt lacks config, epoch, weights_source, optimizer_state, "
                                         r"scheduler_state, so its run cannot be resumed: start a new run"):
        run_to_end(tiny_config(out, tiny_dataset), resume=True)
    (out / "last.pt").write_text("hello")
    with pytest.raises(TunerError, match=r"last.pt is not a readable checkpoint: it is damaged or not a PyTorch "
                                         r"file \(.*\)\. Use the best.pt or last.pt that a tuner run wrote\. "
                                         r"To start over in .*, use --overwrite"):
        run_to_end(tiny_config(out, tiny_dataset), resume=True)
    # A long internal reason is cut at a word, on its first line.
    from tuner.model.weights import short_reason
    long = RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory. " * 3
                        + "\nsecond line")
    assert short_reason(long).endswith(" ...") and len(short_reason(long)) <= 124 and "second" not in short_reason(long)


def test_a_diverging_run_stops_with_the_fix_and_keeps_its_last_good_checkpoint(tmp_path, tiny_dataset):
    from tuner.model.checkpoint import save_checkpoint

    config = tiny_config(tmp_path / "run", tiny_dataset, lr=1e30, epochs=4)
    events = []
    with pytest.raises(TunerError, match=r"Training diverged in epoch \d: .* try lr=1e\+29\); ") as err:
        for event in train(config):
            events.append(event)
    finished = len([e for e in events if isinstance(e, EpochEnd)])
    assert ("earlier checkpoints are kept" if finished else "nothing was saved") in str(err.value)
    if finished:
        saved = load_checkpoint(tmp_path / "run" / "last.pt")
        assert saved["epoch"] == finished and all(math.isfinite(row["val_loss"]) for row in saved["history"])
        model_from_checkpoint(saved)  # what was saved is usable
    else:
        assert not (tmp_path / "run" / "last.pt").exists()
    good = tiny_config(tmp_path / "good", tiny_dataset, epochs=1)
    run_to_end(good)
    saved = load_checkpoint(tmp_path / "good" / "last.pt")
    # A checkpoint whose weights are NaN anyway (written by an older tuner) is refused before any use.
    saved["model_state"]["fc.bias"] = torch.full_like(saved["model_state"]["fc.bias"], float("nan"))
    save_checkpoint(saved, tmp_path / "nan.pt")
    with pytest.raises(TunerError, match=r"fc.bias holds NaN or infinity\): its run diverged"):
        model_from_checkpoint(load_checkpoint(tmp_path / "nan.pt"))


def test_an_output_folder_that_cannot_be_one_is_a_clear_error(tmp_path, tiny_dataset):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    for out, where in ((blocker, "is a file"), (blocker / "run", f"is inside {blocker}, which is a file")):
        with pytest.raises(TunerError, match=f"The output folder {re.escape(str(out))} {re.escape(where)}: choose a folder"):
            run_to_end(tiny_config(out, tiny_dataset))
    assert blocker.read_text() == "a file"
    with pytest.raises(TunerError, match=r"cannot be created \(File name too long\): choose another folder"):
        run_to_end(tiny_config(tmp_path / ("x" * 300), tiny_dataset))


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2 vs 1")])
def test_a_full_disk_while_saving_is_a_message_and_leaves_the_old_file(tmp_path, failure):
    from tuner.paths import WriteFailed, atomic_write

    target = tmp_path / "last.pt"
    target.write_text("the previous checkpoint")

    def write(tmp):
        Path(tmp).write_text("half")
        raise failure

    with pytest.raises(WriteFailed, match=r"Could not write last.pt into .* \((No space left on device|the disk may be "
                                          r"full)\): free some disk space or choose another folder") as err:
        atomic_write(target, write)
    assert isinstance(err.value, OSError) and isinstance(err.value, TunerError)  # optional files carry on
    assert target.read_text() == "the previous checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(RuntimeError, match="a bug"):  # not every RuntimeError is a disk problem
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("a bug")))


class StopAfter:
    """A stop signal that trips after `n` batches of `phase` (what the Stop button does, deterministically)."""

    def __init__(self, n: int, phase: str = "train"):
        self.n = n
        self.phase = phase
        self.event = threading.Event()

    def watch(self, events):
        seen = 0
        for event in events:
            if isinstance(event, Progress) and event.phase == self.phase:
                seen += 1
                if seen >= self.n:
                    self.event.set()
            yield event


def interrupted_then_resumed(config, stop_after: int):
    stopper = StopAfter(stop_after)
    events = list(stopper.watch(train(config, stop=stopper.event)))
    assert events[-1].status == "stopped"
    stopped = load_checkpoint(config.out + "/last.pt")  # a stop leaves a loadable checkpoint
    model_from_checkpoint(stopped)
    resumed = list(train(config, resume=True))
    assert resumed[-1].status == "completed"
    return stopped, load_checkpoint(config.out + "/last.pt")


@pytest.mark.slow
def test_stop_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_dataset):
    # The plain path (no cache), with augmentation and momentum, through layer4: the hardest case.
    common = dict(trainable="layer4", feature_cache="off", augment=AugmentConfig.from_preset("light"),
                  epochs=2, seed=7)
    whole = tiny_config(tmp_path / "whole", tiny_dataset, **common)
    run_to_end(whole)
    expected = load_checkpoint(tmp_path / "whole" / "last.pt")
    stopped, final = interrupted_then_resumed(tiny_config(tmp_path / "split", tiny_dataset, **common), 5)
    assert (stopped["epoch"], stopped["next_batch"]) == (1, 1)  # epoch 2 (0-based 1), after its first batch
    for key, value in expected["model_state"].items():
        assert torch.equal(final["model_state"][key], value), key
    drop_seconds = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop_seconds(final["history"]) == drop_seconds(expected["history"])


def test_stop_and_resume_on_the_feature_cache_path(tmp_path, tiny_dataset):
    common = dict(epochs=3, seed=1)
    run_to_end(tiny_config(tmp_path / "whole", tiny_dataset, **common))
    expected = load_checkpoint(tmp_path / "whole" / "last.pt")
    _, final = interrupted_then_resumed(tiny_config(tmp_path / "split", tiny_dataset, **common), 6)
    assert torch.equal(final["model_state"]["fc.weight"], expected["model_state"]["fc.weight"])


def test_a_stop_before_the_first_batch_still_leaves_a_checkpoint(tmp_path, tiny_dataset):
    stop = threading.Event()
    stop.set()
    events = collect(tiny_config(tmp_path / "run", tiny_dataset), stop=stop)
    assert events[-1].status == "stopped"
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 0
    assert state["batchnorm_measured"] is False  # the random backbone's statistics are still to be measured


def test_stop_while_measuring_batchnorm_is_honoured_within_a_batch_and_resume_measures_again(tmp_path,
                                                                                               tiny_dataset):
    # A random backbone's statistics pass runs before any training batch; at 512 px it took minutes and
    # used to ignore Stop (and a closed browser tab) until it ended.
    run_to_end(tiny_config(tmp_path / "whole", tiny_dataset, epochs=1))
    expected = load_checkpoint(tmp_path / "whole" / "last.pt")
    config = tiny_config(tmp_path / "split", tiny_dataset, epochs=1)
    stopper = StopAfter(1, phase="batchnorm")
    events = list(stopper.watch(train(config, stop=stopper.event)))
    assert events[-1].status == "stopped"
    assert [e.step for e in events if isinstance(e, Progress) and e.phase == "batchnorm"] == [1]  # of 4 batches
    stopped = load_checkpoint(tmp_path / "split" / "last.pt")
    assert stopped["batchnorm_measured"] is False
    built = new_resnet50(3).state_dict()  # the half-measured statistics were put back as built
    assert all(torch.equal(stopped["model_state"][k], built[k]) for k in built if "running_" in k)
    resumed = collect(config, resume=True)
    assert any(isinstance(e, Progress) and e.phase == "batchnorm" for e in resumed)
    assert resumed[-1].status == "completed"
    final = load_checkpoint(tmp_path / "split" / "last.pt")
    assert final["batchnorm_measured"] is True
    for key, value in expected["model_state"].items():
        assert torch.equal(final["model_state"][key], value), key


def test_resume_can_extend_epochs_but_keeps_the_run_settings(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "run", tiny_dataset, epochs=1, lr=0.05)
    run_to_end(config)
    longer = tiny_config(tmp_path / "run", tiny_dataset, epochs=2, lr=0.5)
    events = collect(longer, resume=True)
    warnings = [e.text for e in events if type(e).__name__ == "Message" and e.level == "warning"]
    assert any("so these were ignored: lr=0.5. On resume only how long and where" in w for w in warnings)
    assert not any("No pretrained weights" in w for w in warnings)  # said by the first run; this one resumes
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 2 and state["config"]["lr"] == 0.05


def test_extending_a_finished_cosine_run_continues_on_the_stretched_schedule(tmp_path, tiny_dataset):
    # One step per epoch (batch >= the 14 training images), so each epoch's recorded rate is its only step's.
    common = dict(scheduler="cosine", lr=0.01, batch_size=16, feature_cache="off")
    run_to_end(tiny_config(tmp_path / "run", tiny_dataset, epochs=2, **common))
    # The finished 2-epoch schedule ended at rate 0; over 4 epochs step 2 of 4 is half-way down the cosine.
    run_to_end(tiny_config(tmp_path / "run", tiny_dataset, epochs=4, **common), resume=True)
    rates = [row["lr"] for row in load_checkpoint(tmp_path / "run" / "last.pt")["history"]]
    assert rates[:2] == pytest.approx([0.01, 0.01 * 0.5 * (1 + math.cos(math.pi / 2))])  # planned for 2 epochs
    assert rates[2:] == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (2, 3)])


def test_resume_with_other_classes_is_refused(tmp_path, tiny_dataset):
    run_to_end(tiny_config(tmp_path / "run", tiny_dataset, epochs=1))
    other = make_image_folder(tmp_path / "other", {"cats": 4, "dogs": 4})
    with pytest.raises(TunerError, match="differ from the checkpoint"):
        run_to_end(tiny_config(tmp_path / "run", other, epochs=2), resume=True)


def test_two_stage_recipe_trains_the_head_then_unfreezes(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "run", tiny_dataset, trainable="layer4", head_epochs=1, epochs=2)
    torch.manual_seed(config.seed)
    events = collect(config)
    stages = [e for e in events if isinstance(e, StageStarted)]
    assert [(s.epoch, s.trainable) for s in stages] == [(1, "head"), (2, "layer4")]
    assert "feature cache on" in stages[0].fast_path
    assert stages[1].trainable_params > stages[0].trainable_params
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert len(history) == 2


def test_two_stage_recipe_keeps_the_backbone_then_trains_it_at_the_backbone_rate(tmp_path, tiny_dataset,
                                                                                  imagenet_weights_file):
    # Plain SGD (no momentum, no decay, constant rate) with the whole training set in one batch: each
    # epoch is one step, and stage 2's step moves a weight by exactly -rate x gradient. Two runs that
    # differ only in backbone_lr_mult reach stage 2 in the same state, so their backbone steps must
    # differ by the ratio of the multipliers. feature_cache="off": stage 1 runs the backbone every batch.
    common = dict(weights="imagenet", trainable="layer4", head_epochs=1, epochs=2, optimizer="sgd", lr=0.1,
                  momentum=0.0, weight_decay=0.0, scheduler="none", batch_size=32, feature_cache="off")
    original = torch.load(imagenet_weights_file, weights_only=True)

    def run(name, **overrides):
        """(state after the head-only epoch 1, state after epoch 2, training steps per epoch)"""
        first, steps = None, set()
        for event in train(tiny_config(tmp_path / name, tiny_dataset, **common, **overrides)):
            if isinstance(event, Progress) and event.phase == "train":
                steps.add(event.steps)
            if isinstance(event, CheckpointSaved) and event.kind == "last" and first is None:
                first = load_checkpoint(event.path)
        return first, load_checkpoint(tmp_path / name / "last.pt"), steps

    first, final, steps = run("default")  # the pretrained default: backbone at 0.1 x lr
    assert steps == {1} and first["epoch"] == 1 and final["epoch"] == 2
    assert first["weights_source"]["pretrained"]
    backbone = [k for k in original if not k.startswith("fc.")]
    for key in backbone:  # the head-only stage changes no backbone weight nor BatchNorm statistic
        assert torch.equal(first["model_state"][key], original[key]), key
    lrs = {g["name"]: g["lr"] for g in final["optimizer_state"]["param_groups"]}
    assert lrs == {"head": 0.1, "head (no decay)": 0.1, "backbone": pytest.approx(0.01),
                   "backbone (no decay)": pytest.approx(0.01)}
    assert final["history"][1]["lr"] == 0.1  # the history records the head's rate

    first_1x, final_1x, _ = run("same-rate", backbone_lr_mult=1.0)
    for key in backbone + ["fc.weight", "fc.bias"]:  # same stage 1, so stage 2 starts from the same place
        assert torch.equal(first_1x["model_state"][key], first["model_state"][key]), key
    for key in ("layer4.0.conv1.weight", "layer4.2.bn3.weight", "layer4.2.bn3.bias"):
        step = final["model_state"][key] - first["model_state"][key]
        step_1x = final_1x["model_state"][key] - first_1x["model_state"][key]
        assert step.abs().max() > 0, key  # stage 2 trains layer4
        # Float rounding leaves ~2e-4 of relative difference; a wrong rate (1x, 0.01x) leaves 0.9 or more.
        assert (step_1x - 10 * step).norm() <= 1e-2 * step_1x.norm(), key  # at 0.1 x the 1x run's rate
    for key in ("layer3.5.conv3.weight", "conv1.weight"):  # stages before layer4 stay frozen in stage 2
        assert torch.equal(final["model_state"][key], original[key]), key
    assert torch.allclose(final_1x["model_state"]["fc.weight"], final["model_state"]["fc.weight"])  # head: same rate


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "run", tiny_dataset, epochs=6, lr=1e-12, early_stopping=2, scheduler="none")
    finished = run_to_end(config)
    assert finished.status == "early_stopped"
    assert finished.epochs_done == 3 and finished.best_epoch == 1


def test_pretrained_weights_from_the_hub_cache(tmp_path, tiny_dataset, imagenet_weights_file):
    config = tiny_config(tmp_path / "run", tiny_dataset, weights="imagenet", trainable="layer4", epochs=1, lr=0.1)
    events = collect(config)
    started = events[0]
    assert started.weights["kind"] == "imagenet" and started.weights["pretrained"]
    assert "318 tensors loaded, 2 skipped" in started.weights_report
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    lrs = {g["name"]: g["initial_lr"] for g in state["optimizer_state"]["param_groups"]}
    assert lrs["head"] == 0.1 and lrs["backbone"] == pytest.approx(0.01)  # backbone x0.1 over pretrained
    original = torch.load(imagenet_weights_file, weights_only=True)
    for name in ("conv1.weight", "layer3.0.conv1.weight"):  # frozen stages keep the pretrained values
        assert torch.equal(state["model_state"][name], original[name])
    assert not torch.equal(state["model_state"]["layer4.0.conv1.weight"], original["layer4.0.conv1.weight"])


@pytest.mark.parametrize("imbalance", ["sampler", "loss"])
def test_imbalance_options_train(tmp_path, imbalance):
    data = make_image_folder(tmp_path / "data", {"many": 12, "few": 3})
    finished = run_to_end(tiny_config(tmp_path / "run", data, imbalance=imbalance, epochs=1))
    assert finished.status == "completed"


@pytest.mark.parametrize("optimizer, scheduler", [("adam", "step"), ("adamw", "cosine"), ("sgd", "none")])
def test_optimizers_and_schedulers(tmp_path, tiny_dataset, optimizer, scheduler):
    config = tiny_config(tmp_path / "run", tiny_dataset, optimizer=optimizer, scheduler=scheduler, epochs=2,
                         warmup_epochs=1, step_size=1, gamma=0.5, label_smoothing=0.1)
    events = collect(config)
    lrs = [e.lr for e in events if isinstance(e, EpochEnd)]
    base = config.base_lr
    assert lrs[0] == pytest.approx(base)  # the last warm-up step reaches the full rate
    if scheduler == "cosine":
        assert 0 < lrs[1] < base * 0.5  # well down the cosine by the last step
    else:
        assert lrs[1] == pytest.approx({"step": base * 0.5, "none": base}[scheduler])


def test_learning_curves_improve_on_learnable_data(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "run", tiny_dataset, epochs=8, batch_size=6)
    ends = [e for e in collect(config) if isinstance(e, EpochEnd)]
    assert ends[-1].train_loss < ends[0].train_loss
    assert ends[-1].train_acc > 0.5  # colour classes: a head on calibrated random features can learn them


def test_stop_at_the_two_stage_switch_keeps_each_epochs_own_totals(tmp_path, tiny_dataset):
    common = dict(trainable="layer4", head_epochs=1, epochs=2, seed=3)
    run_to_end(tiny_config(tmp_path / "whole", tiny_dataset, **common))
    expected = load_checkpoint(tmp_path / "whole" / "last.pt")["history"]
    # Its own cache folder, so stage 2 computes its cache (the first run's would be reused from disk).
    config = tiny_config(tmp_path / "split", tiny_dataset, cache_dir=str(tmp_path / "cache"), **common)
    stopper = StopAfter(2)  # mid-epoch 1 (the head-only stage)
    assert list(stopper.watch(train(config, stop=stopper.event)))[-1].status == "stopped"
    stop = threading.Event()
    for event in train(config, stop=stop, resume=True):  # stop again while stage 2 fills its cache
        if isinstance(event, Progress) and event.phase == "features" and event.epoch == 2:
            stop.set()
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    run_to_end(config, resume=True)
    history = load_checkpoint(tmp_path / "split" / "last.pt")["history"]
    for got, want in zip(history, expected, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["train_acc"] == want["train_acc"]


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "run", tiny_dataset, epochs=1)
    first = train(config)
    next(first)  # running: holds the folder
    with pytest.raises(TunerError, match="Another run is writing"):
        next(train(tiny_config(tmp_path / "run", tiny_dataset, epochs=1)))
    for _ in first:
        pass
    first.close()
    run_to_end(config, resume=True)  # once the first has finished, the folder is free again


def test_batch_of_one_cannot_train_batchnorm():
    with pytest.raises(TunerError, match="batch_size=1"):
        TrainConfig(trainable="layer4", batch_size=1).validate()
    TrainConfig(trainable="head", batch_size=1).validate()
