"""Safe zip extraction: every entry is checked (no `..`, no absolute paths, no links, caps on size, count
and compression ratio) before anything is written.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import TunerError


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
