"""What a benchmark run measures and at which size, the targets each item is judged against, and the
`tuner bench` flags that set them (light to import: `tuner --help` reads them without loading torch)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..errors import TunerError

ITEMS = ("head", "predict", "finetune", "gpu", "doctor", "settings")
# "doctor" is check/training time, so at most its target; the others are speed-ups, at least theirs.
TARGETS = {"head": 8.0, "predict": 2.0, "finetune": 1.0, "gpu": 2.5, "doctor": 1.0}
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
    doctor_images: int = 1000  # item 5's own demo dataset (issue 16: 1,000 images at 128 px), 4/5 of it train/
    doctor_image_size: int = 128  # --image-size sets it too
    items: tuple[str, ...] = ITEMS
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_settings(cls, **changes: Any) -> "BenchSettings":
        values = dict(image_size=32, epochs=2, finetune_epochs=1, train_per_class=6, val_per_class=3, batch_size=8,
                      repeats=1, latency_calls=3, settings_steps=1, settings_batch=4, gpu_batch_size=8, gpu_steps=2,
                      gpu_warmup=1, doctor_images=40, doctor_image_size=32, quick=True)
        values.update(changes)
        return cls(**values)

    @property
    def doctor_split(self) -> tuple[int, int]:
        """Item 5's training and validation images per class: a fifth of each class validates."""
        per_class = self.doctor_images // CLASSES
        return per_class - per_class // 5, per_class // 5

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
        if not 16 <= self.doctor_image_size <= 1024:
            raise TunerError(f"bench: doctor_image_size={self.doctor_image_size} is out of range: use 16 to 1024 "
                             "pixels.")
        if self.doctor_images < 5 * CLASSES:
            # One validation image per class at least, and cross-validation folds of 2 or more per class.
            raise TunerError(f"bench: doctor_images={self.doctor_images}: use at least {5 * CLASSES} "
                             f"({CLASSES} classes of 5).")
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes (32 px, a few images, 1 repeat): a smoke run in "
                   "seconds; the numbers mean nothing")
    p.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)}")
    p.add_argument("--image-size", type=int, help="pixels for every item (default 224, item doctor 128; --quick: 32)")
    p.add_argument("--epochs", type=int, help="item 1's epochs (default 10)")
    p.add_argument("--finetune-epochs", type=int, help="item 3's epochs; the first is warm-up (default 2)")
    p.add_argument("--train-per-class", type=int, help="training images per class, 4 classes (default 40)")
    p.add_argument("--val-per-class", type=int, help="validation images per class (default 10)")
    p.add_argument("--batch-size", type=int, help="training batch (default 32)")
    p.add_argument("--repeats", type=int, help="times each side runs, alternating (default 3)")
    p.add_argument("--gpu-batch-size", type=int, help="item 4's batch (default 128)")
    p.add_argument("--gpu-compile", action="store_true", help="item 4: also measure with torch.compile")
    p.add_argument("--gpu-peak-tflops", type=float, help="item 4: the GPU's dense bf16 peak, when the table lacks it")
    p.add_argument("--doctor-images", type=int, help="item doctor's dataset size, 4 classes (default 1000)")
    p.add_argument("--json", default="runs/bench/latest.json", help="where the JSON report goes")
    p.add_argument("--workdir", help="keep data, runs and checkpoints here (default: a temporary folder)")


SETTING_ARGS = {"image_size": "image_size", "epochs": "epochs", "finetune_epochs": "finetune_epochs",
                "train_per_class": "train_per_class", "val_per_class": "val_per_class", "batch_size": "batch_size",
                "repeats": "repeats", "gpu_batch_size": "gpu_batch_size", "gpu_peak_tflops": "gpu_peak_tflops",
                "doctor_images": "doctor_images"}


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    changes = {field_name: getattr(args, arg) for arg, field_name in SETTING_ARGS.items()
               if getattr(args, arg, None) is not None}
    if args.image_size is not None:  # "pixels for every item": item doctor's too
        changes["doctor_image_size"] = args.image_size
    changes["items"] = tuple(i.strip() for i in args.items.split(",") if i.strip())
    changes["gpu_compile"] = bool(args.gpu_compile)
    return BenchSettings.quick_settings(**changes) if args.quick else BenchSettings(**changes)
