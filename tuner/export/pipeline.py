"""Export a fine-tuned model: .pth -> ONNX -> TensorRT, each format verified against PyTorch.

Only models that tuner itself builds from a checkpoint (read with weights_only=True) are exported
and then run here; a user-supplied ONNX file or engine is never loaded.
"""

from __future__ import annotations

import copy
import functools
import json
import numbers
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torchvision
from torch import nn
from torchvision.models import resnet50

from .. import __version__
from ..data.discover import prepare_dataset
from ..data.images import ImageCache
from ..data.transforms import eval_transform, resize_size
from ..errors import TunerError
from ..model.checkpoint import load_checkpoint, model_from_checkpoint
from ..paths import atomic_write, output_folder
from .onnx import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, export_onnx, onnx_metadata, session_options
from .tensorrt import build_engine, engine_runner
from .tensorrt_setup import (
    TRT_INT8_NO_TRTEXEC,
    tensorrt_precision,
    tensorrt_status,
    trtexec_command,
)
from .verify import FP32, compare

FORMATS = ("pth", "safetensors", "onnx", "int8", "tensorrt")


BENCH_BATCH = 16  # the "larger batch" of the throughput column


FILE_NAMES = {"pth": "model.pth", "safetensors": "model.safetensors", "onnx": "model.onnx", "int8": "model.int8.onnx",
              "tensorrt": "model.engine"}


def parse_formats(value: str | Sequence[str]) -> list[str]:
    """'pth,onnx' or a list -> validated format names, in FORMATS order."""
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v and v.strip()]
    unknown = [v for v in items if v not in FORMATS]
    if unknown or not items:
        raise TunerError(f"Unknown export format {', '.join(unknown) or '(none given)'}: choose from "
                         f"{','.join(FORMATS)} (comma-separated), e.g. --format pth,onnx.")
    return [f for f in FORMATS if f in items]


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


class _Images:
    """The user's own images for verification (validation split) and INT8 calibration (training split)."""

    def __init__(self, state: dict[str, Any], data: str | None, workdir: Path, max_images: int):
        config = state.get("config", {}) or {}
        source = data or config.get("data")
        if not source:
            raise TunerError("The checkpoint does not say which data it was trained on: give the dataset (--data "
                             "DIR on the command line): its images verify the export and calibrate INT8.")
        if source != "demo" and not Path(source).expanduser().exists():
            raise TunerError(f"The training data {Path(source).name} is not on this machine any more: give a folder "
                             "or .zip of the same classes (--data on the command line): its images verify the export.")
        spec = prepare_dataset(source, workdir, val_ratio=config.get("val_ratio", 0.2), seed=config.get("seed", 0))
        if spec.classes != list(state["classes"]):
            raise TunerError(f"The dataset's classes ({', '.join(spec.classes)}) differ from the model's "
                             f"({', '.join(state['classes'])}): use data with the same class folders (the Data tab "
                             "in the studio, --data on the command line).")
        size = int(state["image_size"])
        cache = ImageCache(resize_size(size))

        transform = eval_transform(size)
        val = spread_evenly(spec.val, max_images)  # never empty: discover_dataset refuses an empty split
        self.x = torch.stack([transform(cache.get(s.path)) for s in val])
        self.labels = torch.tensor([s.label for s in val])
        self._load_calibration = lambda: torch.stack(
            [transform(cache.get(s.path)) for s in spread_evenly(spec.train, max_images)])

    @functools.cached_property
    def calibration(self) -> torch.Tensor:
        """Training images for INT8 calibration, decoded only when an INT8 format asks for them."""
        return self._load_calibration()


