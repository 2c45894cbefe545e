"""Evaluate tab: validation accuracy, confusion matrix, per-class precision/recall/F1, and the mistakes."""

from __future__ import annotations

import gradio as gr

from ...data.preview import thumbnail
from ...infer.evaluate import evaluate_checkpoint
from ..common import HEAVY, Studio, user_facing
from ..plots import confusion_heatmap

MAX_MISTAKES_SHOWN = 48


def build(studio: Studio, heavy_limit: int) -> dict:
    act = user_facing(studio)
    gr.Markdown("Evaluates this session's best checkpoint on the validation images of the loaded data.")
    run = gr.Button("Evaluate the best checkpoint", variant="primary", elem_id="evaluate")
    summary = gr.Markdown(elem_id="eval-summary")
    with gr.Row():
        confusion = gr.Plot(label="Confusion matrix", elem_id="confusion")
        report = gr.Dataframe(headers=["class", "precision", "recall", "f1", "support"], label="Per class",
                              interactive=False, elem_id="per-class")
    mistakes = gr.Gallery(label="Misclassified validation images: true → predicted (confidence)", columns=5, height=320,
                          object_fit="contain", elem_id="mistakes")

    @act
    def evaluate(request: gr.Request, progress=gr.Progress()):
        workspace = studio.workspace(request)
        with workspace.job():
            checkpoint = workspace.trained_checkpoint()
            result = evaluate_checkpoint(str(checkpoint), data=workspace.data_source or None,
                                         workdir=str(workspace.root),
                                         progress=lambda done, total: progress((done, total), desc="Evaluating"))
        wrong = result.mistakes()
        text = (f"**Validation accuracy {result.accuracy:.1%}** on {len(result.labels)} images "
                f"(loss {result.loss:.3f}); {len(wrong)} misclassified. Checkpoint: "
                f"`{workspace.relative(checkpoint)}`.")
        gallery = [(thumbnail(m["path"], 256), f"{m['true']} → {m['predicted']} ({m['confidence']:.0%})")
                   for m in wrong[:MAX_MISTAKES_SHOWN]]
        table = result.report().round(3)
        return text, confusion_heatmap(result.confusion.tolist(), result.classes), table, gallery

    run.click(evaluate, None, [summary, confusion, report, mistakes], api_name="evaluate", concurrency_id=HEAVY,
              concurrency_limit=heavy_limit)
    return {}
