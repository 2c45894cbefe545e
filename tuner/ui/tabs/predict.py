"""Predict tab: top-k labels with probabilities for uploaded images, from this session's fine-tuned model
or from the base ImageNet model."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from ...errors import TunerError
from ...infer.predict import Predictor
from ...paths import ASSETS
from ..common import Studio, user_facing
from ..plots import top_k_bars

FINE_TUNED = "Fine-tuned model (this session's best checkpoint)"
IMAGENET = "Base ImageNet model (1000 classes)"
EXAMPLES = ASSETS / "examples"
MAX_IMAGES = 64


def example_images() -> list[str]:
    return sorted(str(p) for p in EXAMPLES.glob("*.png")) if EXAMPLES.is_dir() else []


def build(studio: Studio) -> dict:
    act = user_facing(studio)
    with gr.Row():
        with gr.Column(scale=1):
            images = gr.File(label=f"Images (up to {MAX_IMAGES})", file_count="multiple", file_types=["image"],
                             elem_id="predict-images")
            examples = example_images()
            if examples:
                gr.Examples([[[path]] for path in examples], inputs=[images], label="Examples",
                            example_labels=[Path(p).stem for p in examples])
            model_choice = gr.Radio([FINE_TUNED, IMAGENET], value=FINE_TUNED, label="Model", elem_id="predict-model")
            top_k = gr.Slider(1, 10, value=3, step=1, label="Top-k")
            run = gr.Button("Predict", variant="primary", elem_id="predict")
        with gr.Column(scale=2):
            label = gr.Label(label="Prediction (first image)", elem_id="predict-label")
            chart = gr.Plot(label="Top-k probabilities (first image)", elem_id="predict-chart")
    with gr.Row():
        shown = gr.Gallery(label="Your images, with the top label", columns=4, height=220, object_fit="contain",
                           elem_id="predict-gallery", scale=1)
        table = gr.Dataframe(headers=["image", "rank", "label", "probability"], label="All images", interactive=False,
                             elem_id="predict-table", scale=1)

    def predictor_for(workspace, choice: str) -> Predictor:
        if choice == IMAGENET:
            return workspace.cached("imagenet", lambda: Predictor.imagenet(
                allow_download=studio.settings.allow_download))
        checkpoint = workspace.checkpoint("best")
        if checkpoint is None:
            raise TunerError("No fine-tuned model yet: train one in the Train tab, or choose the base ImageNet model.")
        key = f"{checkpoint}:{checkpoint.stat().st_mtime_ns}"  # a newer checkpoint replaces the cached model
        return workspace.cached(key, lambda: Predictor.from_checkpoint(checkpoint))

    @act
    def predict(images: list, model: str, top_k: int, request: gr.Request):
        workspace = studio.workspace(request)
        paths = [f if isinstance(f, str) else f.name for f in (images or [])]
        if not paths:
            raise TunerError("No images yet: upload one or more images (JPEG, PNG, WebP, ...) or pick an example.")
        if len(paths) > MAX_IMAGES:
            raise TunerError(f"{len(paths)} images at once is more than {MAX_IMAGES}: predict them in smaller groups, "
                             "or use `python -m tuner predict` for many files.")
        predictor = predictor_for(workspace, model)
        results, unreadable = predictor.predict_readable(paths, top_k=int(top_k))
        if not results:  # nothing to show: the reason is the answer
            raise TunerError(" ".join(unreadable))
        if unreadable:  # the readable images are answered; each bad file is named with the fix
            gr.Warning(studio.public(f"Skipped {len(unreadable)} of {len(paths)} files. " + " ".join(unreadable),
                                     workspace))
        rows = [{"image": Path(r.image).name, "rank": rank, "label": name, "probability": round(prob, 4)}
                for r in results for rank, (name, prob) in enumerate(r.top_k, start=1)]
        first = results[0]
        return ({name: prob for name, prob in first.top_k},
                top_k_bars(first.top_k, title=f"{Path(first.image).name} ({predictor.source})"),
                [(r.image, f"{r.top_k[0][0]} ({r.top_k[0][1]:.0%})") for r in results],
                pd.DataFrame(rows))

    run.click(predict, [images, model_choice, top_k], [label, chart, shown, table], api_name="predict",
              concurrency_id="predict", concurrency_limit=2)
    return {}
