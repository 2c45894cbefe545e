"""Export a fine-tuned model: each chosen format of formats.FORMATS written by its own module, then
verified against PyTorch on the user's images, and optionally timed.

Only models that tuner itself builds from a checkpoint (read with weights_only=True) are exported
and then run here; a user-supplied ONNX file or engine is never loaded.
"""

from __future__ import annotations

import importlib
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import TunerError
from ..model.checkpoint import load_checkpoint, model_from_checkpoint
from ..paths import output_folder
from . import onnx as onnx_format
from .formats import BY_NAME, FORMATS, parse_formats
from .job import Job, VerificationImages, model_json
from .speed import EAGER_LABELS, measure_speed
from .verify import compare

# Each format's module, tuner/export/<name>.py, found through the table (which names it rather than
# importing it, to stay light for the CLI's parser). Loaded with this module, like any import.
MODULES = {fmt.name: importlib.import_module(f"{__package__}.{fmt.name}") for fmt in FORMATS}


MAX_VERIFY_IMAGES = 1000  # each is held in memory as a float tensor, twice (verification and calibration)


@dataclass
class ExportReport:
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    verification: list[dict] = field(default_factory=list)
    speed: list[dict] = field(default_factory=list)
    accuracy: list[dict] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """The formats whose outputs did not match PyTorch's: not to be deployed."""
        return [row["format"] for row in self.verification if row["passed"] is False]

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "files": {k: str(v) for k, v in self.files.items()},
                "verification": self.verification, "speed": self.speed, "accuracy": self.accuracy,
                "messages": self.messages}


def export_checkpoint(checkpoint: str | os.PathLike, formats: str | Sequence[str], out_dir: str | os.PathLike, *,
                      data: str | None = None, benchmark: bool = False, max_images: int = 64,
                      tensorrt_int8: bool = False, progress: Callable[[int, int, str], None] | None = None,
                      stop=None) -> ExportReport:
    """Write each requested format of a fine-tuned checkpoint into `out_dir` and verify it against PyTorch.

    TensorRT engines are FP16, plus INT8 calibrated on the training images with `tensorrt_int8` (then,
    like INT8 ONNX, its agreement and accuracy are reported without failing the export).
    Every file is written atomically. `progress(done, total, label)` is called between steps; `stop`
    (anything with is_set()) ends the export between formats, keeping the files already finished.
    """
    chosen = [BY_NAME[name] for name in parse_formats(formats)]
    if tensorrt_int8 and BY_NAME["tensorrt"] not in chosen:
        raise TunerError("TensorRT INT8 applies to the TensorRT engine: choose the tensorrt format too (--format "
                         "...,tensorrt on the command line, 'TensorRT engine (GPU)' in the studio), or drop INT8.")
    whole = isinstance(max_images, numbers.Integral) and not isinstance(max_images, bool)
    if not whole or not 1 <= max_images <= MAX_VERIFY_IMAGES:  # 0 or less verifies nothing; too many fill the memory
        given = "an empty value" if max_images is None else repr(max_images)
        raise TunerError(f"The number of verification images must be a whole number from 1 to {MAX_VERIFY_IMAGES}, "
                         f"not {given}: give e.g. 64 (the default): --images on the command line, 'Validation "
                         "images to verify each format on' in the studio's Export tab.")
    state = load_checkpoint(checkpoint)  # before the folder is made: a refused checkpoint leaves nothing behind
    out = output_folder(out_dir)
    model = model_from_checkpoint(state)
    report = ExportReport(out)
    steps = ["images"] + [fmt.name for fmt in chosen] + (["benchmark"] if benchmark else [])

    def step(label: str) -> None:
        if stop is not None and stop.is_set():
            raise TunerError("Export stopped on request; the files finished so far are kept.")
        if progress:
            progress(steps.index(label), len(steps), f"Exporting: {label}")

    step("images")
    images = VerificationImages(state, data, Path(checkpoint).resolve().parent, int(max_images))
    with torch.no_grad():
        reference = model(images.x)
    report.accuracy.append(_accuracy_row("pytorch (fp32)", reference, images.labels))
    job = Job(model, model_json(state, checkpoint), out, images, tensorrt_int8)

    timed: dict[str, tuple[str, Callable]] = {}  # format -> (speed row label, the runner it was verified with)
    for fmt in chosen:
        step(fmt.name)
        path = out / fmt.file
        written = MODULES[fmt.name].write(job, path)
        report.files.update(written.files)
        report.messages.extend(written.messages)
        if not written.built:
            report.verification.append({"format": fmt.name, "file": path.name, "max_abs_diff": float("nan"),
                                        "top1_agreement": float("nan"), "images": 0, "passed": None,
                                        "judged": False, "note": written.note})
            continue
        run = MODULES[fmt.name].runner(job, path)
        logits = torch.as_tensor(run(images.x))
        check = written.check or fmt.check
        report.verification.append(compare(fmt.name, path, reference, logits, len(images.x), check.target,
                                           written.note, check.min_agreement, check.rel_target))
        if not check.judged:  # no pass/fail: how many images it still gets right says what it costs
            report.accuracy.append(_accuracy_row(written.label or fmt.accuracy_label, logits, images.labels))
        if fmt.speed_label:
            timed[fmt.name] = (written.label or fmt.speed_label, run)
    if any(fmt.from_onnx for fmt in chosen):
        report.files["predict_onnx.py"] = onnx_format.write_deploy_script(out)
    if benchmark:
        step("benchmark")
        report.speed = measure_speed(model, _speed_rows(job, report.files, timed), job.image_size)
        if any(row["format"] == EAGER_LABELS["cuda"] for row in report.speed):
            report.messages.append("Speed-ups compare each row with PyTorch eager on the same device: a TensorRT "
                                   "engine with PyTorch on the CUDA GPU, ONNX Runtime (run on the CPU here) with "
                                   "PyTorch on the CPU.")
    if progress:
        progress(len(steps), len(steps), "Export finished")
    return report


def _speed_rows(job: Job, files: dict[str, Path], timed: dict[str, tuple[str, Callable]]) -> list[tuple]:
    """(label, runner, device) for every timed format with a file in this export, in table order: one
    written only for another format (model.onnx for TensorRT) is timed all the same."""
    rows = []
    for fmt in FORMATS:
        if fmt.speed_label and fmt.name in files:
            label, run = timed.get(fmt.name) or (fmt.speed_label, MODULES[fmt.name].runner(job, files[fmt.name]))
            rows.append((label, run, fmt.device))
    return rows


def _accuracy_row(label: str, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    accuracy = float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")
    return {"format": label, "accuracy": accuracy, "images": len(labels)}
