"""The train flags, from one table (TRAIN_FLAGS) that both parses them and turns a config back into
the command that reproduces it (`command_for`), so the two cannot drift apart. Commands that read
data as training does take their data flags from it too (DOCTOR_FLAGS).

Light at import (no torch): `tuner --help` builds its parser from this table, and the studio shows
the command for its settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shlex
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
from ..data.exclusions import exclusion_lines, read_exclusions


@dataclass(frozen=True)
class Flag:
    flag: str
    field: str  # TrainConfig field, or "augment.<field>"
    type: Callable = str
    choices: Sequence[str] | None = None
    help: str = ""
    switch: bool = False  # boolean: --flag / --no-flag
    # The flag names an exclude file (data/exclusions.py) whose paths are the field's value (--exclude
    # FILE); `command_for` writes that file as part of the command.
    path_list: bool = False

    @property
    def dest(self) -> str:
        return self.field.replace(".", "__")


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
    Flag("--exclude", "exclude", path_list=True, help="leave out the images listed in FILE: one path inside the "
         "dataset folder per line (# starts a comment), as `tuner doctor --write-exclude` writes it (default: none)"),
]

# Config field -> the flag that sets it, for error messages (switches are never assigned in them).
FLAG_FOR_FIELD = {f.field.split(".")[-1]: f.flag for f in TRAIN_FLAGS if not f.switch and f.field != "augment.preset"}
FLAG_FOR_FIELD["top_k"] = "--top-k"  # predict's Predictor checks
TRAIN_FLAG = {f.flag: f for f in TRAIN_FLAGS}  # by name, for commands that share some of train's flags

# `tuner doctor` reads the data as training does: train's flags, with their meanings and defaults, and
# --out in the role it has there for the data (where a .zip is unpacked), which a check shares with a run.
DOCTOR_FLAGS = [
    TRAIN_FLAG["--data"],
    dataclasses.replace(TRAIN_FLAG["--out"], help="where a .zip given as --data is unpacked (OUT/datasets/), as "
                        "`train --out` unpacks it: give the --out of the run to come, and it reuses the unpacked "
                        "files and the features computed here; a folder dataset writes nothing there (default: "
                        f"{TrainConfig.out}, train's)"),
    *(TRAIN_FLAG[name] for name in ("--image-size", "--weights", "--val-ratio", "--seed", "--batch-size", "--device",
                                    "--cache-dir", "--cache-budget-mb")),
]


def add_train_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag] = TRAIN_FLAGS) -> None:
    for f in flags:
        # The parser's own default stays None, so that resume can tell a typed flag from an untyped one;
        # the help shows the config's default instead.
        default = _default_text(f)
        if "default" in f.help:  # the help says it in its own words
            help_text = f.help
        else:
            help_text = f"{f.help} (default: {default})" if f.help else f"default: {default}"
        if f.switch:
            parser.add_argument(f.flag, dest=f.dest, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            metavar = "FILE" if f.path_list else f.flag.lstrip("-").replace("-", "_").upper()
            parser.add_argument(f.flag, dest=f.dest, type=f.type, choices=f.choices, default=None, help=help_text,
                                metavar=None if f.choices else metavar)


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
    path_lists = {f.field for f in TRAIN_FLAGS if f.path_list}
    for field, value in typed_values(args).items():
        if field == "augment.preset":
            continue
        if field in path_lists:
            value = read_exclusions(value)
        if field.startswith("augment."):
            aug_changes[field.split(".", 1)[1]] = value
        else:
            setattr(config, field, value)
    if aug_changes:
        config.augment = config.augment.with_changes(**aug_changes)
    return config.validate()


def typed_values(args: argparse.Namespace, flags: Sequence[Flag] = TRAIN_FLAGS) -> dict[str, Any]:
    """Field -> value of each of these flags the user typed (the parser's own defaults are None)."""
    values = {f.field: getattr(args, f.dest, None) for f in flags}
    return {field: value for field, value in values.items() if value is not None}


def given_fields(args: argparse.Namespace) -> set[str]:
    """The TrainConfig fields the user typed a flag for (resume keeps the run's own values for the rest)."""
    return {field.split(".", 1)[0] for field in typed_values(args)}


# A path-list flag's file, as `command_for` writes it. Its delimiter cannot end the list early: an image
# path inside the dataset folder has a class folder before its name, so no line of it lacks a "/".
LIST_FILE_END = "END_OF_LIST"


def command_for(config: TrainConfig, launcher: str = "python -m tuner") -> str:
    """The `train` command that reproduces `config`: only settings that differ from the defaults.

    A config with exclusions leaves out images the command line cannot name one by one (the studio's
    can come from a data check, with no file behind them), so the command is preceded by a here-document
    that writes them to exclude-<hash>.txt, which `--exclude exclude-<hash>.txt` then reads: pasted into a POSIX shell
    it reproduces the run (on every node under torchrun, since each rank reads the file), and the list
    is in plain sight. Rendering only `--exclude FILE` would lose the list; paths inline are no flag.
    """
    default = TrainConfig()
    preset = config.augment.preset if config.augment.preset in AUGMENT_PRESETS else "light"
    base_aug = AugmentConfig.from_preset(preset)
    words = [*shlex.split(launcher), "train"]
    files: list[str] = []
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
        elif f.path_list:
            # Named by its content and written with noclobber: pasting the command never overwrites a
            # file of the user's, and a file already there under that name holds this same list.
            lines = [f"# The images the run leaves out, for {f.flag}: one path inside the dataset folder per line.",
                     *exclusion_lines(value)]
            name = f"{f.flag.lstrip('-')}-{hashlib.sha256(chr(10).join(lines).encode()).hexdigest()[:8]}.txt"
            files.append("\n".join([f"(set -C; cat > {name}) <<'{LIST_FILE_END}'", *lines, LIST_FILE_END]))
            words += [f.flag, name]
        else:
            words += [f.flag, str(value)]
    return "\n".join([*files, shlex.join(words)])


def uncovered_config_fields() -> list[str]:
    """TrainConfig fields that no train flag sets (a test keeps this empty)."""
    covered = {f.field.split(".")[0] for f in TRAIN_FLAGS}
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in covered]
