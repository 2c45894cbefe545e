"""`tuner doctor`: checks a dataset before it costs a training run and lists what to fix, problems
first; `--write-exclude` saves the flagged images as the file `--exclude` reads. Ctrl-C stops the
check between batches and prints what the finished checks found."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import TrainConfig
from ..data.exclusions import exclusion_lines, read_exclusions
from ..data.health import Report, example_note
from ..errors import TunerError, rename_settings
from ..events import drain
from ..paths import atomic_write
from ..train.doctor import doctor_config, doctor_events
from .flags import DOCTOR_FLAGS, FLAG_FOR_FIELD, typed_values
from .render import ConsoleRenderer
from .stopping import ctrl_c_stops


def cmd_doctor(args: argparse.Namespace) -> int:
    settings = typed_values(args, DOCTOR_FLAGS)
    defaults = TrainConfig()  # as `tuner train`: a flag not typed means train's default
    config = doctor_config(settings.pop("data", defaults.data), settings.pop("out", defaults.out), **settings)
    exclude = read_exclusions(args.exclude) if args.exclude else []
    if args.write_exclude:
        refuse_existing(args.write_exclude)  # before the check, which may take minutes
    render = ConsoleRenderer()  # progress and messages on stderr, also with --json: stdout holds the report
    with ctrl_c_stops() as stop:
        try:
            report = drain(doctor_events(config, exclude=exclude, stop=stop), render)
        finally:
            render.close()
    print(json.dumps(report.to_dict()) if args.json else report_text(report, bool(args.write_exclude)))
    if args.write_exclude:  # after the report, which a failed write must not cost
        write_exclusions(args.write_exclude, report)
    if report.stopped:
        print("Stopped on request: the findings are those of the checks that finished.", file=sys.stderr)
        return 130
    return 0


def report_text(report: Report, writing_exclusions: bool = False) -> str:
    """The summary line, then each finding (problems first): title, count, what was found, the fix, and
    a few of its images with their copy or suggested class. Settings are named by the flags a person
    types (train at a smaller --image-size), as in the error lines; the JSON keeps the engine's names."""
    data = report.to_dict()
    train, val = (sum(row[split] for row in data["counts"]) for split in ("train", "val"))
    left_out = f", {len(data['excluded'])} left out by --exclude" if data["excluded"] else ""
    lines = [data["summary"], f"Dataset {data['root']}: {len(data['counts'])} classes, {train} training and {val} "
             f"validation images{left_out}."]
    for finding in data["findings"]:
        lines += ["", f"{finding['severity']}: {finding['title']} ({finding['count']})"]
        lines += [f"  {flags(text)}" for text in (finding["detail"], "Fix: " + finding["fix"]) if text]
        for path in finding["examples"]:
            note = example_note(finding["kind"], finding["related"].get(path))
            lines.append(f"  - {path}" + (f"  ({note})" if note else ""))
        more = len(finding["paths"]) - len(finding["examples"])
        if more > 0:
            lines.append(f"  ... and {more} more (--json lists them all)")
    if data["skipped"]:
        lines += ["", *(f"Not checked: {flags(reason)}." for reason in data["skipped"])]
    if data["exclude"] and not writing_exclusions:
        lines += ["", f"{len(data['exclude'])} flagged image(s) can be left out: --write-exclude FILE lists them, "
                  "and --exclude FILE checks the data without them."]
    return "\n".join(lines)


def flags(text: str) -> str:
    return rename_settings(text, FLAG_FOR_FIELD)


def refuse_existing(path: str) -> None:
    if Path(path).exists():
        raise TunerError(f"{path} already exists, and an exclude file is never overwritten: choose another name "
                         "for --write-exclude, or delete that file first.")


def write_exclusions(path: str, report: Report) -> None:
    """Every image to leave out: those this check flagged as problems, and those --exclude already left
    out, so that the file replaces the one it was given. Atomic: a reader sees no half-written file."""
    refuse_existing(path)  # one may have appeared while the check ran
    paths = sorted(set(report.excluded) | set(report.exclusions()))
    header = [f"# Images to leave out of the dataset {report.root}: one path per line, inside that folder.",
              f"# Written by `tuner doctor --write-exclude` ({report.summary()}); `tuner train --exclude` "
              "trains without these images and `tuner doctor --exclude` checks the data without them. Lines "
              "starting with # are ignored: delete a line to keep that image."]
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(header + exclusion_lines(paths)) + "\n"))
    print(f"Wrote {len(paths)} image path(s) to {path}.", file=sys.stderr)
