"""The command line as users run it (subprocesses), and the flag table behind it."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_SIZE

from tuner.cli.flags import (
    FLAG_FOR_FIELD,
    command_for,
    config_from_args,
    uncovered_config_fields,
)
from tuner.cli.parser import build_parser
from tuner.cli.parser import main as cli_main
from tuner.cli.render import ConsoleRenderer, progress_bar
from tuner.config import AugmentConfig, TrainConfig
from tuner.errors import rename_settings, setting_names
from tuner.events import EpochEnd, Finished, Progress, StageStarted, describe


def tuner(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


def test_help_lists_every_command(capsys):
    for args in (["--help"], ["train", "--help"]):  # in-process: argparse prints and exits 0
        with pytest.raises(SystemExit) as done:
            cli_main(args)
        assert done.value.code == 0
        if args == ["--help"]:
            overview = capsys.readouterr().out
            for command in ("inspect", "train", "doctor", "evaluate", "predict", "export", "bench"):
                assert command in overview
    train_help = capsys.readouterr().out
    for flag in ("--data", "--out", "--trainable", "--epochs", "--image-size", "--batch-size", "--optimizer",
                 "--lr", "--weights", "--seed", "--resume"):
        assert flag in train_help


def test_train_then_predict_then_evaluate(tmp_path, tiny_dataset, capsys):
    # train runs as a real process (as users run it); predict and evaluate run in-process through
    # main(), which is what `python -m tuner` calls, to spare two interpreter starts.
    out = tmp_path / "run"
    result = tuner("train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1", "--image-size",
                   str(TINY_SIZE), "--batch-size", "4", "--augment", "none")
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stderr and "Completed" in result.stderr
    assert {"last.pt", "best.pt", "history.csv", "metrics.json"} <= {p.name for p in out.iterdir()}

    images = sorted(str(p) for p in (tiny_dataset / "red").iterdir())[:2]
    assert cli_main(["predict", "--checkpoint", str(out / "best.pt"), "--top-k", "2", "--json", *images]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == images
    for line in lines:
        assert len(line["top_k"]) == 2
        assert {entry["label"] for entry in line["top_k"]} <= {"red", "green", "blue"}
        assert line["top_k"][0]["prob"] >= line["top_k"][1]["prob"]
    # One unreadable file among them costs its own answer only, and the exit status says so.
    (tmp_path / "bad.jpg").write_text("not a picture")
    assert cli_main(["predict", "--checkpoint", str(out / "best.pt"), images[0], str(tmp_path / "bad.jpg"),
                     images[1]]) == 1
    printed = capsys.readouterr()
    assert [line.split(": ")[0] for line in printed.out.splitlines()] == images
    assert "skipped: Cannot read bad.jpg as an image" in printed.err
    assert cli_main(["predict", "--checkpoint", str(out / "best.pt"), str(tiny_dataset), str(tmp_path / "nope.jpg"),
                     images[0]]) == 1
    printed = capsys.readouterr()
    assert printed.out.startswith(images[0] + ": ")
    assert f"skipped: {tiny_dataset} is a folder: give the images in it, e.g. {tiny_dataset}/*.jpg" in printed.err
    assert f"skipped: {tmp_path / 'nope.jpg'} not found: check the path." in printed.err

    # Resume with only --out: the run keeps its own data and settings, and trains on.
    result = tuner("train", "--out", str(out), "--resume", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stderr and "ignored" not in result.stderr

    assert cli_main(["evaluate", "--checkpoint", str(out / "best.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["blue", "green", "red"] and 0 <= report["accuracy"] <= 1
    assert len(report["confusion_matrix"]) == 3


def test_offline_training_without_weights_says_so_on_stderr(tmp_path, tiny_dataset, monkeypatch, capsys):
    from tuner.model.weights import IMAGENET_FILENAME, IMAGENET_URL

    empty = tmp_path / "empty-torch-home"
    monkeypatch.setenv("TORCH_HOME", str(empty))  # nothing cached; TUNER_OFFLINE=1 from conftest
    assert os.environ["TUNER_OFFLINE"] == "1"
    out = tmp_path / "run"
    assert cli_main(["train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1", "--image-size",
                     str(TINY_SIZE), "--batch-size", "4", "--augment", "none"]) == 0
    stderr = capsys.readouterr().err
    assert "Weights: random initialisation (see the warning below)" in stderr
    warning = next(line for line in stderr.splitlines() if line.startswith("warning: No pretrained weights"))
    looked_in = str(empty / "hub" / "checkpoints")
    assert IMAGENET_FILENAME in warning and looked_in in warning  # which file, and where it was looked for
    assert "TUNER_OFFLINE=1" in warning  # why nothing was downloaded
    assert f"To fix: copy {IMAGENET_FILENAME} (from {IMAGENET_URL}) into {looked_in}" in warning
    assert "Completed" in stderr
    metrics = json.loads((out / "metrics.json").read_text())  # the run's record says it too
    assert metrics["weights"]["kind"] == "random" and IMAGENET_FILENAME in metrics["weights"]["message"]


USER_ERRORS = [
    (["train", "--data", "/no/such/folder", "--out", "OUT"], "Dataset folder not found"),
    (["train", "--epochs", "0", "--out", "OUT"], "--epochs=0: train for at least 1 epoch"),
    (["train", "--trainable", "layer4", "--backbone-lr-mult", "0", "--out", "OUT"],
     "--backbone-lr-mult=0 with --trainable='layer4' would unfreeze stages that never change: use "
     "--trainable='head'"),
    (["train", "--backbone-lr-mult", "-1", "--out", "OUT"], "--backbone-lr-mult=-1.0: use 0 or more"),
    (["train", "--lr", "inf", "--out", "OUT"], "--lr=inf must be a finite number"),
    (["train", "--trainable", "layer4", "--head-epochs", "3", "--epochs", "3", "--out", "OUT"],
     "--head-epochs=3 leaves no epoch to fine-tune deeper stages: use fewer than --epochs=3."),
    (["train", "--trainable", "layer4", "--batch-size", "1", "--out", "OUT"],
     "--batch-size=1 cannot train BatchNorm layers (they need two images to measure a batch): use --batch-size "
     "2 or more, or --trainable='head' with --bn='frozen'."),
    (["train", "--data", "/no/such/folder", "--out", "OUT"], "Dataset folder not found: /no/such/folder."),
    (["predict", "--checkpoint", "/no/such.pt", "x.png"], "Checkpoint not found"),
    (["predict", "x.png"], "--checkpoint FILE"),
    (["predict", "--imagenet", "x.png"], "needs its pretrained weights (resnet50-0676ba61.pth), and none were found: "
                                         "copy resnet50-0676ba61.pth (from https://"),
    (["evaluate", "--checkpoint", "/no/such.pt"], "Checkpoint not found"),
    (["evaluate", "--checkpoint", "OUT_FOLDER"], "is a folder: give a checkpoint file in it, e.g. "),
    (["bench", "--quick", "--json", "OUT_FOLDER"], "is a folder: give the report's file name, e.g. "),
]


@pytest.mark.parametrize("args, message", USER_ERRORS)
def test_user_errors_are_one_line_that_names_the_flags_typed(tmp_path, capsys, args, message):
    # In-process (main() is what `python -m tuner` runs), so each case costs no interpreter start;
    # an unexpected exception would escape main() and fail the test with its traceback.
    ctrl_c = signal.getsignal(signal.SIGINT)
    code = cli_main([str(tmp_path / "out") if a == "OUT" else str(tmp_path) if a == "OUT_FOLDER" else a for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # train's own Ctrl-C handler ends with it


def test_the_last_line_reports_no_accuracy_before_any_epoch_was_validated():
    stream = io.StringIO()
    ConsoleRenderer(stream)(Finished("stopped", 0, 0.0, 0, "runs/x", "runs/x/last.pt"))
    ConsoleRenderer(stream)(Finished("completed", 2, 0.75, 2, "runs/x", "runs/x/best.pt"))
    assert stream.getvalue().splitlines() == [
        "Stopped after 0 epochs; no epoch validated yet. Checkpoint: runs/x/last.pt",
        "Completed after 2 epochs; best val accuracy 75.0% (epoch 2). Checkpoint: runs/x/best.pt"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def visible_lines(written: str) -> list[str]:
    """What a terminal shows: each carriage return goes back to the start of the line."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in written.split("\n")]


