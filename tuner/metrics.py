"""Classification metrics as small pure functions: confusion matrix and per-class precision/recall/F1."""

from __future__ import annotations

import numpy as np
import pandas as pd


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[true, predicted] = count."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def per_class_report(cm: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, plus macro and weighted averages."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    table = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1,
                          "support": support.astype(int)})
    total = support.sum()
    weights = support / total if total else np.zeros_like(support)
    averages = pd.DataFrame([
        {"class": "macro avg", "precision": precision.mean(), "recall": recall.mean(), "f1": f1.mean(),
         "support": int(total)},
        {"class": "weighted avg", "precision": float((precision * weights).sum()),
         "recall": float((recall * weights).sum()), "f1": float((f1 * weights).sum()), "support": int(total)},
    ])
    return pd.concat([table, averages], ignore_index=True)
