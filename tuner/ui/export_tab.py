"""Export tab: pick formats, build them from this session's best checkpoint, see each verified against
PyTorch and timed, and download the files (this session's only)."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..errors import TunerError
from ..export import FORMATS, export_checkpoint, tensorrt_status
from .common import HEAVY, Studio, markdown_list, user_facing

FORMAT_LABELS = {"pth": ".pth state_dict + model.json", "safetensors": ".safetensors", "onnx": "ONNX (FP32)",
                 "int8": "INT8 ONNX (static quantization)", "tensorrt": "TensorRT engine (GPU)"}


def build(studio: Studio, heavy_limit: int) -> dict:
    act = user_facing(studio)
    usable, why = tensorrt_status()
    gr.Markdown("Exports this session's best checkpoint. Each format is run on validation images and compared "
                "with the PyTorch model (largest logit difference and top-1 agreement). "
                + ("TensorRT is available on this machine." if usable else f"TensorRT: {why}"))
    with gr.Row():
        formats = gr.CheckboxGroup([(FORMAT_LABELS[f], f) for f in FORMATS], value=["pth", "onnx"],
                                   label="Formats", elem_id="export-formats")
        benchmark = gr.Checkbox(True, label="Measure speed (batch 1 latency and batched throughput vs PyTorch eager)")
    run = gr.Button("Export", variant="primary", elem_id="export")
    messages = gr.Markdown(elem_id="export-messages")
    verification = gr.Dataframe(label="Verification against PyTorch", interactive=False, elem_id="export-verification")
    with gr.Row():
        speed = gr.Dataframe(label="Speed on this machine", interactive=False, elem_id="export-speed")
        accuracy = gr.Dataframe(label="Accuracy", interactive=False, elem_id="export-accuracy")
    files = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="export-files")

    @act
    def export(chosen: list[str], measure: bool, request: gr.Request, progress=gr.Progress()):
        workspace = studio.workspace(request)
        if not chosen:
            raise TunerError("No format chosen: tick at least one (ONNX is the usual deployment format).")
        with workspace.job():
            checkpoint = workspace.checkpoint("best")
            if checkpoint is None:
                raise TunerError("No checkpoint yet: train a model in the Train tab first (even one epoch).")
            run_name = checkpoint.parent.name
            report = export_checkpoint(checkpoint, chosen, workspace.exports / run_name,
                                       data=workspace.data_source or None, benchmark=bool(measure),
                                       progress=lambda done, total, label="Exporting": progress((done, total),
                                                                                                 desc=label),
                                       stop=workspace.stop)
        notes = [studio.public(m, workspace) for m in report.messages]
        shown = [str(path) for path in report.files.values() if path and path.is_file()]
        return (markdown_list(notes, "All chosen formats were built and verified."),
                pd.DataFrame(report.verification).map(lambda v: studio.public(v, workspace) if isinstance(v, str)
                                                      else v) if report.verification else pd.DataFrame(),
                pd.DataFrame(report.speed), pd.DataFrame(report.accuracy), shown)

    run.click(export, [formats, benchmark], [messages, verification, speed, accuracy, files], api_name="export",
              concurrency_id=HEAVY, concurrency_limit=heavy_limit)
    return {}
