"""What every item shares: the settings, a work folder, the demo data and the backbone both sides start from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

from ..data.demo import write_demo_dataset
from ..data.discover import discover_dataset
from ..data.images import ImageCache, ImageDataset
from ..data.transforms import eval_transform, resize_size
from ..model.resnet import calibrate_batchnorm
from ..model.weights import resolve_weights
from .settings import BenchSettings


@dataclass
class BenchContext:
    settings: BenchSettings
    work: Path
    data: Path = field(default_factory=Path)
    weights: Path = field(default_factory=Path)
    weights_text: str = ""


def make_dataset(folder: Path, settings: BenchSettings) -> Path:
    """train/ and val/ folders of demo images rendered at the size the loaders resize them to."""
    if not (folder / ".complete").is_file():
        px = max(resize_size(settings.image_size), 40)
        write_demo_dataset(folder / "train", settings.train_per_class, size=px, seed=settings.seed)
        write_demo_dataset(folder / "val", settings.val_per_class, size=px, seed=settings.seed + 1)
        (folder / ".complete").write_text("bench data\n")
    return folder


def backbone_weights(folder: Path, data: Path, settings: BenchSettings) -> tuple[Path, str]:
    """The weights both sides start from: ImageNet when cached; else a calibrated random backbone."""
    source = resolve_weights("imagenet", allow_download=False)
    if source.pretrained:
        return Path(source.path), f"ImageNet weights ({Path(source.path).name})"
    path = folder / f"random-calibrated-{settings.image_size}.pth"
    if not path.is_file():
        # A random ResNet50's BatchNorm holds init values; frozen, its activations grow without bound,
        # and neither side could learn anything. Measured statistics make it a sane fixed backbone.
        torch.manual_seed(settings.seed)
        model = torchvision.models.resnet50()
        spec = discover_dataset(data)
        ds = ImageDataset(spec.train, eval_transform(settings.image_size), ImageCache(resize_size(settings.image_size)))
        order = list(range(len(ds)))[:128]
        chunks = [order[i:i + 32] for i in range(0, len(order), 32)]
        with torch.no_grad():
            calibrate_batchnorm(model, (torch.stack([ds[i][0] for i in c]) for c in chunks if len(c) > 1))
        torch.save(model.state_dict(), path)
    return path, ("a random ResNet50 with BatchNorm statistics measured on the training images (no ImageNet "
                  "weights in the torch hub cache here; speed does not depend on the weights)")
