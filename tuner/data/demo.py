"""The built-in demo dataset: 4 classes of generated shapes, written once under the tuner home."""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..paths import tuner_home

DEMO_VERSION = 1


DEMO_CLASSES = ("circles", "squares", "stripes", "triangles")


IMAGES_PER_CLASS = 48


IMAGE_PX = 96


def demo_dataset_dir(root: str | os.PathLike | None = None) -> Path:
    """The demo dataset folder, generating it first if it is not there yet (safe with parallel callers)."""
    target = Path(root) if root else tuner_home() / f"demo-v{DEMO_VERSION}"
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        write_demo_dataset(tmp)
        (tmp / ".complete").write_text(f"tuner demo dataset v{DEMO_VERSION}\n")
        if target.exists() and not (target / ".complete").exists():
            shutil.rmtree(target)  # an incomplete or damaged copy (generation always completes in a temp folder)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_demo_dataset(folder: Path, images_per_class: int = IMAGES_PER_CLASS, size: int = IMAGE_PX,
                       seed: int = 0) -> None:
    for label, name in enumerate(DEMO_CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            rng = random.Random(seed * 1_000_000 + label * 10_000 + i)
            demo_image(name, rng, size).save(folder / name / f"{name}_{i:03d}.png", optimize=True)


def demo_image(kind: str, rng: random.Random, size: int = IMAGE_PX) -> Image.Image:
    """One image of class `kind`: the class decides the shape; everything else is random."""
    big = size * 2  # draw at 2x and downsample for smooth edges
    img = _background(rng, big)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(0, 3)):  # clutter: small dots that belong to no class
        x, y, r = rng.uniform(0, big), rng.uniform(0, big), rng.uniform(2, big * 0.03)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_colour(rng))
    colour = _colour(rng, avoid=img.getpixel((big // 2, big // 2)))
    count = rng.choice((1, 1, 1, 2))
    for _ in range(count):
        r = rng.uniform(0.14, 0.3) * big / math.sqrt(count)
        cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
        angle = rng.uniform(0, 2 * math.pi)
        if kind == "circles":
            squash = rng.uniform(0.8, 1.0)
            draw.ellipse((cx - r, cy - r * squash, cx + r, cy + r * squash), fill=colour)
        elif kind == "squares":
            draw.polygon(_regular_polygon(cx, cy, r, 4, angle), fill=colour)
        elif kind == "triangles":
            draw.polygon(_regular_polygon(cx, cy, r, 3, angle), fill=colour)
        elif kind == "stripes":
            _stripes(draw, rng, big, colour, angle)
            break
        else:
            raise ValueError(f"unknown demo class {kind!r}")
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    return _noise(img, rng, rng.uniform(0, 12))


def _colour(rng: random.Random, avoid: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    while True:
        c = tuple(rng.randint(0, 255) for _ in range(3))
        if avoid is None or sum(abs(a - b) for a, b in zip(c, avoid)) > 180:
            return c  # type: ignore[return-value]


def _background(rng: random.Random, size: int) -> Image.Image:
    a, b = _colour(rng), _colour(rng)
    mix = rng.uniform(0, 0.5)  # a gentle gradient from a towards b
    column = Image.linear_gradient("L").resize((size, size))
    if rng.random() < 0.5:
        column = column.rotate(90)
    base = Image.new("RGB", (size, size), a)
    tint = Image.new("RGB", (size, size), tuple(int(x + (y - x) * mix) for x, y in zip(a, b)))
    return Image.composite(tint, base, column)


def _regular_polygon(cx: float, cy: float, r: float, sides: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * k / sides), cy + r * math.sin(angle + 2 * math.pi * k / sides))
            for k in range(sides)]


def _stripes(draw: ImageDraw.ImageDraw, rng: random.Random, size: int, colour: tuple, angle: float) -> None:
    period = rng.uniform(0.12, 0.25) * size
    width = period * rng.uniform(0.35, 0.6)
    dx, dy = math.cos(angle), math.sin(angle)  # stripe direction
    nx, ny = -dy, dx  # normal
    c = size / 2
    offset = rng.uniform(0, period)
    for k in range(-8, 9):
        d = k * period + offset
        px, py = c + nx * d, c + ny * d
        L = size * 1.5
        half = width / 2
        draw.polygon([(px - dx * L + nx * half, py - dy * L + ny * half), (px + dx * L + nx * half, py + dy * L + ny * half),
                      (px + dx * L - nx * half, py + dy * L - ny * half), (px - dx * L - nx * half, py - dy * L - ny * half)],
                     fill=colour)


def _noise(img: Image.Image, rng: random.Random, sigma: float) -> Image.Image:
    """Sensor-like grain, seeded from `rng` so the dataset is the same on every machine."""
    if sigma < 1:
        return img
    grain = np.random.default_rng(rng.randrange(2**32)).normal(0.0, sigma, (img.height, img.width, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + grain, 0, 255).astype(np.uint8))
