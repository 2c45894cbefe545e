"""`python -m tuner inspect|train|evaluate|predict|export|bench`: the command line over the engine.

User errors (TunerError) print one line and exit with status 2; anything else is a bug and keeps
its traceback. Training flags come from one table (TRAIN_FLAGS) that both parses them and turns a
config back into the command that reproduces it (`command_for`), so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..config import (
    AMP_CHOICES,
    AUGMENT_PRESETS,
    BN_CHOICES,
    DEVICE_CHOICES,
    FEATURE_CACHE_CHOICES,
    IMBALANCE_CHOICES,
    OPTIMIZERS,
    SCHEDULERS,
    TRAINABLE_CHOICES,
    AugmentConfig,
    TrainConfig,
)
from ..errors import TunerError, rename_settings


@dataclass(frozen=True)
class Flag:
    flag: str
    field: str  # TrainConfig field, or "augment.<field>"
    type: Callable = str
    choices: Sequence[str] | None = None
    help: str = ""
    switch: bool = False  # boolean: --flag / --no-flag


TRAIN_FLAGS = [
    Flag("--data", "data", help="'demo', a folder of class sub-folders (or train/ and val/), or a .zip"),
    Flag("--out", "out", help="folder for last.pt, best.pt, history.csv, metrics.json"),
    Flag("--weights", "weights", help="'imagenet' (hub cache, else download), 'random', or a weights file"),
    Flag("--trainable", "trainable", choices=TRAINABLE_CHOICES, help="deepest stage that trains: head trains only fc; "
         "layer3 trains layer3, layer4 and fc; all trains everything"),
    Flag("--head-epochs", "head_epochs", int, help="two-stage recipe: train only the head for N epochs first"),
    Flag("--epochs", "epochs", int),
    Flag("--image-size", "image_size", int, help="pixels (224 standard; smaller is much faster on a CPU)"),
    Flag("--batch-size", "batch_size", int, help="images per step (the global batch under torchrun)"),
    Flag("--optimizer", "optimizer", choices=OPTIMIZERS),
    Flag("--lr", "lr", float, help="base learning rate for the head (default 0.001 for adamw/adam, 0.01 for sgd)"),
    Flag("--backbone-lr-mult", "backbone_lr_mult", float,
         help="backbone rate = lr x this (default 0.1 over pretrained weights, 1.0 over random ones)"),
    Flag("--momentum", "momentum", float),
    Flag("--weight-decay", "weight_decay", float),
    Flag("--scheduler", "scheduler", choices=SCHEDULERS),
    Flag("--warmup-epochs", "warmup_epochs", int),
    Flag("--step-size", "step_size", int, help="step scheduler: epochs between decays"),
    Flag("--gamma", "gamma", float, help="step scheduler: decay factor"),
    Flag("--label-smoothing", "label_smoothing", float),
    Flag("--early-stopping", "early_stopping", int, help="stop after N epochs without better val accuracy (0: off)"),
    Flag("--seed", "seed", int),
    Flag("--val-ratio", "val_ratio", float, help="share held out for validation when there is no val/ folder"),
    Flag("--imbalance", "imbalance", choices=IMBALANCE_CHOICES,
         help="sampler: class-balanced batches; loss: class-weighted loss"),
    Flag("--bn", "bn", choices=BN_CHOICES, help="BatchNorm in frozen stages: keep statistics (frozen) or update"),
    Flag("--augment", "augment.preset", choices=AUGMENT_PRESETS, help="augmentation preset; the switches below "
         "change single settings on top of it"),
    Flag("--crop", "augment.random_resized_crop", switch=True, help="random resized crop"),
    Flag("--crop-scale-min", "augment.crop_scale_min", float),
    Flag("--flip", "augment.hflip", switch=True, help="random horizontal flip"),
    Flag("--rotation", "augment.rotation", float, help="degrees"),
    Flag("--translate", "augment.translate", float, help="share of the image"),
    Flag("--scale", "augment.scale", float, help="zoom range, 1 +/- this"),
    Flag("--color-jitter", "augment.color_jitter", float),
    Flag("--noise", "augment.noise_std", float, help="Gaussian noise sigma (0..1 image scale)"),
    Flag("--randaugment", "augment.randaugment", switch=True),
    Flag("--device", "device", choices=DEVICE_CHOICES),
    Flag("--amp", "amp", choices=AMP_CHOICES, help="mixed precision (auto: bf16/fp16 on CUDA, off on CPU)"),
    Flag("--workers", "num_workers", int, help="data loader processes (-1: choose for this machine)"),
    Flag("--feature-cache", "feature_cache", choices=FEATURE_CACHE_CHOICES,
         help="reuse frozen-backbone outputs across epochs"),
    Flag("--cache-views", "cache_views", int, help="augmented views per image in the feature cache"),
    Flag("--cache-dir", "cache_dir", help="where feature caches live (default: $TUNER_HOME/features, i.e. "
         "~/.cache/tuner/features)"),
    Flag("--cache-budget-mb", "cache_budget_mb", int, help="largest feature cache kept in memory (the head-only "
         "features, or a partly frozen backbone's), in MB"),
    Flag("--channels-last", "channels_last", choices=("auto", "on", "off"),
         help="NHWC memory format (auto: on for CUDA; on a CPU, measured once per machine and image size)"),
    Flag("--compile", "compile", switch=True, help="torch.compile the model (GPU, long runs; needs a C/C++ compiler)"),
    Flag("--sync-bn", "sync_bn", switch=True, help="under torchrun: synchronise BatchNorm across ranks"),
]

# Config field -> the flag that sets it, for error messages (switches are never assigned in them).
FLAG_FOR_FIELD = {f.field.split(".")[-1]: f.flag for f in TRAIN_FLAGS if not f.switch and f.field != "augment.preset"}
FLAG_FOR_FIELD["top_k"] = "--top-k"  # predict's Predictor checks


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    for f in TRAIN_FLAGS:
        dest = f.field.replace(".", "__")
        # The parser's own default stays None, so that resume can tell a typed flag from an untyped one;
        # the help shows the config's default instead.
        default = _default_text(f)
        if "default" in f.help:  # the help says it in its own words
            help_text = f.help
        else:
            help_text = f"{f.help} (default: {default})" if f.help else f"default: {default}"
        if f.switch:
            parser.add_argument(f.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(f.flag, dest=dest, type=f.type, choices=f.choices, default=None, help=help_text,
                                metavar=None if f.choices else f.flag.lstrip("-").replace("-", "_").upper())


def _default_text(f: Flag) -> str:
    if f.field.startswith("augment.") and f.field != "augment.preset":
        return "set by --augment"
    defaults = TrainConfig()
    value = defaults.augment.preset if f.field == "augment.preset" else getattr(defaults, f.field)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "auto" if value is None else str(value)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the augmentation preset, then every flag given on top."""
    preset = getattr(args, "augment__preset", None)
    config = TrainConfig(augment=AugmentConfig.from_preset(preset) if preset else AugmentConfig())
    aug_changes: dict[str, Any] = {}
    for f in TRAIN_FLAGS:
        value = getattr(args, f.field.replace(".", "__"), None)
        if value is None or f.field == "augment.preset":
            continue
        if f.field.startswith("augment."):
            aug_changes[f.field.split(".", 1)[1]] = value
        else:
            setattr(config, f.field, value)
    if aug_changes:
        config.augment = config.augment.with_changes(**aug_changes)
    return config.validate()


