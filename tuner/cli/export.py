"""`tuner export`: writes each asked format and checks it against PyTorch."""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from ..export.pipeline import export_checkpoint
from ..export.verify import verdict
from .render import progress_bar


def cmd_export(args: argparse.Namespace) -> int:
    bar = progress_bar("exporting")
    report = export_checkpoint(args.checkpoint, args.format, args.out, data=args.data, benchmark=args.benchmark,
                               max_images=args.images, tensorrt_int8=args.trt_int8,
                               progress=(lambda done, total, label: bar(done, total)) if bar else None)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
        return 0 if all(row["passed"] is not False for row in report.verification) else 1
    with pd.option_context("display.width", 140, "display.max_colwidth", 60):
        print(f"Exported to {report.out_dir}:")
        for name, path in report.files.items():
            print(f"  {name:<16} {path.name}")
        print("\nVerification against PyTorch (max |logit difference|, top-1 agreement on validation images):")
        table = pd.DataFrame(report.verification)
        words = {"passed": "yes", "failed": "NO", "not built": "not built", "reported": "reported"}
        table["passed"] = [words[verdict(row)] for row in report.verification]  # INT8: reported, no pass/fail
        table = table.drop(columns="judged")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        if len(report.accuracy) > 1:
            print("\nAccuracy on the same images:")
            print(pd.DataFrame(report.accuracy).to_string(index=False, float_format=lambda v: f"{v:.1%}"))
        if report.speed:
            print("\nSpeed on this machine (measured side by side in this run):")
            print(pd.DataFrame(report.speed).to_string(index=False))
    for message in report.messages:
        print("\n" + message)
    failed = report.failed
    if failed:
        print(f"\nerror: {', '.join(failed)} did not match PyTorch (see the table); do not deploy it.", file=sys.stderr)
        return 1
    return 0
