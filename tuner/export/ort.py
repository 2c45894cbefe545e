"""ONNX Runtime on the CPU: the fast path for prediction and frozen-backbone feature extraction.

ONNX Runtime fuses BatchNorm into the convolutions and runs them in a blocked (NCHWc) layout, which
makes it faster than eager PyTorch on a CPU, most of all at small images and batches
(bench/results/ has the measured figures).

Only models that tuner itself builds are exported here (with `onnx.export_onnx`) and then run:
the file lives in a cache folder under a name that is the hash of the model's own weights, and a
user-supplied ONNX file is never loaded. Each export is checked against the eager model before use;
a cached file that fails to load is exported again.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..errors import TunerError
from ..paths import tuner_home
from . import onnx as onnx_format

BACKENDS = ("auto", "torch", "onnxruntime")
ONNX_CACHE_VERSION = 1
MAX_CACHED_MODELS = 6  # a ResNet50 is ~95 MB as ONNX; older files beyond this many are deleted
# ORT and eager PyTorch sum in different orders (and ORT folds BatchNorm into the weights), so the
# outputs differ by float rounding; this bound is far above that and far below any real difference.
VERIFY_RTOL = 1e-3
VERIFY_ATOL = 1e-4


class OnnxRuntimeUnavailable(RuntimeError):
    """ONNX Runtime cannot run this model here (not installed, export failed, outputs disagree)."""


def onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'torch' or 'onnxruntime' for a requested backend: auto means ONNX Runtime on a CPU when installed."""
    if backend not in BACKENDS:
        raise TunerError(f"backend={backend!r} is not known: choose one of {', '.join(BACKENDS)}.")
    device = torch.device(device)
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise TunerError("backend='onnxruntime' runs on the CPU here: use device='cpu', or backend='torch' on "
                             "the GPU.")
        if not onnxruntime_installed():
            raise TunerError("backend='onnxruntime' needs the onnxruntime package: pip install onnxruntime "
                             "(or use backend='torch').")
        return backend
    if backend == "auto":
        return "onnxruntime" if device.type == "cpu" and onnxruntime_installed() else "torch"
    return backend


def onnx_cache_dir() -> Path:
    return tuner_home() / "onnx"


def weights_fingerprint(module: nn.Module, image_size: int, kind: str) -> str:
    """Hash of everything the exported file depends on: weights and buffers, input size, exporter."""
    digest = hashlib.sha256(f"v{ONNX_CACHE_VERSION}|{kind}|{image_size}|torch {torch.__version__}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class OnnxModel:
    """A tuner-built module run by ONNX Runtime on the CPU, exported once and cached by its weights.

    `kind` names what the module computes (e.g. 'classifier', 'backbone-layer4') and goes into the
    cache key beside the weights, since two wrappers around one model export different graphs.
    """

    def __init__(self, module: nn.Module, image_size: int, kind: str, cache_dir: Path | None = None,
                 threads: int | None = None):
        if not onnxruntime_installed():
            raise OnnxRuntimeUnavailable("onnxruntime is not installed")
        import onnxruntime as ort

        self.image_size = image_size
        folder = cache_dir or onnx_cache_dir()
        self.path = folder / f"{kind}-{weights_fingerprint(module, image_size, kind)}.onnx"
        options = onnx_format.session_options(threads)
        fresh = not self.path.is_file()
        if not fresh:
            try:
                self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
                os.utime(self.path)  # recently used: kept when older files are pruned
            except Exception:  # noqa: BLE001 - a damaged cache file of our own: export it again
                fresh = True
        if fresh:
            self._export(module, folder)
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self._verify(module)
            prune_cache(folder, keep=self.path)

    def _export(self, module: nn.Module, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with modes_kept(module):
                onnx_format.export_onnx(module, self.path, self.image_size)
        except Exception as exc:  # noqa: BLE001 - any exporter failure means: run eagerly instead
            self.path.unlink(missing_ok=True)
            raise OnnxRuntimeUnavailable(f"ONNX export failed ({str(exc).splitlines()[0][:120]})") from exc

    @torch.no_grad()
    def _verify(self, module: nn.Module) -> None:
        """Compare with the eager module on a fixed input; a file that disagrees is deleted."""
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, self.image_size, self.image_size, generator=generator)
        with modes_kept(module):
            expected = module.eval()(x).float()
        got = self(x)
        scale = float(expected.abs().max()) or 1.0
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=VERIFY_RTOL, atol=VERIFY_ATOL * scale):
            self.path.unlink(missing_ok=True)
            diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("nan")
            raise OnnxRuntimeUnavailable(f"ONNX Runtime's outputs differ from PyTorch's (max difference {diff:.3g})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run on a float32 NCHW batch; returns a CPU tensor."""
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self.session.get_inputs()[0].name: array})[0])


@contextmanager
def modes_kept(module: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag afterwards (export switches the whole tree to eval,
    and `train(True)` would wrongly wake BatchNorm layers that a frozen stage keeps in eval mode)."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def prune_cache(folder: Path, keep: Path, max_files: int = MAX_CACHED_MODELS) -> None:
    """Delete the least recently used exported models beyond `max_files` (never `keep`)."""
    def last_used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # deleted meanwhile by another process pruning the same folder
            return 0.0

    files = sorted(folder.glob("*.onnx"), key=last_used, reverse=True)
    for old in [p for p in files if p != keep][max_files - 1:]:
        old.unlink(missing_ok=True)
