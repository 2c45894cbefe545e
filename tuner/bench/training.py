"""Items 1 and 3: head-only training (wall time and accuracy) and full fine-tune throughput on the CPU."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from ..events import RunStarted
from .plain import plain_train
from .report import item_entry
from .settings import TARGETS
from .timing import alternate, alternate_runs, train_phase_seconds
from .tuner_side import fast_path, tuner_config, tuner_train
from .workspace import BenchContext


def bench_head_only(ctx: BenchContext) -> dict[str, Any]:
    """Item 1: head-only training for `epochs` epochs, wall time and best validation accuracy."""
    s = ctx.settings

    def plain(r: int) -> dict[str, Any]:
        return plain_train(ctx.data, ctx.weights, s.image_size, s.epochs, s.batch_size, head_only=True, seed=s.seed)

    def ours(r: int) -> dict[str, Any]:
        config = tuner_config(ctx.data, ctx.work / f"head-{r}", ctx.weights, ctx.settings, trainable="head",
                              epochs=s.epochs)
        return tuner_train(config, ctx.work / f"home-head-{r}")

    plains, tuners = alternate_runs(s.repeats, plain, ours)
    plain_s, tuner_s = [p["seconds"] for p in plains], [t["seconds"] for t in tuners]
    ratios = [p / t for p, t in zip(plain_s, tuner_s)]
    # The accuracies of the last repeat are reported (every repeat trains the same way: same seed).
    p, t = plains[-1], tuners[-1]
    plain_path = ctx.work / "head-plain-best.pth"
    torch.save(p["best_state"], plain_path)
    tolerance = 1.0 / p["n_val"]  # one validation image
    accuracy_ok = t["best_val_acc"] >= p["best_val_acc"] - tolerance - 1e-9
    ratio = statistics.median(ratios)
    return item_entry(
        "head", f"head-only training, {s.epochs} epochs, {s.image_size} px, {p['n_train']}+{p['n_val']} images: "
        "wall time (best val acc)", "s", statistics.median(tuner_s), statistics.median(plain_s), ratios,
        met=ratio >= TARGETS["head"] and accuracy_ok,
        target=f">= {TARGETS['head']:g}x, val acc not lower",
        tuner_text=f"{statistics.median(tuner_s):.1f} s (acc {t['best_val_acc']:.3f})",
        plain_text=f"{statistics.median(plain_s):.1f} s (acc {p['best_val_acc']:.3f})",
        details={"tuner_best_val_acc": t["best_val_acc"], "plain_best_val_acc": p["best_val_acc"],
                 "tuner_final_val_acc": t["final_val_acc"], "plain_final_val_acc": p["final_val_acc"],
                 "accuracy_tolerance": tolerance, "accuracy_ok": accuracy_ok,
                 "n_train": p["n_train"], "n_val": p["n_val"], "epochs": s.epochs,
                 "tuner_seconds": tuner_s, "plain_seconds": plain_s,
                 "tuner_checkpoint": t["checkpoint"], "plain_weights": str(plain_path),
                 "plain_recipe": "frozen torchvision resnet50, SGD(fc, lr=0.01, momentum=0.9), StepLR(7, 0.1), "
                                 "RandomResizedCrop+flip, DataLoader defaults, model.train() each epoch",
                 "tuner_recipe": "train(trainable='head') with its defaults (AdamW, cosine, light augmentation, "
                                 "feature cache, ONNX Runtime extraction on a CPU), cold caches each repeat",
                 "fast_path": fast_path(t), "tuner_breakdown_s": t["breakdown"]})


def bench_finetune(ctx: BenchContext) -> dict[str, Any]:
    """Item 3: full fine-tune (every stage trains), training images/s after a warm-up epoch."""
    s = ctx.settings
    ratios, ours, plains, runtimes = [], [], [], []
    measured = range(2, s.finetune_epochs + 1) if s.finetune_epochs > 1 else range(1, 2)
    for r in range(s.repeats):
        def plain() -> float:
            run = plain_train(ctx.data, ctx.weights, s.image_size, s.finetune_epochs, s.batch_size, head_only=False,
                              seed=s.seed, lr=0.001)
            return run["n_train"] * len(measured) / sum(run["train_seconds"][e - 1] for e in measured)

        def tuner() -> float:
            config = tuner_config(ctx.data, ctx.work / f"finetune-{r}", ctx.weights, s, trainable="all",
                                  epochs=s.finetune_epochs)
            run = tuner_train(config, ctx.work / f"home-finetune-{r}")
            runtimes.append(next(e.device for _, e in run["timed"] if isinstance(e, RunStarted)))
            phases = train_phase_seconds(run["timed"])
            return s.trained_images * len(measured) / sum(phases[e] for e in measured)

        p, t = alternate(r, plain, tuner)
        plains.append(p)
        ours.append(t)
        ratios.append(t / p)
    ratio = statistics.median(ratios)
    return item_entry(
        "finetune", f"full fine-tune, {s.image_size} px, batch {s.batch_size}: training images/s", "img/s",
        statistics.median(ours), statistics.median(plains), ratios, met=ratio >= TARGETS["finetune"],
        target=f">= {TARGETS['finetune']:g}x", higher_is_better=True,
        details={"tuner_img_s": ours, "plain_img_s": plains, "measured_epochs": list(measured),
                 "plain_recipe": "torchvision resnet50, SGD(all, lr=0.001, momentum=0.9), RandomResizedCrop+flip, "
                                 "DataLoader defaults",
                 "tuner_recipe": "train(trainable='all') with its defaults (AdamW, light augmentation, images "
                                 "decoded once, loader workers, precision and memory layout chosen for the "
                                 "machine; each run starts from an empty TUNER_HOME, so it measures the layout "
                                 "first, outside the timed epochs)",
                 "tuner_runtime": runtimes})
