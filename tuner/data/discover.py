"""Finding a dataset: accepted layouts, class folders, skipped files, the train/val split and warnings.

Accepted layouts (class names are the sorted folder names):
  root/train/<class>/... + root/val/<class>/...    (val may also be called valid or validation)
  root/<class>/...                                   (split into train/val: stratified, seeded)
  a .zip of either, possibly wrapped in one top folder.
"""

from __future__ import annotations

import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import TunerError
from .archives import ZipLimits, safe_extract_zip
from .demo import demo_dataset_dir
from .images import IMAGE_EXTENSIONS, Sample, check_image

JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini", "@eaDir"}


VAL_DIR_NAMES = ("val", "valid", "validation")


MIN_IMAGES_PER_CLASS = 2  # one to train on and one to validate with


FEW_IMAGES_WARNING = 10


IMBALANCE_WARNING_RATIO = 3.0


@dataclass
class SkipReport:
    """Files and folders left out of the dataset, counted by reason, with a few examples each.

    A skipped folder counts once, as a folder: its contents are never walked (a .git folder may
    hold thousands of files), so the summary says how many of the entries are folders.
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    folders: int = 0

    def add(self, reason: str, rel_path: str, folder: bool = False) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.folders += folder
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(rel_path)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "No files skipped."
        # "reason: count" reads right for files and folders alike ("links: 1", "other file types: 3").
        parts = [f"{reason}: {n} (e.g. {', '.join(self.examples[reason][:2])})" for reason, n in self.counts.items()]
        files = self.total - self.folders
        what = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in ((files, "file"), (self.folders, "folder")) if n]
        return f"Skipped {' and '.join(what)}: " + "; ".join(parts) + "."


@dataclass
class DatasetSpec:
    root: str
    layout: str
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    skipped: SkipReport
    warnings: list[str]

    def counts(self) -> list[dict]:
        """Images per class and split, as rows for tables and charts."""
        rows = []
        for label, name in enumerate(self.classes):
            rows.append({"class": name, "train": sum(s.label == label for s in self.train),
                         "val": sum(s.label == label for s in self.val)})
        return rows

    def fingerprint(self) -> str:
        """Changes when any file, label or split changes (used to key feature caches)."""
        digest = hashlib.sha256()
        for split, samples in (("train", self.train), ("val", self.val)):
            for s in samples:
                st = os.stat(s.path)
                digest.update(f"{split}|{s.path}|{s.label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in JUNK_NAMES


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))


def _folder_path(folder: Path, base: Path) -> str:
    return f"{folder.relative_to(base).as_posix()}/"  # the slash tells a skipped folder from a file


def _skip_hidden_dirs(folder: Path, base: Path, skipped: SkipReport) -> None:
    """Count each hidden or system folder directly in `folder` (`_visible_dirs` leaves them out)."""
    for p in sorted(folder.iterdir()):
        if is_hidden(p.name) and p.is_dir():
            skipped.add("hidden or system folders", _folder_path(p, base), folder=True)


SPLIT_DIR_NAMES = ("train", "training", "test") + VAL_DIR_NAMES


def _split_folder(root: Path) -> Path | None:
    """The train/ folder of a train/val layout, or None for class folders.

    A class may itself be called 'train' (trains, buses, cars...), so the layout counts as train/val
    only when every top-level folder is a split name and train/ holds class sub-folders.
    """
    train_dir = _find_named(root, ("train", "training"))
    if train_dir is None or not _visible_dirs(train_dir):
        return None
    if any(p.name.lower() not in SPLIT_DIR_NAMES for p in _visible_dirs(root)):
        return None
    return train_dir


def _find_named(folder: Path, names: Sequence[str]) -> Path | None:
    for p in _visible_dirs(folder):
        if p.name.lower() in names:
            return p
    return None


def discover_dataset(root: str | os.PathLike, val_ratio: float = 0.2, seed: int = 0) -> DatasetSpec:
    """Find classes and images under `root`, read every image once to skip those that cannot be (as
    training would fail on them), validate the rest, and split train/val if needed."""
    root = top = Path(root)
    if not root.is_dir():
        raise TunerError(f"Dataset folder not found: {root}. Give a folder with one sub-folder per class "
                         "(or train/ and val/ folders of class sub-folders), or a .zip of one.")
    # Skipped paths are named from the folder the user gave (for a zip: as inside the archive), so
    # that folders left behind while looking through wrapper folders can be named too.
    skipped = SkipReport()
    # A zip often wraps everything in one top folder: look through it.
    while True:
        dirs = _visible_dirs(root)
        has_files = any(p.is_file() and not is_hidden(p.name) for p in root.iterdir())
        if len(dirs) == 1 and not has_files and dirs[0].name.lower() not in ("train",) + VAL_DIR_NAMES:
            inner = _visible_dirs(dirs[0])
            if inner:
                _skip_hidden_dirs(root, top, skipped)  # macOS zips put __MACOSX/ beside the wrapper
                root = dirs[0]
                continue
        break

    train_dir = _split_folder(root)
    if train_dir is not None:
        _skip_hidden_dirs(root, top, skipped)  # beside train/ and val/; class folders count their own
        val_dir = _find_named(root, VAL_DIR_NAMES)
        train_files, classes = _scan_class_folders(train_dir, top, skipped)
        if val_dir is not None:
            val_files, val_classes = _scan_class_folders(val_dir, top, skipped)
            if not val_classes:
                raise TunerError(f"{val_dir.name}/ has no class folders: put validation images in "
                                 f"{val_dir.name}/<class>/, or remove {val_dir.name}/ to split {train_dir.name}/.")
            unknown = sorted(set(val_classes) - set(classes))
            if unknown:
                raise TunerError(f"{val_dir.name}/ has classes that {train_dir.name}/ lacks: {', '.join(unknown)}. "
                                 "Give every class images in train/ too.")
            layout = f"{train_dir.name}/ and {val_dir.name}/ folders"
        else:
            val_files = {}
            layout = f"{train_dir.name}/ folder, split {1 - val_ratio:.0%}/{val_ratio:.0%} into train/val"
    else:
        loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if loose and not _visible_dirs(root):
            raise TunerError(f"Images sit directly in {root.name}/ with no class folders: put each class's images "
                             "in its own sub-folder (e.g. data/cats/*.jpg, data/dogs/*.jpg).")
        train_files, classes = _scan_class_folders(root, top, skipped)
        val_files = {}
        layout = f"class folders, split {1 - val_ratio:.0%}/{val_ratio:.0%} into train/val"

    _drop_unreadable(train_files, top, skipped)
    _drop_unreadable(val_files, top, skipped)
    classes = sorted(classes)
    empty = [c for c in classes if not train_files.get(c)]
    if len(classes) - len(empty) == 0:
        raise TunerError(f"No readable images found under {root.name}/ ({skipped.summary().rstrip('.')}). Put images "
                         f"({', '.join(sorted(IMAGE_EXTENSIONS))}) in one sub-folder per class.")
    if empty:
        raise TunerError(f"These class folders have no readable images: {', '.join(empty)}. Add images or "
                         "remove the folders.")
    if len(classes) < 2:
        raise TunerError(f"Only one class found ({classes[0]}): a classifier needs at least two class folders.")

    if val_files:
        train = [Sample(str(p), i) for i, c in enumerate(classes) for p in train_files[c]]
        val = [Sample(str(p), i) for i, c in enumerate(classes) for p in val_files.get(c, [])]
    else:
        too_few = [f"{c} ({len(train_files[c])})" for c in classes if len(train_files[c]) < MIN_IMAGES_PER_CLASS]
        if too_few:
            raise TunerError(f"Too few images in: {', '.join(too_few)}. Each class needs at least "
                             f"{MIN_IMAGES_PER_CLASS} (one to train, one to validate); {FEW_IMAGES_WARNING}+ "
                             "is better.")
        train, val = split_stratified(train_files, classes, val_ratio, seed)
    if not val:
        raise TunerError("The validation split is empty: add images to val/, or drop val/ to split train/.")

    spec = DatasetSpec(str(root), layout, classes, train, val, skipped, [])
    spec.warnings = dataset_warnings(spec)
    return spec


def _scan_class_folders(folder: Path, root: Path, skipped: SkipReport) -> tuple[dict[str, list[Path]], list[str]]:
    files: dict[str, list[Path]] = {}
    _skip_hidden_dirs(folder, root, skipped)
    for class_dir in _visible_dirs(folder):
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
            keep = []
            for d in sorted(dirnames):
                sub = Path(dirpath) / d
                if is_hidden(d):
                    skipped.add("hidden or system folders", _folder_path(sub, root), folder=True)
                elif sub.is_symlink():  # os.walk lists linked folders but does not enter them
                    skipped.add("links", _folder_path(sub, root), folder=True)
                else:
                    keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = str(path.relative_to(root))
                if is_hidden(name):
                    skipped.add("hidden or system files", rel)
                elif path.is_symlink():
                    skipped.add("links", rel)
                elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped.add("other file types", rel)
                else:
                    found.append(path)
        files[class_dir.name] = found
    for p in folder.iterdir():
        if p.is_file() and not is_hidden(p.name):
            skipped.add("files outside class folders", str(p.relative_to(root)))
    return files, list(files)


def _drop_unreadable(files: dict[str, list[Path]], root: Path, skipped: SkipReport) -> None:
    paths = [p for ps in files.values() for p in ps]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        verdicts = dict(zip(paths, pool.map(check_image, paths)))
    for c, ps in files.items():
        keep = []
        for p in ps:
            if verdicts[p] is None:
                keep.append(p)
            else:
                skipped.add(verdicts[p], str(p.relative_to(root)))
        files[c] = keep


def split_stratified(files: dict[str, list[Path]], classes: list[str], val_ratio: float,
                     seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per class: shuffle with the seed, hold out round(n * ratio) (at least 1, leaving at least 1)."""
    rng = random.Random(seed)
    train, val = [], []
    for label, c in enumerate(classes):
        paths = sorted(files[c])
        rng.shuffle(paths)
        n_val = min(len(paths) - 1, max(1, round(len(paths) * val_ratio)))
        val += [Sample(str(p), label) for p in paths[:n_val]]
        train += [Sample(str(p), label) for p in paths[n_val:]]
    return train, val


