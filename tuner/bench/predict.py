"""Item 2: prediction latency at batch 1 on the CPU, image file to top-5, against an eager notebook."""

from __future__ import annotations

import copy
import random
import statistics
import time
from typing import Any

import torch
from PIL import Image

from ..data.demo import demo_image
from ..errors import TunerError
from ..export.ort import OnnxModel, onnxruntime_installed
from ..infer.predict import Predictor
from .plain import plain_model, plain_transforms
from .report import item_entry
from .settings import TARGETS
from .timing import latency_blocks
from .tuner_side import tuner_home
from .workspace import BenchContext


def bench_predict(ctx: BenchContext) -> dict[str, Any]:
    """Item 2: batch-1 latency on the CPU, JPEG file to top-5, Predictor vs an eager notebook."""
    s = ctx.settings
    classes = ["circles", "squares", "stripes", "triangles"]
    image = ctx.work / "photo.jpg"
    demo_image("circles", random.Random(7), size=2 * s.image_size).save(image, quality=90)
    torch.manual_seed(s.seed)
    model = plain_model(ctx.weights, len(classes), freeze=False).eval()
    transform = plain_transforms(s.image_size, augment=False)

    @torch.no_grad()
    def plain_probabilities() -> torch.Tensor:
        x = transform(Image.open(image).convert("RGB")).unsqueeze(0)
        return torch.softmax(model(x), dim=1)[0]

    def plain_predict() -> list[tuple[str, float]]:
        values, indices = plain_probabilities().topk(min(5, len(classes)))
        return [(classes[i], float(v)) for v, i in zip(values, indices)]

    with tuner_home(ctx.work / "home-predict"):
        predictor = Predictor(copy.deepcopy(model), classes, s.image_size, "bench", device="cpu")
        t0 = time.perf_counter()
        predictor.predict([str(image)], top_k=5)
        first_call = time.perf_counter() - t0  # includes the one-time ONNX export and check
        if predictor.backend_note:
            raise TunerError(f"bench: the predictor fell back to PyTorch ({predictor.backend_note})")
        expected = plain_probabilities()
        got = predictor.probabilities([str(image)])[0]
        if not torch.allclose(got, expected, atol=1e-3):  # ONNX Runtime rounds differently, by ~1e-6 here
            raise TunerError("bench: tuner's probabilities differ from eager PyTorch's; not timing a wrong answer "
                             f"(max difference {float((got - expected).abs().max()):.3g})")

        def ours() -> None:
            predictor.predict([str(image)], top_k=5)

        ratios, tuner_ms, plain_ms = latency_blocks(s, plain_predict, ours)
        # The model alone, on one preprocessed tensor: how much of the gap is the runtime itself.
        x = transform(Image.open(image).convert("RGB")).unsqueeze(0)
        fwd_ratios, fwd_tuner, fwd_plain = [], [], []
        if onnxruntime_installed():
            onnx = OnnxModel(model, s.image_size, "classifier")  # the file the predictor exported
            with torch.no_grad():
                fwd_ratios, fwd_tuner, fwd_plain = latency_blocks(s, lambda: model(x), lambda: onnx(x))
    ratio = statistics.median(ratios)
    return item_entry(
        "predict", f"prediction latency, batch 1, CPU, {s.image_size} px model, {2 * s.image_size} px JPEG to "
        "top-5", "ms", statistics.median(tuner_ms), statistics.median(plain_ms), ratios,
        met=ratio >= TARGETS["predict"], target=f">= {TARGETS['predict']:g}x",
        details={"backend": predictor.backend, "first_call_ms": first_call * 1000,
                 "tuner_ms": tuner_ms, "plain_ms": plain_ms,
                 "forward_only": ({"tuner_ms": statistics.median(fwd_tuner), "plain_ms": statistics.median(fwd_plain),
                                   "ratio": statistics.median(fwd_ratios), "ratios": fwd_ratios}
                                  if fwd_ratios else None),
                 "plain_recipe": "torchvision transforms on PIL, model.eval(), torch.no_grad(), fp32, default threads",
                 "calls_per_block": s.latency_calls})