def given_fields(args: argparse.Namespace) -> set[str]:
    """The TrainConfig fields the user typed a flag for (resume keeps the run's own values for the rest)."""
    given = set()
    for f in TRAIN_FLAGS:
        if getattr(args, f.field.replace(".", "__"), None) is not None:
            given.add(f.field.split(".", 1)[0])
    return given


def command_for(config: TrainConfig, launcher: str = "python -m tuner") -> str:
    """The `train` command that reproduces `config`: only settings that differ from the defaults."""
    default = TrainConfig()
    preset = config.augment.preset if config.augment.preset in AUGMENT_PRESETS else "light"
    base_aug = AugmentConfig.from_preset(preset)
    words = [*shlex.split(launcher), "train"]
    for f in TRAIN_FLAGS:
        if f.field == "augment.preset":
            if preset != default.augment.preset:
                words += [f.flag, preset]
            continue
        if f.field.startswith("augment."):
            name = f.field.split(".", 1)[1]
            value, base = getattr(config.augment, name), getattr(base_aug, name)
        else:
            value, base = getattr(config, f.field), getattr(default, f.field)
        if value == base or (value is None):
            continue
        if f.switch:
            words.append(f.flag if value else "--no-" + f.flag[2:])
        else:
            words += [f.flag, str(value)]
    return shlex.join(words)


