"""Export tab: pick formats, build them from this session's best checkpoint, see each verified against
PyTorch and timed, and download the files (this session's only)."""

from __future__ import annotations

import math

import gradio as gr
import pandas as pd

from ...errors import TunerError
from ...export.formats import DEFAULT_FORMATS, FORMATS
from ...export.pipeline import MAX_VERIFY_IMAGES, export_checkpoint
from ...export.tensorrt_setup import tensorrt_status
from ...export.verify import FP32_REL_TARGET, FP32_TARGET, verdict
from ..common import HEAVY, Studio, markdown_list, user_facing

UNJUDGED = "reported (quantized: no pass/fail)"  # INT8 differs by design; its accuracy row says how much
VERDICT = {"passed": "matches", "failed": "DIFFERS", "not built": "not built", "reported": UNJUDGED}
SPEED_COLUMNS = {"format": "format", "batch1_ms": "batch-1 latency (ms)", "latency_speedup": "latency speedup",
                 "throughput_img_s": "throughput (images/s)", "batch": "at batch", "throughput_speedup":
                 "throughput speedup"}


def verification_table(rows: list[dict]) -> pd.DataFrame:
    def number(value, fmt: str) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    columns = ["format", "file", "max |logit diff|", "top-1 agreement", "images", "result", "note"]
    return pd.DataFrame([{"format": r["format"], "file": r["file"], "max |logit diff|": number(r["max_abs_diff"], ".2e"),
                          "top-1 agreement": number(r["top1_agreement"], ".1%"), "images": r["images"],
                          "result": VERDICT[verdict(r)],
                          "note": r["note"]} for r in rows], columns=columns)


def speed_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{label: row[key] for key, label in SPEED_COLUMNS.items()} for row in rows],
                        columns=list(SPEED_COLUMNS.values()))


def build(studio: Studio, heavy_limit: int) -> dict:
    act = user_facing(studio)
    usable, why = tensorrt_status()
    trt_line = ("TensorRT and a CUDA GPU are available: engines are built and verified here." if usable else
                f"TensorRT engines cannot be built on this server ({why}); choosing TensorRT gives you the ONNX file "
                "and the `trtexec` command that builds the engine on your GPU machine.")
    gr.Markdown("Exports this session's best checkpoint. Each format is run on validation images and compared with "
                "the PyTorch model: the largest logit difference (FP32 target ≤ "
                f"{FP32_TARGET:g} + {FP32_REL_TARGET:.2%} of the largest |logit|) and top-1 agreement. "
                f"{trt_line} `predict_onnx.py` classifies images with the ONNX file using only onnxruntime, numpy "
                "and pillow.", elem_id="export-intro")
    with gr.Row():
        formats = gr.CheckboxGroup([(f.label, f.name) for f in FORMATS], value=list(DEFAULT_FORMATS),
                                   label="Formats", elem_id="export-formats", scale=3)
        with gr.Column(scale=1):
            benchmark = gr.Checkbox(True, label="Measure speed (batch-1 latency and batched throughput vs PyTorch "
                                    "eager)", elem_id="export-benchmark")
            trt_int8 = gr.Checkbox(False, label="TensorRT INT8, calibrated on your training images"
                                   + ("" if usable else " (needs a CUDA GPU with TensorRT)"),
                                   interactive=usable, elem_id="export-trt-int8")
            images = gr.Number(64, precision=0, minimum=1, maximum=MAX_VERIFY_IMAGES,
                               label="Validation images to verify each format on (and to calibrate INT8)",
                               elem_id="export-images")
    run = gr.Button("Export", variant="primary", elem_id="export")
    messages = gr.Markdown(elem_id="export-messages")
    verification = gr.Dataframe(verification_table([]), label="Verification against PyTorch", interactive=False,
                                wrap=True, elem_id="export-verification")
    with gr.Row():
        speed = gr.Dataframe(speed_table([]), label="Speed on this machine (measured side by side in one run)",
                             interactive=False, elem_id="export-speed", scale=2)
        accuracy = gr.Dataframe(pd.DataFrame(columns=["format", "accuracy", "images"]), interactive=False,
                                label="Accuracy on the same images", elem_id="export-accuracy", scale=1)
    files = gr.File(label="Files to download (this session's export)", file_count="multiple", interactive=False,
                    elem_id="export-files")

    @act
    def export(chosen: list[str], measure: bool, int8_engine: bool, verify_images: int, request: gr.Request,
               progress=gr.Progress()):
        workspace = studio.workspace(request)
        if not chosen:
            raise TunerError("No format chosen: tick at least one (ONNX is the usual deployment format).")
        with workspace.job():
            checkpoint = workspace.trained_checkpoint()
            report = export_checkpoint(checkpoint, chosen, workspace.exports / checkpoint.parent.name,
                                       data=workspace.data_source or None, benchmark=bool(measure),
                                       tensorrt_int8=bool(int8_engine), max_images=verify_images,  # precision=0: an int
                                       progress=lambda done, total, label: progress((done, total), desc=label),
                                       stop=workspace.stop)
        failed = report.failed
        notes = [studio.public(m, workspace) for m in report.messages]
        if failed:
            notes.insert(0, f"**{', '.join(failed)} did not match PyTorch**: see the table, and do not deploy it.")
        shown = [str(workspace.own(path)) for path in report.files.values() if path and path.is_file()]
        text = markdown_list(notes, "All chosen formats were built and verified against PyTorch.")
        if not measure:  # say why the speed table is empty
            text += "\n\nSpeed not measured: tick “Measure speed” and export again to time each format."
        return (text,
                verification_table(report.verification), speed_table(report.speed),
                pd.DataFrame(report.accuracy).assign(accuracy=lambda t: t["accuracy"].map("{:.1%}".format)), shown)

    run.click(export, [formats, benchmark, trt_int8, images], [messages, verification, speed, accuracy, files],
              api_name="export",
              concurrency_id=HEAVY, concurrency_limit=heavy_limit)
    return {}
