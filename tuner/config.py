"""One validated config object per training job.

`TrainConfig` is built once (from CLI flags, from the studio's widgets, or from a checkpoint), checked
by `validate()`, and saved as a plain dict inside every checkpoint so a run can be reproduced and
resumed. Everything downstream reads settings from it and from nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import TunerError

# The deepest ResNet stage that trains; everything above it trains too, everything below is frozen.
TRAINABLE_CHOICES = ("head", "layer4", "layer3", "layer2", "layer1", "all")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine")
IMBALANCE_CHOICES = ("none", "sampler", "loss")
BN_CHOICES = ("frozen", "train")
AUGMENT_PRESETS = ("none", "light", "strong")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
FEATURE_CACHE_CHOICES = ("auto", "off")
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}


_UnionType = type(int | None)  # what `X | None` annotations are
_KINDS = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}


def _fits(value: Any, kind: Any) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # inf and nan pass every range check (nan compares false), so they are refused here
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if typing.get_origin(kind) is list:  # list[str]: a list, and each item of the kind inside
        return isinstance(value, list) and all(_fits(item, typing.get_args(kind)[0]) for item in value)
    return isinstance(value, kind)


def _kind_text(kind: Any) -> str:
    if kind in _KINDS:
        return _KINDS[kind]
    if kind is type(None):
        return "None (the default)"
    if typing.get_origin(kind) is list:
        return f"a list of {_kind_text(typing.get_args(kind)[0])} values"
    return f"an {kind.__name__} (e.g. {kind.__name__}.from_preset('light'))"


def check_field_types(config: Any) -> None:
    """Each field holds the kind of value its annotation names. The Python API accepts anything, and a
    string epoch count or an infinite learning rate would otherwise fail deep inside a run (or train to
    NaN and save it), instead of here with the field's name."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
        if not any(_fits(value, kind) for kind in kinds):
            wanted = " or ".join(_kind_text(k) for k in kinds)
            raise TunerError(f"{f.name}={value!r} must be {wanted}.")


@dataclass
class AugmentConfig:
    """Training-time augmentation. Validation always uses resize + centre crop only."""

    preset: str = "light"  # the preset these values came from, or "custom" once a switch changed
    random_resized_crop: bool = True
    crop_scale_min: float = 0.6  # smallest crop area, as a share of the image
    hflip: bool = True
    rotation: float = 0.0  # degrees, +/-
    translate: float = 0.0  # share of width/height, +/-
    scale: float = 0.0  # zoom, 1 +/- this
    color_jitter: float = 0.1  # brightness/contrast/saturation strength
    noise_std: float = 0.0  # Gaussian noise sigma on the 0..1 image
    randaugment: bool = False

    @classmethod
    def from_preset(cls, preset: str) -> "AugmentConfig":
        if preset not in AUGMENT_PRESETS:
            raise TunerError(f"Unknown augmentation preset {preset!r}: choose one of {', '.join(AUGMENT_PRESETS)}.")
        if preset == "none":
            return cls(preset="none", random_resized_crop=False, hflip=False, color_jitter=0.0)
        if preset == "light":
            return cls(preset="light")
        return cls(preset="strong", crop_scale_min=0.35, rotation=15.0, translate=0.1, scale=0.1,
                   color_jitter=0.3, noise_std=0.03, randaugment=True)

    @property
    def enabled(self) -> bool:
        """True when training images differ from validation images (any random transform is on)."""
        return (self.random_resized_crop or self.hflip or self.rotation > 0 or self.translate > 0
                or self.scale > 0 or self.color_jitter > 0 or self.noise_std > 0 or self.randaugment)

    def with_changes(self, **changes: Any) -> "AugmentConfig":
        """A copy with some switches changed; it is labelled "custom" unless it still equals its preset."""
        updated = dataclasses.replace(self, **changes)
        for name in AUGMENT_PRESETS:
            if dataclasses.replace(updated, preset=name) == AugmentConfig.from_preset(name):
                return dataclasses.replace(updated, preset=name)
        return dataclasses.replace(updated, preset="custom")

    def validate(self) -> None:
        check_field_types(self)
        if not 0.05 <= self.crop_scale_min <= 1.0:
            raise TunerError(f"crop_scale_min={self.crop_scale_min} is out of range: use a value from 0.05 to 1.0.")
        if not 0 <= self.rotation <= 180:
            raise TunerError(f"rotation={self.rotation} is out of range: use 0 to 180 degrees.")
        for name in ("translate", "scale"):
            value = getattr(self, name)
            if not 0 <= value <= 0.5:
                raise TunerError(f"{name}={value} is out of range: use 0 to 0.5.")
        if not 0 <= self.color_jitter <= 1.0:
            raise TunerError(f"color_jitter={self.color_jitter} is out of range: use 0 to 1.")
        if not 0 <= self.noise_std <= 0.5:
            raise TunerError(f"noise_std={self.noise_std} is out of range: use 0 to 0.5.")