def spread_evenly(samples: Sequence, count: int) -> list:
    """`count` items at evenly spaced positions of `samples` (all of them when there are fewer). The
    lists are ordered by class, so every class is represented in proportion to its size."""
    if len(samples) <= count:
        return list(samples)
    return [samples[i * len(samples) // count] for i in range(count)]


def _ort_runner(path: Path) -> Callable[[torch.Tensor], Any]:
    """images -> logits (numpy) for an ONNX file this export just wrote (never a user-supplied one)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(None), providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]


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
    chosen = parse_formats(formats)
    if tensorrt_int8 and "tensorrt" not in chosen:
        raise TunerError("TensorRT INT8 applies to the TensorRT engine: choose the tensorrt format too (--format "
                         "...,tensorrt on the command line, 'TensorRT engine (GPU)' in the studio), or drop INT8.")
    whole = isinstance(max_images, numbers.Integral) and not isinstance(max_images, bool)
    if not whole or not 1 <= max_images <= MAX_VERIFY_IMAGES:  # 0 or less verifies nothing; too many fill the memory
        given = "an empty value" if max_images is None else repr(max_images)
        raise TunerError(f"The number of verification images must be a whole number from 1 to {MAX_VERIFY_IMAGES}, "
                         f"not {given}: give e.g. 64 (the default): --images on the command line, 'Validation "
                         "images to verify each format on' in the studio's Export tab.")
    max_images = int(max_images)
    state = load_checkpoint(checkpoint)  # before the folder is made: a refused checkpoint leaves nothing behind
    out = output_folder(out_dir)
    model = model_from_checkpoint(state)
    classes, size = list(state["classes"]), int(state["image_size"])
    report = ExportReport(out)
    steps = ["images"] + chosen + (["benchmark"] if benchmark else [])

    def step(label: str) -> None:
        if stop is not None and stop.is_set():
            raise TunerError("Export stopped on request; the files finished so far are kept.")
        if progress:
            progress(steps.index(label), len(steps), f"Exporting: {label}")

    step("images")
    images = _Images(state, data, Path(checkpoint).resolve().parent, max_images)
    with torch.no_grad():
        reference = model(images.x)
    report.accuracy.append({"format": "pytorch (fp32)", "accuracy": _accuracy(reference, images.labels),
                            "images": len(images.labels)})
    meta = _model_json(state, checkpoint)

    onnx_path = out / FILE_NAMES["onnx"]
    written: set[str] = set()
    runners: dict[str, Callable[[torch.Tensor], Any]] = {}  # per format, built once: verified, then timed
    need_onnx = any(f in chosen for f in ("onnx", "int8", "tensorrt"))
    for name in chosen:
        step(name)
        path = out / FILE_NAMES[name]
        if name in ("pth", "safetensors"):
            (_write_pth if name == "pth" else _write_safetensors)(model, path, meta)
            report.files[name] = path
            if name == "pth":
                report.files["model.json"] = out / "model.json"
            report.verification.append(compare(name, path, reference, _torchvision_logits(path, len(classes),
                                                                                          images.x), len(images.x),
                                               FP32.target, "loads strict=True into torchvision resnet50",
                                               FP32.min_agreement, FP32.rel_target))
        elif name == "onnx":
            _ensure_onnx(model, onnx_path, state, meta, written)
            report.files["onnx"] = onnx_path
            runners["onnx"] = _ort_runner(onnx_path)
            logits = torch.from_numpy(runners["onnx"](images.x))
            report.verification.append(compare("onnx", onnx_path, reference, logits, len(images.x), FP32.target,
                                               f"onnx.checker passed; opset {ONNX_OPSET}", FP32.min_agreement,
                                               FP32.rel_target))
        elif name == "int8":
            _ensure_onnx(model, onnx_path, state, meta, written)
            _quantize_int8(onnx_path, path, images.calibration)
            report.files["int8"] = path
            runners["int8"] = _ort_runner(path)
            logits = torch.from_numpy(runners["int8"](images.x))
            report.verification.append(compare("int8", path, reference, logits, len(images.x), None,
                                               "quantized: logits differ by design; see the accuracy table",
                                               min_agreement=None))
            report.accuracy.append({"format": "onnx int8", "accuracy": _accuracy(logits, images.labels),
                                    "images": len(images.labels)})
        elif name == "tensorrt":
            _ensure_onnx(model, onnx_path, state, meta, written)
            report.files.setdefault("onnx", onnx_path)
            usable, why = tensorrt_status()
            command = trtexec_command(onnx_path.name, path.name, size)
            if not usable:
                report.messages.append(f"TensorRT engine not built here: {why}. You get {onnx_path.name} and the "
                                       f"command that builds the FP16 engine on a GPU machine with TensorRT 10.x, in "
                                       f"the folder with {onnx_path.name}: {command}"
                                       + (f". {TRT_INT8_NO_TRTEXEC}" if tensorrt_int8 else ""))
                report.verification.append({"format": "tensorrt", "file": path.name, "max_abs_diff": float("nan"),
                                            "top1_agreement": float("nan"), "images": 0, "passed": None, "judged": False,
                                            "note": "not built here: " + why.split(" (")[0]})
                continue
            build_engine(onnx_path, path, size, fp16=True, int8=tensorrt_int8,
                         calibration=images.calibration if tensorrt_int8 else None)  # decoded only for INT8
            report.files["tensorrt"] = path
            runners["tensorrt"] = engine_runner(path)
            logits = torch.from_numpy(runners["tensorrt"](images.x))
            precision = tensorrt_precision(tensorrt_int8)  # FP16 rounds activations to 11 significant bits
            report.verification.append(compare("tensorrt", path, reference, logits, len(images.x), None,
                                               precision["note"], min_agreement=None,  # engines: agreement informs
                                               rel_target=precision["rel_target"]))
            if tensorrt_int8:
                report.accuracy.append({"format": precision["label"], "accuracy": _accuracy(logits, images.labels),
                                        "images": len(images.labels)})
                report.messages.append(f"The FP16 version of this engine from the command line: {command}. "
                                       "trtexec cannot repeat tuner's INT8 calibration, so it has no --int8.")
            else:
                report.messages.append(f"The same engine from the command line: {command}")
    if need_onnx and (out / FILE_NAMES["onnx"]).is_file():
        report.files["predict_onnx.py"] = _write_deploy_script(out)
    if benchmark:
        step("benchmark")
        if "onnx" in report.files and "onnx" not in runners:  # written for TensorRT only: timed all the same
            runners["onnx"] = _ort_runner(onnx_path)
        labels = {**BENCH_LABELS, "tensorrt": tensorrt_precision(tensorrt_int8)["label"]}
        report.speed = _benchmark(model, runners, size, labels)
        if any(row["format"] == EAGER_LABELS["cuda"] for row in report.speed):
            report.messages.append("Speed-ups compare each row with PyTorch eager on the same device: a TensorRT "
                                   "engine with PyTorch on the CUDA GPU, ONNX Runtime (run on the CPU here) with "
                                   "PyTorch on the CPU.")
    if progress:
        progress(len(steps), len(steps), "Export finished")
    return report


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def _model_json(state: dict[str, Any], checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What model.json holds beside model.pth: everything needed to use and trust the weights."""
    history = state.get("history") or []
    best = max(history, key=lambda row: row.get("val_acc", 0), default={})
    validation = {"best_val_acc": best.get("val_acc"), "best_epoch": best.get("epoch"), "epochs_trained": len(history)}
    metrics = state.get("best_metrics") or {}
    if metrics:  # the trainer's own best epoch (equal accuracy: the lower loss), so every number is from one epoch
        validation.update(best_val_acc=metrics.get("accuracy"), best_epoch=state.get("best_epoch", best.get("epoch")),
                          best_val_loss=metrics.get("loss"), val_images=metrics.get("count"),
                          per_class=[{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                                     for row in metrics.get("per_class", [])])
    return {"arch": "resnet50", "classes": list(state["classes"]), "num_classes": len(state["classes"]),
            "image_size": int(state["image_size"]), "resize_size": resize_size(int(state["image_size"])),
            "mean": list(state["mean"]), "std": list(state["std"]),
            "weights_source": state.get("weights_source", {}), "training_config": state.get("config", {}),
            "validation": validation,
            "checkpoint": Path(checkpoint).name, "epoch": state.get("epoch"),
            "load_with": f"torchvision.models.resnet50(num_classes={len(state['classes'])})"
                         ".load_state_dict(torch.load('model.pth', weights_only=True), strict=True)",
            "versions": {"tuner": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                         "python": platform.python_version()}}


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies: what torchvision's resnet50 state_dict holds, nothing else.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _write_pth(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(_plain_state_dict(model), tmp))
    atomic_write(path.parent / "model.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=str)))


def _write_safetensors(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    header = {"classes": json.dumps(meta["classes"]), "image_size": str(meta["image_size"]),
              "mean": json.dumps(meta["mean"]), "std": json.dumps(meta["std"]), "arch": "resnet50"}
    atomic_write(path, lambda tmp: save_file(_plain_state_dict(model), tmp, metadata=header))


def _torchvision_logits(path: Path, num_classes: int, x: torch.Tensor) -> torch.Tensor:
    """The interop check: plain torchvision, strict=True, from the file just written."""
    net = resnet50(weights=None, num_classes=num_classes)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        tensors = load_file(str(path))
    else:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(tensors, strict=True)
    with torch.no_grad():
        return net.eval()(x)


def _ensure_onnx(model: nn.Module, path: Path, state: dict[str, Any], meta: dict[str, Any], written: set) -> None:
    """Write model.onnx once per export (INT8 and TensorRT are built from it even when ONNX was not asked for)."""
    if str(path) in written:
        return
    extra = {"weights_source": meta["weights_source"].get("kind", ""), "checkpoint": meta["checkpoint"],
             "epoch": meta["epoch"]}
    export_onnx(model, path, int(state["image_size"]),
                onnx_metadata(state["classes"], int(state["image_size"]), state["mean"], state["std"], extra))
    written.add(str(path))


def _quantize_int8(onnx_path: Path, path: Path, calibration: torch.Tensor) -> None:
    """Static INT8 quantization (QDQ, per-channel weights), calibrated on the user's training images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: calibration[i:i + 8].numpy()} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)

        def write(tmp: str) -> None:
            quantize_static(str(prepared), tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            import onnx
            proto = onnx.load(tmp)
            source = onnx.load(str(onnx_path), load_external_data=False)
            del proto.metadata_props[:]
            proto.metadata_props.extend(source.metadata_props)  # the deploy script reads classes from here
            entry = proto.metadata_props.add()
            entry.key, entry.value = "quantization", "static int8 (QDQ), calibrated on the training images"
            onnx.save(proto, tmp)

        atomic_write(path, write)


def _write_deploy_script(out: Path) -> Path:
    source = Path(__file__).parent / "deploy" / "predict_onnx.py"
    return atomic_write(out / "predict_onnx.py", lambda tmp: shutil.copyfile(source, tmp))


MAX_VERIFY_IMAGES = 1000  # each is held in memory as a float tensor, twice (verification and calibration)


BENCH_LABELS = {"onnx": "onnx (onnxruntime)", "int8": "onnx int8 (onnxruntime)", "tensorrt": "tensorrt fp16"}


EAGER_LABELS = {"cpu": "pytorch (eager, cpu)", "cuda": "pytorch (eager, cuda)"}


GPU_FORMATS = {"tensorrt"}  # formats that run on the GPU; the ONNX Runtime sessions here are CPU-only


def _add_speedups(rows: list[dict], devices: list[str]) -> None:
    """Each row's speed-ups against PyTorch eager on the same device kind (`devices[i]`: "cpu"/"cuda"),
    so a GPU engine is compared with PyTorch on that GPU, not with the CPU; the CPU row when there is none."""
    by_format = {row["format"]: row for row in rows}
    for row, device in zip(rows, devices):
        base = by_format.get(EAGER_LABELS[device]) or by_format[EAGER_LABELS["cpu"]]
        row["latency_speedup"] = round(base["batch1_ms"] / row["batch1_ms"], 2) if row["batch1_ms"] else None
        row["throughput_speedup"] = round(row["throughput_img_s"] / base["throughput_img_s"], 2) \
            if base["throughput_img_s"] else None


def _benchmark(model: nn.Module, formats: dict[str, Callable], image_size: int,
               labels: dict[str, str] = BENCH_LABELS, repeats: int = 10) -> list[dict]:
    """Latency at batch 1 and throughput at BENCH_BATCH, for PyTorch eager and each runnable format, measured
    one after the other in this call on this machine (ratios are what to compare, not absolute times).
    `formats` maps format names to the runners the export verified with; `labels` names their rows."""
    def timed(run, x, repeats: int) -> float:
        run(x)  # warm-up: first calls allocate and pick kernels
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    x1 = torch.randn(1, 3, image_size, image_size)
    xb = torch.randn(BENCH_BATCH, 3, image_size, image_size)
    runners: list[tuple[str, Callable, str]] = []  # (row label, runner, device kind)

    def eager(x):
        with torch.inference_mode():
            return model(x)
    runners.append((EAGER_LABELS["cpu"], eager, "cpu"))
    if torch.cuda.is_available():  # the fair baseline for a GPU engine is PyTorch on the same GPU
        gpu_model = copy.deepcopy(model).cuda().eval()

        def eager_cuda(x):
            with torch.inference_mode():
                out = gpu_model(x.cuda(non_blocking=True))
                torch.cuda.synchronize()
                return out
        runners.append((EAGER_LABELS["cuda"], eager_cuda, "cuda"))
    runners.extend((labels[name], formats[name], "cuda" if name in GPU_FORMATS else "cpu")
                   for name in FORMATS if name in formats)
    rows = []
    for name, run, _ in runners:
        latency = timed(run, x1, repeats)
        batch_time = timed(run, xb, max(3, repeats // 3))
        rows.append({"format": name, "batch1_ms": round(latency * 1000, 2), "batch": BENCH_BATCH,
                     "throughput_img_s": round(BENCH_BATCH / batch_time, 1)})
    _add_speedups(rows, [device for _, _, device in runners])
    return rows
