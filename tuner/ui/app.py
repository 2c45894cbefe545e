"""The studio: a Gradio Blocks app over the engine, one module per tab.

`build_app(settings)` builds the widgets and wires them; nothing runs at import. Tabs follow the job:
Model -> Data -> Train -> Evaluate -> Predict -> Export.
"""

from __future__ import annotations

import gradio as gr

from ..paths import ASSETS
from .common import LIGHT, Studio, StudioSettings
from .tabs import check as check_tab
from .tabs import data as data_tab
from .tabs import evaluate as evaluate_tab
from .tabs import export as export_tab
from .tabs import model as model_tab
from .tabs import predict as predict_tab
from .tabs import train as train_tab

CSS_FILE = ASSETS / "studio.css"
INTRO = ("# tuner: fine-tune ResNet50 on your images\n"
         "**1 Model**: weights, layers and freeze depth · **2 Data**: demo set or your .zip, and a check of it · "
         "**3 Train**: live curves, stop and resume · **4 Evaluate**: mistakes · **5 Predict** · **6 Export**: .pth, "
         "ONNX, TensorRT")


def build_app(settings: StudioSettings | None = None) -> gr.Blocks:
    settings = settings or StudioSettings()
    studio = Studio(settings)
    heavy = settings.heavy_jobs
    # Gradio copies every file it serves (checkpoints, exports: ~100 MB each) into its cache; without
    # pruning, a long-running server fills its disk. Copies older than the session TTL are deleted.
    session_s = settings.session_ttl_min * 60
    with gr.Blocks(title="tuner: fine-tune ResNet50", delete_cache=(min(3600, session_s), session_s)) as demo:
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Tabs():
            with gr.Tab("Model", id="model"):
                model = model_tab.build(studio)
            with gr.Tab("Data", id="data"):
                data = data_tab.build(studio)
                check = check_tab.build(studio)
            with gr.Tab("Train", id="train"):
                training = train_tab.build(studio, model["trainable"])
            with gr.Tab("Evaluate", id="evaluate"):
                evaluate_tab.build(studio, heavy)
            with gr.Tab("Predict", id="predict"):
                predict_tab.build(studio)
            with gr.Tab("Export", id="export"):
                export_tab.build(studio, heavy)
        data_tab.wire(studio, data, training["form"])
        train_tab.wire(studio, training, data["val_ratio"], heavy)
        # The check and the exclusions belong to the data they were made on: a data load resets them.
        data["loaded"].success(**check_tab.wire(studio, check, training["form"], training["stop_training"], heavy))
        demo.load(**model["inspect_event"])
        # The head is sized for the loaded classes: the Model tab follows every data load (the page's own too).
        follow_data = dict(model["inspect_event"], api_name=False, show_progress="hidden")
        demo.load(**data["demo_load"]).success(**follow_data)
        data["loaded"].success(**follow_data)
        demo.load(training["show_commands"], [data["val_ratio"]], [training["command"], training["torchrun"]],
                  inputs_kwargs=training["form"].inputs(), api_name=False, concurrency_id=LIGHT)
        # Closing the tab ends the session: its training stops and its files go.
        demo.unload(studio.close_session)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.light_jobs)
    demo.studio = studio  # for tests and app.py (settings, workspaces); not user state
    return demo


def launch_kwargs(demo: gr.Blocks) -> dict:
    """What `demo.launch()` needs besides host/port/auth: the theme, styles, upload cap, and the folder
    of the files tuner writes for sessions (checkpoints, exports) in `allowed_paths`.

    A handler may return files from the working directory, the temp dir or `allowed_paths` only, and
    Gradio also serves `allowed_paths` directly by path. So only `served_root` goes there, never the
    folders of uploads and unpacked data (a zip may hold HTML or SVG); session folder names are random."""
    studio = demo.studio
    return {"theme": gr.themes.Soft(), "css_paths": [CSS_FILE] if CSS_FILE.is_file() else None,
            "max_file_size": f"{studio.settings.max_upload_mb}mb",
            "allowed_paths": [str(studio.registry.served_root)]}
