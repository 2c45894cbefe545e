"""The words the CLI and the studio's log use for training events: one function, two styles."""

from __future__ import annotations

from tuner.cli.flags import FLAG_FOR_FIELD
from tuner.events import (
    CheckpointSaved,
    EpochEnd,
    Finished,
    Message,
    Progress,
    RunStarted,
    StageStarted,
    describe,
)


def started(start_epoch: int = 0, start_batch: int = 0) -> RunStarted:
    return RunStarted("runs/x", ["cat", "dog"], 10, 4, "cpu", {"message": "ImageNet weights", "pretrained": True},
                      "320 tensors loaded", start_epoch, start_batch, 5)


def test_a_run_start_is_two_terminal_lines_or_log_sentences():
    assert describe(started(), "cli") == ("Training on 10 images (4 for validation), 2 classes: cat, dog\n"
                                          "Device: cpu. Weights: ImageNet weights (320 tensors loaded).")
    assert describe(started(2, 3), "cli").split("\n")[0].endswith(" (resuming at epoch 3, batch 3)")
    assert describe(started(), "log") == ("Training on cpu: 2 classes, 10 training and 4 validation images.\n"
                                          "Weights: 320 tensors loaded")
    # A resumed run says where it continues, in the log even from its very first batch.
    assert describe(started(), "log", resumed=True).endswith("\nResuming at epoch 1.")
    assert describe(started(2, 3), "log", resumed=True).endswith("\nResuming at epoch 3, batch 4.")


def test_settings_in_engine_texts_are_named_as_the_user_knows_them():
    stage = StageStarted(2, "layer4", 15_000_000, 23_500_000, "the full model")
    assert describe(stage, "cli", names=FLAG_FOR_FIELD) == \
        "Epoch 2: training 15,000,000 of 23,500,000 parameters (--trainable=layer4); the full model."
    assert describe(stage, "log") == \
        "From epoch 2: training 15,000,000 of 23,500,000 parameters (trainable=layer4); the full model."
    warning = Message("warning", "ignored: num_workers=2")
    assert describe(warning, "cli", names=FLAG_FOR_FIELD) == "warning: ignored: --workers=2"
    assert describe(warning, "log") == "Warning: ignored: num_workers=2"
    assert describe(Message("info", "Measuring."), "log") == "Measuring."


def test_an_epoch_is_a_scannable_terminal_row_or_a_log_sentence():
    end = EpochEnd(1, 5, 0.51234, 0.8, 0.41234, 0.875, 0.001, 2.34, True)
    assert describe(end, "cli") == ("epoch 1/5  train loss 0.5123 acc 80.0%  val loss 0.4123 acc 87.5%  lr 0.001  "
                                    "2.3s  *best")
    assert describe(end, "log") == ("Epoch 1/5: train loss 0.512, acc 80.0%; val loss 0.412, acc 87.5% (best so far); "
                                    "2.3s")
    assert end.row() == {"epoch": 1, "train_loss": 0.51234, "train_acc": 0.8, "val_loss": 0.41234, "val_acc": 0.875,
                         "lr": 0.001, "seconds": 2.34}


def test_the_end_of_a_run_names_its_status_and_best_epoch():
    done = Finished("early_stopped", 1, 0.75, 1, "runs/x", "runs/x/best.pt")
    assert describe(done, "cli") == ("Early stopped after 1 epoch; best val accuracy 75.0% (epoch 1). "
                                     "Checkpoint: runs/x/best.pt")
    assert describe(done, "log") == ("Stopped early (no better validation accuracy): best validation accuracy 75.0% "
                                     "(epoch 1), 1 epoch done")


def test_progress_and_saved_checkpoints_are_not_lines():
    for event in (Progress("train", 1, 3, 10), CheckpointSaved("runs/x/last.pt", "last")):
        assert describe(event, "cli") is None and describe(event, "log") is None
