"""ResNet50 with a new head, freeze depth, the BatchNorm policy, and optimizer parameter groups.

Freeze depth is one value, the deepest stage that trains (`TRAINABLE_CHOICES`): `head` trains only
the new `fc`; `layer3` trains layer3, layer4 and fc; `all` trains the stem too.

BatchNorm in frozen stages: by default ("frozen") those layers stay in eval mode, so they keep the
ImageNet running statistics they were trained with. Updating them on a small dataset while the
weights around them cannot adapt tends to hurt, and it keeps the frozen backbone a fixed function,
which is what lets the feature cache reuse its outputs. `bn="train"` updates them anyway.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn
from torchvision.models import resnet50

from ..config import TRAINABLE_CHOICES, TrainConfig
from ..errors import TunerError
from .weights import LoadReport, WeightsSource, apply_state_dict, read_state_dict

# Stages from the input to the output. A stage's modules are named by their attribute on ResNet.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
STAGE_MODULES = {"stem": ("conv1", "bn1"), "layer1": ("layer1",), "layer2": ("layer2",),
                 "layer3": ("layer3",), "layer4": ("layer4",), "head": ("fc",)}
FEATURE_DIM = 2048


def stage_of(name: str) -> str:
    """The stage a parameter or module name belongs to ('layer3.0.conv1.weight' -> 'layer3')."""
    top = name.split(".", 1)[0]
    for stage, modules in STAGE_MODULES.items():
        if top in modules:
            return stage
    return "other"  # relu, maxpool, avgpool: no parameters


def trainable_stages(trainable: str) -> tuple[str, ...]:
    """The stages that train for a freeze depth: 'layer3' -> ('layer3', 'layer4', 'head')."""
    if trainable not in TRAINABLE_CHOICES:
        raise TunerError(f"trainable={trainable!r} is not a stage: choose one of {', '.join(TRAINABLE_CHOICES)} "
                         "(the deepest stage that trains).")
    if trainable == "all":
        return STAGES
    return STAGES[STAGES.index(trainable):]


@dataclass
class BuiltModel:
    model: nn.Module
    source: WeightsSource
    report: LoadReport | None  # None for random initialisation


def new_resnet50(num_classes: int) -> nn.Module:
    if num_classes < 1:
        raise TunerError("A model needs at least one class.")
    model = resnet50(weights=None)
    model.fc = nn.Linear(FEATURE_DIM, num_classes)
    # A zero head starts from uniform predictions (loss = ln(classes)) instead of random logits on
    # large features, which keeps the first steps stable; BiT fine-tunes from a zero head the same way.
    nn.init.zeros_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
    return model


def build_model(num_classes: int, source: WeightsSource) -> BuiltModel:
    """ResNet50 with `fc = Linear(2048, num_classes)`, backbone weights from `source` where they fit."""
    model = new_resnet50(num_classes)
    report = None
    if source.path:
        report = apply_state_dict(model, read_state_dict(source.path), name=source.path.rsplit("/", 1)[-1])
    return BuiltModel(model, source, report)


def freeze(model: nn.Module, trainable: str) -> None:
    """Set requires_grad by stage: stages from `trainable` to the head train, the rest are frozen."""
    train = set(trainable_stages(trainable))
    for name, param in model.named_parameters():
        param.requires_grad_(stage_of(name) in train)


def set_train_mode(model: nn.Module, trainable: str, bn: str = "frozen") -> None:
    """model.train(), except frozen stages stay in eval mode under the default BatchNorm policy."""
    model.train()
    if bn == "train":
        return
    train = set(trainable_stages(trainable))
    for name, module in model.named_children():
        if stage_of(name) not in train:
            module.eval()


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def parameter_groups(model: nn.Module, config: TrainConfig, pretrained: bool,
                     trainable: str | None = None) -> list[dict]:
    """Optimizer groups over the parameters that will train: head at the base rate, backbone slower.

    Weights of conv/linear layers get weight decay; BatchNorm parameters and biases do not (decaying
    them only pulls normalisation towards zero). Parameters frozen for now but unfrozen later in a
    two-stage run are included: they have no gradient until then, so optimizers skip them.
    """
    stages = set(trainable_stages(trainable or config.trainable))
    base = config.base_lr
    backbone = base * config.backbone_multiplier(pretrained)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        stage = stage_of(name)
        if stage not in stages:
            continue
        part = "head" if stage == "head" else "backbone"
        buckets.setdefault((part, param.ndim >= 2), []).append(param)
    groups = []
    for (part, decay), params in sorted(buckets.items()):
        groups.append({"params": params, "name": f"{part}{'' if decay else ' (no decay)'}",
                       "lr": base if part == "head" else backbone,
                       "weight_decay": config.weight_decay if decay else 0.0})
    if not groups:
        raise TunerError("Nothing to train with these settings: choose trainable='head' or a deeper stage.")
    return groups


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.base_lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.base_lr)
    return torch.optim.AdamW(groups, lr=config.base_lr)


def backbone_forward(model: nn.Module, x: torch.Tensor, until: str = "layer4") -> torch.Tensor:
    """Run the stages up to and including `until`; for 'layer4' also pool to the 2048-d feature vector."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(model, stage)(x)
        if stage == until:
            break
    if until == "layer4":
        x = torch.flatten(model.avgpool(x), 1)
    return x


def forward_from(model: nn.Module, x: torch.Tensor, after: str) -> torch.Tensor:
    """Finish the forward pass from the output of stage `after` (the inverse of backbone_forward)."""
    if after == "layer4":
        return model.fc(x)
    for stage in ("layer1", "layer2", "layer3", "layer4")[("layer1", "layer2", "layer3").index(after) + 1:]:
        x = getattr(model, stage)(x)
    return model.fc(torch.flatten(model.avgpool(x), 1))


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Measure BatchNorm running statistics on real images (no learning) and keep them.

    A randomly initialised backbone has no statistics worth keeping: its BatchNorm layers hold the
    init values (mean 0, variance 1), so a frozen random stage lets activations grow without bound.
    One pass in train mode with a cumulative average gives every layer the statistics of the user's
    images; after that, frozen stages are a well-scaled fixed function like a pretrained one.
    """
    with measuring_batchnorm(model):
        for x in batches:
            model(x)


@contextlib.contextmanager
def measuring_batchnorm(model: nn.Module) -> Iterator[None]:
    """Inside: every forward pass adds to freshly reset BatchNorm statistics (a cumulative average), without
    gradients. For callers that go batch by batch, e.g. to honour a stop request between two batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all calibration batches
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():  # running statistics update all the same; no graph is kept
            yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
