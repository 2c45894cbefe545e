"""Serving the studio: flags, launch and a clean shutdown; `python app.py [--host H] [--port P] [--share]
[--auth user:pass]` runs `main()`.

Importing this module builds nothing and starts nothing (`main()` does); `build_app` is the app factory.
On a Hugging Face Space (app_file: app.py) it runs as `python app.py`, serves on 0.0.0.0:7860 and
treats itself as shared (no server folders).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from gradio.tunneling import CURRENT_TUNNELS

from .app import build_app, launch_kwargs
from .common import StudioSettings
from .workspace import default_root

__all__ = ["build_app", "main", "parse_args"]
SHUTDOWN_WAIT_S = 30  # for running jobs to reach the end of their batch when the server stops


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(description="tuner studio: fine-tune ResNet50 on your images in the browser.")
    p.add_argument("--host", default=env.get("GRADIO_SERVER_NAME"),
                   help="interface to serve on (default 127.0.0.1; 0.0.0.0 for every interface, as in Docker)")
    p.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", default=env.get("GRADIO_SHARE", "").lower() == "true",
                   help="also serve through a public gradio.live link (default: $GRADIO_SHARE)")
    p.add_argument("--auth", help="user:pass required to open the studio")
    p.add_argument("--workdir", help="where session workspaces live (default: the system temp dir)")
    p.add_argument("--max-upload-mb", type=int, default=int(env.get("TUNER_MAX_UPLOAD_MB", 500)))
    p.add_argument("--heavy-jobs", type=int, default=int(env.get("TUNER_HEAVY_JOBS", 1)),
                   help="training/evaluation/export jobs at once over all users (default 1)")
    p.add_argument("--queue-size", type=int, default=32, help="events waiting at most; more are refused")
    p.add_argument("--session-ttl-min", type=int, default=360, help="remove sessions idle this long")
    p.add_argument("--server-folders", choices=("auto", "on", "off"), default="auto",
                   help="let users load a folder on this machine (auto: only when served on localhost without "
                        "--share and not on a Space)")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> StudioSettings:
    local = (args.host in (None, "127.0.0.1", "localhost") and not args.share and not os.environ.get("SPACE_ID"))
    shared = {"on": False, "off": True, "auto": not local}[args.server_folders]
    return StudioSettings(workdir=args.workdir, shared=shared, heavy_jobs=args.heavy_jobs, queue_size=args.queue_size,
                          max_upload_mb=args.max_upload_mb, session_ttl_min=args.session_ttl_min)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    if args.auth and ":" not in args.auth:
        print("--auth needs user:pass, e.g. --auth alice:secret", file=sys.stderr)
        return 2
    host = args.host or ("0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
    settings = settings_from(args)
    own_cache = use_own_gradio_cache(settings)
    # `docker stop` and service managers send SIGTERM, which would end Python on the spot and leave every
    # session's files behind; as Ctrl-C it closes the server (Gradio catches it) and the cleanup runs.
    handlers = {signal.SIGINT: signal.getsignal(signal.SIGINT),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}  # put back when main() returns
    demo = None
    try:
        demo = build_app(settings)
        auth = tuple(args.auth.split(":", 1)) if args.auth else None
        # Launch without blocking, then block here: launch() returns at once in an interactive session,
        # which must not run the cleanup below while the server still serves.
        demo.launch(server_name=host, server_port=args.port, share=args.share, auth=auth, prevent_thread_lock=True,
                    **launch_kwargs(demo))
        if not demo.server.should_exit:  # with GRADIO_DEBUG=1 launch() blocked itself, until the server closed
            demo.block_thread()  # until Ctrl-C or SIGTERM, which closes the server
    except KeyboardInterrupt:
        pass  # a second Ctrl-C or SIGTERM while Gradio was closing the server: clean up all the same
    finally:
        still_running = _clean_up(demo, own_cache)
        for stop_signal, handler in handlers.items():
            signal.signal(stop_signal, handler)
    if still_running:
        # Jobs that did not stop in time run in worker threads; ending the interpreter under them can
        # abort, and they could write into the folders just removed. Nothing of theirs is wanted now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _clean_up(demo, own_cache: Path | None) -> int:
    """Stop the sessions' jobs and delete their folders and the studio's Gradio cache; a second Ctrl-C or
    SIGTERM skips the rest of the wait, never the deletion. Returns how many jobs were still running."""
    still_running = 0
    try:
        if demo is not None:
            if demo.studio.registry.sessions():
                print(f"Stopping: running jobs end at their next batch (waiting up to {SHUTDOWN_WAIT_S} s; Ctrl-C "
                      "again to skip), then every session's files are deleted.", file=sys.stderr)
            still_running = demo.studio.registry.close_all(wait_s=SHUTDOWN_WAIT_S)
    except KeyboardInterrupt:
        still_running = 1  # the wait was cut short; the folders are removed below all the same
    finally:
        for stop_signal in (signal.SIGINT, signal.SIGTERM):  # the deletion itself is quick: let it finish
            signal.signal(stop_signal, signal.SIG_IGN)
        if demo is not None:  # again, in case a signal cut close_all short (idempotent)
            shutil.rmtree(demo.studio.registry.root, ignore_errors=True)
        for tunnel in CURRENT_TUNNELS:  # --share: Gradio's own kill was skipped if a second signal came early
            tunnel.kill()
        if own_cache is not None:
            shutil.rmtree(own_cache, ignore_errors=True)
            if os.environ.get("GRADIO_TEMP_DIR") == str(own_cache):
                del os.environ["GRADIO_TEMP_DIR"]  # a later main() in this process makes its own again
    return still_running


def use_own_gradio_cache(settings: StudioSettings) -> Path | None:
    """Point Gradio's file cache at a folder of this server's own, unless GRADIO_TEMP_DIR names one.

    Gradio keeps a copy of every file it serves (checkpoints, exports: ~100 MB each) and deletes its
    copies on shutdown only partly; a folder that only this server uses can be removed whole when it
    stops. It is set before the app is built: Gradio reads the variable as it makes components.
    """
    if os.environ.get("GRADIO_TEMP_DIR"):
        return None
    parent = Path(settings.workdir) if settings.workdir else default_root()
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="gradio-cache-", dir=parent))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
