"""Per-user workspaces for a shared server (the studio): one folder and one state object per session.

A `Workspace` holds everything one browser session owns: its uploaded data, its runs (checkpoints),
its exports and its stop flag. The `WorkspaceRegistry` hands each session its own workspace, and
removes it when the session closes or has been idle too long. Nothing here is module-level: the
studio builds one registry per app, so two apps in one process (tests) share nothing either.

Paths never cross workspaces: `Workspace.own()` refuses any path outside the workspace's folder, so
a session can only read, list or download what it made itself.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TunerError


def default_root() -> Path:
    """Where workspaces live: $TUNER_STUDIO_DIR, else a folder in the system's temp dir (which Gradio
    may serve files from, and which the OS cleans if the server dies without closing sessions)."""
    return Path(os.environ.get("TUNER_STUDIO_DIR") or Path(tempfile.gettempdir()) / "tuner-studio")


SESSION_ENDED = "This session has ended: reload the page to start a new one."
CLOSED_SESSIONS_REMEMBERED = 10_000
JOB_RUNNING = ("This session is already running a job (training, evaluation or export): wait for it to finish, "
               "or press Stop.")
NO_DATA_CHANGE_DURING_A_JOB = ("A job is running in this session (training, evaluation or export): wait for it to "
                               "finish or press Stop, then load the data again.")


@dataclass
class Workspace:
    """What one session owns. Its folders: datasets/ (unpacked zips), uploads/, runs/, exports/."""

    root: Path  # what the user brought (uploads, unpacked data): never served by the web server
    served: Path | None = None  # what tuner made for them (runs/, exports/): downloadable; default root
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)
    # What the session has chosen so far (plain values; the engine objects are rebuilt from them).
    data_source: str = ""  # "demo", or a folder the engine can read
    data_label: str = ""  # how the UI names it (never a server path)
    classes: list[str] = field(default_factory=list)  # of the loaded dataset
    spec: Any = None  # the loaded dataset's DatasetSpec: the augmentation preview reuses it (no re-reading)
    report: Any = None  # the last data check's Report on the loaded dataset
    exclude: list[str] = field(default_factory=list)  # images of it that training leaves out (dataset-relative)
    weights: str = "imagenet"  # "imagenet", "random" or a weights file inside this workspace
    weights_label: str = "ImageNet (torchvision IMAGENET1K_V1)"
    run_dir: Path | None = None  # the current run (Resume continues it)
    history_before: list[dict] = field(default_factory=list)  # epochs of the run before a resume
    closed: bool = False
    _busy: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # A Start that waits in the queue for a free slot (other sessions' jobs), and whether Stop was
    # pressed meanwhile: then that run must not begin when its turn comes.
    _waiting: bool = field(default=False, repr=False)
    _cancel_waiting: bool = field(default=False, repr=False)
    _flags: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)  # predictors etc., keyed by source

    def __post_init__(self) -> None:
        self.served = self.served or self.root
        for folder in (self.runs, self.exports, self.uploads):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def runs(self) -> Path:
        return self.served / "runs"

    @property
    def exports(self) -> Path:
        return self.served / "exports"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    def touch(self) -> None:
        self.last_used = time.time()

    def own(self, path: str | os.PathLike) -> Path:
        """`path` resolved, if it lies inside this workspace; a TunerError otherwise."""
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(folder.resolve()) for folder in self.folders):
            raise TunerError("That file does not belong to this session: use files you uploaded or made here.")
        return resolved

    def new_run_dir(self) -> Path:
        """A fresh folder for a new training run: runs/run-1, run-2, ..."""
        numbers = [int(m.group(1)) for p in self.runs.iterdir() if (m := re.fullmatch(r"run-(\d+)", p.name))]
        self.run_dir = self.runs / f"run-{max(numbers, default=0) + 1}"
        return self.run_dir

    def checkpoint(self, kind: str = "best") -> Path | None:
        """The current run's best.pt (or last.pt when no best exists yet); None before any training."""
        if self.run_dir is None:
            return None
        for name in ((f"{kind}.pt", "last.pt") if kind == "best" else (f"{kind}.pt",)):
            if (self.run_dir / name).is_file():
                return self.run_dir / name
        return None

    def trained_checkpoint(self) -> Path:
        """The best checkpoint for work that needs a trained model (evaluate, export), or the fix."""
        checkpoint = self.checkpoint("best")
        if checkpoint is None:
            raise TunerError("No checkpoint yet: train a model in the Train tab first (even one epoch).")
        return checkpoint

    def relative(self, path: str | os.PathLike) -> str:
        """How a path inside the workspace is shown to its user (never the server's folders)."""
        resolved = Path(path).resolve()
        for folder in self.folders:
            if resolved.is_relative_to(folder.resolve()):
                return str(resolved.relative_to(folder.resolve()))
        return Path(path).name

    def scrub(self, text: str) -> str:
        """A message with this workspace's server paths replaced by workspace-relative ones."""
        for folder in self.folders:
            for root in {str(folder.resolve()), str(folder)}:
                text = text.replace(root + os.sep, "").replace(root, ".")
        return text

    @property
    def folders(self) -> list[Path]:
        """The workspace's folders on disk: its own root and, when separate, the served one."""
        return [self.root] if self.served == self.root else [self.root, self.served]

    def cached(self, key: str, make) -> Any:
        """One object per key per workspace (e.g. a Predictor per checkpoint version)."""
        if key not in self._cache:
            self._cache.clear()  # one model at a time per session keeps memory bounded
            self._cache[key] = make()
        return self._cache[key]

    def start_queued(self) -> None:
        """A Start or Resume was pressed; its job may wait in the queue before `job()` runs. Pressed while
        this session's own job runs, it is refused now: queued behind that job (which may hold the only
        heavy slot), it would otherwise run once the job ends, unasked by then. (Only a running job
        refuses it: a flag left by a queued event that never ran must not lock the session.)"""
        with self._flags:
            if self.busy:
                raise TunerError(JOB_RUNNING)
            self._waiting, self._cancel_waiting = True, False

    def request_stop(self) -> str:
        """Stop pressed: cancel a Start still waiting in the queue, and/or ask the running job to stop
        at its next batch. Returns what there was: 'queued', 'running' or 'idle'. One lock with
        `begin_queued_start`, so a job that starts at this very moment is caught either way."""
        with self._flags:
            if self._waiting:
                self._cancel_waiting = True
            if self.busy:
                self.stop.set()
            return "queued" if self._waiting else "running" if self.busy else "idle"

    def begin_queued_start(self) -> bool:
        """Called by a queued job once it holds `job()`: False when Stop cancelled it while it waited.
        (A Stop after this point sees the job busy and sets the stop flag, which the run honours.)"""
        with self._flags:
            cancelled = self._cancel_waiting
            self._waiting = self._cancel_waiting = False
            return not cancelled

    def job(self, queued: bool = False) -> "_Job":
        """Context manager for heavy work: one at a time per workspace, with a fresh stop flag.
        `queued`: a Start/Resume that may have waited in the queue; if refused, it waits no more."""
        return _Job(self, queued)

    def set_data(self, data_source: str, label: str, classes: list[str], spec: Any = None) -> None:
        """Point the session at other data, unless one of its jobs runs: a run keeps the data and run
        folder it started with. The slot is held only for the switch itself, so loading (unzipping,
        checking images) never blocks Start, and a Start during a load trains on the data it saw."""
        if not self._busy.acquire(blocking=False):
            raise TunerError(NO_DATA_CHANGE_DURING_A_JOB)
        try:
            if self.classes and self.classes != list(classes) and self.run_dir is not None:
                self.run_dir = None  # a new class list cannot resume the old run
            self.data_source, self.data_label, self.classes, self.spec = data_source, label, list(classes), spec
            self.report, self.exclude = None, []  # both name images of the data loaded before
        finally:
            self._busy.release()

    @property
    def busy(self) -> bool:
        return self._busy.locked()


