"""What a benchmark run measures and at which size, and the targets each item is judged against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import TunerError

ITEMS = ("head", "predict", "finetune", "gpu", "settings")
TARGETS = {"head": 8.0, "predict": 2.0, "finetune": 1.0, "gpu": 2.5}
CLASSES = 4  # the demo dataset's


@dataclass
class BenchSettings:
    """What to measure and at which size. `quick_settings()` is the smoke-test size (seconds, not minutes)."""

    image_size: int = 224
    epochs: int = 10  # item 1
    finetune_epochs: int = 2  # item 3: the first epoch is warm-up, later ones are measured
    train_per_class: int = 40  # demo images per class (4 classes) in train/ ...
    val_per_class: int = 10  # ... and in val/
    batch_size: int = 32
    repeats: int = 3
    latency_calls: int = 20  # item 2: calls per timed block
    settings_steps: int = 3  # synthetic training steps per setting checked
    settings_batch: int = 8
    gpu_batch_size: int = 128
    gpu_steps: int = 30
    gpu_warmup: int = 10
    gpu_compile: bool = False  # also measure tuner's settings with torch.compile
    gpu_peak_tflops: float = 0.0  # 0: look the card up in GPU_PEAK_TFLOPS
    items: tuple[str, ...] = ITEMS
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_settings(cls, **changes: Any) -> "BenchSettings":
        values = dict(image_size=32, epochs=2, finetune_epochs=1, train_per_class=6, val_per_class=3, batch_size=8,
                      repeats=1, latency_calls=3, settings_steps=1, settings_batch=4, gpu_batch_size=8, gpu_steps=2,
                      gpu_warmup=1, quick=True)
        values.update(changes)
        return cls(**values)

    @property
    def trained_images(self) -> int:
        """Images one epoch of train() steps on (a last batch of one is dropped; validate() refuses that)."""
        return CLASSES * self.train_per_class

    def validate(self) -> "BenchSettings":
        for name in ("epochs", "finetune_epochs", "repeats", "latency_calls", "settings_steps", "gpu_steps"):
            if getattr(self, name) < 1:
                raise TunerError(f"bench: {name}={getattr(self, name)}: use at least 1.")
        if not 16 <= self.image_size <= 1024:
            raise TunerError(f"bench: image_size={self.image_size} is out of range: use 16 to 1024 pixels.")
        if self.train_per_class < 2 or self.val_per_class < 1:
            raise TunerError("bench: use at least 2 training and 1 validation image per class.")
        if self.batch_size < 2 or self.settings_batch < 2 or self.gpu_batch_size < 2:
            raise TunerError("bench: batch sizes must be at least 2 (BatchNorm trains on batch statistics).")
        if self.trained_images % self.batch_size == 1:
            # The plain loops keep the last partial batch (DataLoader's default), and BatchNorm in train
            # mode cannot normalise a batch of one image.
            raise TunerError(f"bench: {self.trained_images} training images leave a last batch of one image "
                             f"at batch_size={self.batch_size}: change train_per_class or batch_size.")
        unknown = set(self.items) - set(ITEMS)
        if unknown or not self.items:
            raise TunerError(f"bench: unknown items {sorted(unknown)}: choose from {', '.join(ITEMS)}.")
        return self
