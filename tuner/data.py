"""Datasets: discovery, validation, safe zip extraction, transforms and the epoch batch sampler.

Accepted layouts (class names are the sorted folder names):
  root/train/<class>/... + root/val/<class>/...    (val may also be called valid or validation)
  root/<class>/...                                   (split into train/val: stratified, seeded)
  a .zip of either, possibly wrapped in one top folder.

Augmentation is a pure function of (seed, epoch, image index): each sample seeds its own transform.
So results do not depend on the number of loader workers or ranks, a run stopped mid-epoch resumes
with exactly the images it would have seen, and the feature cache can name its augmented views.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import tempfile
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .config import AugmentConfig
from .errors import TunerError
from .weights import IMAGENET_WEIGHTS

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is reported and skipped, never half-read
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini", "@eaDir"}
VAL_DIR_NAMES = ("val", "valid", "validation")
MIN_IMAGES_PER_CLASS = 2  # one to train on and one to validate with
MAX_IMAGE_PIXELS = 64_000_000  # a 64 MP photo decodes to ~190 MB; larger ones are refused as too large
FEW_IMAGES_WARNING = 10
IMBALANCE_WARNING_RATIO = 3.0
_PRESETS = IMAGENET_WEIGHTS.transforms()
MEAN: tuple[float, ...] = tuple(_PRESETS.mean)
STD: tuple[float, ...] = tuple(_PRESETS.std)
RESIZE_RATIO = _PRESETS.resize_size[0] / _PRESETS.crop_size[0]  # 256/224: resize, then centre-crop


# ---- reading images -------------------------------------------------------------------------------

class ImageTooLarge(ValueError):
    """More pixels than MAX_IMAGE_PIXELS: refused before decoding."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any image as 8-bit RGB with its EXIF orientation applied; transparency goes on white."""
    try:
        with Image.open(path) as img:
            # The header gives the size before any pixel is decoded: a tiny file claiming a huge image
            # (a decompression bomb) is refused here instead of filling memory.
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageTooLarge(f"{img.width}x{img.height} pixels is more than the "
                                    f"{MAX_IMAGE_PIXELS // 10**6} MP limit")
            img.load()
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError:
        # PIL refuses the most extreme sizes itself, inside Image.open, before the check above can run;
        # its error is no OSError or ValueError, so callers would see it as a crash.
        raise ImageTooLarge(f"more than the {MAX_IMAGE_PIXELS // 10**6} MP limit") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode.startswith("I"):
        # 16-bit greyscale maps its full 0..65535 range onto 0..255 whatever the content (plain
        # conversion clips at 255 and turns most such images white); 32-bit integers, which have no
        # standard range, are scaled by their own maximum.
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            scale = 255.0 / 65535
        else:
            hi = arr.max() if arr.size else 0
            scale = 1.0 if hi <= 255 else 255.0 / hi
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def presize(img: Image.Image, short_side: int) -> Image.Image:
    """Shrink so the shorter side is `short_side` (never enlarge): decode once, crop many times.

    It is torchvision's own resize, so for validation and prediction (resize to this size, then
    centre-crop) the result is exactly what the weights' preset gives on the original image.
    """
    if min(img.size) <= short_side:
        return img
    return v2.functional.resize(img, [short_side], antialias=True)


def resize_size(image_size: int) -> int:
    return int(round(image_size * RESIZE_RATIO))


def check_image(path: Path) -> str | None:
    """None when the file reads fully as an RGB image (as training will read it); else why it is skipped."""
    try:
        load_rgb(path)
    except ImageTooLarge:
        return "too large"
    except UnidentifiedImageError:
        return "not image data"  # an image extension, but no format PIL knows
    except (OSError, SyntaxError, ValueError):
        return "corrupt or truncated"
    return None


# ---- discovery -----------------------------------------------------------------------------------

@dataclass
class Sample:
    path: str
    label: int


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


# ---- archives ------------------------------------------------------------------------------------

@dataclass
class ZipLimits:
    max_total_bytes: int = 4 << 30
    max_entries: int = 100_000
    max_ratio: float = 200.0  # uncompressed/compressed per entry; zip bombs go far beyond this
    # ... but so do images with large flat areas (an uncompressed BMP or TIFF deflates up to ~1000x),
    # so the ratio is only checked above this size. 256 MiB holds any 8-bit RGBA bitmap that
    # load_rgb accepts (MAX_IMAGE_PIXELS x 4 bytes), so no usable image is refused for compressing
    # well, while a blatant bomb (one entry of GBs of zeros) is still refused before anything is
    # written. A bomb of many smaller entries is stopped by max_total_bytes, which extraction counts
    # on the bytes really written.
    ratio_floor_bytes: int = 256 << 20


