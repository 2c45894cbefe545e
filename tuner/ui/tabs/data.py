"""Data tab: the built-in demo set, a .zip upload, or (locally) a folder on the server; class counts,
samples, the same samples after augmentation, the skip report and warnings."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ...data.discover import DatasetSpec, dataset_folder, prepare_dataset
from ...data.preview import augmented_grid, sample_grid
from ...errors import TunerError
from ..common import LIGHT, Studio, markdown_list, user_facing
from ..plots import class_counts
from ..workspace import NO_DATA_CHANGE_DURING_A_JOB

DEMO = "Built-in demo (4 shape classes)"
ZIP = "Upload a .zip"
FOLDER = "Folder on this server"


def load_spec(studio: Studio, workspace, source: str, zip_file, folder: str, val_ratio: float, seed: int) -> DatasetSpec:
    """Point the workspace at a dataset and check it; nothing changes in the workspace if it fails
    (or if one of the session's jobs runs: see Workspace.set_data)."""
    if workspace.busy:  # say so before unpacking anything; set_data checks again at the switch
        raise TunerError(NO_DATA_CHANGE_DURING_A_JOB)
    if source == DEMO:
        data_source, label = "demo", "the built-in demo dataset"
    elif source == ZIP:
        if not zip_file:
            raise TunerError("No .zip uploaded yet: drop one on the upload box (one sub-folder per class, or "
                             "train/ and val/ folders of class sub-folders).")
        archive = Path(zip_file if isinstance(zip_file, str) else zip_file.name)
        if archive.suffix.lower() != ".zip":
            raise TunerError(f"{archive.name} is not a .zip: upload a .zip of class folders.")
        data_source, label = str(dataset_folder(archive, workspace.root)), archive.name
    elif source == FOLDER:
        if studio.settings.shared:
            raise TunerError("Server folders are off on a shared server: upload a .zip instead.")
        if not folder or not folder.strip():
            raise TunerError("Type the path of a folder on this machine (class sub-folders, or train/ and val/).")
        path = Path(folder.strip()).expanduser()
        if not path.is_dir():
            raise TunerError(f"{folder} is not a folder on this machine: check the path.")
        data_source, label = str(path), path.name
    else:
        raise TunerError(f"Unknown data source {source!r}: choose {DEMO}, {ZIP} or {FOLDER}.")
    spec = prepare_dataset(data_source, workspace.root, float(val_ratio), int(seed))
    workspace.set_data(data_source, label, spec.classes, spec)
    return spec


def summary_markdown(workspace, spec: DatasetSpec) -> str:
    counts = spec.counts()
    lines = [f"**{workspace.data_label}**: {len(spec.classes)} classes, {len(spec.train)} training and "
             f"{len(spec.val)} validation images ({spec.layout})."]
    lines.append("Classes: " + ", ".join(f"`{row['class']}` ({row['train']}+{row['val']})" for row in counts))
    return "\n\n".join(lines)


def build(studio: Studio) -> dict:
    act = user_facing(studio)
    sources = [DEMO, ZIP] + ([] if studio.settings.shared else [FOLDER])
    gr.Markdown("Bring images as one sub-folder per class (`cats/`, `dogs/`, ...), or `train/` and `val/` folders of "
                "class sub-folders. Without a `val/` folder a stratified share is held out for validation. Corrupt, "
                "hidden and non-image files are skipped and counted.")
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio(sources, value=DEMO, label="Data source", elem_id="data-source")
            zip_file = gr.File(label=f"Dataset .zip (up to {studio.settings.max_upload_mb} MB)", file_types=[".zip"],
                               visible=False, elem_id="data-zip")
            folder = gr.Textbox(label="Folder on this server", placeholder="/path/to/images", visible=False)
            val_ratio = gr.Slider(0.05, 0.5, value=0.2, step=0.05, label="Validation share (when there is no val/ folder)")
            studio.label_settings({"val_ratio": val_ratio}, "Data")
            load = gr.Button("Load data", variant="primary", elem_id="load-data")
        with gr.Column(scale=2):
            summary = gr.Markdown("No data loaded yet.", elem_id="data-summary")
            warnings = gr.Markdown(elem_id="data-warnings")
            counts = gr.Plot(label="Images per class", elem_id="class-counts")
    with gr.Row():
        samples = gr.Gallery(label="Samples", columns=4, height=300, object_fit="contain", elem_id="samples")
        augmented = gr.Gallery(label="As training sees them (augmentation: Train tab)", columns=4, height=300,
                               object_fit="contain", elem_id="augmented")

    source.change(lambda s: (gr.update(visible=s == ZIP), gr.update(visible=s == FOLDER)), source, [zip_file, folder],
                  api_name=False, queue=False)
    return {"act": act, "source": source, "zip_file": zip_file, "folder": folder, "val_ratio": val_ratio,
            "load": load, "summary": summary, "warnings": warnings, "counts": counts, "samples": samples,
            "augmented": augmented}


def wire(studio: Studio, tab: dict, form) -> None:
    """Events that need the Train tab's settings (seed, image size, augmentation)."""
    act = tab["act"]

    @act
    def load_data(source: str, zip_file, folder: str, val_ratio: float, request: gr.Request, **settings):
        workspace = studio.workspace(request)
        config = form.config(settings)
        spec = load_spec(studio, workspace, source, zip_file, folder, val_ratio, config.seed)
        notes = markdown_list(spec.warnings, "No warnings: every class has enough images, and none was skipped.")
        return (summary_markdown(workspace, spec), notes, class_counts(spec.counts()), sample_grid(spec),
                augmented_grid(spec, config.augment, config.image_size, seed=config.seed))

    load_event = dict(fn=load_data, inputs=[tab["source"], tab["zip_file"], tab["folder"], tab["val_ratio"]],
                      outputs=[tab["summary"], tab["warnings"], tab["counts"], tab["samples"], tab["augmented"]],
                      inputs_kwargs=form.preview_inputs(), concurrency_id="data", concurrency_limit=2)
    tab["loaded"] = tab["load"].click(**load_event, api_name="load_data")
    # A new session starts on the demo set, so Start works before anything else is done.
    tab["demo_load"] = dict(load_event, api_name=False)

    @act
    def preview_augmentation(request: gr.Request, **settings):
        workspace = studio.workspace(request)
        if workspace.spec is None:
            return gr.update()
        config = form.config(settings)
        # The images as loaded: reading and checking every file again on each slider move took seconds.
        return augmented_grid(workspace.spec, config.augment, config.image_size, seed=config.seed)

    for component in form.preview_inputs().values():
        component.change(preview_augmentation, [], [tab["augmented"]],
                         inputs_kwargs=form.preview_inputs(), api_name=False, concurrency_id=LIGHT,
                         show_progress="hidden", trigger_mode="always_last")
