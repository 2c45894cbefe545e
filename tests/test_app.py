"""app.py, the studio's entry point: importing it starts nothing, and its flags and the GRADIO_* /
Spaces variables decide where it serves and whether it counts as shared (no server folders)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.fixture
def app(monkeypatch):
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "GRADIO_SHARE", "SPACE_ID", "TUNER_MAX_UPLOAD_MB",
                 "TUNER_HEAVY_JOBS"):
        monkeypatch.delenv(name, raising=False)
    from tuner.ui import serve as module

    yield module


def test_importing_app_builds_and_serves_nothing(tmp_path):
    # A fresh interpreter: no Blocks made, no server thread, no workspace folder created.
    code = ("import threading; import app; import gradio as gr; "
            "assert not [t for t in threading.enumerate() if t is not threading.main_thread()], threading.enumerate(); "
            "assert gr.context.Context.root_block is None; print('ok')")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TUNER_STUDIO_DIR": str(tmp_path / "studio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "TUNER_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert not (tmp_path / "studio").exists()


def test_local_by_default_shared_when_exposed(app, monkeypatch):
    local = app.settings_from(app.parse_args([]))
    assert local.shared is False and app.parse_args([]).port == 7860
    for argv in (["--host", "0.0.0.0"], ["--share"]):
        assert app.settings_from(app.parse_args(argv)).shared is True, argv
    assert app.settings_from(app.parse_args(["--host", "0.0.0.0", "--server-folders", "on"])).shared is False
    assert app.settings_from(app.parse_args(["--server-folders", "off"])).shared is True


@pytest.mark.parametrize("variable, value", [("GRADIO_SHARE", "True"), ("GRADIO_SERVER_NAME", "0.0.0.0"),
                                             ("SPACE_ID", "someone/tuner")])
def test_gradio_and_spaces_variables_count_as_shared(app, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    args = app.parse_args([])
    assert app.settings_from(args).shared is True
    if variable == "GRADIO_SHARE":
        assert args.share is True  # passed to launch(), which would otherwise override the variable


def test_settings_from_flags_and_variables(app, monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    monkeypatch.setenv("TUNER_MAX_UPLOAD_MB", "64")
    args = app.parse_args(["--heavy-jobs", "2", "--workdir", "/srv/tuner", "--session-ttl-min", "30"])
    settings = app.settings_from(args)
    assert args.port == 8123
    assert (settings.max_upload_mb, settings.heavy_jobs, settings.workdir, settings.session_ttl_min) == (
        64, 2, "/srv/tuner", 30)


def test_auth_without_a_password_is_refused_with_the_form(app, capsys):
    assert app.main(["--auth", "alice"]) == 2
    assert "--auth needs user:pass" in capsys.readouterr().err


def test_sigterm_stops_the_studio_and_removes_every_file_it_made(tmp_path):
    # `docker stop` and service managers send SIGTERM: the studio must close like on Ctrl-C and delete
    # the sessions' workspaces and Gradio's copies of served files (its own cache folder).
    import os
    import signal
    import socket
    import time

    import httpx
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}  # the studio picks its own cache
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--workdir", str(work)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the studio did not start"
            time.sleep(0.5)
        summary = Client(url, verbose=False).predict("Built-in demo (4 shape classes)", None, "", 0.25,
                                                     api_name="/load_data")[0]
        assert "4 classes" in summary
        cache = [p for p in work.iterdir() if p.name.startswith("gradio-cache-")]
        assert len(cache) == 1 and any(p.is_file() for p in cache[0].rglob("*"))  # sample pictures it served
        assert any(p.name.startswith("app-") for p in work.iterdir())  # the sessions' workspaces
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=90)[0]
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, output[-2000:]
    assert list(work.iterdir()) == []
