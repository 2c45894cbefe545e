"""Model tab: where the weights come from, the layer tree, every named_parameters() entry, and what a
freeze depth trains."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import pandas as pd
import torch
from torch import nn

from ...config import TRAINABLE_CHOICES
from ...model import summary as model_inspect
from ...model.resnet import STAGES, new_resnet50
from ...model.weights import apply_state_dict, read_state_dict, resolve_weights
from ..common import LIGHT, Studio, user_facing
from ..plots import parameters_per_stage

TRAINABLE_LABELS = {
    "head": "head: only the new fc layer",
    "layer4": "layer4 + head",
    "layer3": "layer3, layer4 + head",
    "layer2": "layer2 ... head",
    "layer1": "layer1 ... head",
    "all": "all: every layer, stem included",
}
TRAINABLE_RADIO_CHOICES = [(TRAINABLE_LABELS[c], c) for c in TRAINABLE_CHOICES]
FREEZE_ADVICE = ("Small dataset similar to ImageNet photos: keep more frozen (head, layer4). Large or very different "
                 "data (X-rays, drawings, satellite): unfreeze more. Unfrozen stages learn at the base rate times "
                 "the backbone multiplier (0.1 over pretrained weights).")


def structure_model(num_classes: int) -> nn.Module:
    """ResNet50 with the session's head size on the meta device: shapes and names without memory or compute
    (the parameter table, tree and stage shapes do not depend on the weights' values)."""
    with torch.device("meta"):
        return new_resnet50(num_classes)


def weights_status(studio: Studio, workspace) -> str:
    if workspace.weights not in ("imagenet", "random"):
        return f"**Weights:** {workspace.weights_label} (loaded safely, tensors only)."  # the name they uploaded
    source = resolve_weights(workspace.weights, allow_download=studio.settings.allow_download)
    if source.pretrained or source.kind == "random" and not source.searched:
        return f"**Weights:** {'✅' if source.pretrained else 'ℹ️'} {studio.public(source.message, workspace)}"
    # Headline first; the where-and-how (long paths, a URL) stays one click away.
    return (f"**Weights:** ⚠️ No pretrained weights found: training starts from random initialisation (it needs "
            f"far more data and epochs).\n\n<details><summary>How to add the ImageNet weights</summary>\n\n"
            f"{studio.public(source.message, workspace)}\n\n</details>")


def filter_table(table: pd.DataFrame, name_filter: str, stage: str) -> pd.DataFrame:
    if name_filter:
        table = table[table.name.str.contains(name_filter, case=False, regex=False)]
    if stage and stage != "all stages":
        table = table[table.stage == stage]
    return table


def build(studio: Studio) -> dict:
    act = user_facing(studio)

    gr.Markdown("ResNet50 from torchvision. The parameter table lists every `named_parameters()` entry; pick how "
                "deep to train and see what that unfreezes. The head (`fc`) is sized for the classes of the data "
                "you load (1000 ImageNet classes until then).")
    status = gr.Markdown(elem_id="weights-status")
    with gr.Row():
        with gr.Column(scale=2):
            trainable = gr.Radio(TRAINABLE_RADIO_CHOICES, value="head", label="Freeze depth: train from this stage down "
                                 "to the head", info=FREEZE_ADVICE, elem_id="model-trainable")
            counts = gr.Markdown(elem_id="trainable-counts")
            stage_plot = gr.Plot(label="Parameters per stage", elem_id="stage-plot")
        with gr.Column(scale=1):
            with gr.Accordion("Weights file (optional)", open=False):
                gr.Markdown("A `.pth`/`.pt` state_dict, a checkpoint holding one, or `.safetensors`. Read with "
                            "`weights_only=True` (never unpickled); keys matched by name and shape.")
                weights_file = gr.File(label="Upload weights", file_types=[".pth", ".pt", ".bin", ".safetensors"],
                                       elem_id="weights-upload")
                with gr.Row():
                    use_imagenet = gr.Button("Use ImageNet weights", size="sm")
                    use_random = gr.Button("Random initialisation", size="sm")
                load_report = gr.Markdown()
            image_size = gr.Slider(32, 512, value=224, step=32, label="Input size for the shapes table (px)")
            shapes = gr.Dataframe(label="Output shape of each stage", interactive=False)
    with gr.Accordion("Layer structure (named_children / named_modules)", open=False):
        depth = gr.Slider(1, 3, value=2, step=1, label="Depth")
        tree = gr.Code(language=None, label="Layer tree with parameter counts", elem_id="layer-tree")
    with gr.Row():
        name_filter = gr.Textbox(label="Filter parameters by name", placeholder="e.g. layer4.2 or bn", scale=2)
        stage_filter = gr.Dropdown(["all stages", *STAGES], value="all stages", label="Stage", scale=1)
    params = gr.Dataframe(label="named_parameters()", interactive=False, max_height=420, elem_id="param-table")

    @act
    def show_model(trainable: str, name_filter: str, stage: str, image_size: int, depth: int, request: gr.Request):
        workspace = studio.workspace(request)
        model = structure_model(workspace_classes(workspace))
        summary = model_inspect.stage_summary(model, trainable)
        total = summary[summary.stage == "total"].iloc[0]
        share = total.trainable / total.params
        # A new head alone is 0.03% of ResNet50: one decimal would print "0.0%" for a head that does train.
        text = (f"**{int(total.trainable):,}** of {int(total.params):,} parameters train "
                f"({share:.{2 if 0 < share < 0.01 else 1}%}); {int(total.frozen):,} stay frozen.")
        table = filter_table(model_inspect.parameter_table(model, trainable), name_filter, stage)
        return (weights_status(studio, workspace), text, parameters_per_stage(summary), table,
                model_inspect.stage_output_shapes(model, int(image_size)),
                model_inspect.layer_tree_text(model, int(depth)))

    outputs = [status, counts, stage_plot, params, shapes, tree]
    inputs = [trainable, name_filter, stage_filter, image_size, depth]
    for trigger in (trainable.change, stage_filter.change, image_size.release, depth.release, name_filter.submit):
        trigger(show_model, inputs, outputs, api_name=False, concurrency_id=LIGHT, show_progress="hidden")
    inspect_event = dict(fn=show_model, inputs=inputs, outputs=outputs, api_name="inspect_model", concurrency_id=LIGHT)

    @act
    def upload_weights(file, request: gr.Request):
        workspace = studio.workspace(request)
        if not file:
            return gr.update(), ""
        source = Path(file if isinstance(file, str) else file.name)
        # Checked where Gradio put it and copied only once accepted: a refused file with the name of the
        # weights in use must not replace them.
        model = new_resnet50(workspace_classes(workspace))
        report = apply_state_dict(model, read_state_dict(source), source.name)  # refuses a file with no match
        target = workspace.uploads / ("weights-" + source.name)
        shutil.copyfile(source, target)
        workspace.weights, workspace.weights_label = str(target), f"your file {source.name}"
        return weights_status(studio, workspace), f"**{source.name}:** {report.summary()}"

    weights_file.upload(upload_weights, [weights_file], [status, load_report], api_name="upload_weights",
                        concurrency_id=LIGHT)

    def chooser(kind: str):
        @act
        def choose(request: gr.Request):
            workspace = studio.workspace(request)
            workspace.weights = kind
            workspace.weights_label = "ImageNet (torchvision IMAGENET1K_V1)" if kind == "imagenet" else "random"
            return weights_status(studio, workspace), ""
        return choose

    use_imagenet.click(chooser("imagenet"), None, [status, load_report], api_name="use_imagenet_weights",
                       concurrency_id=LIGHT)
    use_random.click(chooser("random"), None, [status, load_report], api_name="use_random_weights",
                     concurrency_id=LIGHT)
    return {"trainable": trainable, "inspect_event": inspect_event}


def workspace_classes(workspace) -> int:
    """Head size: the loaded dataset's class count, or ImageNet's 1000 before any data is loaded."""
    return int(workspace.num_classes or 1000)
