"""The tuner studio: `python app.py [--host H] [--port P] [--share] [--auth user:pass]`.

Importing this file builds nothing and starts nothing (`main()` does); `build_app` is the app factory.
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

from tuner.ui import build_app, launch_kwargs
from tuner.ui.common import StudioSettings
from tuner.workspace import default_root

__all__ = ["build_app", "main", "parse_args"]


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
    signal.signal(signal.SIGTERM, _interrupt)
    demo = None
    try:
        demo = build_app(settings)
        auth = tuple(args.auth.split(":", 1)) if args.auth else None
        demo.launch(server_name=host, server_port=args.port, share=args.share, auth=auth, **launch_kwargs(demo))
    finally:
        if demo is not None:
            demo.studio.registry.close_all(wait_s=30)  # running jobs stop at their next batch first
        if own_cache is not None:
            shutil.rmtree(own_cache, ignore_errors=True)
    return 0


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
