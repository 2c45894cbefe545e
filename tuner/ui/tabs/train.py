"""Train tab: every training setting, grouped; Start, Stop and Resume; live curves, progress and log;
and the exact CLI command (plain and under torchrun) for the current settings."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator

import gradio as gr
import torch

from ...cli.flags import command_for
from ...config import (
    AMP_CHOICES,
    AUGMENT_PRESETS,
    DEVICE_CHOICES,
    FEATURE_CACHE_CHOICES,
    IMBALANCE_CHOICES,
    OPTIMIZERS,
    SCHEDULERS,
    AugmentConfig,
    TrainConfig,
)
from ...errors import TunerError
from ...events import PHASES, EpochEnd, Finished, Progress, RunStarted, describe
from ...train import read_history, train
from ..common import HEAVY, LIGHT, Studio, user_facing
from ..plots import training_curves
from .model import TRAINABLE_RADIO_CHOICES

AUGMENT_FIELDS = [f.name for f in dataclasses.fields(AugmentConfig) if f.name != "preset"]
UPDATE_EVERY_S = 0.5  # progress redraws at most this often (every batch would flood slow browsers)
LOG_LINES = 200


def cpu_defaults() -> dict[str, Any]:
    """Defaults for this machine: on a CPU, smaller images keep an epoch of the demo set to seconds."""
    on_gpu = torch.cuda.is_available()
    return {"image_size": 224 if on_gpu else 128, "batch_size": 64 if on_gpu else 32}


class TrainForm:
    """The widgets that make one TrainConfig. Built once; every handler turns widget values into a
    config through `config()`, so the mapping lives in one place."""

    def __init__(self, trainable: gr.Radio):
        defaults, machine = TrainConfig(), cpu_defaults()
        aug = AugmentConfig.from_preset("light")
        self.fields: dict[str, gr.components.Component] = {"trainable": trainable}
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Run**")
                self.fields["epochs"] = gr.Slider(1, 100, value=5, step=1, label="Epochs")
                self.fields["image_size"] = gr.Slider(32, 512, value=machine["image_size"], step=16,
                                                      label="Image size (px)", info="224 is standard; smaller is "
                                                      "much faster on a CPU")
                self.fields["batch_size"] = gr.Slider(2, 256, value=machine["batch_size"], step=2, label="Batch size")
                self.fields["seed"] = gr.Number(value=0, precision=0, label="Seed")
                self.fields["early_stopping"] = gr.Number(value=0, precision=0, minimum=0,
                                                          label="Early stopping patience (epochs, 0 = off)")
            with gr.Column():
                gr.Markdown("**Freezing**")
                self.fields["trainable_mirror"] = gr.Radio(TRAINABLE_RADIO_CHOICES, value="head",
                                                           label="Train from this stage down (same as Model tab)",
                                                           elem_id="train-trainable")
                self.fields["head_epochs"] = gr.Number(value=0, precision=0, minimum=0, label="Two-stage recipe: "
                                                       "head-only epochs first (0 = off)")
                self.fields["bn"] = gr.Radio([("keep ImageNet statistics", "frozen"), ("update them", "train")],
                                             value="frozen", label="BatchNorm in frozen stages")
                self.fields["imbalance"] = gr.Radio(list(IMBALANCE_CHOICES), value="none",
                                                    label="Class imbalance", info="sampler: balanced batches; "
                                                    "loss: class-weighted loss")
            with gr.Column():
                gr.Markdown("**Optimisation**")
                self.fields["optimizer"] = gr.Radio(list(OPTIMIZERS), value=defaults.optimizer, label="Optimizer")
                self.fields["lr"] = gr.Dropdown(["auto", "0.1", "0.01", "0.001", "0.0001"], value="auto",
                                                allow_custom_value=True, label="Learning rate (head)",
                                                info="auto: 0.001 for adam/adamw, 0.01 for sgd; or type a value")
                self.fields["backbone_lr_mult"] = gr.Dropdown(["auto", "1.0", "0.1", "0.01"], value="auto",
                                                              allow_custom_value=True, label="Backbone rate multiplier",
                                                              info="unfrozen stages learn at lr x this; auto: 0.1 "
                                                              "over pretrained weights, 1.0 over random ones")
                self.fields["scheduler"] = gr.Radio(list(SCHEDULERS), value=defaults.scheduler, label="Scheduler")
                self.fields["warmup_epochs"] = gr.Number(value=0, precision=0, minimum=0, label="Warm-up epochs")
                self.fields["label_smoothing"] = gr.Slider(0, 0.3, value=0, step=0.05, label="Label smoothing")
                self.fields["weight_decay"] = gr.Number(value=defaults.weight_decay, label="Weight decay")
        with gr.Accordion("Augmentation (see the result in the Data tab)", open=False):
            with gr.Row():
                self.fields["augment_preset"] = gr.Radio(list(AUGMENT_PRESETS), value="light", label="Preset")
                self.fields["random_resized_crop"] = gr.Checkbox(aug.random_resized_crop, label="Random resized crop")
                self.fields["crop_scale_min"] = gr.Slider(0.05, 1.0, value=aug.crop_scale_min, step=0.05,
                                                          label="Smallest crop (share of image)")
                self.fields["hflip"] = gr.Checkbox(aug.hflip, label="Horizontal flip")
                self.fields["randaugment"] = gr.Checkbox(aug.randaugment, label="RandAugment")
            with gr.Row():
                self.fields["rotation"] = gr.Slider(0, 45, value=aug.rotation, step=1, label="Rotation (+/- degrees)")
                self.fields["translate"] = gr.Slider(0, 0.3, value=aug.translate, step=0.01, label="Translation (share)")
                self.fields["scale"] = gr.Slider(0, 0.3, value=aug.scale, step=0.01, label="Scale (+/- share)")
                self.fields["color_jitter"] = gr.Slider(0, 0.5, value=aug.color_jitter, step=0.05, label="Colour jitter")
                self.fields["noise_std"] = gr.Slider(0, 0.2, value=aug.noise_std, step=0.01, label="Gaussian noise (sigma)")
        with gr.Accordion("Advanced: optimizer details, device and speed", open=False):
            with gr.Row():
                self.fields["momentum"] = gr.Number(value=defaults.momentum, label="SGD momentum")
                self.fields["step_size"] = gr.Number(value=defaults.step_size, precision=0, minimum=1,
                                                     label="Step scheduler: epochs between decays")
                self.fields["gamma"] = gr.Number(value=defaults.gamma, label="Step scheduler: decay factor")
                self.fields["device"] = gr.Radio(list(DEVICE_CHOICES), value=defaults.device, label="Device")
                self.fields["amp"] = gr.Radio(list(AMP_CHOICES), value=defaults.amp, label="Mixed precision")
            with gr.Row():
                self.fields["feature_cache"] = gr.Radio(list(FEATURE_CACHE_CHOICES), value=defaults.feature_cache,
                                                        label="Frozen-backbone feature cache",
                                                        info="auto: compute frozen features once (same results)")
                self.fields["cache_views"] = gr.Number(value=defaults.cache_views, precision=0, minimum=1,
                                                       label="Augmented views cached per image")
                self.fields["channels_last"] = gr.Radio(["auto", "on", "off"], value=defaults.channels_last,
                                                        label="channels_last memory format",
                                                        info="auto: on for GPUs; on CPUs measured once per machine")
                self.fields["compile"] = gr.Checkbox(defaults.compile, label="torch.compile (GPU, long runs)")

    # The Model tab's radio is the single source of the freeze depth; the mirror here follows it.
    def inputs(self) -> dict[str, gr.components.Component]:
        return {name: c for name, c in self.fields.items() if name != "trainable_mirror"}

    def preview_inputs(self) -> dict[str, gr.components.Component]:
        """What the augmentation preview depends on."""
        keep = {"augment_preset", "image_size", "seed", *AUGMENT_FIELDS}
        return {name: c for name, c in self.fields.items() if name in keep}

    def config(self, values: dict[str, Any], **overrides: Any) -> TrainConfig:
        """Widget values (by field name) -> one validated TrainConfig."""
        values = {k: v for k, v in values.items() if k in self.fields}
        preset = values.pop("augment_preset", "light")
        switches = {name: values.pop(name) for name in AUGMENT_FIELDS if name in values}
        augment = AugmentConfig.from_preset(preset).with_changes(**switches) if switches else \
            AugmentConfig.from_preset(preset)
        ints = {"epochs", "image_size", "batch_size", "seed", "early_stopping", "head_epochs", "warmup_epochs",
                "step_size", "cache_views"}
        plain = {}
        for name in ("lr", "backbone_lr_mult"):  # "auto": the engine's default for the situation
            value = str(values.pop(name, "auto") or "auto").strip()
            if value != "auto":
                try:
                    plain[name] = float(value)
                except ValueError:
                    raise TunerError(f"'{self.fields[name].label}' {value!r} is not a number: type e.g. 0.001, "
                                     "or choose auto.") from None
        for name, value in values.items():
            if value is None or value == "":
                raise TunerError(f"The setting '{self.fields[name].label}' is empty: give it a value.")
            plain[name] = int(value) if name in ints else value
        plain.update(overrides)
        return TrainConfig(augment=augment, **plain).validate()

    def preset_values(self, preset: str) -> list[Any]:
        aug = AugmentConfig.from_preset(preset)
        return [getattr(aug, name) for name in AUGMENT_FIELDS]


def settings_text(config: TrainConfig) -> str:
    """A run's settings as the flags of `python -m tuner train`, those that differ from the defaults (the data,
    output folder, weights and left-out images are said elsewhere in the log)."""
    default = TrainConfig()
    shown = dataclasses.replace(config, data=default.data, out=default.out, weights=default.weights,
                                exclude=default.exclude)
    flags = command_for(shown).removeprefix("python -m tuner train").strip()
    return flags or "the defaults"


def progress_html(label: str, done: int, total: int) -> str:
    share = 0 if not total else min(1.0, done / total)
    return (f"<div class='tuner-progress'><div class='tuner-progress-label'>{label}</div>"
            f"<div class='tuner-progress-track'><div class='tuner-progress-fill' style='width:{share:.1%}'>"
            f"</div></div></div>")


def build(studio: Studio, trainable: gr.Radio) -> dict:
    act = user_facing(studio)
    gr.Markdown("Defaults suit a CPU: the head trains on cached backbone features in seconds. Stop is honoured "
                "within one batch and leaves a checkpoint; Resume continues the last run (raise Epochs to train "
                "longer).")
    # Controls and live results first (visible without scrolling while a run goes), settings below.
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        resume = gr.Button("Resume", elem_id="train-resume")
    # The page loads the demo set by itself, so the first words must not ask the user to load data.
    status = gr.HTML(progress_html("Not started: press Start to train on the images in the Data tab "
                                   "(the built-in demo set until you load your own)", 0, 1), elem_id="train-status")
    with gr.Row():
        curves = gr.Plot(show_label=False, elem_id="train-curves", scale=3)  # subplot titles name the charts
        with gr.Column(scale=2):
            log = gr.Textbox(label="Log", lines=9, max_lines=9, autoscroll=True, elem_id="train-log")
            checkpoint = gr.File(label="Checkpoint (best.pt)", elem_id="train-checkpoint", height=90)
    form = TrainForm(trainable)
    studio.label_settings({"trainable": trainable}, "Model")  # the freeze depth is chosen there
    studio.label_settings(form.fields, "Train")
    with gr.Accordion("Same run from the command line", open=False):
        command = gr.Code(language="shell", label="One machine", elem_id="train-command")
        torchrun = gr.Code(language="shell", label="Several GPUs (torchrun, DistributedDataParallel)",
                           elem_id="torchrun-command")

    # ---- freeze depth: one value, shown in two tabs -----------------------------------------------
    trainable.change(lambda v: v, trainable, form.fields["trainable_mirror"], api_name=False, queue=False,
                     show_progress="hidden")
    form.fields["trainable_mirror"].input(lambda v: v, form.fields["trainable_mirror"], trainable, api_name=False,
                                          queue=False, show_progress="hidden")
    switches = [form.fields[name] for name in AUGMENT_FIELDS]
    form.fields["augment_preset"].input(form.preset_values, form.fields["augment_preset"], switches, api_name=False,
                                        queue=False, show_progress="hidden")

    def run_events(workspace, config: TrainConfig, resume_run: bool) -> Iterator[tuple]:
        """Drive the engine's training generator and render its events."""
        lines: list[str] = []
        history: list[dict] = []
        last_draw = 0.0
        label, done, total = "Starting", 0, 1

        def render(force_plot: bool = False):
            return (progress_html(label, done, total), training_curves(history) if force_plot else gr.skip(),
                    "\n".join(lines[-LOG_LINES:]), gr.skip())

        def say(text: str) -> None:
            lines.append(studio.public(text, workspace))

        # Every widget's value counts as given: on resume the engine takes those that may change (epochs, ...)
        # and names each other one the user changed as ignored, rather than dropping it without a word.
        events = train(config, stop=workspace.stop, resume=resume_run)
        for event in events:
            if isinstance(event, Progress):
                when = f"epoch {event.epoch}/{config.epochs}, " if event.epoch else ""  # 0: before the first
                label = f"{PHASES.get(event.phase, event.phase)}: {when}step {event.step}/{event.steps}"
                done, total = event.step, event.steps
                if time.monotonic() - last_draw >= UPDATE_EVERY_S:
                    last_draw = time.monotonic()
                    yield render()
                continue
            text = describe(event, "log", resumed=resume_run)
            if isinstance(event, RunStarted):
                history = list(workspace.history_before) if resume_run else []
                heading, *more = text.split("\n")
                say(heading)
                if not resume_run:  # the values this run uses, whatever a widget shows (e.g. a number out of range)
                    say(f"Settings: {settings_text(config)}.")
                for line in more:
                    say(line)
            elif isinstance(event, EpochEnd):
                history.append(event.row())
                say(text)
                label, done, total = f"Epoch {event.epoch}/{event.epochs} done", event.epoch, event.epochs
                yield render(force_plot=True)
                continue
            elif isinstance(event, Finished):
                label = text
                say(label + ". Checkpoint kept: press Resume to continue.")
                done, total = 1, 1
                best = workspace.checkpoint("best")
                yield (progress_html(label, done, total), training_curves(history), "\n".join(lines[-LOG_LINES:]),
                       str(workspace.own(best)) if best else None)  # only this session's files leave
                return
            elif text is None:  # CheckpointSaved: the last line names the checkpoint
                continue
            else:
                say(text)
            yield render()

    def settings_for(values: dict, val_ratio: float, workspace, out: str) -> TrainConfig:
        if not workspace.data_source:
            raise TunerError("No data loaded yet: open the Data tab and press Load data (the demo set works offline).")
        # The images the Data tab's check left out (TrainConfig.exclude); given only when there are some.
        exclude = {"exclude": list(workspace.exclude)} if workspace.exclude else {}
        return form.config(values, data=workspace.data_source, out=out, weights=workspace.weights,
                           val_ratio=float(val_ratio), **exclude)

    def stopped_while_queued(verb: str) -> tuple:
        """The outputs of a Start/Resume that Stop cancelled while it waited for a free slot."""
        return progress_html(f"Stopped before it {verb} (it was waiting for a free slot)", 0, 1), \
            gr.skip(), gr.skip(), gr.skip()

    @act
    def start_training(val_ratio: float, request: gr.Request, **values):
        workspace = studio.workspace(request)
        with workspace.job(queued=True):
            if not workspace.begin_queued_start():
                yield stopped_while_queued("started")
                return
            config = settings_for(values, val_ratio, workspace, str(workspace.new_run_dir()))
            workspace.history_before = []
            yield from run_events(workspace, config, resume_run=False)

    @act
    def resume_training(val_ratio: float, request: gr.Request, **values):
        workspace = studio.workspace(request)
        with workspace.job(queued=True):
            if not workspace.begin_queued_start():
                yield stopped_while_queued("resumed")
                return
            if workspace.run_dir is None or not (workspace.run_dir / "last.pt").is_file():
                raise TunerError("Nothing to resume yet: start a training run first (Resume continues the last one).")
            config = settings_for(values, val_ratio, workspace, str(workspace.run_dir))
            workspace.history_before = read_history(workspace.run_dir)
            yield from run_events(workspace, config, resume_run=True)

    @act
    def stop_training(request: gr.Request):
        state = studio.workspace(request).request_stop()
        if state == "queued":
            return progress_html("Stopping: the run waiting for a free slot will not start", 0, 1)
        return progress_html("Nothing is running", 0, 1) if state == "idle" else gr.skip()

    @act
    def note_queued_start(request: gr.Request):
        studio.workspace(request).start_queued()

    @act
    def show_commands(val_ratio: float, request: gr.Request, **values):
        workspace = studio.workspace(request)
        # Paths as the user knows them (their zip's or folder's name), never this server's folders.
        data = "demo" if workspace.data_source in ("", "demo") else f"path/to/{workspace.data_label}"
        weights = workspace.weights if workspace.weights in ("imagenet", "random") else \
            f"path/to/{workspace.weights_label.removeprefix('your file ')}"
        config = form.config(values, data=data, out="runs/my-model", weights=weights, val_ratio=float(val_ratio),
                             exclude=list(workspace.exclude))
        single = command_for(config)
        multi = command_for(config, launcher="torchrun --nproc_per_node=NUM_GPUS -m tuner")
        across = command_for(config, launcher="torchrun --nnodes=2 --node_rank=NODE_RANK --nproc_per_node=NUM_GPUS "
                                              "--rdzv_backend=c10d --rdzv_endpoint=HOST:29500 -m tuner")
        return single, (f"{multi}\n# across 2 machines: run this on each with NODE_RANK 0 and 1 (the data, --out "
                        f"and the weights on every node)\n{across}")

    outputs = [status, curves, log, checkpoint]
    return {"form": form, "start": start, "stop": stop, "resume": resume, "outputs": outputs,
            "start_training": start_training, "resume_training": resume_training, "stop_training": stop_training,
            "note_queued_start": note_queued_start,
            "show_commands": show_commands, "command": command, "torchrun": torchrun,
            "status": status}


