"""The .safetensors format: the same tensors as model.pth, with the classes and preprocessing in its
header; checked by loading it strict=True into torchvision's resnet50."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..paths import atomic_write
from .job import Job, Written
from .pth import STRICT_NOTE, plain_state_dict, torchvision_runner


def write(job: Job, path: Path) -> Written:
    from safetensors.torch import save_file

    meta = job.meta
    header = {"classes": json.dumps(meta["classes"]), "image_size": str(meta["image_size"]),
              "mean": json.dumps(meta["mean"]), "std": json.dumps(meta["std"]), "arch": "resnet50"}
    atomic_write(path, lambda tmp: save_file(plain_state_dict(job.model), tmp, metadata=header))
    return Written({"safetensors": path}, STRICT_NOTE)


def runner(job: Job, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    from safetensors.torch import load_file

    return torchvision_runner(load_file(str(path)), len(job.classes))
