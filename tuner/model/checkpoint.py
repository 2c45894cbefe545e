"""Checkpoints: written atomically, read with `weights_only=True`, and checked before use.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so loading it can never
run code. It holds everything needed to predict (model state, classes, image size, normalisation)
and to resume (config, epoch and position in it, history, optimizer/scheduler/RNG state).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import TunerError
from ..paths import atomic_write
from .resnet import new_resnet50
from .weights import refused_file_error, short_reason

CHECKPOINT_FORMAT = "tuner.checkpoint"


CHECKPOINT_VERSION = 1


PREDICT_KEYS = ("model_state", "classes", "image_size", "mean", "std")


WRITTEN_BY_TUNER = "Use the best.pt or last.pt that a tuner run wrote."


RESUME_KEYS = PREDICT_KEYS + ("config", "epoch", "weights_source", "optimizer_state", "scheduler_state")


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