# ---- rendering events ----------------------------------------------------------------------------

def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def progress_bar(label: str, stream=None) -> Callable[[int, int], None] | None:
    """A progress(done, total) callback that redraws one line on a terminal (None elsewhere)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None

    def show(done: int, total: int) -> None:
        stream.write(f"\r\033[K{label} {_bar(done, total)}" + ("\n" if done >= total else ""))
        stream.flush()
    return show


class ConsoleRenderer:
    """Prints training events: a one-line progress bar on a terminal, one line per epoch always."""

    def __init__(self, stream=None, as_json: bool = False):
        self.stream = stream or sys.stderr  # looked up now, not at import: callers may redirect it
        self.as_json = as_json
        self.tty = self.stream.isatty()
        self.bar_shown = False

    def _line(self, text: str) -> None:
        if self.bar_shown:
            self.stream.write("\r\033[K")
            self.bar_shown = False
        print(text, file=self.stream, flush=True)

    def __call__(self, event) -> None:
        name = type(event).__name__
        if self.as_json:
            if name != "Progress":
                print(json.dumps(event.to_dict(), default=str), flush=True)
            return
        if name == "Progress":
            if self.tty:
                from ..events import (
                    PHASES,  # imported when a run renders, so `--help` stays light
                )

                label = PHASES.get(event.phase, event.phase)
                extra = f" loss {event.loss:.3f} acc {event.acc:.1%}" if event.loss is not None else ""
                epoch = f"epoch {event.epoch} " if event.epoch else ""
                self.stream.write(f"\r\033[K{epoch}{label} {_bar(event.step, event.steps)}{extra}")
                self.stream.flush()
                self.bar_shown = True
        elif name == "RunStarted":
            where = f" (resuming at epoch {event.start_epoch + 1}, batch {event.start_batch})" if event.start_epoch or \
                event.start_batch else ""
            self._line(f"Training on {event.num_train} images ({event.num_val} for validation), "
                       f"{len(event.classes)} classes: {', '.join(event.classes)}{where}")
            weights = f"{event.weights['message']} ({event.weights_report})" if event.weights["pretrained"] else \
                "random initialisation (see the warning below)"
            self._line(f"Device: {event.device}. Weights: {weights}.")
        elif name == "Message":  # the engine names settings by field; here the user typed flags
            self._line(("warning: " if event.level == "warning" else "") + rename_settings(event.text, FLAG_FOR_FIELD))
        elif name == "StageStarted":
            self._line(f"Epoch {event.epoch}: training {event.trainable_params:,} of {event.total_params:,} parameters "
                       + rename_settings(f"(trainable={event.trainable}); {event.fast_path}.", FLAG_FOR_FIELD))
        elif name == "EpochEnd":
            self._line(f"epoch {event.epoch}/{event.epochs}  train loss {event.train_loss:.4f} acc {event.train_acc:.1%}"
                       f"  val loss {event.val_loss:.4f} acc {event.val_acc:.1%}  lr {event.lr:.3g}  "
                       f"{event.seconds:.1f}s{'  *best' if event.improved else ''}")
        elif name == "Finished":
            epochs = f"{event.epochs_done} epoch{'' if event.epochs_done == 1 else 's'}"
            best = (f"best val accuracy {event.best_val_acc:.1%} (epoch {event.best_epoch})" if event.best_epoch
                    else "no epoch validated yet")
            self._line(f"{event.status.replace('_', ' ').capitalize()} after {epochs}; {best}. "
                       f"Checkpoint: {event.checkpoint}")


# ---- commands ------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from ..runtime.setup import world_from_env
    from ..train.run import train

    config = config_from_args(args)
    stop = threading.Event()

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly with a checkpoint; second: abort
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nStopping after this batch (Ctrl-C again to abort)...", file=sys.stderr, flush=True)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    render = ConsoleRenderer(as_json=args.json)
    is_main = world_from_env()[0] == 0
    status = "completed"
    try:
        for event in train(config, stop=stop, resume=args.resume, overwrite=args.overwrite,
                           given=given_fields(args)):
            if is_main:
                render(event)
            status = getattr(event, "status", status)
    finally:
        if in_main_thread:  # main() may be called in-process: Ctrl-C must work as before once training ends
            signal.signal(signal.SIGINT, previous)
    return 0 if status != "stopped" else 130


def cmd_inspect(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..model.resnet import build_model, freeze
    from ..model.summary import (
        layer_tree_text,
        parameter_table,
        stage_output_shapes,
        stage_summary,
    )
    from ..model.weights import resolve_weights

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..infer.evaluate import evaluate_checkpoint

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


def cmd_predict(args: argparse.Namespace) -> int:
    from ..infer.predict import Predictor

    if bool(args.checkpoint) == bool(args.imagenet):
        raise TunerError("Give either --checkpoint FILE (your fine-tuned model) or --imagenet (the base model).")
    predictor = Predictor.from_checkpoint(args.checkpoint) if args.checkpoint else Predictor.imagenet(args.weights)
    predictions, unreadable = predictor.predict_readable(args.images, top_k=args.top_k,
                                                         progress=progress_bar("predicting"))
    for prediction in predictions:
        if args.json:
            print(json.dumps(prediction.to_dict()))
        else:
            ranked = ", ".join(f"{label} {prob:.1%}" for label, prob in prediction.top_k)
            print(f"{prediction.image}: {ranked}")
    for reason in unreadable:  # the other files are answered; the exit status says some were not
        print(f"skipped: {reason}", file=sys.stderr)
    return 1 if unreadable else 0


def cmd_export(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..export.pipeline import export_checkpoint
    from ..export.verify import verdict

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


def count(text: str) -> int:
    """argparse type for a number of things: a whole number, 0 or more."""
    value = int(text)  # argparse turns the ValueError into "invalid count value"
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: use 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuner", description="Fine-tune a pretrained ResNet50 on your "
                                     "own images: one sub-folder per class.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune on a dataset", description="Fine-tune ResNet50. Writes OUT/last.pt, "
                       "OUT/best.pt, OUT/history.csv and OUT/metrics.json. Ctrl-C stops cleanly with a checkpoint.")
    add_train_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out folder that holds a run")
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    p.set_defaults(func=cmd_train)

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
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("evaluate", help="metrics, confusion matrix and mistakes of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split to evaluate (default: val)")
    p.add_argument("--mistakes", type=count, default=10, help="how many mistakes to list, most confident first (default: 10; 0: none)")
    p.add_argument("--workdir", help="where a .zip dataset is extracted (default: the checkpoint's folder)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k labels for images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", help="a fine-tuned checkpoint (best.pt)")
    p.add_argument("--imagenet", action="store_true", help="use the base ImageNet model instead")
    p.add_argument("--weights", default="imagenet", help="with --imagenet: the weights file")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default: 5)")
    p.add_argument("--json", action="store_true", help='one JSON line per image: {"image", "top_k": [{"label", "prob"}]}')
    p.set_defaults(func=cmd_predict)

    from ..export.formats import DEFAULT_FORMATS, FORMAT_NAMES  # the format table imports no torch

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
    p.set_defaults(func=cmd_export)

    from ..bench.suite import (  # stdlib-only at import: --help stays fast
        add_arguments as add_bench_arguments,
    )
    from ..bench.suite import cmd_bench

    p = sub.add_parser("bench", help="measure tuner's fast paths against plain PyTorch loops on this machine",
                       description="Measure tuner's fast paths against plain PyTorch loops, side by side on this "
                       "machine: prints a Markdown table and writes a JSON report.")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
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


def uncovered_config_fields() -> list[str]:
    """TrainConfig fields that no train flag sets (a test keeps this empty)."""
    covered = {f.field.split(".")[0] for f in TRAIN_FLAGS}
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in covered]
