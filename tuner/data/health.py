"""Data health: what is wrong with a dataset before it costs a training run, as plain data.

Every kind of finding is described once, in KINDS (severity, title, the fix in one sentence); the
checks here produce `Finding`s that name only their kind and what they found, and every consumer
(the report's JSON, the command line, the studio) reads the rest from the table.

This module holds the findings, the report, exclusions and the checks that need neither pixels nor a
model: duplicate groups sorted into copies, label conflicts and leaks, and class balance. Image
problems and the pixel hash are in `health_images.py`, feature-space checks in `health_features.py`;
the run that feeds them all, from the feature cache, is `tuner.train.doctor`.

Paths in findings are relative to the dataset folder (posix), as `exclude_samples` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import TunerError
from .discover import (
    FEW_IMAGES_WARNING,
    IMBALANCE_WARNING_RATIO,
    DatasetSpec,
    dataset_warnings,
)

SEVERITIES = ("problem", "note")


@dataclass(frozen=True)
class Kind:
    severity: str  # "problem": worth fixing before training; "note": worth a look
    title: str
    fix: str  # one sentence; settings are named by their TrainConfig field, as errors.py expects
    excludable: bool  # whether the flagged images are what --exclude should leave out


KINDS: dict[str, Kind] = {
    "exact_duplicate": Kind("note", "Identical images within a class",
                            "Keep one copy of each: extra copies weigh the same picture twice in training.", True),
    "exact_conflict": Kind("problem", "Identical images under different classes",
                           "Decide which class each picture belongs to and keep it there only: no model can get "
                           "both labels right.", True),
    "exact_leak": Kind("problem", "Validation images that are also training images",
                       "Exclude the validation copies: an image the model trained on says nothing about new "
                       "images, so validation accuracy reads high.", True),
    "near_duplicate": Kind("note", "Near-identical images within a class",
                           "Keep one of each group unless the small differences are what the model should learn "
                           "to ignore.", True),
    "near_conflict": Kind("problem", "Near-identical images under different classes",
                          "Check each pair: one of the two labels is probably wrong, or the classes differ by "
                          "something the picture does not show.", True),
    "near_leak": Kind("problem", "Validation images nearly identical to training images",
                      "Exclude the validation copies (or move whole groups into one split) so that validation "
                      "measures new images.", True),
    "wrong_label": Kind("problem", "Likely wrong labels",
                        "Look at each: move it to the suggested class folder where that is right, or exclude it.",
                        True),
    "outlier": Kind("note", "Images unlike the rest of the dataset",
                    "Check that they belong to the task at all; exclude those that do not.", True),
    "constant": Kind("problem", "Nearly blank images",
                     "Exclude them: a blank picture teaches nothing about its class.", True),
    "small": Kind("note", "Images much smaller than the training size",
                  "Use larger originals, or train at a smaller image_size so that fewer images are blown up.",
                  False),
    "odd_aspect": Kind("note", "Extreme aspect ratios",
                       "Crop them around the subject by hand: training's centre crop keeps only their middle.",
                       False),
    "dark": Kind("note", "Very dark images", "Check that the subject is visible; exclude those where it is not.",
                 True),
    "bright": Kind("note", "Very bright images",
                   "Check that the subject is visible; exclude those that are washed out.", True),
    "blurry": Kind("note", "Much blurrier than the rest", "Replace them with sharp pictures, or exclude them.",
                   True),
    "greyscale": Kind("note", "Greyscale images among colour ones",
                      "Keep them only if greyscale pictures will be predicted too; otherwise the model may take "
                      "colour as a cue for the classes they sit in.", False),
    "few_images": Kind("problem", "Classes with few training images",
                       f"Add images until each class has {FEW_IMAGES_WARNING} or more, and keep "
                       "trainable='head' while data is this scarce.", False),
    "imbalance": Kind("note", "Imbalanced classes",
                      "Add images to the small classes, or train with imbalance='sampler' (balanced batches) or "
                      "'loss' (class-weighted loss).", False),
    "no_val": Kind("problem", "Classes with no validation images",
                   "Add some images of these classes to the val/ folder so that their accuracy is measured.", False),
    "skipped_files": Kind("note", "Files left out of the dataset",
                          "Convert or remove them if they were meant to be training images.", False),
}

EXAMPLES = 5


@dataclass
class Finding:
    kind: str
    count: int  # images (or classes, for the balance kinds) concerned
    paths: list[str] = field(default_factory=list)  # every flagged image, worst or first first
    detail: str = ""  # what was found here, in one sentence
    related: dict[str, str] = field(default_factory=dict)  # path -> its copy, or the suggested class
    figures: dict[str, float] = field(default_factory=dict)  # measured numbers, for JSON readers

    @property
    def severity(self) -> str:
        return KINDS[self.kind].severity

    @property
    def fix(self) -> str:
        return KINDS[self.kind].fix

    @property
    def examples(self) -> list[str]:
        return self.paths[:EXAMPLES]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "title": KINDS[self.kind].title,
                "count": self.count, "examples": self.examples, "fix": self.fix, "detail": self.detail,
                "figures": self.figures, "paths": self.paths, "related": self.related}


@dataclass
class Report:
    root: str
    counts: list[dict]  # images per class and split (DatasetSpec.counts)
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # what ran, in words
    skipped: list[str] = field(default_factory=list)  # checks that did not run, and why
    excluded: list[str] = field(default_factory=list)  # images left out on request
    stopped: bool = False

    def summary(self) -> str:
        problems = sum(f.severity == "problem" for f in self.findings)
        notes = len(self.findings) - problems
        if not self.findings:
            text = "No problems found"
        else:
            text = (f"{problems} problem{'' if problems == 1 else 's'} worth fixing, "
                    f"{notes} note{'' if notes == 1 else 's'}")
        return text + (" (stopped before every check ran)" if self.stopped else "")

    def flagged(self, kinds: Iterable[str]) -> list[str]:
        """The images of these findings (named by kind), for an exclude list; a kind whose fix is not to
        leave images out (small, odd_aspect, ...), or that this report did not find, is refused."""
        found = {f.kind: f for f in self.findings}
        paths: set[str] = set()
        for kind in kinds:
            if kind not in found or not KINDS[kind].excludable:
                excludable = sorted(k for k in found if KINDS[k].excludable)
                raise TunerError(f"{kind!r} is not a finding of this check whose images can be left out: choose "
                                 f"from {', '.join(excludable) or 'none (nothing to exclude)'}.")
            paths.update(found[kind].paths)
        return sorted(paths)

    def exclusions(self, severities: Sequence[str] = ("problem",)) -> list[str]:
        """The images an exclude file should list: those of excludable findings of these severities."""
        paths = {p for f in self.findings if f.severity in severities and KINDS[f.kind].excludable for p in f.paths}
        return sorted(paths)

    def ordered(self) -> list[Finding]:
        """The findings as every reader lists them: problems first, then the most images first."""
        order = {s: i for i, s in enumerate(SEVERITIES)}
        return sorted(self.findings, key=lambda f: (order[f.severity], -f.count))

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "root": self.root, "counts": self.counts,
                "findings": [f.to_dict() for f in self.ordered()], "checked": self.checked, "skipped": self.skipped,
                "excluded": self.excluded, "stopped": self.stopped, "exclude": self.exclusions()}


def example_note(kind: str, related: str | None) -> str:
    """How a flagged image's other copy or suggested class is said ('matches train/a.png',
    'suggested class dogs'); '' when the finding names neither."""
    if not related:
        return ""
    return f"{'suggested class' if kind == 'wrong_label' else 'matches'} {related}"


# ---- exclusions --------------------------------------------------------------------------------------

def relative_path(path: str, root: str | Path) -> str:
    return Path(path).relative_to(root).as_posix()


def normalised_exclusions(paths: Iterable[str]) -> list[str]:
    """Exclusion paths as `exclude_samples` matches them, sorted and once each (Path drops a leading ./
    and doubled slashes): what reports and run metrics list."""
    return sorted({Path(p).as_posix() for p in paths})


def exclude_samples(spec: DatasetSpec, paths: Iterable[str]) -> DatasetSpec:
    """`spec` without the named images (dataset-relative paths); the split of the others is kept."""
    wanted = set(normalised_exclusions(paths))
    if not wanted:
        return spec
    known = {relative_path(s.path, spec.root) for s in spec.train + spec.val}
    unknown = sorted(wanted - known)
    if unknown:
        raise TunerError(f"The exclude list names {len(unknown)} image(s) not in the dataset (e.g. "
                         f"{', '.join(unknown[:3])}): write paths inside the dataset folder, as the data check "
                         "lists them (e.g. train/cats/01.jpg).")
    train = [s for s in spec.train if relative_path(s.path, spec.root) not in wanted]
    val = [s for s in spec.val if relative_path(s.path, spec.root) not in wanted]
    empty = [c for i, c in enumerate(spec.classes) if not any(s.label == i for s in train)]
    if empty:
        raise TunerError(f"Excluding these images leaves no training image in {', '.join(empty)}: exclude fewer, "
                         "or remove the class folder.")
    if not val:
        raise TunerError("Excluding these images leaves no validation image: exclude fewer.")
    out = DatasetSpec(spec.root, spec.layout, spec.classes, train, val, spec.skipped, [])
    out.warnings = dataset_warnings(out)
    return out


# ---- duplicates (shared by exact and near duplicates) -----------------------------------------------------

def digest_groups(digests: Sequence[str]) -> list[list[int]]:
    """Indices of images with the same digest, in groups of two or more."""
    by_digest: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        by_digest.setdefault(d, []).append(i)
    return [g for g in by_digest.values() if len(g) > 1]


def duplicate_findings(groups: Sequence[Sequence[int]], paths: Sequence[str], labels: Sequence[int],
                       splits: Sequence[str], classes: Sequence[str], prefix: str,
                       accuracy: float | None = None) -> list[Finding]:
    """Sort groups of identical (prefix 'exact') or near-identical ('near': pairs) images into three cases.

    A group under more than one class is a label conflict (every member flagged). Otherwise its
    validation members are a leak when the group also has training members (the validation copies
    flagged), and any further copies within one split are plain duplicates (all but the first). An
    image in several groups (near pairs) is listed once per finding, with the first copy found.
    """
    dup, conflict, leak = Finding(f"{prefix}_duplicate", 0), Finding(f"{prefix}_conflict", 0), Finding(f"{prefix}_leak", 0)

    def flag(finding: Finding, i: int, copy: str) -> None:
        if paths[i] not in finding.related:
            finding.paths.append(paths[i])
            finding.related[paths[i]] = copy

    for group in groups:
        group = sorted(group, key=lambda i: paths[i])
        if len({labels[i] for i in group}) > 1:
            for i in group:
                other = next(j for j in group if labels[j] != labels[i])
                flag(conflict, i, f"{paths[other]} ({classes[labels[other]]})")
            continue
        train = [i for i in group if splits[i] == "train"]
        val = [i for i in group if splits[i] == "val"]
        if train and val:
            for i in val:
                flag(leak, i, paths[train[0]])
            val = []
        for members in (train, val):
            for i in members[1:]:
                flag(dup, i, paths[members[0]])
    n_val = sum(s == "val" for s in splits)
    found = []
    for finding in (dup, conflict, leak):
        finding.count = len(finding.paths)
        if not finding.count:
            continue
        if finding is leak:
            leak_detail(finding, n_val, accuracy)
        found.append(finding)
    return found


def leak_detail(finding: Finding, n_val: int, accuracy: float | None) -> None:
    """How far the leak can lift validation accuracy: a memorised copy is always right, so a share f of
    leaked images lifts accuracy a on the rest to a(1-f) + f, by f(1-a); at most by f."""
    share = finding.count / max(1, n_val)
    finding.figures["val_share"] = share
    text = (f"{finding.count} of {n_val} validation images ({share:.1%}) have a copy in training: validation "
            f"accuracy can read up to {100 * share:.1f} points high")
    if accuracy is not None:
        finding.figures["inflation"] = share * (1 - accuracy)
        text += f" (about {100 * share * (1 - accuracy):.1f} at the cross-validated accuracy of {accuracy:.0%})"
    finding.detail = text + "."


# ---- balance ------------------------------------------------------------------------------------------------

def balance_findings(spec: DatasetSpec) -> list[Finding]:
    """The few-images, imbalance, no-validation and skipped-files warnings of `dataset_warnings`, as findings."""
    rows = spec.counts()
    findings = []
    few = [r for r in rows if r["train"] < FEW_IMAGES_WARNING]
    if few:
        findings.append(Finding("few_images", len(few), detail="Training images: " + ", ".join(
            f"{r['class']} {r['train']}" for r in few) + "."))
    counts = [r["train"] for r in rows]
    if min(counts) and max(counts) / min(counts) >= IMBALANCE_WARNING_RATIO:
        big = max(rows, key=lambda r: r["train"])
        small = min(rows, key=lambda r: r["train"])
        findings.append(Finding("imbalance", len(rows), detail=f"{big['class']} has {big['train']} training images, "
                                f"{small['class']} {small['train']} ({max(counts) / min(counts):.1f}:1).",
                                figures={"ratio": max(counts) / min(counts)}))
    no_val = [r["class"] for r in rows if r["val"] == 0]
    if no_val:
        findings.append(Finding("no_val", len(no_val), detail=f"No validation images in {', '.join(no_val)}."))
    if spec.skipped.total:
        examples = [p for ps in spec.skipped.examples.values() for p in ps]
        findings.append(Finding("skipped_files", spec.skipped.total, examples, spec.skipped.summary()))
    return findings
