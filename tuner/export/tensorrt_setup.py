"""Whether TensorRT can build engines here, and the trtexec command that does the same elsewhere."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
from typing import Any

import torch

from ..runtime.setup import cuda_unusable_reason
from .onnx import INPUT_NAME
from .verify import FP16_REL_TARGET

TRT_PROFILE = (1, 8, 32)  # TensorRT optimization profile for the dynamic batch: min, opt, max


TENSORRT_MAJOR_LIMIT = 11  # engines are built with TensorRT 10's weakly typed FP16/INT8 API, gone in 11


def tensorrt_version() -> tuple[int, ...] | None:
    """The installed TensorRT's version from package metadata (importing tensorrt needs its CUDA libraries)."""
    for dist in ("tensorrt-cu13", "tensorrt-cu12", "tensorrt", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"):
        try:
            return tuple(int(part) for part in importlib.metadata.version(dist).split(".")[:2] if part.isdigit())
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
    return None


def tensorrt_status() -> tuple[bool, str]:
    """(usable, what is missing): TensorRT needs its Python package and a CUDA GPU on this machine."""
    missing = []
    if not torch.cuda.is_available():
        why = cuda_unusable_reason()
        missing.append("no CUDA GPU is visible to PyTorch on this machine" + (f" ({why})" if why else ""))
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt package is not installed (pip install -r requirements-gpu.txt)")
    elif (version := tensorrt_version()) and version[0] >= TENSORRT_MAJOR_LIMIT:
        missing.append(f"TensorRT {'.'.join(map(str, version))} is installed, and TensorRT 11 removed the FP16/INT8 "
                       "builder flags this build uses (pip install -r requirements-gpu.txt installs 10.x)")
    if not missing:
        return True, "TensorRT and a CUDA GPU are present."
    return False, " and ".join(missing)


def trtexec_command(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, image_size: int, fp16: bool = True,
                    max_batch: int = TRT_PROFILE[2]) -> str:
    """The trtexec line that builds the same FP16 engine (dynamic batch 1..max_batch) on a GPU machine.

    There is deliberately no INT8 option: trtexec --int8 without a calibration cache builds with
    placeholder scales, an engine that runs but classifies poorly. INT8 engines are calibrated on the
    user's images by tuner itself (export_checkpoint with tensorrt_int8), on the GPU machine.
    """
    low, opt = TRT_PROFILE[0], min(TRT_PROFILE[1], max_batch)
    shape = f"3x{image_size}x{image_size}"
    words = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
             f"--minShapes={INPUT_NAME}:{low}x{shape}", f"--optShapes={INPUT_NAME}:{opt}x{shape}",
             f"--maxShapes={INPUT_NAME}:{max_batch}x{shape}"]
    if fp16:
        words.append("--fp16")
    return " ".join(shlex.quote(w) for w in words)


TRT_INT8_NO_TRTEXEC = ("The command has no --int8 on purpose: trtexec has no calibration data for it and would use "
                       "placeholder scales, an engine that runs but classifies poorly. For an INT8 engine, run this "
                       "export with --trt-int8 on the GPU machine: tuner calibrates it on your training images.")


def tensorrt_precision(int8: bool) -> dict[str, Any]:
    """How a TensorRT engine is labelled and judged, by the precision it was really built with.

    FP16 must stay within FP16_REL_TARGET of the logits' scale. An INT8 engine (TensorRT picks INT8 or
    FP16 per layer) is judged like INT8 ONNX: quantization may flip close calls, so its agreement and
    accuracy inform rather than fail the export.
    """
    if int8:
        return {"label": "tensorrt int8+fp16", "rel_target": None,
                "note": "INT8 engine (FP16 where faster), calibrated on the training images: logits differ by "
                        "design; see the accuracy table"}
    return {"label": "tensorrt fp16", "rel_target": FP16_REL_TARGET,
            "note": f"FP16 engine: logits within {FP16_REL_TARGET:.0%} of the largest |logit|; top-1 may differ only "
                    "on near-ties"}
