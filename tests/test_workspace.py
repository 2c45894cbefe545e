"""Per-session workspaces: isolation, closing a session stops its job, idle sessions expire."""

from __future__ import annotations

import threading
import time

import pytest

from tuner.errors import TunerError
from tuner.ui.workspace import WorkspaceRegistry


def wait_until(condition, timeout=10.0):
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.02)
    return condition()


def test_sessions_get_separate_folders_and_cannot_reach_each_other(tmp_path):
    registry = WorkspaceRegistry(tmp_path)
    a, b = registry.get("session-a"), registry.get("session-b")
    assert registry.get("session-a") is a and a.root != b.root
    assert "session-a" not in str(a.root)  # folder names are not guessable from session ids
    (b.runs / "secret.pt").write_bytes(b"x")
    assert a.own(a.runs / "x.pt") == (a.runs / "x.pt").resolve()
    with pytest.raises(TunerError, match="does not belong to this session"):
        a.own(b.runs / "secret.pt")
    with pytest.raises(TunerError, match="does not belong"):
        a.own(a.served / ".." / b.served.name / "runs" / "secret.pt")
    # What a session uploads and what tuner writes for it live apart; only the latter is ever served.
    assert a.runs.is_relative_to(registry.served_root) and a.exports.is_relative_to(registry.served_root)
    assert not a.uploads.is_relative_to(registry.served_root)
    with pytest.raises(TunerError, match="no session"):
        registry.get(None)


def test_closing_a_session_stops_its_job_then_removes_its_files(tmp_path):
    registry = WorkspaceRegistry(tmp_path)
    workspace = registry.get("tab")
    started, finished = threading.Event(), threading.Event()

    def job():  # stands in for training: checks the stop flag between "batches"
        with workspace.job():
            started.set()
            while not workspace.stop.is_set():
                time.sleep(0.01)
            (workspace.runs / "last.pt").write_bytes(b"checkpoint")  # the job ends cleanly
            finished.set()

    thread = threading.Thread(target=job)
    thread.start()
    assert started.wait(5)
    registry.close("tab")
    assert finished.wait(5)  # the job saw the stop flag
    assert wait_until(lambda: not workspace.root.exists() and not workspace.served.exists())  # then its folders went
    assert registry.sessions() == 0
    with pytest.raises(TunerError, match="session has ended"):
        with workspace.job():
            pass
    # A request of the closed tab still in flight gets the same answer, not a new empty workspace that
    # would sit on the disk until the time-to-live.
    with pytest.raises(TunerError, match="session has ended"):
        registry.get("tab")
    assert registry.sessions() == 0 and [p.name for p in tmp_path.rglob("*") if p.is_dir() and len(p.name) == 32] == []


def test_stopping_the_server_waits_for_jobs_to_let_go_then_removes_everything(tmp_path):
    registry = WorkspaceRegistry(tmp_path)
    quick, slow = registry.get("quick"), registry.get("slow")
    started = threading.Barrier(3, timeout=10)

    def job(workspace, batch_s):  # stands in for training: checks the stop flag between "batches"
        with workspace.job():
            started.wait()
            while not workspace.stop.is_set():
                time.sleep(0.01)
            time.sleep(batch_s)  # the batch in progress, then the stop checkpoint
            workspace.runs.mkdir(parents=True, exist_ok=True)
            (workspace.runs / "last.pt").write_bytes(b"checkpoint")

    threads = [threading.Thread(target=job, args=(quick, 0.05)), threading.Thread(target=job, args=(slow, 3.0))]
    for thread in threads:
        thread.start()
    started.wait()
    registry.close("slow")  # its tab closed just before the server stops: its job must be waited for too
    assert registry.close_all(wait_s=1.0) == 1  # the quick job let go in time; the slow one is still writing
    assert not registry.root.exists()
    threads[0].join()
    assert not quick.root.exists() and not quick.served.exists()
    threads[1].join()  # what a job still running writes afterwards is the process's exit to end (app.py)

    registry = WorkspaceRegistry(tmp_path / "again")
    registry.get("tab")
    assert registry.close_all(wait_s=5.0) == 0 and not registry.root.exists()