def wire(studio: Studio, tab: dict, val_ratio: gr.Slider, heavy_limit: int) -> None:
    form: TrainForm = tab["form"]
    inputs_kwargs = form.inputs()
    # Start and Resume first note (instantly) that a job is on its way, so a Stop pressed while it still
    # waits in the queue behind other sessions' jobs cancels it instead of finding "nothing running".
    for button, job, name in ((tab["start"], tab["start_training"], "train"),
                              (tab["resume"], tab["resume_training"], "resume")):
        button.click(tab["note_queued_start"], None, None, api_name=False, concurrency_limit=None,
                     show_progress="hidden").success(  # refused while this session's own job runs
            job, [val_ratio], tab["outputs"], inputs_kwargs=inputs_kwargs, api_name=name, concurrency_id=HEAVY,
            concurrency_limit=heavy_limit, show_progress="minimal")
    # Stop must never wait behind the job it stops: no queue slot shared with heavy work.
    tab["stop"].click(tab["stop_training"], None, tab["status"], api_name="stop", concurrency_limit=None,
                      show_progress="hidden")
    for component in list(inputs_kwargs.values()) + [val_ratio]:
        component.change(tab["show_commands"], [val_ratio], [tab["command"], tab["torchrun"]],
                         inputs_kwargs=inputs_kwargs, api_name=False, concurrency_id=LIGHT, show_progress="hidden",
                         trigger_mode="always_last")
