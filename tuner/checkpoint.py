"""Checkpoints: written atomically, read with `weights_only=True`, and checked before use.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so loading it can never
run code. It holds everything needed to predict (model state, classes, image size, normalisation)
and to resume (config, epoch and position in it, history, optimizer/scheduler/RNG state).
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import TunerError
from .weights import refused_file_error, short_reason

CHECKPOINT_FORMAT = "tuner.checkpoint"
CHECKPOINT_VERSION = 1
PREDICT_KEYS = ("model_state", "classes", "image_size", "mean", "std")
WRITTEN_BY_TUNER = "Use the best.pt or last.pt that a tuner run wrote."
RESUME_KEYS = PREDICT_KEYS + ("config", "epoch", "weights_source", "optimizer_state", "scheduler_state")


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


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    state = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = PREDICT_KEYS) -> dict[str, Any]:
    """Read a tuner checkpoint safely; a TunerError names the problem for anything else, including a
    checkpoint without the `required` keys (RESUME_KEYS to train on from it)."""
    path = Path(path)
    if path.is_dir():
        raise TunerError(f"{path} is a folder: give a checkpoint file in it, e.g. {path / 'best.pt'}.")
    if not path.is_file():
        raise TunerError(f"Checkpoint not found: {path}. Train first (python -m tuner train ...) or give the "
                         "path to a best.pt/last.pt file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refused_file_error(path.name, exc, WRITTEN_BY_TUNER) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as exc:
        raise TunerError(f"{path.name} is not a readable checkpoint: it is damaged or not a PyTorch file "
                         f"({type(exc).__name__}: {short_reason(exc)}). {WRITTEN_BY_TUNER}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TunerError(f"{path.name} is not a tuner checkpoint. For plain weights, use it as the starting "
                         "weights file (--weights) instead.")
    if state.get("format_version", 0) > CHECKPOINT_VERSION:
        raise TunerError(f"{path.name} was written by a newer tuner (format {state['format_version']}): upgrade tuner.")
    missing = [k for k in PREDICT_KEYS if k not in state]
    if missing:
        raise TunerError(f"{path.name} lacks {', '.join(missing)}: it is incomplete; use another checkpoint.")
    missing = [k for k in required if k not in state]
    if missing:  # it predicts, but holds no run to go on with
        raise TunerError(f"{path.name} lacks {', '.join(missing)}, so its run cannot be resumed: start a new run "
                         f"(it can start from these weights: --weights {path}).")
    return state


def model_from_checkpoint(state: dict[str, Any]) -> torch.nn.Module:
    """The fine-tuned ResNet50 of a checkpoint, in eval mode on the CPU."""
    from .model import new_resnet50

    model = new_resnet50(len(state["classes"]))
    try:
        model.load_state_dict(state["model_state"], strict=True)
    except RuntimeError as exc:
        raise TunerError(f"The checkpoint's weights do not fit ResNet50 ({str(exc).splitlines()[0][:120]}).") from None
    broken = next((name for name, value in state["model_state"].items()
                   if value.is_floating_point() and not bool(torch.isfinite(value).all())), None)
    if broken:  # every answer would be NaN; the ONNX check and softmax would fail far from the cause
        raise TunerError(f"The checkpoint's weights are not all numbers ({broken} holds NaN or infinity): its run "
                         "diverged. Train again with a lower learning rate (--lr), or use an earlier checkpoint.")
    return model.eval()
