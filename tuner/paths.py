"""Where tuner's files live and how they are written: the tuner home folder, output folders, and
atomic writes (a file is either the old one or the whole new one, never half-written).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import TunerError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask can only be read by setting it


def output_folder(path: str | os.PathLike) -> Path:
    """Create (if needed) the folder a job writes into. A path that cannot be one is the user's to fix,
    so it gets a message, not FileExistsError or PermissionError from deep inside a run."""
    out = Path(path)
    try:
        blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            where = "is a file" if blocker == out else f"is inside {blocker}, which is a file"
            raise TunerError(f"The output folder {out} {where}: choose a folder (a missing one is created).")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only filesystem, a name too long, a parent that cannot hold folders...
        raise TunerError(f"The output folder {out} cannot be created ({exc.strerror or exc}): choose another "
                         "folder.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise TunerError(f"The output folder {out} cannot be written here (permission denied or a read-only "
                         "disk): choose a folder you can write to.")
    return out


class WriteFailed(TunerError, OSError):
    """A file could not be written (disk full, read-only, gone). A TunerError for the user, and an
    OSError for callers whose file is optional (caches, probes) and who carry on without it."""


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) on a temp file beside `path`, then rename it into place.

    Readers see the old file or the new one, never half of one, even if the process dies mid-write.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the finished file gets the usual permissions
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as RuntimeError ("unexpected pos ..."); other RuntimeErrors are bugs.
        if isinstance(exc, RuntimeError) and not _is_torch_write_error(exc):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the disk may be full"
        raise WriteFailed(f"Could not write {path.name} into {path.parent} ({reason}): free some disk space or "
                          f"choose another folder. Any earlier {path.name} there is unchanged.") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _is_torch_write_error(exc: RuntimeError) -> bool:
    return any(word in str(exc) for word in ("inline_container", "PytorchStreamWriter", "unexpected pos"))


def same_file_as(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make `target` hold `source`'s bytes, atomically: a hard link where the filesystem allows one (no
    second write of a ~100-200 MB checkpoint), else a copy.

    Safe because checkpoints are never written in place: the next `atomic_write` of either name
    renames a new file over that name, and the other name keeps the old bytes.
    """
    source, target = Path(source), Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)  # os.link needs a free name; mkstemp only picked one nobody else uses
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network and FAT filesystems): copy instead
        return atomic_write(target, lambda t: shutil.copyfile(source, t))
    try:
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# Files that ship inside the package (pyproject.toml's package data): the studio's CSS, example images.
ASSETS = Path(__file__).resolve().parent / "assets"


def tuner_home() -> Path:
    """Where tuner keeps generated data and caches: $TUNER_HOME, else ~/.cache/tuner."""
    return Path(os.environ.get("TUNER_HOME") or Path.home() / ".cache" / "tuner")
