"""Top-k predictions for images, from a fine-tuned checkpoint or from the base ImageNet model.

On a CPU the model runs through ONNX Runtime when it is installed (backend 'auto'), which is faster
than eager PyTorch at batch 1 (README.md's Speed section and bench/results/ have the figures). The ONNX
file is exported from the checkpoint's own model on first use and cached by its weights (see
`tuner.export.ort`); if that fails, prediction runs eagerly and `backend_note` says why.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from PIL import Image

from ..data.images import load_rgb, to_rgb
from ..data.transforms import MEAN, STD, eval_transform
from ..errors import TunerError
from ..export.ort import OnnxModel, OnnxRuntimeUnavailable, resolve_backend
from ..model.checkpoint import load_checkpoint, model_from_checkpoint
from ..model.resnet import new_resnet50
from ..model.weights import (
    IMAGENET_FILENAME,
    IMAGENET_WEIGHTS,
    WeightsSource,
    apply_state_dict,
    read_state_dict,
    resolve_weights,
)


@dataclass
class Prediction:
    image: str
    top_k: list[tuple[str, float]]  # (label, probability), most likely first

    def to_dict(self) -> dict:
        return {"image": self.image, "top_k": [{"label": label, "prob": prob} for label, prob in self.top_k]}


class Predictor:
    """A model plus what it needs to read images: classes, image size and normalisation.

    `backend`: 'auto' (ONNX Runtime on a CPU when installed, else PyTorch), 'onnxruntime' or 'torch'.
    `model` stays the eager PyTorch model whichever backend runs it.
    """

    def __init__(self, model: torch.nn.Module, classes: Sequence[str], image_size: int, source: str,
                 device: str | torch.device = "cpu", backend: str = "auto"):
        self.model = model.eval().to(device)
        self.classes = list(classes)
        self.image_size = image_size
        self.source = source  # one line saying which model this is
        self.device = torch.device(device)
        self.transform = eval_transform(image_size)
        self.requested_backend = backend
        self.backend = resolve_backend(backend, self.device)  # what runs the model: 'torch' or 'onnxruntime'
        self.backend_note = ""  # why the backend differs from the one asked for, when it does
        self._onnx: OnnxModel | None = None
        self._onnx_lock = threading.Lock()  # one export even when several requests arrive at once

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "onnxruntime":
            with self._onnx_lock:
                if self._onnx is None and self.backend == "onnxruntime":
                    try:
                        self._onnx = OnnxModel(self.model, self.image_size, "classifier")
                    except OnnxRuntimeUnavailable as exc:
                        if self.requested_backend == "onnxruntime":
                            raise TunerError(f"ONNX Runtime cannot run this model: {exc}. Use backend='torch'.") \
                                from None
                        self.backend, self.backend_note = "torch", f"running in PyTorch: {exc}"
            if self._onnx is not None:
                return self._onnx(x)
        return self.model(x)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", backend: str = "auto") -> "Predictor":
        state = load_checkpoint(path)
        if tuple(state["mean"]) != tuple(MEAN) or tuple(state["std"]) != tuple(STD):
            raise TunerError(f"{Path(path).name} uses a normalisation this tuner does not know: retrain it.")
        epoch = state.get("epoch", "?")
        return cls(model_from_checkpoint(state), state["classes"], int(state["image_size"]),
                   f"fine-tuned checkpoint {Path(path).name} (epoch {epoch})", device, backend)

    @classmethod
    def imagenet(cls, weights: str = "imagenet", device: str = "cpu", allow_download: bool = True,
                 backend: str = "auto") -> "Predictor":
        """The base model with its 1000 ImageNet classes (names from torchvision's weights metadata)."""
        source: WeightsSource = resolve_weights(weights, allow_download=allow_download)
        if not source.pretrained:  # prediction never falls back to random weights, as training does
            raise TunerError(f"The base ImageNet model needs its pretrained weights ({IMAGENET_FILENAME}), and none "
                             f"were found: {source.fix or 'use weights=imagenet or the path of that file'}.")
        model = new_resnet50(1000)
        report = apply_state_dict(model, read_state_dict(source.path), Path(source.path).name)
        if any(k.startswith("fc.") for k in report.missing):
            raise TunerError(f"{Path(source.path).name} has no 1000-class ImageNet head, so it cannot name ImageNet "
                             "classes: use the ImageNet weights file, or predict with a fine-tuned checkpoint.")
        crop = IMAGENET_WEIGHTS.transforms().crop_size[0]
        return cls(model, IMAGENET_WEIGHTS.meta["categories"], crop, f"base ImageNet model ({source.origin})", device,
                   backend)

    def preprocess(self, images: Iterable[str | os.PathLike | Image.Image]) -> torch.Tensor:
        tensors = []
        for item in images:
            if isinstance(item, Image.Image):
                img = to_rgb(item)
            else:
                try:
                    img = load_rgb(item)
                # A folder or a typo is named as typed (only the CLI and API can give one); a file that is
                # there but unreadable by its name, since the studio's uploads sit under temporary paths.
                except IsADirectoryError:
                    raise TunerError(f"{item} is a folder: give the images in it, e.g. {Path(item) / '*.jpg'}.") \
                        from None
                except FileNotFoundError:
                    raise TunerError(f"{item} not found: check the path.") from None
                except (OSError, SyntaxError, ValueError) as exc:
                    reason = str(exc).replace(str(item), Path(item).name)[:80]  # the file's name, not where it is
                    raise TunerError(f"Cannot read {Path(item).name} as an image ({reason}): use a "
                                     "JPEG, PNG, WebP, BMP, GIF or TIFF file.") from None
            tensors.append(self.transform(img))
        return torch.stack(tensors)

    @torch.no_grad()
    def probabilities(self, images: Sequence[str | os.PathLike | Image.Image], batch_size: int = 32,
                      progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        out = []
        for start in range(0, len(images), batch_size):
            out.append(self._softmax(self.preprocess(images[start:start + batch_size])))
            if progress:
                progress(min(start + batch_size, len(images)), len(images))
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    @torch.no_grad()
    def _softmax(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self._forward(x.to(self.device)).float(), dim=1).cpu()

    def _k(self, top_k: int) -> int:
        """How many labels each answer lists; checked before any image is read."""
        if top_k < 1:
            raise TunerError(f"top_k={top_k}: ask for at least 1.")
        return min(top_k, len(self.classes))

    def _top_k(self, names: Sequence[str], probs: torch.Tensor, k: int) -> list[Prediction]:
        results = []
        for name, row in zip(names, probs):
            values, indices = row.topk(k)
            results.append(Prediction(name, [(self.classes[i], float(v)) for v, i in zip(values, indices)]))
        return results

    def predict(self, images: Sequence[str | os.PathLike | Image.Image], top_k: int = 5,
                progress: Callable[[int, int], None] | None = None) -> list[Prediction]:
        k = self._k(top_k)
        names = [str(item) if not isinstance(item, Image.Image) else getattr(item, "filename", "") or "image"
                 for item in images]
        return self._top_k(names, self.probabilities(images, progress=progress), k)

    def predict_readable(self, paths: Sequence[str | os.PathLike], top_k: int = 5, batch_size: int = 32,
                         progress: Callable[[int, int], None] | None = None) -> tuple[list[Prediction], list[str]]:
        """Predictions for the files that can be read, and why each other one cannot: one bad file among
        a batch of uploads (or a folder's worth on the command line) costs its own answer only. Files are
        read batch by batch, each once, straight to its tensor, so memory does not grow with their number."""
        k = self._k(top_k)
        results: list[Prediction] = []
        unreadable: list[str] = []
        for start in range(0, len(paths), batch_size):
            names, tensors = [], []
            for path in paths[start:start + batch_size]:
                try:
                    tensors.append(self.preprocess([path])[0])
                    names.append(str(path))
                except TunerError as exc:
                    unreadable.append(str(exc))
            if tensors:
                results += self._top_k(names, self._softmax(torch.stack(tensors)), k)
            if progress:
                progress(min(start + batch_size, len(paths)), len(paths))
        return results, unreadable