def test_a_terminal_gets_a_bar_per_phase_that_gives_way_to_each_line():
    terminal = Terminal()
    render = ConsoleRenderer(terminal)
    render(StageStarted(1, "head", 10, 100, "the feature cache"))
    for step in (1, 2, 3):
        render(Progress("train", 1, step, 3, loss=0.5, acc=0.25))
    render(Progress("val", 1, 1, 2))
    epoch = EpochEnd(1, 2, 1.0, 0.5, 1.0, 0.5, 0.01, 1.0, True)
    render(epoch)
    render(Progress("train", 2, 1, 3, loss=0.5, acc=0.25))
    render.close()  # a run that ends or fails clears its bar
    written = terminal.getvalue()
    assert "epoch 1 Training" in written and "loss 0.500 acc 25.0%" in written and "epoch 1 Validating" in written
    assert visible_lines(written) == [describe(StageStarted(1, "head", 10, 100, "the feature cache"), "cli",
                                              names=FLAG_FOR_FIELD), describe(epoch, "cli"), ""]


def test_work_in_progress_draws_a_bar_on_a_terminal_only():
    terminal = Terminal()
    show = progress_bar("predicting", terminal)
    show(1, 3)
    show(3, 3)
    assert visible_lines(terminal.getvalue())[0].startswith("predicting: 100%")  # the finished bar stays
    assert terminal.getvalue().endswith("\n")
    assert progress_bar("predicting", io.StringIO()) is None  # a log or a pipe would keep every redraw