def check_zip_member(info: zipfile.ZipInfo, limits: ZipLimits) -> str | None:
    """Why this entry may not be extracted, or None when it is safe."""
    name = info.filename
    if "\\" in name:
        return "uses backslashes in its path"
    pure = PurePosixPath(name)
    if pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in pure.parts:
        return "points outside the archive (..)"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded (Windows, writestr)
        return "is not a regular file"
    if (info.file_size > limits.ratio_floor_bytes and info.compress_size
            and info.file_size / info.compress_size > limits.max_ratio):
        return f"expands {info.file_size / info.compress_size:.0f}x (more than {limits.max_ratio:.0f}x)"
    return None


def safe_extract_zip(archive: str | os.PathLike, dest: str | os.PathLike, limits: ZipLimits | None = None) -> Path:
    """Check every entry first, then extract into `dest` (which must not exist yet) via a temp folder.

    A bad archive is refused whole: nothing is written, inside or outside `dest`.
    """
    limits = limits or ZipLimits()
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise TunerError(f"Extraction target {dest.name} exists already: choose a new folder.")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TunerError(f"{archive.name} is not a readable .zip file ({exc}).") from None
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_entries:
            raise TunerError(f"{archive.name} has {len(members)} entries, more than the limit of "
                             f"{limits.max_entries}: split the dataset or raise the limit.")
        total = sum(m.file_size for m in members)
        if total > limits.max_total_bytes:
            raise TunerError(f"{archive.name} unpacks to {total / 2**20:.0f} MiB, more than the limit of "
                             f"{limits.max_total_bytes / 2**20:.0f} MiB: use a smaller dataset or raise the limit.")
        for m in members:
            problem = check_zip_member(m, limits)
            if problem:
                raise TunerError(f"{archive.name} was refused: entry {m.filename!r} {problem}. Re-create the zip "
                                 "from the dataset folder (e.g. `zip -r data.zip data/`).")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
        try:
            written = 0
            for m in members:
                target = (tmp / m.filename).resolve()
                if not target.is_relative_to(tmp.resolve()):  # belt and braces after the name checks
                    raise TunerError(f"{archive.name} was refused: entry {m.filename!r} points outside the archive.")
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as src, open(target, "wb") as out:
                        # Count real bytes: a forged header must not get past the size cap.
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            if written > limits.max_total_bytes:
                                raise TunerError(f"{archive.name} unpacks to more than its header says and more "
                                                 "than the size limit: refused.")
                            out.write(chunk)
                except (OSError, RuntimeError, NotImplementedError) as exc:
                    # Encrypted entries, unknown compression, a name used as both file and folder...
                    reason = type(exc).__name__ if isinstance(exc, OSError) else str(exc)[:80]
                    raise TunerError(f"{archive.name} could not be unpacked: entry {m.filename!r} failed "
                                     f"({reason}). Re-create the zip without encryption from the dataset "
                                     "folder.") from None
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another job unpacked the same archive first: use its copy
        except (zipfile.BadZipFile, EOFError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TunerError(f"{archive.name} is damaged ({exc}): re-create the zip.") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def dataset_folder(source: str | os.PathLike, workdir: str | os.PathLike, limits: ZipLimits | None = None) -> Path:
    """The folder that holds the images of 'demo' (generated once), a folder, or a .zip (unpacked once
    under `workdir`, into a folder named by the archive's path, size and time)."""
    from .demo_data import demo_dataset_dir

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


# ---- transforms ----------------------------------------------------------------------------------

def eval_transform(image_size: int) -> v2.Compose:
    """Validation and prediction: resize, centre crop, ImageNet normalisation (as the weights expect)."""
    # Resize the PIL image before converting, exactly like the weights' own preset does.
    return v2.Compose([
        v2.Resize(resize_size(image_size), antialias=True),
        v2.CenterCrop(image_size),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


def train_transform(aug: AugmentConfig, image_size: int) -> v2.Compose:
    steps: list[Callable] = []  # geometry and colour work on the PIL image; noise needs the tensor
    if aug.random_resized_crop:
        steps.append(v2.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0), antialias=True))
    else:
        steps += [v2.Resize(resize_size(image_size), antialias=True), v2.CenterCrop(image_size)]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.rotation or aug.translate or aug.scale:
        steps.append(v2.RandomAffine(degrees=aug.rotation, translate=(aug.translate, aug.translate) if aug.translate
                                     else None, scale=(1 - aug.scale, 1 + aug.scale) if aug.scale else None))
    if aug.color_jitter:
        s = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.5, s / 4)))
    if aug.randaugment:
        steps.append(v2.RandAugment())
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if aug.noise_std:
        steps.append(v2.GaussianNoise(sigma=aug.noise_std, clip=True))
    steps.append(v2.Normalize(MEAN, STD))
    return v2.Compose(steps)