def dataset_warnings(spec: DatasetSpec) -> list[str]:
    warnings = []
    counts = {row["class"]: row["train"] for row in spec.counts()}
    few = [f"{c} ({n})" for c, n in counts.items() if n < FEW_IMAGES_WARNING]
    if few:
        warnings.append(f"Few training images in {', '.join(few)}: {FEW_IMAGES_WARNING}+ per class gives more "
                        "reliable results; keep more layers frozen (trainable=head) with little data.")
    biggest, smallest = max(counts.values()), min(counts.values())
    if smallest and biggest / smallest >= IMBALANCE_WARNING_RATIO:
        warnings.append(f"Classes are imbalanced ({biggest} vs {smallest} training images): consider "
                        "imbalance='sampler' (balanced batches) or 'loss' (class-weighted loss).")
    no_val = [row["class"] for row in spec.counts() if row["val"] == 0]
    if no_val:
        warnings.append(f"No validation images for {', '.join(no_val)}: its accuracy cannot be measured; "
                        "add some to the val/ folder.")
    if spec.skipped.total:
        warnings.append(spec.skipped.summary())
    return warnings


def dataset_folder(source: str | os.PathLike, workdir: str | os.PathLike, limits: ZipLimits | None = None) -> Path:
    """The folder that holds the images of 'demo' (generated once), a folder, or a .zip (unpacked once
    under `workdir`, into a folder named by the archive's path, size and time)."""
    source = str(source)
    if source == "demo":
        return demo_dataset_dir()
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".zip":
        digest = hashlib.sha256(f"{path.resolve()}|{path.stat().st_size}|{path.stat().st_mtime_ns}".encode())
        dest = Path(workdir) / "datasets" / f"{path.stem}-{digest.hexdigest()[:10]}"
        if not dest.exists():
            safe_extract_zip(path, dest, limits)
        return dest
    if path.is_file():
        raise TunerError(f"{path.name} is a file, not a dataset: give a folder of class sub-folders or a .zip.")
    return path


def prepare_dataset(source: str | os.PathLike, workdir: str | os.PathLike, val_ratio: float = 0.2,
                    seed: int = 0, limits: ZipLimits | None = None) -> DatasetSpec:
    """Turn 'demo', a folder or a .zip into a validated DatasetSpec (see `dataset_folder`)."""
    return discover_dataset(dataset_folder(source, workdir, limits), val_ratio, seed)
