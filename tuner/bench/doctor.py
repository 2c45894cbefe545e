"""Item 5: the data check (`tuner doctor`) against one head-only training run of tuner on the same images.

Issue 16 asks that the check cost no more than the training run it is there to save. Both sides read
the same demo images at the same size, each from a cold start: its own TUNER_HOME (ONNX export) and
its own feature-cache folder, since the check and a head-only run share their features, and whichever
ran second would otherwise find the first one's.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

from ..config import TrainConfig
from ..errors import TunerError
from ..events import Message
from ..train.doctor import check_dataset
from .report import item_entry
from .settings import CLASSES, TARGETS
from .timing import alternate_runs, time_breakdown
from .tuner_side import tuner_config, tuner_home, tuner_train
from .workspace import BenchContext, backbone_weights, make_dataset


def bench_doctor(ctx: BenchContext) -> dict[str, Any]:
    """Item 5: wall time of the whole data check over that of one head-only `train()` at its defaults."""
    train_per_class, val_per_class = ctx.settings.doctor_split
    s = dataclasses.replace(ctx.settings, image_size=ctx.settings.doctor_image_size,
                            train_per_class=train_per_class, val_per_class=val_per_class)
    work = ctx.work / "doctor"
    data = make_dataset(work / "data", s)
    # The check's feature steps need a pretrained backbone: a weights file counts as one (ImageNet when
    # cached, else the calibrated stand-in every item starts from, at this item's size and images).
    weights, weights_text = backbone_weights(work, data, s)
    epochs = TrainConfig().epochs

    def training(r: int) -> dict[str, Any]:
        config = tuner_config(data, work / f"train-{r}", weights, s, trainable="head")
        return {**tuner_train(config, work / f"home-train-{r}"), "cache_dir": config.cache_dir}

    def check(r: int) -> dict[str, Any]:
        return timed_check(data, work / f"check-{r}", weights, s)

    trainings, checks = alternate_runs(s.repeats, training, check)
    check_s, train_s = [c["seconds"] for c in checks], [t["seconds"] for t in trainings]
    ratios = [c / t for c, t in zip(check_s, train_s)]
    t, c = trainings[-1], checks[-1]
    report = c["report"]
    if report.skipped:  # a partial check would be timed against a whole training run
        raise TunerError(f"bench: the data check skipped {'; '.join(report.skipped)}; not timing a partial check")
    images = CLASSES * (train_per_class + val_per_class)
    size = f"{images} images ({CLASSES * train_per_class}+{CLASSES * val_per_class}), {s.image_size} px"
    ratio = statistics.median(ratios)
    # The repeat the table describes: on a shared machine one busy repeat's phases say little.
    typical = min(range(len(ratios)), key=lambda i: abs(ratios[i] - ratio))
    return item_entry(
        "doctor", f"data check (tuner doctor, every check) against one head-only training run of tuner at its "
        f"defaults ({epochs} epochs), {size}: wall time, cold caches", "s",
        statistics.median(check_s), statistics.median(train_s), ratios, met=ratio <= TARGETS["doctor"],
        target=f"<= {TARGETS['doctor']:g}x (check/training)",
        tuner_text=f"check {statistics.median(check_s):.1f} s",
        plain_text=f"tuner training {statistics.median(train_s):.1f} s",
        ratio_means="check/training (time: at most 1 means the check costs no more than the run)",
        details={"images": images, "image_size": s.image_size, "training_epochs": epochs,
                 "check_seconds": check_s, "training_seconds": train_s,
                 "check_phases_s": [c["phases"] for c in checks],
                 "training_breakdown_s": [t["breakdown"] for t in trainings], "typical_repeat": typical,
                 "checked": report.checked, "check_summary": report.summary(),
                 "check_features_from_disk": c["features_from_disk"],
                 "check_cache_dir": c["cache_dir"], "training_cache_dir": t["cache_dir"],
                 "backbone": weights_text,
                 "check_recipe": "check_dataset() at its defaults (pixels, features, neighbours, 5-fold "
                                 "cross-validation), with the backbone as a weights file, so the feature checks run",
                 "training_recipe": "train(trainable='head') with its defaults (light augmentation, feature cache, "
                                    "ONNX Runtime extraction on a CPU)",
                 "checkpoint": t["checkpoint"]})


def timed_check(data, workdir, weights, s) -> dict[str, Any]:
    """`check_dataset` from a cold TUNER_HOME and its own cache folder; wall time and its phases."""
    cache_dir = workdir.parent / f"{workdir.name}-cache"
    timed: list[tuple[float, Any]] = []
    start = time.perf_counter()
    with tuner_home(workdir.parent / f"home-{workdir.name}"):
        report = check_dataset(str(data), str(workdir), s.image_size, str(weights), batch_size=s.batch_size,
                               seed=s.seed, cache_dir=str(cache_dir),
                               on_event=lambda event: timed.append((time.perf_counter(), event)))
    seconds = time.perf_counter() - start
    phases = time_breakdown(timed, start)
    # After the last phase's last step: the label ranking and the duplicate groups, told as findings.
    phases["findings"] = round(seconds - ((timed[-1][0] if timed else start) - start), 3)
    from_disk = any(isinstance(e, Message) and "loaded from the cache folder" in e.text for _, e in timed)
    return {"seconds": seconds, "report": report, "phases": phases, "features_from_disk": from_disk,
            "cache_dir": str(cache_dir)}