def test_one_job_at_a_time_per_session(tmp_path):
    workspace = WorkspaceRegistry(tmp_path).get("tab")
    with workspace.job():
        with pytest.raises(TunerError, match="already running a job"):
            with workspace.job():
                pass
    with workspace.job():  # free again afterwards
        pass


def test_idle_sessions_expire_but_busy_ones_stay(tmp_path):
    registry = WorkspaceRegistry(tmp_path, ttl_s=0.05)
    idle, busy = registry.get("idle"), registry.get("busy")
    with busy.job():
        time.sleep(0.1)
        registry.sweep()
        assert registry.sessions() == 1 and busy.root.exists()
    assert wait_until(lambda: not idle.root.exists() and not idle.served.exists())


def test_run_folders_are_numbered_and_checkpoint_prefers_best(tmp_path):
    workspace = WorkspaceRegistry(tmp_path).get("tab")
    assert workspace.checkpoint() is None
    first = workspace.new_run_dir()
    first.mkdir()
    (first / "last.pt").write_bytes(b"x")
    assert workspace.checkpoint() == first / "last.pt"
    (first / "best.pt").write_bytes(b"x")
    assert workspace.checkpoint() == first / "best.pt"
    assert workspace.new_run_dir().name == "run-2"
    assert workspace.scrub(f"saved {first / 'best.pt'}") == "saved runs/run-1/best.pt"


def test_stop_cancels_a_start_still_waiting_in_the_queue_and_only_that_one(tmp_path):
    workspace = WorkspaceRegistry(tmp_path).get("tab")
    assert workspace.request_stop() == "idle"  # nothing pressed: nothing to cancel
    workspace.start_queued()  # Start pressed; the job waits behind other sessions' jobs
    assert workspace.request_stop() == "queued"  # Stop pressed meanwhile
    with workspace.job():
        assert workspace.begin_queued_start() is False  # its turn came: it must not run
    workspace.start_queued()  # the next Start is not affected by the earlier Stop
    with workspace.job():
        assert workspace.begin_queued_start() is True
        assert workspace.request_stop() == "running" and workspace.stop.is_set()  # the running job stops
        with pytest.raises(TunerError, match="already running a job"):  # Start/Resume pressed during the run:
            workspace.start_queued()  # refused at once, not queued to run unasked when this job ends
        assert workspace.request_stop() == "running"
    with workspace.job():
        assert workspace.begin_queued_start() is True  # an API call that never waited starts as usual


def test_a_job_caught_between_taking_its_slot_and_beginning_is_still_cancelled(tmp_path):
    workspace = WorkspaceRegistry(tmp_path).get("tab")
    workspace.start_queued()
    with workspace.job():  # the queued job has just taken the slot ...
        assert workspace.request_stop() == "queued"  # ... when Stop arrives
        assert workspace.begin_queued_start() is False


def test_a_queued_start_refused_by_a_busy_session_waits_no_more(tmp_path):
    workspace = WorkspaceRegistry(tmp_path).get("tab")
    with workspace.job():
        workspace._waiting = True  # as if noted just before another job of this session took the slot
        with pytest.raises(TunerError, match="already running"):
            with workspace.job():  # another kind of job refused: the queued Start still waits
                pass
        assert workspace._waiting
        with pytest.raises(TunerError, match="already running"):
            with workspace.job(queued=True):  # the queued Start itself refused: it waits no more
                pass
    assert workspace.request_stop() == "idle"


def test_data_changes_only_between_jobs(tmp_path):
    workspace = WorkspaceRegistry(tmp_path).get("tab")
    workspace.set_data("demo", "the demo", ["a", "b"])
    workspace.run_dir = workspace.new_run_dir()
    with workspace.job():
        with pytest.raises(TunerError, match="A job is running in this session"):
            workspace.set_data("/other", "other", ["x", "y"])
        assert workspace.data_source == "demo" and workspace.run_dir is not None  # the run keeps its data
    workspace.set_data("/other", "other", ["x", "y"])
    assert workspace.classes == ["x", "y"] and workspace.run_dir is None  # other classes: no resuming the old run