def test_help_leaves_torch_and_pandas_unloaded():
    # Sub-commands' modules load when they run, so `tuner --help` answers at once.
    code = ("import sys\nfrom tuner.cli import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted({'torch', 'pandas', 'gradio', 'tqdm'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[-1] == "[]", result.stderr


def test_only_settings_are_renamed_never_words_in_the_prose():
    flags = {"epochs": "--epochs", "head_epochs": "--head-epochs", "scale": "--scale", "out": "--out"}
    prose = "use 0 up to epochs-1 (4), scale the image down, or write out fewer epochs"
    assert rename_settings(prose, flags) == prose  # plain words count only as assignments
    assert rename_settings("head_epochs=2 and epochs=3; out='' given", flags) == \
        "--head-epochs=2 and --epochs=3; --out='' given"
    assert setting_names("epochs=3 after head_epochs", flags) == ["epochs", "head_epochs"]
    # The CLI's own table covers predict's check and the resume warning's field names too.
    assert rename_settings("top_k=0: ask for at least 1.", FLAG_FOR_FIELD) == "--top-k=0: ask for at least 1."
    assert rename_settings("ignored: lr=0.5, num_workers=2", FLAG_FOR_FIELD) == "ignored: --lr=0.5, --workers=2"


def test_a_user_error_in_a_real_process_is_one_line_without_traceback(tmp_path):
    result = tuner("train", "--data", "/no/such/folder", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: Dataset folder not found")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_reader_that_goes_away_ends_the_command_quietly(monkeypatch):
    # `python -m tuner inspect | head -1`: head exits after one line and later writes hit a closed pipe.
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        code = cli_main(["inspect", "--no-download", "--classes", "2", "--image-size", "32"])
        assert code == 141  # no traceback: BrokenPipeError did not escape main()


def test_inspect_prints_stages_and_shapes(capsys):
    assert cli_main(["inspect", "--trainable", "layer4", "--classes", "5", "--image-size", "64", "--no-download",
                     "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    stages = {row["stage"]: row for row in info["stages"]}
    assert stages["layer4"]["trainable"] == stages["layer4"]["params"] == 14_964_736
    assert stages["layer3"]["trainable"] == 0
    assert info["weights"]["kind"] == "random"  # offline in tests: said plainly, not hidden
    shapes = {row["module"]: row["output_shape"] for row in info["output_shapes"]}
    assert shapes["layer4"] == "1x2048x2x2"


def test_every_config_field_has_a_flag():
    assert uncovered_config_fields() == []


def test_command_for_reproduces_the_config():
    config = TrainConfig(data="photos.zip", out="runs/x y", trainable="layer3", lr=0.02, epochs=7,
                         augment=AugmentConfig.from_preset("strong").with_changes(hflip=False), sync_bn=True)
    command = command_for(config)
    assert command.startswith("python -m tuner train ")
    assert "'runs/x y'" in command  # quoted, ready to paste
    import shlex
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert config_from_args(args) == config.validate()
    assert command_for(TrainConfig()) == "python -m tuner train"
