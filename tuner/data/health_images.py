"""Image problems and the pixel hash: a few statistics per decoded image, and the findings they give
(much smaller than the training size, extreme aspect ratios, nearly blank, very dark or bright,
blurry, greyscale among colour). Thresholds are documented in the README's "Checking the data".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .health import Finding
from .images import load_rgb, presize

# Thresholds of the pixel checks (the README's "Checking the data" explains each).
SMALL_UPSCALE = 2.0  # flagged when the shorter side must be enlarged more than this for training
ODD_ASPECT = 2.0  # long side / short side
# Standard deviation (0..255) that every colour channel stays below in a nearly blank image. Per channel,
# not of the grey levels: a green shape on teal can have almost no grey-level contrast (the demo set has
# two such triangles) and still be a clear picture.
CONSTANT_SPREAD = 4.0
DARK_MEAN, BRIGHT_MEAN = 25.0, 235.0  # mean grey level
BLUR_RATIO = 5.0  # flagged when 5x less sharp than the dataset's median image
GREY_CHANNEL_GAP = 2.0  # mean |R-G| + |G-B| below which an image counts as greyscale
# Shorter side the statistics (not the hash) are measured at; larger images are reduced to it, smaller
# ones are measured as they are (enlarging would only blur them).
ANALYSIS_SIDE = 128


@dataclass(frozen=True)
class PixelStats:
    digest: str  # sha256 of the decoded RGB pixels and size: equal digests are identical pictures
    width: int
    height: int
    mean: float  # grey level 0..255
    spread: float  # the largest standard deviation of the three colour channels
    sharpness: float  # variance of the Laplacian over the variance of the image (contrast-free)
    grey: bool


def pixel_stats(path: str | Path) -> PixelStats:
    img = load_rgb(path)
    digest = hashlib.sha256(f"{img.width}x{img.height}|".encode() + img.tobytes()).hexdigest()
    small = np.asarray(presize(img, ANALYSIS_SIDE), dtype=np.float32)
    grey = small @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gap = float(np.abs(small[..., 0] - small[..., 1]).mean() + np.abs(small[..., 1] - small[..., 2]).mean())
    spread = float(small.reshape(-1, 3).std(axis=0).max())
    return PixelStats(digest, img.width, img.height, float(grey.mean()), spread, sharpness(grey),
                      gap < GREY_CHANNEL_GAP)


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian relative to the image's own variance.

    Dividing by the variance makes it independent of contrast: white noise scores 20 (the kernel's
    squared weights), a smooth gradient near 0, and blurring lowers it whatever the brightness.
    """
    if min(grey.shape) < 3:
        return 0.0
    lap = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1])
    variance = float(grey.var())
    return float(lap.var()) / variance if variance > 1e-6 else 0.0


def upscale_factor(width: int, height: int, resize_side: int) -> float:
    return resize_side / max(1, min(width, height))


def centre_crop_keeps(width: int, height: int, image_size: int, resize_side: int) -> float:
    """Share of the long side that survives training's resize-then-centre-crop."""
    long_after_resize = resize_side * max(width, height) / max(1, min(width, height))
    return min(1.0, image_size / long_after_resize)


def image_findings(paths: Sequence[str], stats: Sequence[PixelStats], image_size: int,
                   resize_side: int) -> list[Finding]:
    """Small, odd-aspect, blank, dark, bright, blurry and greyscale-among-colour images."""
    flagged: dict[str, list[tuple[float, str]]] = {k: [] for k in
                                                   ("small", "odd_aspect", "constant", "dark", "bright", "blurry")}
    sharp = [s.sharpness for s in stats if s.spread >= CONSTANT_SPREAD]
    blur_limit = float(np.median(sharp)) / BLUR_RATIO if sharp else 0.0
    for path, s in zip(paths, stats, strict=True):
        factor = upscale_factor(s.width, s.height, resize_side)
        if factor > SMALL_UPSCALE:
            flagged["small"].append((factor, path))
        aspect = max(s.width, s.height) / max(1, min(s.width, s.height))
        if aspect >= ODD_ASPECT:
            flagged["odd_aspect"].append((aspect, path))
        if s.spread < CONSTANT_SPREAD:
            flagged["constant"].append((-s.spread, path))
            continue  # a blank image is not also dark, bright or blurry
        if s.mean < DARK_MEAN:
            flagged["dark"].append((-s.mean, path))
        elif s.mean > BRIGHT_MEAN:
            flagged["bright"].append((s.mean, path))
        if s.sharpness < blur_limit:
            flagged["blurry"].append((-s.sharpness, path))
    findings = []
    for kind, items in flagged.items():
        if not items:
            continue
        items.sort(reverse=True)
        findings.append(Finding(kind, len(items), [p for _, p in items], _image_detail(kind, items, stats, paths,
                                                                                     image_size, resize_side)))
    grey = greyscale_finding(paths, stats)
    return findings + ([grey] if grey else [])


def _image_detail(kind: str, items: list[tuple[float, str]], stats: Sequence[PixelStats], paths: Sequence[str],
                  image_size: int, resize_side: int) -> str:
    worst = items[0][0]
    if kind == "small":
        return f"Shorter side enlarged up to {worst:.1f}x to reach {resize_side} px before the {image_size} px crop."
    if kind == "odd_aspect":
        s = stats[list(paths).index(items[0][1])]
        kept = centre_crop_keeps(s.width, s.height, image_size, resize_side)
        side = "width" if s.width > s.height else "height"
        return (f"Up to {worst:.1f}:1; the centre crop keeps only the middle {kept:.0%} of the {side} of "
                f"{items[0][1]}.")
    if kind == "constant":
        return f"No colour channel varies by more than {CONSTANT_SPREAD:.0f} (of 255) across the picture."
    if kind == "dark":
        return f"Mean grey level below {DARK_MEAN:.0f} of 255."
    if kind == "bright":
        return f"Mean grey level above {BRIGHT_MEAN:.0f} of 255."
    return f"Less than 1/{BLUR_RATIO:.0f} of the median image's sharpness (measured at {ANALYSIS_SIDE} px)."


def greyscale_finding(paths: Sequence[str], stats: Sequence[PixelStats]) -> Finding | None:
    """Greyscale images when most are colour; a minority of one kind is what can become a shortcut."""
    grey = [p for p, s in zip(paths, stats, strict=True) if s.grey and s.spread >= CONSTANT_SPREAD]
    if not grey or len(grey) * 2 >= len(paths):
        return None
    return Finding("greyscale", len(grey), grey, f"{len(grey)} of {len(paths)} images have no colour.")