def describe_transform(transform: v2.Compose) -> str:
    """A stable text form of a transform (its repr), used to key caches."""
    return repr(transform)


_RNG_LOCK = threading.Lock()


@contextmanager
def seeded(seed: int):
    """Run a block with torch's global RNG seeded, then restore it.

    torchvision's random transforms draw from the process-wide generator, so a block is seeded by
    setting that generator; the lock keeps another thread (another studio session) from drawing from
    it meanwhile, which would change both threads' results.
    """
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: a pure function of run seed, epoch and index."""
    return (seed * 1_000_003 + epoch * 10_007 + index * 7_919 + 12_345) % (2**63 - 1)


# ---- datasets ------------------------------------------------------------------------------------

class ImageCache:
    """Decoded, presized RGB images kept in memory for small datasets (decode once, not every epoch)."""

    def __init__(self, short_side: int, budget_bytes: int = 1 << 30):
        self.short_side = short_side
        self.budget_bytes = budget_bytes
        self.used = 0
        self.images: dict[str, Image.Image] = {}

    def get(self, path: str) -> Image.Image:
        img = self.images.get(path)
        if img is None:
            img = presize(load_rgb(path), self.short_side)
            size = img.width * img.height * 3
            if self.used + size <= self.budget_bytes:
                self.images[path] = img
                self.used += size
        return img

    @property
    def full(self) -> bool:
        return self.used >= self.budget_bytes

    def warm(self, paths: Sequence[str]) -> None:
        """Decode in threads (PIL releases the GIL) before loader workers fork, so they share the cache."""
        todo = [p for p in dict.fromkeys(paths) if p not in self.images]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for path, img in zip(todo, pool.map(lambda p: presize(load_rgb(p), self.short_side), todo)):
                size = img.width * img.height * 3
                if self.used + size > self.budget_bytes:
                    break
                self.images[path] = img
                self.used += size


class ImageDataset(Dataset):
    """Samples -> (tensor, label). Indexed by int (fixed transform) or (index, epoch) (seeded augmentation)."""

    def __init__(self, samples: Sequence[Sample], transform: Callable, cache: ImageCache, seed: int = 0):
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[index]
        img = self.cache.get(sample.path)
        with seeded(sample_seed(self.seed, epoch, index)):
            x = self.transform(img)
        return x, sample.label


class EpochBatchSampler:
    """Batches of (index, epoch) keys: shuffled or class-balanced per epoch, sharded across ranks.

    The order is a pure function of (seed, epoch), so `start_batch` can resume mid-epoch. Ranks take
    interleaved slices of one global order (rank r gets positions r, r+W, ...), so W ranks with batch
    B/W see exactly the images one process sees with batch B. A final batch of one is dropped when
    `drop_single` is set, because BatchNorm cannot train on a single image.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 balanced: bool = False, rank: int = 0, world_size: int = 1, drop_single: bool = True):
        self.labels = list(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.balanced = balanced
        self.rank = rank
        self.world_size = world_size
        self.drop_single = drop_single
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def order(self, epoch: int) -> list[int]:
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.balanced:
            counts = np.bincount(self.labels)
            weights = torch.tensor([1.0 / counts[y] for y in self.labels], dtype=torch.float64)
            order = torch.multinomial(weights, n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.world_size > 1:
            # Pad by repeating the order from its start (cyclically, for sets smaller than the world)
            # so every rank gets as many samples and takes as many steps.
            target = -(-len(order) // self.world_size) * self.world_size
            padded = (order * -(-target // max(len(order), 1)))[:target]
            order = padded[self.rank::self.world_size]
        return order

    def batches(self, epoch: int) -> list[list[int]]:
        order = self.order(epoch)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_single and len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches(self.epoch)[self.start_batch:]:
            yield [(i, self.epoch) for i in batch]

    def __len__(self) -> int:
        return max(0, len(self.batches(self.epoch)) - self.start_batch)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, normalised to average 1 over the samples."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)
