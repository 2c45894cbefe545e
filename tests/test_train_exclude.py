"""Training without some images (TrainConfig.exclude, `tuner train --exclude FILE`): the run leaves them
out on whichever path it gets its data, says so, lists them in metrics.json and keeps them on resume."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_SIZE
from test_cli_doctor import FAST, files_of, planted  # noqa: F401 (planted is a fixture)
from test_train import collect, tiny_config

from tuner.cli.flags import command_for, config_from_args
from tuner.cli.parser import build_parser
from tuner.cli.parser import main as cli_main
from tuner.config import TrainConfig
from tuner.data.discover import prepare_dataset
from tuner.data.exclusions import read_exclusions
from tuner.errors import TunerError
from tuner.events import Message, RunStarted
from tuner.model.checkpoint import load_checkpoint, save_checkpoint

LEFT_OUT = ["red/red_3.png", "green/green_0.png", "./blue/blue_5.png"]  # "./" as a hand-written list may have it
LISTED = sorted(["red/red_3.png", "green/green_0.png", "blue/blue_5.png"])


def started(events) -> RunStarted:
    return next(e for e in events if isinstance(e, RunStarted))


def infos(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Message) and e.level == "info"]


def warnings(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Message) and e.level == "warning"]


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_a_run_with_exclusions_trains_on_fewer_images_and_lists_them(tmp_path, tiny_dataset):
    events = collect(tiny_config(tmp_path / "run", tiny_dataset, epochs=1, exclude=LEFT_OUT))
    run = started(events)
    assert run.num_train + run.num_val == 18 - 3
    left = [text for text in infos(events) if text.startswith("Left out")]
    assert left == [f"Left out 3 image(s) on the exclude list: training on {run.num_train} and validating on "
                    f"{run.num_val}."]
    assert metrics(tmp_path / "run")["excluded"] == LISTED
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["exclude"] == LEFT_OUT
    collect(tiny_config(tmp_path / "all", tiny_dataset, epochs=1))
    assert metrics(tmp_path / "all")["excluded"] == []


def test_a_given_spec_is_trained_without_the_exclusions_too(tmp_path, tiny_dataset):
    # The studio hands over the dataset it loaded; the run still leaves the listed images out of it.
    spec = prepare_dataset(str(tiny_dataset), tmp_path / "run", 0.2, 0)
    events = collect(tiny_config(tmp_path / "run", tiny_dataset, epochs=1, exclude=LEFT_OUT), spec=spec)
    run = started(events)
    assert run.num_train + run.num_val == len(spec.train) + len(spec.val) - 3
    assert metrics(tmp_path / "run")["excluded"] == LISTED


def test_resume_keeps_the_run_s_exclusions_and_names_another_list_as_ignored(tmp_path, tiny_dataset):
    collect(tiny_config(tmp_path / "run", tiny_dataset, epochs=1, exclude=LEFT_OUT))
    longer = tiny_config(tmp_path / "run", tiny_dataset, epochs=2, exclude=["red/red_0.png"])
    events = collect(longer, resume=True, given={"epochs", "exclude"})
    assert started(events).num_train + started(events).num_val == 15
    assert any("ignored: exclude=['red/red_0.png']" in w for w in warnings(events))
    assert len([text for text in infos(events) if text.startswith("Left out 3 image(s)")]) == 1
    assert metrics(tmp_path / "run")["epochs_done"] == 2 and metrics(tmp_path / "run")["excluded"] == LISTED


def test_a_checkpoint_from_before_exclusions_resumes_as_before(tmp_path, tiny_dataset):
    collect(tiny_config(tmp_path / "run", tiny_dataset, epochs=1))
    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last)
    del state["config"]["exclude"]  # as a checkpoint written before the setting existed
    save_checkpoint(state, last)
    events = collect(tiny_config(tmp_path / "run", tiny_dataset, epochs=2), resume=True)  # every field "given"
    assert started(events).num_train + started(events).num_val == 18
    assert not any("ignored" in w for w in warnings(events))
    assert not any(text.startswith("Left out") for text in infos(events))
    assert metrics(tmp_path / "run")["epochs_done"] == 2 and metrics(tmp_path / "run")["excluded"] == []


def test_an_unknown_path_is_refused_before_training(tmp_path, tiny_dataset):
    with pytest.raises(TunerError, match=r"^The exclude list names 1 image\(s\) not in the dataset \(e.g. "
                       r"red/nope.png\): write paths inside the dataset folder"):
        collect(tiny_config(tmp_path / "run", tiny_dataset, exclude=["red/nope.png"]))
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("exclude, message", [
    ([""], "exclude holds '', which is not an image path"),
    (["red/a\nb.png"], "which is not an image path"),
    ("red/red_0.png", "exclude='red/red_0.png' must be a list of text values"),
    ([3], "must be a list of text values"),
])
def test_exclusions_are_checked_like_every_setting(exclude, message):
    with pytest.raises(TunerError, match=message):
        TrainConfig(exclude=exclude).validate()


def test_exclusions_survive_the_config_round_trip():
    config = TrainConfig(exclude=LISTED)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({"epochs": 3}).exclude == []  # a config saved before the setting


def test_the_shown_command_writes_the_list_and_reproduces_the_config(tmp_path, monkeypatch):
    config = TrainConfig(data="photos", out="runs/x y", epochs=3,
                         exclude=["train/cats/01.jpg", "train/dogs/a b.jpg", "#tagged/02.jpg"])
    # The launcher prints the arguments it is given, so a shell runs the whole command as pasted.
    launcher = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    command = command_for(config, launcher=launcher)
    shown = command_for(config)
    name = shown.splitlines()[-1].split()[-1]
    assert re.fullmatch(r"exclude-[0-9a-f]{8}\.txt", name)
    assert shown.splitlines()[0] == f"(set -C; cat > {name}) <<'END_OF_LIST'"
    assert shown.splitlines()[-1] == "python -m tuner train --data photos --out 'runs/x y' --epochs 3 " \
        f"--exclude {name}"
    done = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True)
    args = build_parser().parse_args(json.loads(done.stdout))  # "train" and its flags
    monkeypatch.chdir(tmp_path)  # where the command ran: --exclude is read from there
    assert read_exclusions(tmp_path / name) == ["train/cats/01.jpg", "train/dogs/a b.jpg", "./#tagged/02.jpg"]
    rebuilt = config_from_args(args)
    assert [Path(p).as_posix() for p in rebuilt.exclude] == config.exclude
    assert rebuilt == TrainConfig(data="photos", out="runs/x y", epochs=3, exclude=rebuilt.exclude)
    assert "exclude" not in command_for(TrainConfig(epochs=3))  # no list, no file
    # Pasted again, the command leaves the file as it is (noclobber), and a user's own exclude.txt is never
    # the file it writes.
    (tmp_path / name).write_text("mine\n")
    subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True)
    assert (tmp_path / name).read_text() == "mine\n"


def test_doctor_writes_the_list_and_train_leaves_those_images_out(planted, tmp_path, capsys):  # noqa: F811
    root, _ = planted
    before = files_of(root)
    listing = tmp_path / "exclude.txt"
    assert cli_main(["doctor", "--data", str(root), *FAST, "--write-exclude", str(listing)]) == 0
    flagged = read_exclusions(listing)
    assert len(flagged) == 4
    capsys.readouterr()  # the report
    out = tmp_path / "run"
    assert cli_main(["train", "--data", str(root), "--out", str(out), "--weights", "random", "--image-size",
                     str(TINY_SIZE), "--epochs", "1", "--workers", "0", "--exclude", str(listing), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    run = next(e for e in lines if e["event"] == "RunStarted")
    assert run["num_train"] + run["num_val"] == len(before) - 4
    assert metrics(out)["excluded"] == sorted(flagged)
    assert load_checkpoint(out / "last.pt")["config"]["exclude"] == flagged
    assert files_of(root) == before  # the data is read, never changed


def test_train_with_an_unreadable_or_wrong_list_says_the_fix_in_one_line(planted, tmp_path, capsys):  # noqa: F811
    root, _ = planted
    args = ["train", "--data", str(root), "--out", str(tmp_path / "run"), *FAST, "--epochs", "1"]
    assert cli_main([*args, "--exclude", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot read the exclude file") and err.count("\n") == 1
    listing = tmp_path / "exclude.txt"
    listing.write_text("checks/00.png\n")  # without its split folder
    assert cli_main([*args, "--exclude", str(listing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The exclude list names 1 image(s) not in the dataset (e.g. checks/00.png)")
    assert err.count("\n") == 1
