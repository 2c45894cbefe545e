"""The .pth format: the plain state_dict that torchvision's resnet50 loads with strict=True, and
model.json beside it; checked by loading it exactly so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.models import resnet50

from ..paths import atomic_write
from .job import Job, Written

MODEL_JSON = "model.json"


STRICT_NOTE = "loads strict=True into torchvision resnet50"


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies: what torchvision's resnet50 state_dict holds, nothing else.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def write(job: Job, path: Path) -> Written:
    atomic_write(path, lambda tmp: torch.save(plain_state_dict(job.model), tmp))
    meta = path.parent / MODEL_JSON
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(job.meta, indent=2, default=str)))
    return Written({"pth": path, MODEL_JSON: meta}, STRICT_NOTE)


def runner(job: Job, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return torchvision_runner(torch.load(path, map_location="cpu", weights_only=True), len(job.classes))


def torchvision_runner(tensors: dict[str, torch.Tensor], num_classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The interop check: plain torchvision, strict=True, holding the tensors read back from the file."""
    net = resnet50(weights=None, num_classes=num_classes)
    net.load_state_dict(tensors, strict=True)
    net.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x)
    return run
