"""A run's files: the checkpoint state and its restore, atomic saves of `last.pt`/`best.pt` with
`history.csv` beside them, `metrics.json`, the run lock, and `--overwrite`'s deferred deletion.

Under torchrun every rank calls these; rank 0 alone writes, and the others wait at the barrier.
"""

from __future__ import annotations

import fcntl
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import torch

from .. import __version__
from ..data.transforms import MEAN, STD
from ..errors import TunerError
from ..events import HISTORY_COLUMNS, CheckpointSaved, Event
from ..model.checkpoint import RESUME_KEYS, load_checkpoint, save_checkpoint
from ..paths import atomic_write, output_folder, same_file_as
from ..runtime.setup import Runtime, barrier
from .policies import BestEpoch
from .schedule import resume_schedule
from .session import Session

RUN_FILES = ("last.pt", "best.pt", "history.csv", "metrics.json")


@dataclass
class Start:
    """Where a run's loop starts: epoch (0-based) and batch in it, that epoch's running totals so far,
    and the history of the epochs before."""
    epoch: int = 0
    next_batch: int = 0
    partial: dict[str, float] | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def previous_run(out: Path, resume: bool, overwrite: bool) -> tuple[dict[str, Any] | None, bool]:
    """The checkpoint to resume (None for a new run), and whether a new run replaces an old one's files.

    A new run into a folder that holds a run is refused unless `overwrite`; the old files are only
    deleted once the new run saves (`RunFolder`), so a start that fails its checks (a mistyped --data, a
    refused setting) has not deleted them already.
    """
    if not resume:
        existing = [name for name in RUN_FILES if (out / name).exists()]
        if existing and not overwrite:
            raise TunerError(f"{out} already holds a run ({', '.join(existing)}): resume it with --resume, "
                             "or choose a new --out folder (or --overwrite to start over there).")
        return None, bool(existing)
    last = out / "last.pt"
    if not last.is_file():
        raise TunerError(f"Nothing to resume in {out}: it has no last.pt. Start without --resume.")
    try:
        return load_checkpoint(last, required=RESUME_KEYS), False
    except TunerError as exc:
        raise TunerError(f"{exc} To start over in {out}, use --overwrite (overwrite=True); to keep its "
                         "files, train into another folder.") from None


def checkpoint_state(session: Session, scheduler: torch.optim.lr_scheduler.LRScheduler, best: BestEpoch,
                     history: list[dict[str, float]], epoch: int, next_batch: int,
                     partial: dict[str, float] | None) -> dict[str, Any]:
    """What a checkpoint holds: enough to predict, and to resume at epoch `epoch`, batch `next_batch`."""
    config, spec, model = session.config, session.spec, session.model
    return {
        "tuner_version": __version__, "arch": "resnet50",
        # Contiguous whatever layout trained it (channels_last), so the file is the same everywhere.
        "model_state": {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                        for k, v in model.state_dict().items()},
        "classes": list(spec.classes), "image_size": config.image_size,
        "mean": list(MEAN), "std": list(STD), "weights_source": session.source.to_dict(),
        "config": config.to_dict(), "epoch": epoch, "next_batch": next_batch, "partial_epoch": partial,
        "history": list(history), **best.state_dict(),
        "batchnorm_measured": session.batchnorm_measured,
        "optimizer_state": session.optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
        "scaler_state": session.scaler.state_dict() if session.scaler.is_enabled() else {},
        "rng_state": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
        "data": {"root": spec.root, "layout": spec.layout, "train": len(spec.train), "val": len(spec.val)},
    }


def restore(saved: dict[str, Any], session: Session, scheduler: torch.optim.lr_scheduler.LambdaLR,
            best: BestEpoch) -> Start:
    """Put a checkpoint's optimizer, schedule, scaler and best-epoch state back; where its run goes on.

    (The model state is the session's to load: see `build_session`.)
    """
    session.optimizer.load_state_dict(saved["optimizer_state"])
    resume_schedule(scheduler, saved["scheduler_state"])
    if saved.get("scaler_state"):
        session.scaler.load_state_dict(saved["scaler_state"])
    best.load_state_dict(saved)
    # rng_state is kept for the record but not put back: every random choice of a run is derived
    # from its seed (data order, augmentation, model init), and the global generators belong to
    # the whole process, which in the studio serves other sessions too.
    return Start(int(saved["epoch"]), int(saved.get("next_batch", 0)), saved.get("partial_epoch"),
                 list(saved.get("history", [])))


class RunFolder:
    """Writes a run's files into `out` (rank 0 only)."""

    def __init__(self, out: Path, runtime: Runtime, replaces_run: bool = False):
        self.out = out
        self.runtime = runtime
        self.replaces_run = replaces_run  # an --overwrite whose old files are still to be deleted

    def _replace_overwritten_run(self) -> None:
        """Delete the files of the run that --overwrite replaces: only the files a run writes (anything
        else in the folder stays), and only once this run has something of its own to save."""
        if self.replaces_run and self.runtime.is_main:
            for name in RUN_FILES:
                (self.out / name).unlink(missing_ok=True)
        self.replaces_run = False

    def save(self, state: Callable[[], dict[str, Any]], best: bool = False) -> Iterator[Event]:
        """Write `state()` (made on rank 0 only) to last.pt, and to best.pt when `best`, then history.csv."""
        self._replace_overwritten_run()
        if self.runtime.is_main:
            saved = state()
            last = save_checkpoint(saved, self.out / "last.pt")
            yield CheckpointSaved(str(last), "last")
            if best:  # the same state: link it rather than write it twice (head-only epochs are mostly I/O)
                yield CheckpointSaved(str(same_file_as(last, self.out / "best.pt")), "best")
            frame = pd.DataFrame(saved["history"], columns=HISTORY_COLUMNS)
            atomic_write(self.out / "history.csv", lambda tmp: frame.to_csv(tmp, index=False))
        barrier(self.runtime)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self._replace_overwritten_run()
        if self.runtime.is_main:
            atomic_write(self.out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))

    def best_checkpoint(self) -> Path:
        """best.pt when there is one, else last.pt."""
        best = self.out / "best.pt"
        return best if best.is_file() else self.out / "last.pt"


def read_history(out: str | Path) -> list[dict[str, float]]:
    """A run folder's history.csv as the rows EpochEnd.row() gives (the studio redraws a resumed run's
    curves from its first epoch); [] when there is none yet."""
    path = Path(out) / "history.csv"
    if not path.is_file():
        return []
    frame = pd.read_csv(path).astype(float).astype({"epoch": int})
    return frame.to_dict("records")


def hold_run_lock(out: Path):
    """Lock `out` for this run: a second run (another process or another studio session) into the same
    folder is refused instead of overwriting this one's checkpoints. The lock dies with the process."""
    output_folder(out)
    handle = open(out / ".tuner.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise TunerError(f"Another run is writing into {out} right now: wait for it, stop it, or choose another "
                         "--out folder.") from None
    return handle