class _Job:
    def __init__(self, workspace: Workspace, queued: bool = False):
        self.workspace = workspace
        self.queued = queued  # a Start/Resume that may have waited in the queue (see start_queued)

    def __enter__(self) -> Workspace:
        if self.workspace.closed:
            raise TunerError(SESSION_ENDED)
        if not self.workspace._busy.acquire(blocking=False):
            if self.queued:  # this queued Start cannot run, so it no longer waits
                with self.workspace._flags:
                    self.workspace._waiting = self.workspace._cancel_waiting = False
            raise TunerError(JOB_RUNNING)
        self.workspace.stop.clear()
        self.workspace.touch()
        return self.workspace

    def __exit__(self, *exc: Any) -> None:
        self.workspace._busy.release()
        self.workspace.touch()


class WorkspaceRegistry:
    """Session id -> Workspace, created on first use, removed on close or after `ttl_s` idle."""

    def __init__(self, root: str | os.PathLike | None = None, ttl_s: float = 6 * 3600, max_sessions: int = 64):
        self.root = Path(root) if root else default_root()
        # Each app gets its own sub-folder, so restarting or running two apps never mixes sessions.
        self.root = self.root / f"app-{uuid.uuid4().hex[:12]}"
        self.served_root = self.root / "served"
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._workspaces: dict[str, Workspace] = {}
        self._cleanups: list[threading.Thread] = []  # ended sessions whose jobs may still be stopping
        # Sessions closed by their tab: a request still in flight from one must not make it a new, empty
        # workspace that would then sit on the disk until the time-to-live. Bounded: the oldest are forgotten.
        self._closed: dict[str, None] = {}
        self._lock = threading.Lock()

    def get(self, session_id: str | None) -> Workspace:
        if not session_id:
            raise TunerError("This request has no session: open the studio in a browser, or use gradio_client.")
        self.sweep()
        with self._lock:
            workspace = self._workspaces.get(session_id)
            if workspace is None:
                if session_id in self._closed:
                    raise TunerError(SESSION_ENDED)
                if len(self._workspaces) >= self.max_sessions:
                    raise TunerError(f"The server already holds {self.max_sessions} sessions: try again later, or "
                                     "run your own copy (see the README).")
                # Random names, not the session id: nothing guessable in paths. What tuner writes for the
                # user (checkpoints, exports) lives apart from what they uploaded, so the web server may
                # serve the first (`served_root`) without ever serving an uploaded file (HTML, SVG, ...).
                folder = self.root / uuid.uuid4().hex
                served = self.served_root / uuid.uuid4().hex
                workspace = self._workspaces[session_id] = Workspace(folder, served)
            workspace.touch()
            return workspace

    def sessions(self) -> int:
        with self._lock:
            return len(self._workspaces)

    def close(self, session_id: str | None) -> None:
        """The session ended (tab closed): stop its job; delete its files once the job has let go."""
        with self._lock:  # one step, so that close_all never misses a session closing at the same moment
            workspace = self._workspaces.pop(session_id or "", None)
            if workspace is not None:
                self._track(_dispose(workspace))
            if session_id:
                self._closed[session_id] = None
                while len(self._closed) > CLOSED_SESSIONS_REMEMBERED:
                    del self._closed[next(iter(self._closed))]

    def sweep(self) -> None:
        """Remove workspaces idle for longer than the time-to-live (sessions whose tab never said goodbye)."""
        now = time.time()
        with self._lock:
            expired = [sid for sid, ws in self._workspaces.items() if now - ws.last_used > self.ttl_s and not ws.busy]
            for sid in expired:
                self._track(_dispose(self._workspaces.pop(sid)))

    def _track(self, cleanup: threading.Thread) -> None:
        """Remember a closed session's cleanup (under self._lock; _dispose itself never takes it)."""
        self._cleanups = [c for c in self._cleanups if c.is_alive()] + [cleanup]

    def close_all(self, wait_s: float = 0.0) -> int:
        """End every session (the server is stopping): stop their jobs, then delete every folder.

        `wait_s`: how long to wait for running jobs to reach the end of their batch, so that they let go
        of their folders before the whole tree is removed (0: do not wait). Returns how many jobs were
        still running when the tree was removed: they may write into it again until the process ends.
        """
        with self._lock:
            gone, self._workspaces = list(self._workspaces.values()), {}
            earlier = self._cleanups  # sessions closed just before (a tab closing as the server stops)
        cleanups = earlier + [_dispose(workspace) for workspace in gone]
        deadline = time.monotonic() + wait_s
        try:
            for cleanup in cleanups:
                cleanup.join(max(0.0, deadline - time.monotonic()))
        finally:  # also when the wait is cut short (a second Ctrl-C)
            shutil.rmtree(self.root, ignore_errors=True)
        return sum(cleanup.is_alive() for cleanup in cleanups)


def _dispose(workspace: Workspace) -> threading.Thread:
    """Stop the workspace's job and remove its folder; a running job finishes its batch first, in the
    background, so closing a tab never blocks the server."""
    workspace.closed = True
    workspace.stop.set()

    def remove_when_idle() -> None:
        with workspace._busy:  # waits for the job to see the stop flag and end
            workspace._cache.clear()
            for folder in workspace.folders:
                shutil.rmtree(folder, ignore_errors=True)

    cleanup = threading.Thread(target=remove_when_idle, name="tuner-workspace-cleanup", daemon=True)
    cleanup.start()
    return cleanup
