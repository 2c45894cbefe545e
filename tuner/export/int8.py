"""The INT8 ONNX format: ONNX Runtime's static quantization of model.onnx (QDQ, per-channel INT8
weights, UINT8 activations), calibrated on the user's training images. Its logits differ by design,
so its row reports agreement and accuracy rather than failing the export."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..paths import atomic_write
from . import onnx as onnx_format
from .job import Job, Written

CALIBRATION_BATCH = 8


def write(job: Job, path: Path) -> Written:
    source = job.path("onnx")
    onnx_format.write(job, source)
    quantize_int8(source, path, job.images.calibration)
    return Written({"int8": path}, "quantized: logits differ by design; see the accuracy table")


def runner(job: Job, path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    return onnx_format.ort_runner(path)


def quantize_int8(onnx_path: Path, path: Path, calibration: torch.Tensor) -> None:
    """Static INT8 quantization (QDQ, per-channel weights), calibrated on the user's training images."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{onnx_format.INPUT_NAME: calibration[i:i + CALIBRATION_BATCH].numpy()}
                                 for i in range(0, len(calibration), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)

        def write_quantized(tmp: str) -> None:
            quantize_static(str(prepared), tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            proto = onnx.load(tmp)
            source = onnx.load(str(onnx_path), load_external_data=False)
            del proto.metadata_props[:]
            proto.metadata_props.extend(source.metadata_props)  # the deploy script reads classes from here
            entry = proto.metadata_props.add()
            entry.key, entry.value = "quantization", "static int8 (QDQ), calibrated on the training images"
            onnx.save(proto, tmp)

        atomic_write(path, write_quantized)
