"""The model as plain data: parameter table, layer tree, per-stage totals and stage output shapes.

Built from `named_parameters()`, `named_children()` and `named_modules()`; the studio and the CLI
render these tables, nothing here knows about either.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .resnet import STAGES, stage_of, trainable_stages


def parameter_table(model: nn.Module, trainable: str | None = None) -> pd.DataFrame:
    """One row per `named_parameters()` entry: name, stage, shape, element count, trainable.

    With `trainable` given, the column shows what that freeze depth would train; without it, the
    parameters' current requires_grad.
    """
    stages = set(trainable_stages(trainable)) if trainable else None
    rows = []
    for name, param in model.named_parameters():
        stage = stage_of(name)
        rows.append({"name": name, "stage": stage, "shape": "x".join(map(str, param.shape)),
                     "numel": param.numel(),
                     "trainable": stage in stages if stages is not None else param.requires_grad})
    return pd.DataFrame(rows, columns=["name", "stage", "shape", "numel", "trainable"])


def stage_summary(model: nn.Module, trainable: str) -> pd.DataFrame:
    """Per stage: parameter count, how many train and how many stay frozen at this freeze depth."""
    table = parameter_table(model, trainable)
    rows = []
    for stage in STAGES:
        part = table[table.stage == stage]
        total = int(part.numel.sum())
        train = int(part[part.trainable].numel.sum())
        rows.append({"stage": stage, "params": total, "trainable": train, "frozen": total - train})
    summary = pd.DataFrame(rows)
    totals = {"stage": "total", "params": int(summary.params.sum()), "trainable": int(summary.trainable.sum()),
              "frozen": int(summary.frozen.sum())}
    return pd.concat([summary, pd.DataFrame([totals])], ignore_index=True)


def layer_tree(model: nn.Module, max_depth: int = 3) -> pd.DataFrame:
    """`named_modules()` down to `max_depth` levels: name, depth, type and parameter count."""
    rows = [{"name": "(model)", "depth": 0, "type": type(model).__name__,
             "params": sum(p.numel() for p in model.parameters())}]
    for name, module in model.named_modules():
        if not name:
            continue
        depth = name.count(".") + 1
        if depth > max_depth:
            continue
        rows.append({"name": name, "depth": depth, "type": type(module).__name__,
                     "params": sum(p.numel() for p in module.parameters())})
    return pd.DataFrame(rows, columns=["name", "depth", "type", "params"])


def layer_tree_text(model: nn.Module, max_depth: int = 2) -> str:
    """The layer tree as indented text, with parameter counts, for terminals and code blocks."""
    lines = []
    for row in layer_tree(model, max_depth).itertuples():
        label = row.name.rsplit(".", 1)[-1] if row.depth else type(model).__name__
        lines.append(f"{'  ' * row.depth}{label}: {row.type}  ({row.params:,} params)")
    return "\n".join(lines)


def stage_output_shapes(model: nn.Module, image_size: int) -> pd.DataFrame:
    """Output shape of each stage for one image of `image_size` pixels, read with forward hooks.

    Runs on the meta device, so it costs no compute and leaves the model untouched.
    """
    meta_model = _meta_copy(model)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [getattr(meta_model, name).register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name, _ in meta_model.named_children()]
    try:
        with torch.no_grad():
            meta_model.eval()(torch.empty(1, 3, image_size, image_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    rows = [{"module": "input", "stage": "input", "output_shape": f"1x3x{image_size}x{image_size}"}]
    rows += [{"module": name, "stage": stage_of(name), "output_shape": "x".join(map(str, shape))}
             for name, shape in shapes.items()]
    return pd.DataFrame(rows)


def _meta_copy(model: nn.Module) -> nn.Module:
    from torchvision.models import resnet50
    with torch.device("meta"):
        copy = resnet50(weights=None)
        copy.fc = nn.Linear(model.fc.in_features, model.fc.out_features)
    return copy
