"""`tuner inspect`: the model's weights, stages, parameters and output shapes."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from ..errors import TunerError
from ..model.resnet import build_model, freeze
from ..model.summary import (
    layer_tree_text,
    parameter_table,
    stage_output_shapes,
    stage_summary,
)
from ..model.weights import resolve_weights


def cmd_inspect(args: argparse.Namespace) -> int:
    if not 16 <= args.image_size <= 1024 or args.classes < 1:
        raise TunerError("inspect needs --image-size from 16 to 1024 and --classes of at least 1.")
    source = resolve_weights(args.weights, allow_download=not args.no_download)
    built = build_model(args.classes, source)
    freeze(built.model, args.trainable)
    summary = stage_summary(built.model, args.trainable)
    if args.json:
        print(json.dumps({"weights": source.to_dict(), "load_report": built.report.to_dict() if built.report else None,
                          "stages": summary.to_dict(orient="records"),
                          "output_shapes": stage_output_shapes(built.model, args.image_size).to_dict(orient="records"),
                          "parameters": parameter_table(built.model).to_dict(orient="records") if args.params else None}))
        return 0
    with pd.option_context("display.max_rows", None, "display.width", 120):
        print(f"Weights: {source.message}")
        if built.report:
            print(f"Loaded: {built.report.summary()}")
        print(f"\nFreeze depth trainable={args.trainable}:\n{summary.to_string(index=False)}")
        print(f"\nOutput shapes at {args.image_size} px:\n"
              f"{stage_output_shapes(built.model, args.image_size).to_string(index=False)}")
        if args.tree:
            print("\n" + layer_tree_text(built.model, max_depth=args.tree))
        if args.params:
            print("\n" + parameter_table(built.model).to_string(index=False))
    return 0
