"""Judging an exported format against PyTorch on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FP32_TARGET = 1e-4  # largest |logit difference| allowed for an FP32 format against PyTorch


# An FP16 engine's logits may differ from PyTorch's by at most this share of the largest |logit|. FP16
# rounding moves them by well under 1% here; a broken engine (wrong input layout, a bad layer) by as much
# as the logits themselves. Top-1 agreement is reported but not required: under this bound a label can
# only flip where PyTorch's top two are within 2 x the largest difference, a near-tie, and on a small
# verification set one such flip would fail any agreement threshold.
FP16_REL_TARGET = 0.05


def compare(name: str, path: Path, reference: torch.Tensor, logits: torch.Tensor, images: int,
            target: float | None, note: str = "", min_agreement: float | None = 1.0,
            rel_target: float | None = None) -> dict[str, Any]:
    """One verification row: largest |logit difference| and top-1 agreement against PyTorch.

    FP32 formats must agree on every image and stay within `target`. An FP16 engine must stay within
    `rel_target` x the reference's largest |logit| (min_agreement None: near-ties may flip). INT8
    passes neither: quantization may flip close calls, so its row informs (with the accuracy table)
    rather than fails the export.
    """
    diff = float((logits.float() - reference.float()).abs().max()) if images else float("nan")
    agree = float((logits.argmax(1) == reference.argmax(1)).float().mean()) if images else float("nan")
    scale = float(reference.float().abs().max()) if images else float("nan")
    passed = ((min_agreement is None or agree >= min_agreement) and (target is None or diff <= target)
              and (rel_target is None or diff <= rel_target * scale))
    # INT8 has no criterion: it "passes" (never fails the export), and `judged` False says no check was made.
    judged = min_agreement is not None or target is not None or rel_target is not None
    return {"format": name, "file": path.name, "max_abs_diff": diff, "top1_agreement": agree, "images": images,
            "passed": passed, "judged": judged, "note": note}


def verdict(row: dict[str, Any]) -> str:
    """What a verification row says: 'passed', 'failed', 'not built', or 'reported' (INT8: no criterion)."""
    if row["passed"] is None:
        return "not built"
    if not row["judged"]:
        return "reported"
    return "passed" if row["passed"] else "failed"
