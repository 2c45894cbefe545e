"""The ONNX format: writing a model as ONNX (named input/output, a dynamic batch axis, metadata) and
running such a file with ONNX Runtime on the CPU.

INT8 and TensorRT are built from the model.onnx written here, and the ONNX Runtime fast path
(ort.py) exports its cached models with `export_onnx` and runs them with `session_options`.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data.transforms import resize_size
from ..paths import atomic_write
from ..runtime.setup import cpu_count
from .job import Job, Written

ONNX_OPSET = 17


INPUT_NAME = "input"


OUTPUT_NAME = "logits"


DEPLOY_SCRIPT = Path(__file__).parent / "deploy" / "predict_onnx.py"


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: int,
                metadata: dict[str, Any] | None = None, opset: int = ONNX_OPSET) -> Path:
    """Write `model` as ONNX with a dynamic batch axis, named input/output and metadata.

    `metadata` values are stored as JSON strings in the model's metadata_props (class names,
    preprocessing, ...), so a deployed model carries what it needs to read images.
    """
    import onnx

    path = Path(path)
    model = model.eval().cpu()
    example = torch.zeros(1, 3, image_size, image_size)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript; for a ResNet50 both give the same graph, and this one needs nothing extra.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), tmp, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        proto = onnx.load(tmp)
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key = key
            entry.value = value if isinstance(value, str) else json.dumps(value)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, tmp)

    return atomic_write(path, write)


def onnx_metadata(classes: Sequence[str], image_size: int, mean: Sequence[float], std: Sequence[float],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a deployed ONNX model needs to classify an image, stored in its metadata_props."""
    return {"classes": list(classes), "image_size": image_size, "resize_size": resize_size(image_size),
            "mean": list(mean), "std": list(std), "input_layout": "NCHW float32 RGB, 0..1 then normalised",
            "producer": f"tuner {__version__}", **(extra or {})}


def session_options(threads: int | None = None) -> Any:
    """Session settings for one model on a CPU: every core for one request, all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1  # one graph at a time; parallelism comes from inside each operator
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ENABLE_ALL adds the CPU-specific fusions, measured faster than EXTENDED (README, Speed).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads spin by default, taking the cores from whatever runs next (eager PyTorch slowed
    # down right after an ORT call; README, Speed); without spinning ORT itself measured no slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings are about graph details, not the user's work
    return options


def ort_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """images -> logits for an ONNX file this export just wrote (never a user-supplied one), on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(None), providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]


def write(job: Job, path: Path) -> Written:
    """Write model.onnx once per export (INT8 and TensorRT are built from it even when ONNX was not asked for)."""
    if path not in job.written:
        meta = job.meta
        extra = {"weights_source": meta["weights_source"].get("kind", ""), "checkpoint": meta["checkpoint"],
                 "epoch": meta["epoch"]}
        export_onnx(job.model, path, job.image_size,
                    onnx_metadata(job.classes, job.image_size, meta["mean"], meta["std"], extra))
        job.written.add(path)
    return Written({"onnx": path}, f"onnx.checker passed; opset {ONNX_OPSET}")


def runner(job: Job, path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    return ort_runner(path)


def write_deploy_script(out: Path) -> Path:
    """predict_onnx.py beside the ONNX files: classifies images with onnxruntime, numpy and pillow only."""
    return atomic_write(out / DEPLOY_SCRIPT.name, lambda tmp: shutil.copyfile(DEPLOY_SCRIPT, tmp))
