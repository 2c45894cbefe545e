"""`tuner doctor`, in-process through main() as `python -m tuner` runs it, on the data check's planted
dataset (tests/test_health.py) with a random backbone at 32 px: the pixel checks run, and the
feature checks say why they did not."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from conftest import TINY_SIZE, make_image_folder
from test_health import planted_dataset

from tuner.cli.parser import main as cli_main
from tuner.data.exclusions import read_exclusions
from tuner.data.health import KINDS
from tuner.train import doctor

FAST = ["--weights", "random", "--image-size", str(TINY_SIZE)]
PROBLEMS = ("exact_conflict", "exact_leak", "constant")  # the planted problems a random backbone can find


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("planted") / "data"
    return root, planted_dataset(root)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_report_heads_with_its_summary_and_lists_problems_before_notes(planted, capsys):
    root, expected = planted
    before = files_of(root)
    assert cli_main(["doctor", "--data", str(root), *FAST]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0] == "3 problems worth fixing, 6 notes"
    headers = [line for line in lines if line.startswith(("problem: ", "note: "))]
    assert [h.split(":")[0] for h in headers] == ["problem"] * 3 + ["note"] * 6
    for kind, paths in expected.items():
        header = f"{KINDS[kind].severity}: {KINDS[kind].title} ({len(paths)})"
        assert header in lines, header
        block = printed.out.split(header, 1)[1].split("\n\n", 1)[0]
        assert all(f"  - {path}" in block for path in paths), block  # dataset-relative examples
        assert "Fix: " in block
    assert "  - val/checks/leaked.png  (matches train/checks/00.png)" in lines
    assert "train at a smaller --image-size" in printed.out  # settings named by the flags typed here
    assert "Not checked: near duplicates, outliers and wrong labels" in printed.out
    assert "4 flagged image(s) can be left out: --write-exclude FILE" in printed.out
    # Progress and messages go to stderr, as train's do; the data is read, never changed.
    assert printed.err.startswith("warning: Skipped near duplicates, outliers and wrong labels")
    assert files_of(root) == before


def test_json_is_one_document_the_report_s_own(planted, capsys):
    root, expected = planted
    assert cli_main(["doctor", "--data", str(root), *FAST, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # the whole of stdout parses: nothing else is printed there
    assert report["summary"] == "3 problems worth fixing, 6 notes" and not report["stopped"]
    assert {f["kind"]: set(f["paths"]) for f in report["findings"]} == expected
    assert [f["severity"] for f in report["findings"]] == ["problem"] * 3 + ["note"] * 6
    assert report["exclude"] == sorted(set().union(*(expected[k] for k in PROBLEMS)))
    assert "image_size" in next(f["fix"] for f in report["findings"] if f["kind"] == "small")  # API names


def test_write_exclude_then_exclude_checks_the_data_without_those_images(planted, tmp_path, capsys):
    root, expected = planted
    flagged = sorted(set().union(*(expected[k] for k in PROBLEMS)))
    listing = tmp_path / "lists" / "exclude.txt"
    assert cli_main(["doctor", "--data", str(root), *FAST, "--write-exclude", str(listing)]) == 0
    assert f"Wrote 4 image path(s) to {listing}." in capsys.readouterr().err
    text = listing.read_text()
    assert text.startswith(f"# Images to leave out of the dataset {root}")
    assert read_exclusions(listing) == flagged
    assert list(listing.parent.iterdir()) == [listing]  # no temporary file left beside it

    assert cli_main(["doctor", "--data", str(root), *FAST, "--exclude", str(listing), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["excluded"] == flagged
    assert report["summary"] == "0 problems worth fixing, 6 notes"
    assert not set(flagged) & {p for f in report["findings"] for p in f["paths"]}
    assert sum(row["train"] + row["val"] for row in report["counts"]) == len(files_of(root)) - len(flagged)
    assert all((root / p).is_file() for p in flagged)  # left out of the check, not deleted

    # A list written while excluding keeps the images already left out, so that it replaces the first.
    second = tmp_path / "lists" / "again.txt"
    assert cli_main(["doctor", "--data", str(root), *FAST, "--exclude", str(listing), "--write-exclude",
                     str(second)]) == 0
    assert "4 left out by --exclude" in capsys.readouterr().out
    assert read_exclusions(second) == flagged

    # An existing file is never overwritten, and the check does not run for nothing.
    assert cli_main(["doctor", "--data", str(root), *FAST, "--write-exclude", str(listing)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and len(printed.err.strip().splitlines()) == 1
    assert "already exists" in printed.err and "choose another name for --write-exclude, or delete" in printed.err
    assert listing.read_text() == text


def one_class(tmp_path: Path) -> str:
    return str(make_image_folder(tmp_path / "one", {"cats": 6}))


USER_ERRORS = [
    (lambda tmp: ["--data", one_class(tmp)], "Only one class found (cats)"),
    (lambda tmp: ["--data", str(tmp / "no-such-folder")], "Dataset folder not found"),
    (lambda tmp: ["--exclude", str(tmp / "missing.txt")], "Cannot read the exclude file"),
]


@pytest.mark.parametrize("args, message", USER_ERRORS)
def test_user_errors_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    ctrl_c = signal.getsignal(signal.SIGINT)
    listing = tmp_path / "exclude.txt"
    assert cli_main(["doctor", *FAST, *args(tmp_path), "--write-exclude", str(listing)]) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith("error: ") and message in printed.err
    assert len(printed.err.strip().splitlines()) == 1 and printed.out == ""
    assert not listing.exists()
    assert signal.getsignal(signal.SIGINT) is ctrl_c


def test_an_exclude_list_naming_other_images_says_how_to_write_paths(planted, tmp_path, capsys):
    root, _ = planted
    listing = tmp_path / "exclude.txt"
    listing.write_text("# mine\ncats/01.jpg\n")
    assert cli_main(["doctor", "--data", str(root), *FAST, "--exclude", str(listing)]) == 2
    err = capsys.readouterr().err
    assert "not in the dataset (e.g. cats/01.jpg): write paths inside the dataset folder" in err
    assert len(err.strip().splitlines()) == 1


def test_ctrl_c_stops_the_check_and_prints_what_was_found(planted, monkeypatch, capsys):
    # A real SIGINT, raised in the main thread just after the pixels were read: the command's handler
    # sets the stop flag, the check skips what remains, and the finished checks' findings are printed.
    root, _ = planted
    ctrl_c = signal.getsignal(signal.SIGINT)
    findings = doctor.image_findings

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return findings(*args, **kwargs)

    monkeypatch.setattr(doctor, "image_findings", interrupted)
    assert cli_main(["doctor", "--data", str(root), *FAST]) == 130
    printed = capsys.readouterr()
    assert printed.out.splitlines()[0] == "3 problems worth fixing, 6 notes (stopped before every check ran)"
    assert "problem: Nearly blank images (1)" in printed.out
    assert "Stopping after this batch (Ctrl-C again to abort)" in printed.err
    assert printed.err.rstrip().endswith("Stopped on request: the findings are those of the checks that finished.")
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # the handler ends with the command


def test_help_says_where_a_zip_is_unpacked_and_what_the_exclude_files_are(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["doctor", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--data", "--out", "--image-size", "--weights", "--val-ratio", "--seed", "--exclude FILE",
                 "--write-exclude FILE", "--json"):
        assert flag in text
    assert "(default: runs/demo, train's)" in text and "(default: imagenet)" in text
