"""What each format's module is handed (a Job) and hands back (Written), and what a Job holds: the
model, the metadata its files carry, and the user's images that verify and calibrate them."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torchvision
from torch import nn

from .. import __version__
from ..data.discover import prepare_dataset
from ..data.images import ImageCache
from ..data.transforms import eval_transform, resize_size
from ..errors import TunerError
from .formats import BY_NAME
from .verify import Check


class VerificationImages:
    """The user's own images for verification (validation split) and INT8 calibration (training split)."""

    def __init__(self, state: dict[str, Any], data: str | None, workdir: Path, max_images: int):
        config = state.get("config", {}) or {}
        source = data or config.get("data")
        if not source:
            raise TunerError("The checkpoint does not say which data it was trained on: give the dataset (--data "
                             "DIR on the command line): its images verify the export and calibrate INT8.")
        if source != "demo" and not Path(source).expanduser().exists():
            raise TunerError(f"The training data {Path(source).name} is not on this machine any more: give a folder "
                             "or .zip of the same classes (--data on the command line): its images verify the export.")
        spec = prepare_dataset(source, workdir, val_ratio=config.get("val_ratio", 0.2), seed=config.get("seed", 0))
        if spec.classes != list(state["classes"]):
            raise TunerError(f"The dataset's classes ({', '.join(spec.classes)}) differ from the model's "
                             f"({', '.join(state['classes'])}): use data with the same class folders (the Data tab "
                             "in the studio, --data on the command line).")
        size = int(state["image_size"])
        cache = ImageCache(resize_size(size))

        transform = eval_transform(size)
        val = spread_evenly(spec.val, max_images)  # never empty: discover_dataset refuses an empty split
        self.x = torch.stack([transform(cache.get(s.path)) for s in val])
        self.labels = torch.tensor([s.label for s in val])
        self._load_calibration = lambda: torch.stack(
            [transform(cache.get(s.path)) for s in spread_evenly(spec.train, max_images)])

    @functools.cached_property
    def calibration(self) -> torch.Tensor:
        """Training images for INT8 calibration, decoded only when an INT8 format asks for them."""
        return self._load_calibration()


def spread_evenly(samples: Sequence, count: int) -> list:
    """`count` items at evenly spaced positions of `samples` (all of them when there are fewer). The
    lists are ordered by class, so every class is represented in proportion to its size."""
    if len(samples) <= count:
        return list(samples)
    return [samples[i * len(samples) // count] for i in range(count)]


def model_json(state: dict[str, Any], checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What model.json holds beside model.pth: everything needed to use and trust the weights (the
    other formats carry parts of it)."""
    history = state.get("history") or []
    best = max(history, key=lambda row: row.get("val_acc", 0), default={})
    validation = {"best_val_acc": best.get("val_acc"), "best_epoch": best.get("epoch"), "epochs_trained": len(history)}
    metrics = state.get("best_metrics") or {}
    if metrics:  # the trainer's own best epoch (equal accuracy: the lower loss), so every number is from one epoch
        validation.update(best_val_acc=metrics.get("accuracy"), best_epoch=state.get("best_epoch", best.get("epoch")),
                          best_val_loss=metrics.get("loss"), val_images=metrics.get("count"),
                          per_class=[{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                                     for row in metrics.get("per_class", [])])
    return {"arch": "resnet50", "classes": list(state["classes"]), "num_classes": len(state["classes"]),
            "image_size": int(state["image_size"]), "resize_size": resize_size(int(state["image_size"])),
            "mean": list(state["mean"]), "std": list(state["std"]),
            "weights_source": state.get("weights_source", {}), "training_config": state.get("config", {}),
            "validation": validation,
            "checkpoint": Path(checkpoint).name, "epoch": state.get("epoch"),
            "load_with": f"torchvision.models.resnet50(num_classes={len(state['classes'])})"
                         ".load_state_dict(torch.load('model.pth', weights_only=True), strict=True)",
            "versions": {"tuner": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                         "python": platform.python_version()}}


@dataclass
class Job:
    """One export of one checkpoint, as every format's `write` and `runner` see it."""

    model: nn.Module  # in eval mode: the reference every format is compared with
    meta: dict[str, Any]  # model_json(): classes, image size, preprocessing, provenance
    out: Path  # the export folder
    images: VerificationImages
    tensorrt_int8: bool = False  # the TensorRT engine may use INT8 layers, calibrated on images.calibration
    written: set[Path] = field(default_factory=set)  # shared files already written by this export (model.onnx)

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def image_size(self) -> int:
        return self.meta["image_size"]

    def path(self, name: str) -> Path:
        """Where format `name` writes its file in this export (formats built from another one's file ask here)."""
        return self.out / BY_NAME[name].file


@dataclass
class Written:
    """What a format's `write` did."""

    files: dict[str, Path]  # the report's files (name -> path), in the order to list them
    note: str  # the verification row's note
    messages: list[str] = field(default_factory=list)  # for the user, after the tables
    built: bool = True  # False: it cannot be built on this machine, and `note` says why
    check: Check | None = None  # the check, where it depends on how the file was built (the table's otherwise)
    label: str | None = None  # its speed and accuracy rows' label, likewise
