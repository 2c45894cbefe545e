"""Metrics: accuracy, confusion matrix, per-class precision/recall/F1, and the mistakes themselves."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..data.discover import DatasetSpec, prepare_dataset
from ..data.images import ImageCache, ImageDataset
from ..data.transforms import eval_transform, resize_size
from ..errors import TunerError
from ..metrics import confusion_matrix, per_class_report
from ..model.checkpoint import load_checkpoint, model_from_checkpoint


@dataclass
class EvalResult:
    classes: list[str]
    loss: float
    accuracy: float
    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray  # [n, num_classes]
    paths: list[str] = field(default_factory=list)

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.labels, self.preds, len(self.classes))

    def report(self) -> pd.DataFrame:
        return per_class_report(self.confusion, self.classes)

    def mistakes(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Misclassified images, most confident mistakes first."""
        rows = []
        for i in np.flatnonzero(self.preds != self.labels):
            rows.append({"path": self.paths[i] if self.paths else "", "true": self.classes[self.labels[i]],
                         "predicted": self.classes[self.preds[i]], "confidence": float(self.probs[i, self.preds[i]])})
        rows.sort(key=lambda r: -r["confidence"])
        return rows if limit is None else rows[:max(limit, 0)]  # 0 lists none (not all)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what metrics.json and `tuner evaluate --json` hold)."""
        return {"accuracy": self.accuracy, "loss": self.loss, "count": int(len(self.labels)),
                "classes": list(self.classes), "confusion_matrix": self.confusion.tolist(),
                "per_class": self.report().to_dict(orient="records")}


@torch.no_grad()
def predict_logits(model: torch.nn.Module, dataset: ImageDataset, batch_size: int = 32,
                   device: torch.device | str = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every image of `dataset`, in order; progress(done, total) after each batch."""
    model.eval().to(device)
    logits, labels = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([x for x, _ in items]).to(device)
        logits.append(model(x).float().cpu())
        labels += [y for _, y in items]
        if progress:
            progress(len(labels), len(dataset))
    return torch.cat(logits).numpy(), np.asarray(labels)


def result_from_logits(logits: np.ndarray, labels: np.ndarray, classes: list[str],
                       paths: list[str] | None = None) -> EvalResult:
    t = torch.from_numpy(logits).float()
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    loss = float(torch.nn.functional.cross_entropy(t, y)) if len(y) else float("nan")
    probs = torch.softmax(t, dim=1).numpy()
    preds = probs.argmax(axis=1)
    accuracy = float((preds == labels).mean()) if len(labels) else float("nan")
    return EvalResult(list(classes), loss, accuracy, np.asarray(labels), preds, probs, list(paths or []))


def evaluate_checkpoint(checkpoint: str, data: str | None = None, workdir: str | None = None, split: str = "val",
                        batch_size: int = 32, progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Evaluate a checkpoint on a dataset's validation (or train) split; defaults to its training data."""
    state = load_checkpoint(checkpoint)
    config = state.get("config", {})
    workdir = workdir or os.path.dirname(os.path.abspath(checkpoint))  # where training unpacked a zip too
    spec: DatasetSpec = prepare_dataset(data or config.get("data", "demo"), workdir,
                                        val_ratio=config.get("val_ratio", 0.2), seed=config.get("seed", 0))
    if spec.classes != list(state["classes"]):
        raise TunerError(f"The dataset's classes ({', '.join(spec.classes)}) differ from the checkpoint's "
                         f"({', '.join(state['classes'])}): evaluate on data with the same class folders.")
    samples = spec.val if split == "val" else spec.train
    size = int(state["image_size"])
    dataset = ImageDataset(samples, eval_transform(size), ImageCache(resize_size(size)))
    model = model_from_checkpoint(state)
    logits, labels = predict_logits(model, dataset, batch_size, progress=progress)
    return result_from_logits(logits, labels, spec.classes, [s.path for s in samples])
