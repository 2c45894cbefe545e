"""Pictures of a dataset for people: a few samples per class, and the same samples as training sees them.

The augmented previews run the exact training transform (`data.train_transform`), so what the
studio shows is what the model gets, apart from the final normalisation, which is undone for display.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..config import AugmentConfig
from .discover import DatasetSpec, Sample
from .health import KINDS, Report, example_note, relative_path
from .images import load_rgb
from .sampling import sample_seed, seeded
from .transforms import MEAN, STD, train_transform

Captioned = tuple[Image.Image, str]


def pick_samples(spec: DatasetSpec, per_class: int = 3) -> list[Sample]:
    """Up to `per_class` training images of each class, spread over the class's files (deterministic)."""
    picked: list[Sample] = []
    for label in range(len(spec.classes)):
        members = [s for s in spec.train if s.label == label]
        if not members:
            continue
        step = max(1, len(members) // per_class)
        picked += members[::step][:per_class]
    return picked


def thumbnail(path: str, size: int = 160) -> Image.Image:
    """The image as training reads it (RGB, EXIF-rotated), shrunk to fit `size` x `size`.

    Galleries get pictures, not the dataset's file paths: a web server may serve only files from its
    own folders, and a user's data (or the demo set in the tuner cache) lies elsewhere.
    """
    img = load_rgb(path)
    img.thumbnail((size, size))
    return img


def sample_grid(spec: DatasetSpec, per_class: int = 3, thumb: int = 160) -> list[Captioned]:
    """Thumbnails of the picked samples, captioned with their class."""
    return [(thumbnail(sample.path, thumb), spec.classes[sample.label]) for sample in pick_samples(spec, per_class)]


def findings_grid(report: Report, spec: DatasetSpec, thumb: int = 160) -> list[Captioned]:
    """Thumbnails of each finding's examples (problems first), captioned with the image's dataset-relative
    path, its other copy or suggested class, and the finding. Skipped files have no picture to show."""
    files = {relative_path(s.path, spec.root): s.path for s in spec.train + spec.val}
    out = []
    for finding in report.ordered():
        for path in finding.examples:
            if path in files:
                note = example_note(finding.kind, finding.related.get(path))
                out.append((thumbnail(files[path], thumb),  # the path first: a long caption is cut short
                            path + (f" ({note})" if note else "") + f" · {KINDS[finding.kind].title}"))
    return out


def to_display(x: torch.Tensor) -> Image.Image:
    """A normalised CHW tensor back to a viewable image."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    pixels = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def augmented_grid(spec: DatasetSpec, aug: AugmentConfig, image_size: int, per_class: int = 3, views: int = 1,
                   seed: int = 0) -> list[Captioned]:
    """The picked samples after the training transform, `views` random draws each (seeded: the same
    settings always show the same pictures, so a changed switch is what changes them)."""
    transform = train_transform(aug, image_size)
    out = []
    for index, sample in enumerate(pick_samples(spec, per_class)):
        img = load_rgb(sample.path)
        for view in range(views):
            with seeded(sample_seed(seed, view, index)):
                tensor = transform(img)
            out.append((to_display(tensor), spec.classes[sample.label]))
    return out
