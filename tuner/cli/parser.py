"""`tuner inspect|train|doctor|evaluate|predict|export|bench` (also `python -m tuner`): the parser, and the
table that runs each sub-command.

User errors (TunerError) print one line and exit with status 2; anything else is a bug and keeps
its traceback.

`tuner --help` stays light (no torch, no pandas): this module imports only the flag table and the
bench's arguments, and COMMANDS names the module that runs each sub-command, imported only when that
sub-command runs. That table is the one place where tuner's own modules are imported by name.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from ..bench.settings import add_arguments as add_bench_arguments
from ..config import TRAINABLE_CHOICES
from ..errors import TunerError, rename_settings
from ..export.formats import (  # the format table imports no torch
    DEFAULT_FORMATS,
    FORMAT_NAMES,
)
from .flags import DOCTOR_FLAGS, FLAG_FOR_FIELD, add_train_flags

# Sub-command -> "module:function" that runs it with the parsed arguments and returns the exit status.
COMMANDS = {
    "train": "tuner.cli.train:cmd_train",
    "inspect": "tuner.cli.inspect:cmd_inspect",
    "evaluate": "tuner.cli.evaluate:cmd_evaluate",
    "predict": "tuner.cli.predict:cmd_predict",
    "export": "tuner.cli.export:cmd_export",
    "doctor": "tuner.cli.doctor:cmd_doctor",
    "bench": "tuner.bench.suite:cmd_bench",
}


def run(args: argparse.Namespace) -> int:
    """Import the module that runs `args.command` and run it."""
    module, function = COMMANDS[args.command].split(":")
    return getattr(importlib.import_module(module), function)(args)


def count(text: str) -> int:
    """argparse type for a number of things: a whole number, 0 or more."""
    value = int(text)  # argparse turns the ValueError into "invalid count value"
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: use 0 or more")
    return value


def program_name() -> str:
    """How the user started tuner, for usage lines: the installed `tuner` command or `python -m tuner`."""
    return "tuner" if os.path.basename(sys.argv[0]) == "tuner" else "python -m tuner"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(), description="Fine-tune a pretrained ResNet50 on your "
                                     "own images: one sub-folder per class.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune on a dataset", description="Fine-tune ResNet50. Writes OUT/last.pt, "
                       "OUT/best.pt, OUT/history.csv and OUT/metrics.json. Ctrl-C stops cleanly with a checkpoint.")
    add_train_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out folder that holds a run")
    p.add_argument("--json", action="store_true", help="print events as JSON lines")

    p = sub.add_parser("doctor", help="check a dataset before training: duplicates, leaks, bad images, labels",
                       description="Check a dataset before it costs a training run: duplicates, label conflicts and "
                       "train/val leaks, blank, tiny, dark or blurry images, class balance, and with pretrained "
                       "weights near duplicates, outliers and likely wrong labels. Prints the findings, "
                       "problems first, each with its fix; reads the data as `train` does, and changes none of "
                       "it. Ctrl-C stops the check and prints what was found so far.")
    add_train_flags(p, DOCTOR_FLAGS)
    p.add_argument("--exclude", metavar="FILE", help="check the data without the images listed in FILE (one path "
                   "inside the dataset folder per line; # starts a comment), as --write-exclude writes it")
    p.add_argument("--write-exclude", metavar="FILE", help="write the images flagged as problems (and those left out "
                   "by --exclude) to FILE, a new file, for --exclude")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

    p = sub.add_parser("inspect", help="show the model: weights, stages, parameters, shapes")
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'random', or a weights file (default: imagenet)")
    p.add_argument("--trainable", default="head", choices=TRAINABLE_CHOICES,
                   help="freeze depth whose trainable/frozen counts to show (default: head)")
    p.add_argument("--classes", type=int, default=1000,
                   help="classes of the new head: give your dataset's count for its parameter numbers (default: 1000)")
    p.add_argument("--image-size", type=int, default=224, help="input size for the output shapes (default: 224)")
    p.add_argument("--tree", type=count, nargs="?", const=2, default=0, metavar="DEPTH", help="print the layer tree")
    p.add_argument("--params", action="store_true", help="print every named_parameters() entry")
    p.add_argument("--no-download", action="store_true", help="never download weights")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    p = sub.add_parser("evaluate", help="metrics, confusion matrix and mistakes of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split to evaluate (default: val)")
    p.add_argument("--mistakes", type=count, default=10, help="how many mistakes to list, most confident first (default: 10; 0: none)")
    p.add_argument("--workdir", help="where a .zip dataset is extracted (default: the checkpoint's folder)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    p = sub.add_parser("predict", help="top-k labels for images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", help="a fine-tuned checkpoint (best.pt)")
    p.add_argument("--imagenet", action="store_true", help="use the base ImageNet model instead")
    p.add_argument("--weights", default="imagenet", help="with --imagenet: the weights file")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default: 5)")
    p.add_argument("--json", action="store_true", help='one JSON line per image: {"image", "top_k": [{"label", "prob"}]}')

    p = sub.add_parser("export", help="write .pth/.safetensors/ONNX/INT8 ONNX/TensorRT, each checked against PyTorch",
                       description="Export a fine-tuned checkpoint. Each format is run on validation images and "
                       "compared with the PyTorch model (largest logit difference, top-1 agreement).")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned checkpoint (best.pt)")
    p.add_argument("--format", default=",".join(DEFAULT_FORMATS), help=f"comma-separated: {','.join(FORMAT_NAMES)} "
                   f"(default: {','.join(DEFAULT_FORMATS)})")
    p.add_argument("--out", required=True, help="folder for the exported files")
    p.add_argument("--data", help="dataset for verification and INT8 calibration (default: the checkpoint's own)")
    p.add_argument("--images", type=int, default=64, help="validation images used to verify each format "
                   "(1 to 1000; default: 64)")
    p.add_argument("--benchmark", action="store_true", help="time each format against PyTorch eager on the same device")
    p.add_argument("--trt-int8", action="store_true", help="TensorRT: allow INT8 layers too, calibrated on your "
                   "training images (default: FP16); like INT8 ONNX, its agreement is reported, not required")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

    p = sub.add_parser("bench", help="measure tuner's fast paths against plain PyTorch loops on this machine",
                       description="Measure tuner's fast paths against plain PyTorch loops, side by side on this "
                       "machine: prints a Markdown table and writes a JSON report.")
    add_bench_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = run(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the try, rather than at interpreter exit
        return code
    except TunerError as exc:
        # Config and predictor checks name fields (top_k=0); here the user typed flags (--top-k=0).
        print(f"error: {rename_settings(str(exc), FLAG_FOR_FIELD)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly as Unix tools do, and point stdout at
        # /dev/null so that flushing it at exit raises nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe ended
