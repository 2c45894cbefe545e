"""Reading images safely (size caps, every mode to RGB), the in-memory decoded-image cache and the
Dataset that applies a transform seeded per sample.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .sampling import sample_seed, seeded

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is reported and skipped, never half-read


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


MAX_IMAGE_PIXELS = 64_000_000  # a 64 MP photo decodes to ~190 MB; larger ones are refused as too large


class ImageTooLarge(ValueError):
    """More pixels than MAX_IMAGE_PIXELS: refused before decoding."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any image as 8-bit RGB with its EXIF orientation applied; transparency goes on white."""
    try:
        with Image.open(path) as img:
            # The header gives the size before any pixel is decoded: a tiny file claiming a huge image
            # (a decompression bomb) is refused here instead of filling memory.
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageTooLarge(f"{img.width}x{img.height} pixels is more than the "
                                    f"{MAX_IMAGE_PIXELS // 10**6} MP limit")
            img.load()
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError:
        # PIL refuses the most extreme sizes itself, inside Image.open, before the check above can run;
        # its error is no OSError or ValueError, so callers would see it as a crash.
        raise ImageTooLarge(f"more than the {MAX_IMAGE_PIXELS // 10**6} MP limit") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode.startswith("I"):
        # 16-bit greyscale maps its full 0..65535 range onto 0..255 whatever the content (plain
        # conversion clips at 255 and turns most such images white); 32-bit integers, which have no
        # standard range, are scaled by their own maximum.
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            scale = 255.0 / 65535
        else:
            hi = arr.max() if arr.size else 0
            scale = 1.0 if hi <= 255 else 255.0 / hi
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def presize(img: Image.Image, short_side: int) -> Image.Image:
    """Shrink so the shorter side is `short_side` (never enlarge): decode once, crop many times.

    It is torchvision's own resize, so for validation and prediction (resize to this size, then
    centre-crop) the result is exactly what the weights' preset gives on the original image.
    """
    if min(img.size) <= short_side:
        return img
    return v2.functional.resize(img, [short_side], antialias=True)


def check_image(path: Path) -> str | None:
    """None when the file reads fully as an RGB image (as training will read it); else why it is skipped."""
    try:
        load_rgb(path)
    except ImageTooLarge:
        return "too large"
    except UnidentifiedImageError:
        return "not image data"  # an image extension, but no format PIL knows
    except (OSError, SyntaxError, ValueError):
        return "corrupt or truncated"
    return None


@dataclass
class Sample:
    path: str
    label: int


class ImageCache:
    """Decoded, presized RGB images kept in memory for small datasets (decode once, not every epoch)."""

    def __init__(self, short_side: int, budget_bytes: int = 1 << 30):
        self.short_side = short_side
        self.budget_bytes = budget_bytes
        self.used = 0
        self.images: dict[str, Image.Image] = {}

    def get(self, path: str) -> Image.Image:
        img = self.images.get(path)
        if img is None:
            img = presize(load_rgb(path), self.short_side)
            size = img.width * img.height * 3
            if self.used + size <= self.budget_bytes:
                self.images[path] = img
                self.used += size
        return img

    @property
    def full(self) -> bool:
        return self.used >= self.budget_bytes

    def warm(self, paths: Sequence[str]) -> None:
        """Decode in threads (PIL releases the GIL) before loader workers fork, so they share the cache."""
        todo = [p for p in dict.fromkeys(paths) if p not in self.images]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for path, img in zip(todo, pool.map(lambda p: presize(load_rgb(p), self.short_side), todo)):
                size = img.width * img.height * 3
                if self.used + size > self.budget_bytes:
                    break
                self.images[path] = img
                self.used += size


class ImageDataset(Dataset):
    """Samples -> (tensor, label). Indexed by int (fixed transform) or (index, epoch) (seeded augmentation)."""

    def __init__(self, samples: Sequence[Sample], transform: Callable, cache: ImageCache, seed: int = 0):
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[index]
        img = self.cache.get(sample.path)
        with seeded(sample_seed(self.seed, epoch, index)):
            x = self.transform(img)
        return x, sample.label
