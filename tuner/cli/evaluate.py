"""`tuner evaluate`: a checkpoint's metrics, confusion matrix and most confident mistakes."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from ..infer.evaluate import evaluate_checkpoint
from .render import progress_bar


def cmd_evaluate(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args.checkpoint, args.data, workdir=args.workdir, split=args.split,
                                 progress=progress_bar("evaluating"))
    if args.json:
        print(json.dumps({**result.to_dict(), "mistakes": result.mistakes(args.mistakes)}))
        return 0
    print(f"{args.split} accuracy {result.accuracy:.1%} on {len(result.labels)} images (loss {result.loss:.4f})\n")
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        print(result.report().to_string(index=False))
        print("\nConfusion matrix (rows: true, columns: predicted):")
        print(pd.DataFrame(result.confusion, index=result.classes, columns=result.classes).to_string())
    mistakes = result.mistakes(args.mistakes)
    if mistakes:
        print(f"\nMost confident mistakes ({len(mistakes)} of {len(result.mistakes())}):")
        for m in mistakes:
            print(f"  {m['path']}: true {m['true']}, predicted {m['predicted']} ({m['confidence']:.1%})")
    return 0
