"""The export formats: one entry each, read by the export itself, the CLI's --format, the studio's
checkboxes and the speed table.

Each format's work lives in its own leaf module, `tuner/export/<name>.py`, which never imports the
export that drives it (`pipeline.export_checkpoint`) and offers two functions:

    write(job, path) -> Written   write the file(s) into job.out atomically, and say what was written
    runner(job, path) -> run      a function images -> logits (tensor or numpy) running the written file

with Job and Written from job.py. The export writes each chosen format in this table's order, runs
it on the validation images, judges it by its `check` against PyTorch, and times it when it has a
`speed_label`.

To add a format, write `tuner/export/<name>.py` with those two functions and add its entry below.

This module imports nothing heavy (no torch): the CLI builds its parser from it for every command,
`--help` included. That is why an entry does not hold its module's functions: the export finds the
module by the entry's name (pipeline.MODULES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import TunerError
from .verify import FP16, FP32, QUANTIZED, Check


@dataclass(frozen=True)
class Format:
    name: str  # the --format word, the report's key, and the leaf module's name
    file: str  # what it writes into the export folder
    label: str  # the studio's checkbox
    check: Check  # how its logits are judged against PyTorch's (verify.py)
    speed_label: str | None = None  # its row of the speed table; None: not timed (PyTorch's own model)
    accuracy_label: str | None = None  # its row of the accuracy table, for formats whose check is not judged
    # "cuda": needs a CUDA GPU (TensorRT also its package, which its module checks) and is timed against
    # PyTorch on that GPU; "cpu": runs anywhere and is timed against PyTorch on the CPU.
    device: str = "cpu"
    from_onnx: bool = False  # built from model.onnx (written once per export by onnx.write); adds predict_onnx.py


FORMATS: tuple[Format, ...] = (
    Format("pth", "model.pth", ".pth state_dict + model.json", FP32),
    Format("safetensors", "model.safetensors", ".safetensors", FP32),
    Format("onnx", "model.onnx", "ONNX (FP32)", FP32, speed_label="onnx (onnxruntime)", from_onnx=True),
    Format("int8", "model.int8.onnx", "INT8 ONNX (static quantization)", QUANTIZED,
           speed_label="onnx int8 (onnxruntime)", accuracy_label="onnx int8", from_onnx=True),
    Format("tensorrt", "model.engine", "TensorRT engine (GPU)", FP16, speed_label="tensorrt fp16", device="cuda",
           from_onnx=True),  # the engine's precision may change its check and labels (tensorrt.write)
)


FORMAT_NAMES = tuple(f.name for f in FORMATS)


BY_NAME = {f.name: f for f in FORMATS}


DEFAULT_FORMATS = ("pth", "onnx")  # what the CLI exports without --format, and the studio's ticked boxes


def parse_formats(value: str | Sequence[str]) -> list[str]:
    """'pth,onnx' or a list -> validated format names, in table order."""
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v and v.strip()]
    unknown = [v for v in items if v not in BY_NAME]
    if unknown or not items:
        raise TunerError(f"Unknown export format {', '.join(unknown) or '(none given)'}: choose from "
                         f"{','.join(FORMAT_NAMES)} (comma-separated), e.g. --format pth,onnx.")
    return [name for name in FORMAT_NAMES if name in items]
