"""Check a dataset before it costs a training run: every check of `data/health.py` and
`data/health_features.py`, fed from the feature cache.

    report = check_dataset("photos/", "work/", image_size=224, weights="imagenet")
    print(report.summary())            # "4 problems worth fixing, 2 notes"

It lives in train/ because its features are head-only training's: the same cache plan, key and
store (`features.plan_cache`, `cache_key`, `build_store`) for a head-only config without
augmentation, so a check followed by such a run (or the other way round) computes the features once.
(A run with augmentation caches augmented views, which are not what a data check should compare.)
Its wrong-label check trains heads too, by cross-validation on those features.

Progress comes as the training loop's events (`Progress`, `Message`) from `doctor_events`, whose
return value is the Report; a stop flag is honoured between batches and phases, and a stopped check
returns the findings of the checks that finished.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..config import AugmentConfig, TrainConfig
from ..data.discover import DatasetSpec, prepare_dataset
from ..data.health import (
    Finding,
    Report,
    balance_findings,
    digest_groups,
    duplicate_findings,
    exclude_samples,
    normalised_exclusions,
    relative_path,
)
from ..data.health_features import (
    FOLDS,
    NEAR_DUPLICATE_RATIO,
    OUTLIER_MADS,
    fold_count,
    likely_wrong_labels,
    near_duplicate_pairs,
    near_duplicate_similarity,
    nearest_neighbours,
    normalise,
    out_of_fold_probabilities,
    outlier_scores,
    outliers,
    suggested_classes,
)
from ..data.health_images import PixelStats, image_findings, pixel_stats
from ..data.transforms import resize_size
from ..events import Event, Message, Progress, StageStarted, drain
from ..model.weights import resolve_weights
from ..runtime.setup import setup_runtime
from .features import plan_cache
from .loop import StopSignal
from .session import build_session

PIXEL_CHUNK = 256  # images per progress step while hashing


def doctor_config(data: str, workdir: str, image_size: int = 224, weights: str = "imagenet", val_ratio: float = 0.2,
                  seed: int = 0, batch_size: int = 32, cache_dir: str = "", device: str = "auto",
                  cache_budget_mb: int = 2048) -> TrainConfig:
    """The head-only, unaugmented training config whose feature cache the check reads and fills."""
    return TrainConfig(data=str(data), out=str(workdir), weights=weights, trainable="head", image_size=image_size,
                       batch_size=batch_size, val_ratio=val_ratio, seed=seed, cache_dir=cache_dir, device=device,
                       cache_budget_mb=cache_budget_mb, augment=AugmentConfig.from_preset("none")).validate()


def check_dataset(data: str, workdir: str, image_size: int = 224, weights: str = "imagenet", *,
                  exclude: Sequence[str] = (), folds: int = FOLDS, stop: StopSignal | None = None,
                  on_event: Callable[[Event], None] | None = None, **settings) -> Report:
    """Run every check on `data` ('demo', a folder or a .zip) and return the Report; `settings` are
    doctor_config's (val_ratio, seed, batch_size, cache_dir, device, cache_budget_mb).

    A .zip is unpacked under `workdir` as training unpacks it under its `out` folder; the features are
    keyed by the unpacked files' paths, so give the run's `out` as `workdir` to share them.
    """
    config = doctor_config(data, workdir, image_size, weights, **settings)
    return drain(doctor_events(config, exclude=exclude, folds=folds, stop=stop), on_event)


def doctor_events(config: TrainConfig, spec: DatasetSpec | None = None, exclude: Sequence[str] = (),
                  folds: int = FOLDS, stop: StopSignal | None = None) -> Iterator[Event]:
    """Yield Progress and Message events while checking; return the Report."""
    stopped = (lambda: False) if stop is None else stop.is_set
    spec = exclude_samples(spec or prepare_dataset(config.data, config.out, config.val_ratio, config.seed), exclude)
    samples = spec.train + spec.val
    paths = [relative_path(s.path, spec.root) for s in samples]
    labels = np.array([s.label for s in samples], dtype=np.int64)
    splits = ["train"] * len(spec.train) + ["val"] * len(spec.val)
    report = Report(spec.root, spec.counts(), excluded=normalised_exclusions(exclude))
    report.findings += balance_findings(spec)
    report.checked.append(f"class balance of {len(spec.classes)} classes")

    stats = yield from _pixel_stats([s.path for s in samples], stopped)
    if stats is None:
        report.stopped = True
        return report
    report.findings += image_findings(paths, stats, config.image_size, resize_size(config.image_size))
    report.checked.append(f"pixels of {len(samples)} images (size, aspect ratio, exposure, blur, colour)")
    exact_groups = digest_groups([s.digest for s in stats])

    features = yield from _features(config, spec, report, stopped)
    report.stopped = stopped()
    accuracy = None
    if features is not None and not report.stopped:
        accuracy = yield from _feature_checks(features, labels, spec, paths, splits, [s.digest for s in stats],
                                              report, folds, config.seed, stopped)
    # Exact duplicates last, so that a leak's effect is told at the accuracy cross-validation measured.
    report.findings += duplicate_findings(exact_groups, paths, labels.tolist(), splits, spec.classes, "exact",
                                          accuracy)
    report.checked.append("exact duplicates (same pixels after decoding)")
    return report


def _pixel_stats(paths: list[str], stopped: Callable[[], bool]) -> Iterator[Event]:
    stats: list[PixelStats] = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # PIL decodes without the GIL
        for start in range(0, len(paths), PIXEL_CHUNK):
            if stopped():
                return None
            stats += pool.map(pixel_stats, paths[start:start + PIXEL_CHUNK])
            yield Progress("pixels", 0, len(stats), len(paths))
    return stats


def _relay(steps: Iterator[tuple[int, int]], phase: str, stopped: Callable[[], bool]) -> Iterator:
    """Forward a (done, total) generator as Progress events; return (its value, False), or (None, True)
    when a stop came before its last step."""
    while True:
        try:
            done, total = next(steps)
        except StopIteration as finished:
            return finished.value, False
        yield Progress(phase, 0, done, total)
        if stopped() and done < total:
            return None, True


def _features(config: TrainConfig, spec: DatasetSpec, report: Report, stopped: Callable[[], bool]) -> Iterator:
    """[n, 2048] pooled features of train then val images from head-only training's cache; None (with
    the reason in report.skipped) when the cache cannot hold them or a stop came."""
    runtime = setup_runtime(config)
    plan, why = plan_cache(config, "head", len(spec.train) + len(spec.val))
    if plan is None:
        report.skipped.append(f"near duplicates, outliers and wrong labels: {why}")
        return None
    source = resolve_weights(config.weights)
    if not source.pretrained:
        # A random backbone's features are chaotic (a re-encoded JPEG lands as far from its original as
        # another image does): neighbours and cross-validated labels would be noise, reported as findings.
        fix = f"to fix: {source.fix}" if source.fix else "random weights were asked for"
        report.skipped.append("near duplicates, outliers and wrong labels: these need a pretrained backbone's "
                              f"features, and there is none ({fix})")
        yield Message("warning", f"Skipped {report.skipped[-1]}.")
        return None
    # The head-only session training builds (same model, datasets and feature cache): its stage start computes
    # or loads the features, and says which (and whether ONNX Runtime fell back to PyTorch) as it does in a run.
    session = build_session(config, spec, source, runtime)
    for event in session.start_stage("head", 0, stopped):
        if isinstance(event, StageStarted):
            yield Message("info", event.fast_path)
        else:
            yield event
    store = session.store
    if store is None or stopped():
        return None
    return torch.cat([store.train[0], store.val]).cpu().numpy()


def _feature_checks(features: np.ndarray, labels: np.ndarray, spec: DatasetSpec, paths: list[str],
                    splits: list[str], digests: list[str], report: Report, folds: int, seed: int,
                    stopped: Callable[[], bool]) -> Iterator:
    """Near duplicates, outliers and wrong labels; returns the cross-validated accuracy (None if not measured)."""
    x = normalise(features)
    found, report.stopped = yield from _relay(nearest_neighbours(x), "neighbours", stopped)
    if report.stopped:
        return None
    sims, index = found
    del x
    scores = outlier_scores(sims)
    far = outliers(scores)
    if far:
        report.findings.append(Finding("outlier", len(far), [paths[i] for i in far],
                                       f"Farther from their nearest neighbours than {OUTLIER_MADS:.0f} robust "
                                       "deviations above the dataset's median.",
                                       figures={"median_distance": float(np.median(scores))}))
    report.checked.append("outliers (distance to the nearest neighbours in feature space)")
    accuracy = yield from _label_check(features, labels, spec, paths, report, folds, seed, stopped)
    # After cross-validation, so that a near-copy leak's effect is told at the measured accuracy.
    threshold = near_duplicate_similarity(sims)
    near = duplicate_findings(near_duplicate_pairs(sims, index, threshold, same=digests), paths, labels.tolist(),
                              splits, spec.classes, "near", accuracy)
    for finding in near:
        finding.figures["similarity_threshold"] = threshold
    report.findings += near
    report.checked.append(f"near duplicates (centred cosine above {threshold:.3f}: distance under "
                          f"{NEAR_DUPLICATE_RATIO} of the median distance to a nearest neighbour)")
    return accuracy


def _label_check(features: np.ndarray, labels: np.ndarray, spec: DatasetSpec, paths: list[str], report: Report,
                 folds: int, seed: int, stopped: Callable[[], bool]) -> Iterator:
    k = fold_count(labels, folds)
    if k < 2:
        report.skipped.append("wrong labels: every class needs at least 2 images for cross-validation")
        return None
    probs, report.stopped = yield from _relay(out_of_fold_probabilities(features, labels, k, seed), "folds", stopped)
    if report.stopped:
        return None
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    suspects = likely_wrong_labels(labels, probs)
    if suspects:
        finding = Finding("wrong_label", len(suspects), [paths[i] for i in suspects],
                          f"Out-of-fold probability of the given class is low while another class's is high "
                          f"({k}-fold cross-validated head, accuracy {accuracy:.0%}).", figures={"accuracy": accuracy})
        suggested = suggested_classes(labels, probs)
        finding.related = {paths[i]: spec.classes[int(suggested[i])] for i in suspects}
        report.findings.append(finding)
    report.checked.append(f"labels, by {k}-fold cross-validation of a logistic head (accuracy {accuracy:.0%})")
    return accuracy