@dataclass
class TrainConfig:
    """Everything that defines one training job."""

    data: str = "demo"  # "demo", a folder, or a .zip
    out: str = "runs/demo"
    weights: str = "imagenet"  # "imagenet" (cache, then download, else random), "random", or a file path
    trainable: str = "head"  # deepest stage that trains; see TRAINABLE_CHOICES
    head_epochs: int = 0  # two-stage recipe: this many head-only epochs before unfreezing to `trainable`
    epochs: int = 5
    image_size: int = 224
    batch_size: int = 32
    # AdamW by default: its steps do not depend on the scale of the features, which differs between
    # pretrained and random backbones and between image sizes; SGD at a fixed rate diverged on some.
    optimizer: str = "adamw"
    lr: float | None = None  # None: DEFAULT_LR for the optimizer
    backbone_lr_mult: float | None = None  # None: 0.1 over pretrained weights, 1.0 over random ones
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    step_size: int = 3  # step scheduler: epochs between decays
    gamma: float = 0.1  # step scheduler: decay factor
    label_smoothing: float = 0.0
    early_stopping: int = 0  # stop after this many epochs without a better val accuracy; 0: off
    seed: int = 0
    val_ratio: float = 0.2  # used when the data has no val/ folder
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    imbalance: str = "none"
    bn: str = "frozen"  # BatchNorm in frozen stages: keep ImageNet running stats ("frozen") or update them
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = -1  # -1: choose for the machine
    feature_cache: str = "auto"  # reuse frozen-backbone outputs across epochs when results stay the same
    cache_views: int = 1  # augmented views per image kept in the feature cache when augmentation is on
    cache_dir: str = ""  # where feature caches live; "": $TUNER_HOME/features (~/.cache/tuner/features)
    cache_budget_mb: int = 2048  # largest feature cache kept in memory (head-only features or a frozen prefix's)
    channels_last: str = "auto"  # "auto" | "on" | "off"
    compile: bool = False  # torch.compile the model (GPU; pays off on long runs)
    sync_bn: bool = False  # under torchrun: synchronise BatchNorm statistics across ranks
    # Images the run leaves out: paths inside the dataset folder (posix), as the data check lists them
    # (train/cats/01.jpg, or cats/01.jpg without split folders); see tuner.data.health.exclude_samples.
    exclude: list[str] = field(default_factory=list)

    # ---- derived values -------------------------------------------------------------------------
    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def backbone_multiplier(self, pretrained: bool) -> float:
        """Backbone stages learn slower than the head over pretrained weights, to keep what they know."""
        if self.backbone_lr_mult is not None:
            return self.backbone_lr_mult
        return 0.1 if pretrained else 1.0

    # ---- checking -------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise TunerError naming the fix for the first invalid setting; return self when all is well."""
        check_field_types(self)
        choices = {"trainable": TRAINABLE_CHOICES, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS,
                   "imbalance": IMBALANCE_CHOICES, "bn": BN_CHOICES, "device": DEVICE_CHOICES,
                   "amp": AMP_CHOICES, "feature_cache": FEATURE_CACHE_CHOICES,
                   "channels_last": ("auto", "on", "off")}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise TunerError(f"{name}={value!r} is not allowed: choose one of {', '.join(allowed)}.")
        if self.epochs < 1:
            raise TunerError(f"epochs={self.epochs}: train for at least 1 epoch.")
        if self.head_epochs < 0:
            raise TunerError(f"head_epochs={self.head_epochs}: use 0 (off) or more.")
        if self.head_epochs and self.trainable == "head":
            raise TunerError("head_epochs is for the two-stage recipe: with trainable='head' every epoch is "
                             "head-only already. Set head_epochs=0, or pick a deeper trainable stage.")
        if self.head_epochs >= self.epochs:
            raise TunerError(f"head_epochs={self.head_epochs} leaves no epoch to fine-tune deeper stages: "
                             f"use fewer than epochs={self.epochs}.")
        if not 16 <= self.image_size <= 1024:
            raise TunerError(f"image_size={self.image_size} is out of range: use 16 to 1024 pixels (224 is standard).")
        if self.batch_size < 1:
            raise TunerError(f"batch_size={self.batch_size}: use at least 1.")
        if self.batch_size < 2 and (self.trainable != "head" or self.bn == "train"):
            raise TunerError("batch_size=1 cannot train BatchNorm layers (they need two images to measure a "
                             "batch): use batch_size 2 or more, or trainable='head' with bn='frozen'.")
        if not self.base_lr > 0:
            raise TunerError(f"lr={self.lr}: the learning rate must be above 0 (try {DEFAULT_LR[self.optimizer]}).")
        if self.backbone_lr_mult is not None:
            if self.backbone_lr_mult < 0:
                raise TunerError(f"backbone_lr_mult={self.backbone_lr_mult}: use 0 or more (the backbone learns at "
                                 "lr x this; 0.1 is usual over pretrained weights, 1 trains it as fast as the head).")
            if self.backbone_lr_mult == 0 and self.trainable != "head":
                raise TunerError(f"backbone_lr_mult=0 with trainable={self.trainable!r} would unfreeze stages that "
                                 "never change: use trainable='head' to train only the head, or a multiplier "
                                 "above 0 (0.1 is usual).")
        if not 0 <= self.momentum < 1:
            raise TunerError(f"momentum={self.momentum}: use a value from 0 to below 1 (0.9 is usual).")
        if self.weight_decay < 0:
            raise TunerError(f"weight_decay={self.weight_decay}: use 0 or more.")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise TunerError(f"warmup_epochs={self.warmup_epochs}: use 0 up to epochs-1 ({self.epochs - 1}).")
        if self.step_size < 1:
            raise TunerError(f"step_size={self.step_size}: the step scheduler needs at least 1 epoch between decays.")
        if not 0 < self.gamma <= 1:
            raise TunerError(f"gamma={self.gamma}: the step scheduler's decay factor must be above 0 and at most 1 "
                             "(0.1 is usual).")
        if not 0 <= self.label_smoothing < 1:
            raise TunerError(f"label_smoothing={self.label_smoothing}: use 0 to below 1 (0.1 is usual).")
        if self.early_stopping < 0:
            raise TunerError(f"early_stopping={self.early_stopping}: use 0 (off) or a patience in epochs.")
        if not 0.01 <= self.val_ratio <= 0.9:
            raise TunerError(f"val_ratio={self.val_ratio}: use 0.01 to 0.9 (0.2 is usual).")
        if self.cache_budget_mb < 0:
            raise TunerError(f"cache_budget_mb={self.cache_budget_mb}: use 0 (no feature cache) or more.")
        if self.cache_views < 1:
            raise TunerError(f"cache_views={self.cache_views}: use at least 1.")
        if self.num_workers < -1:
            raise TunerError(f"num_workers={self.num_workers}: use -1 (auto), 0 or more.")
        if not str(self.out).strip():
            raise TunerError(f"out={self.out!r} is empty: name a folder for checkpoints, e.g. runs/my-model.")
        for path in self.exclude:
            if not path.strip() or "\n" in path or "\r" in path:
                raise TunerError(f"exclude holds {path!r}, which is not an image path: list paths inside the dataset "
                                 "folder, one per entry, e.g. train/cats/01.jpg.")
        self.augment.validate()
        return self

    # ---- plain-data round trip (checkpoints hold only plain types) --------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        augment = values.pop("augment", None)
        augment_fields = {f.name for f in dataclasses.fields(AugmentConfig)}
        config = cls(**values)
        if isinstance(augment, dict):
            config.augment = AugmentConfig(**{k: v for k, v in augment.items() if k in augment_fields})
        return config
