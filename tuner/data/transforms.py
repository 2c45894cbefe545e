"""Image transforms: ImageNet's preprocessing for evaluation, and the augmentation presets for training."""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

from ..config import AugmentConfig
from ..model.weights import IMAGENET_WEIGHTS

_PRESETS = IMAGENET_WEIGHTS.transforms()


MEAN: tuple[float, ...] = tuple(_PRESETS.mean)


STD: tuple[float, ...] = tuple(_PRESETS.std)


RESIZE_RATIO = _PRESETS.resize_size[0] / _PRESETS.crop_size[0]  # 256/224: resize, then centre-crop


def resize_size(image_size: int) -> int:
    return int(round(image_size * RESIZE_RATIO))


def eval_transform(image_size: int) -> v2.Compose:
    """Validation and prediction: resize, centre crop, ImageNet normalisation (as the weights expect)."""
    # Resize the PIL image before converting, exactly like the weights' own preset does.
    return v2.Compose([
        v2.Resize(resize_size(image_size), antialias=True),
        v2.CenterCrop(image_size),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


def train_transform(aug: AugmentConfig, image_size: int) -> v2.Compose:
    steps: list[Callable] = []  # geometry and colour work on the PIL image; noise needs the tensor
    if aug.random_resized_crop:
        steps.append(v2.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0), antialias=True))
    else:
        steps += [v2.Resize(resize_size(image_size), antialias=True), v2.CenterCrop(image_size)]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.rotation or aug.translate or aug.scale:
        steps.append(v2.RandomAffine(degrees=aug.rotation, translate=(aug.translate, aug.translate) if aug.translate
                                     else None, scale=(1 - aug.scale, 1 + aug.scale) if aug.scale else None))
    if aug.color_jitter:
        s = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.5, s / 4)))
    if aug.randaugment:
        steps.append(v2.RandAugment())
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if aug.noise_std:
        steps.append(v2.GaussianNoise(sigma=aug.noise_std, clip=True))
    steps.append(v2.Normalize(MEAN, STD))
    return v2.Compose(steps)


def describe_transform(transform: v2.Compose) -> str:
    """A stable text form of a transform (its repr), used to key caches."""
    return repr(transform)
