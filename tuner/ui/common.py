"""What every tab shares: the studio's settings, its workspaces, and turning engine errors into messages.

UI modules only wire widgets to engine functions. Each handler asks `Studio.workspace(request)` for
the caller's own workspace (per browser tab, or per gradio_client session), so no handler ever
reaches another session's files, and nothing about a user lives in module-level state.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from ..errors import TunerError, setting_names
from ..model.weights import hub_checkpoint_dir
from .workspace import Workspace, WorkspaceRegistry

log = logging.getLogger("tuner.studio")

# Events that use the CPU/GPU for long (training, evaluation, export) share one limit; prediction and
# page updates have their own, so a visitor can predict while someone trains.
HEAVY = "heavy"
LIGHT = "light"


@dataclass
class StudioSettings:
    workdir: str | None = None  # where session workspaces live (default: the temp dir)
    shared: bool = False  # served to others (share link, Space, 0.0.0.0): no server folders, no server paths
    heavy_jobs: int = 1  # training/evaluation/export jobs at once, over all sessions
    light_jobs: int = 4  # predictions and page updates at once
    queue_size: int = 32  # events waiting at most; more are refused with "queue full"
    max_upload_mb: int = 500
    session_ttl_min: int = 360  # idle sessions are removed after this long
    max_sessions: int = 64
    allow_download: bool = True  # fetch ImageNet weights into the torch hub cache when missing


class Studio:
    """One per app: settings plus the registry of session workspaces."""

    def __init__(self, settings: StudioSettings):
        self.settings = settings
        self.registry = WorkspaceRegistry(settings.workdir, ttl_s=settings.session_ttl_min * 60,
                                          max_sessions=settings.max_sessions)
        self.setting_labels: dict[str, str] = {}  # config field -> how the studio shows it

    def label_settings(self, widgets: dict[str, gr.components.Component], tab: str) -> None:
        """Remember which widget sets each config field, so that error messages can point to it."""
        for field, widget in widgets.items():
            if getattr(widget, "label", None):
                self.setting_labels.setdefault(field, f"'{widget.label}' ({tab} tab)")

    def where_settings(self, text: str) -> str:
        """Engine messages name config fields (the API's words); add where each one is on the page."""
        named = setting_names(text, self.setting_labels)
        if not named:
            return text
        return f"{text} In the studio: " + "; ".join(f"{f} is {self.setting_labels[f]}" for f in named) + "."

    def workspace(self, request: gr.Request | None) -> Workspace:
        return self.registry.get(getattr(request, "session_hash", None))

    def close_session(self, request: gr.Request) -> None:
        self.registry.close(getattr(request, "session_hash", None))

    def public(self, text: str, workspace: Workspace | None = None) -> str:
        """A message fit for the user: workspace paths made relative; in shared mode, no server folders."""
        if workspace is not None:
            text = workspace.scrub(text)
        if self.settings.shared:
            text = text.replace(str(hub_checkpoint_dir()), "the server's torch hub cache")
            text = re.sub(r"(?<![\w.])/(?:[\w.-]+/)+([\w.-]+)", r"\1", text)  # any other absolute path: its name
        return text


def _request_of(args: tuple, kwargs: dict) -> gr.Request | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, gr.Request):
            return value
    return None


# An error names its fix, and the outputs keep showing the last good state (the data still loaded, the
# last run's charts), so the message is the only place the user learns what went wrong: it stays until
# closed instead of fading after Gradio's 10 s.
ERROR_SHOWN_S = None


def user_facing(studio: Studio) -> Callable[[Callable], Callable]:
    """Decorator for handlers: engine errors become `gr.Error` with the fix; anything unexpected is
    logged with its traceback on the server and reaches the user as one line without paths."""

    def to_gr_error(exc: BaseException, request: gr.Request | None) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        workspace = None
        try:
            workspace = studio.workspace(request) if request is not None else None
        except TunerError:
            pass
        if isinstance(exc, TunerError):
            return gr.Error(studio.where_settings(studio.public(str(exc), workspace)), duration=ERROR_SHOWN_S,
                            print_exception=False)
        log.exception("unexpected error in the studio")
        kind = type(exc).__name__
        return gr.Error(f"Something went wrong ({kind}: {studio.public(str(exc), workspace)[:200]}). Your files "
                        "are kept; try again, and if it repeats, report it with the server log.",
                        duration=ERROR_SHOWN_S, print_exception=False)

    def decorate(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def generator(*args: Any, **kwargs: Any):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - every error becomes a message, none a traceback
                    raise to_gr_error(exc, _request_of(args, kwargs)) from None
            return generator

        @functools.wraps(fn)
        def plain(*args: Any, **kwargs: Any):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                raise to_gr_error(exc, _request_of(args, kwargs)) from None
        return plain

    return decorate


def markdown_list(lines: list[str], empty: str = "") -> str:
    return "\n".join(f"- {line}" for line in lines) if lines else empty

