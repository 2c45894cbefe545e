"""Judging an exported format against PyTorch on the same images.

torch is imported for annotations only: the format table (formats.py) names each format's Check, and
the CLI's parser reads that table, so `tuner --help` must not pay for importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# An FP32 format may differ from PyTorch by FP32_TARGET + FP32_REL_TARGET x the largest |logit|. Both
# compute the same ~50 layers in float32, summing in different orders (ONNX Runtime also folds
# BatchNorm into the convolutions, and its kernels differ between CPUs), so they part by rounding that
# grows with the size of the numbers summed: on real validation images we saw up to 9e-6 of the
# largest |logit| on an AMD EPYC (AVX2; 1.4e-4 at logits up to 172) and 2.2e-5 on an Intel Xeon with
# AVX-512/AMX (1.12e-4 at logits up to 5); PyTorch itself is as far from float64. A broken export
# moves the logits by their own size (BatchNorm left in train mode: 50-100% of the largest |logit|, a
# missing bottleneck 27-78%, a wrong BatchNorm eps 10-23%), and weights rounded through FP16 by
# 0.2-1%. FP32_REL_TARGET = 1e-4 sits between: 4x above the largest rounding seen, 18x below FP16
# weights. FP32_TARGET keeps logits near zero from demanding a bound of zero.
FP32_TARGET = 1e-4
FP32_REL_TARGET = 1e-4


# An FP16 engine's logits may differ from PyTorch's by at most this share of the largest |logit|. FP16
# rounding moves them by well under 1% here; a broken engine (wrong input layout, a bad layer) by as much
# as the logits themselves. Top-1 agreement is reported but not required: under this bound a label can
# only flip where PyTorch's top two are within 2 x the largest difference, a near-tie, and on a small
# verification set one such flip would fail any agreement threshold.
FP16_REL_TARGET = 0.05


@dataclass(frozen=True)
class Check:
    """How a format's logits are judged against PyTorch's; a None part asks nothing."""

    target: float | None = None  # absolute allowance on the largest |logit difference|
    rel_target: float | None = None  # plus this share of PyTorch's largest |logit|
    min_agreement: float | None = None  # the share of images whose top-1 label must agree

    @property
    def judged(self) -> bool:
        return self.target is not None or self.rel_target is not None or self.min_agreement is not None


FP32 = Check(FP32_TARGET, FP32_REL_TARGET, min_agreement=1.0)  # the same model: every label agrees
FP16 = Check(rel_target=FP16_REL_TARGET)
# Quantization may flip close calls: the row informs (with the accuracy table) rather than fails the export.
QUANTIZED = Check()


def passes(check: Check, max_diff: float, agreement: float, max_logit: float) -> bool:
    """Whether figures measured against PyTorch pass `check`: the largest |logit difference| within
    target + rel_target x the largest |logit| (the parts given), and enough top-1 agreement."""
    allowed = (check.target or 0.0) + (check.rel_target or 0.0) * max_logit
    within = (check.target is None and check.rel_target is None) or max_diff <= allowed
    return within and (check.min_agreement is None or agreement >= check.min_agreement)


def compare(name: str, path: Path, reference: torch.Tensor, logits: torch.Tensor, images: int,
            target: float | None, note: str = "", min_agreement: float | None = 1.0,
            rel_target: float | None = None) -> dict[str, Any]:
    """One verification row: largest |logit difference| and top-1 agreement against PyTorch, judged by
    `passes` with Check(target, rel_target, min_agreement). INT8 has no criterion: it "passes" (never
    fails the export), and `judged` False says no check was made."""
    check = Check(target, rel_target, min_agreement)
    diff = float((logits.float() - reference.float()).abs().max()) if images else float("nan")
    agree = float((logits.argmax(1) == reference.argmax(1)).float().mean()) if images else float("nan")
    scale = float(reference.float().abs().max()) if images else float("nan")
    return {"format": name, "file": path.name, "max_abs_diff": diff, "top1_agreement": agree, "images": images,
            "passed": passes(check, diff, agree, scale), "judged": check.judged, "note": note}


def verdict(row: dict[str, Any]) -> str:
    """What a verification row says: 'passed', 'failed', 'not built', or 'reported' (INT8: no criterion)."""
    if row["passed"] is None:
        return "not built"
    if not row["judged"]:
        return "reported"
    return "passed" if row["passed"] else "failed"
