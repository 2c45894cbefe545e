"""The TensorRT format: engines from tuner's own model.onnx (GPU machines only; `tensorrt` is imported
lazily). Where TensorRT cannot run, the export still writes model.onnx and says how to build the engine.

Built with the TensorRT Python API: network from the ONNX parser, FP16 (and INT8 with calibration on
the user's images when asked), one optimization profile over the dynamic batch. Buffers are torch
CUDA tensors, so no pycuda is needed. Only engines that this module has just built are ever run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import TunerError
from ..paths import atomic_write
from . import onnx as onnx_format
from .job import Job, Written
from .onnx import INPUT_NAME, OUTPUT_NAME
from .tensorrt_setup import (
    TRT_INT8_NO_TRTEXEC,
    TRT_PROFILE,
    tensorrt_precision,
    tensorrt_status,
    trtexec_command,
)
from .verify import Check


def _trt():
    """The tensorrt module, after the same checks the export's report uses (GPU, package, version 10)."""
    usable, why = tensorrt_status()
    if not usable:
        raise TunerError(f"TensorRT cannot build or run engines here: {why}.")
    try:
        import tensorrt as trt
    except ImportError as exc:  # installed, but its CUDA libraries do not load
        raise TunerError(f"tensorrt is installed but does not load ({exc}): pip install -r requirements-gpu.txt on "
                         "a machine with an NVIDIA GPU.") from None
    return trt


def calibration_batches(images: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """The calibration images as full batches of exactly `batch`, repeating images where there are too few.

    TensorRT calibrates at the calibration profile's opt shape and reads batch x 3 x S x S floats from
    each pointer get_batch returns: a shorter batch would make it read past the buffer. So fewer
    images than `batch` are repeated, and a last partial batch is filled from the start (every image
    is used; a few count twice in the activation histograms, which only nudges the scales). `images`
    is not empty (build_engine checks).
    """
    total = -(-len(images) // batch) * batch
    return list(images[torch.arange(total) % len(images)].split(batch))


def _calibrator(trt, images: torch.Tensor, batch: int):
    """INT8 entropy calibration over the user's own images, `batch` (the profile's opt batch) at a time."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = calibration_batches(images, batch)
            self.index = 0
            self.on_device = None  # kept alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names):
            if self.index >= len(self.batches):
                return None
            self.on_device = self.batches[self.index].float().contiguous().cuda()
            self.index += 1
            return [int(self.on_device.data_ptr())]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache) -> None:
            return None

    return Calibrator()


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, image_size: int, fp16: bool = True,
                 int8: bool = False, calibration: torch.Tensor | None = None,
                 profile: tuple[int, int, int] = TRT_PROFILE) -> Path:
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TunerError(f"TensorRT could not parse {Path(onnx_path).name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = [(n, 3, image_size, image_size) for n in profile]
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(opt_profile)
    if int8:
        if calibration is None or not len(calibration):
            raise TunerError("INT8 TensorRT needs calibration images: export with --data pointing at your dataset.")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, calibration, batch=profile[1])  # the calibration profile's opt
        config.set_calibration_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TunerError("TensorRT could not build the engine (see the TensorRT log above): try without INT8, or "
                         "build it with the trtexec command.")
    return atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(bytes(serialized)))


def engine_runner(engine_path: str | os.PathLike) -> Callable[[torch.Tensor], np.ndarray]:
    """A function images -> logits for an engine this module built."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise TunerError(f"{Path(engine_path).name} was built for another GPU or TensorRT version: export it again.")
    context = engine.create_execution_context()

    largest = int(engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0])  # the profile's max batch
    # A stream of our own: on PyTorch's default (legacy) stream TensorRT warns on every call and adds
    # synchronisations. The copy in, the engine and the buffers all live on this stream, in order.
    stream = torch.cuda.Stream()

    def run_batch(x: torch.Tensor) -> torch.Tensor:
        stream.wait_stream(torch.cuda.current_stream())  # an input made on the GPU is finished first
        with torch.cuda.stream(stream):
            x = x.float().contiguous().cuda()
            context.set_input_shape(INPUT_NAME, tuple(x.shape))
            out = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.float32, device="cuda")
            context.set_tensor_address(INPUT_NAME, x.data_ptr())
            context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise TunerError("TensorRT could not run the engine: export it again on this machine.")
        stream.synchronize()
        return out.cpu()

    def run(x: torch.Tensor) -> np.ndarray:
        # Larger batches than the optimization profile allows run in slices of the largest it does.
        return torch.cat([run_batch(x[i:i + largest]) for i in range(0, len(x), largest)]).numpy()

    return run


def write(job: Job, path: Path) -> Written:
    """Build the engine from model.onnx (FP16, plus INT8 with job.tensorrt_int8), or where TensorRT cannot
    run, hand over model.onnx with the reason and the trtexec command that builds it on a GPU machine."""
    onnx_path = job.path("onnx")
    onnx_format.write(job, onnx_path)
    files = {"onnx": onnx_path}
    usable, why = tensorrt_status()
    command = trtexec_command(onnx_path.name, path.name, job.image_size)
    if not usable:
        message = (f"TensorRT engine not built here: {why}. You get {onnx_path.name} and the command that builds the "
                   f"FP16 engine on a GPU machine with TensorRT 10.x, in the folder with {onnx_path.name}: {command}"
                   + (f". {TRT_INT8_NO_TRTEXEC}" if job.tensorrt_int8 else ""))
        return Written(files, "not built here: " + why.split(" (")[0], [message], built=False)
    int8 = job.tensorrt_int8
    build_engine(onnx_path, path, job.image_size, fp16=True, int8=int8,
                 calibration=job.images.calibration if int8 else None)  # decoded only for INT8
    precision = tensorrt_precision(int8)  # FP16 rounds activations to 11 significant bits
    message = (f"The FP16 version of this engine from the command line: {command}. trtexec cannot repeat tuner's "
               "INT8 calibration, so it has no --int8." if int8 else f"The same engine from the command line: {command}")
    # Engines: agreement informs (near-ties may flip), the logits' distance decides; INT8 reports only.
    return Written({**files, "tensorrt": path}, precision["note"], [message],
                   check=Check(rel_target=precision["rel_target"]), label=precision["label"])


def runner(job: Job, path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    return engine_runner(path)
