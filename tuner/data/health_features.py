"""Feature-space checks over an [n, d] matrix of backbone features: near duplicates, outliers and
likely wrong labels. Pure functions of arrays (no model, no files); `tuner.train.doctor` feeds them
the feature cache's pooled 2048-d features.

Similarity is the cosine of features centred on the dataset's mean. Pooled ReLU features are all
positive, so raw cosines between unrelated images sit high (0.7-0.9) and crowd the near-copies;
centring spreads them over -1..1 and leaves a near-copy near 1.

The neighbour search is exact and chunked: a block of rows is compared with every image at a time,
so beyond the normalised features themselves (n x d x 4 bytes, 0.8 GB for 100,000 images) it holds
at most `budget_bytes` (default 256 MiB) of similarities and sort indices, plus n x k results.
"""

from __future__ import annotations

import warnings
from typing import Iterator, Sequence

import numpy as np

# Two images are near-identical when their centred cosine distance is below this share of the
# dataset's median distance from an image to its nearest neighbour: cleanlab Datalab's rule and its
# default (0.13). A rule relative to the dataset holds for any backbone and image size, where a fixed
# cosine would need calibrating per backbone, and that could not be done here: pretrained weights
# cannot be downloaded where this was written, and a random backbone's features are chaotic (a 2 px
# shift of an image scored a centred cosine of 0.02, a JPEG re-encode 0.07, distinct images up to
# 0.63). The README's "Checking the data" has the figures.
NEAR_DUPLICATE_RATIO = 0.13
NEIGHBOURS = 10  # nearest neighbours kept per image (groups larger than this still join up through chains)
SEARCH_BUDGET_BYTES = 256 * 2**20
# An image is an outlier when its distance to its nearest neighbours exceeds the dataset's median by
# this many (scaled) median absolute deviations: a robust z-score, unmoved by the outliers themselves.
OUTLIER_MADS = 6.0
OUTLIER_NEIGHBOURS = 5
FOLDS = 5
BYTES_PER_CELL = 4 + 8  # one float32 similarity and argpartition's int64 index per compared pair


def normalise(features: np.ndarray) -> np.ndarray:
    """Centred on the mean, unit length (a zero row stays zero): dot products are centred cosines."""
    x = np.array(features, dtype=np.float32, copy=True)
    x -= x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, 1e-12)
    return x


def chunk_rows(n: int, budget_bytes: int = SEARCH_BUDGET_BYTES) -> int:
    """Rows compared at once so that their similarities and sort indices fit in `budget_bytes`."""
    return max(1, min(n, budget_bytes // (BYTES_PER_CELL * max(1, n))))


def nearest_neighbours(x: np.ndarray, k: int = NEIGHBOURS,
                       budget_bytes: int = SEARCH_BUDGET_BYTES) -> Iterator[tuple[int, int]]:
    """Each row's k most similar other rows of unit-length `x`; yields (rows done, n) progress and
    returns (similarities [n, k] descending, indices [n, k])."""
    n = len(x)
    k = max(0, min(k, n - 1))
    sims = np.empty((n, k), dtype=np.float32)
    index = np.empty((n, k), dtype=np.int64)
    rows = chunk_rows(n, budget_bytes)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = x[start:stop] @ x.T
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # an image is not its own neighbour
        if k:
            top = np.argpartition(block, n - k, axis=1)[:, n - k:]
            values = np.take_along_axis(block, top, axis=1)
            order = np.argsort(-values, axis=1)
            sims[start:stop] = np.take_along_axis(values, order, axis=1)
            index[start:stop] = np.take_along_axis(top, order, axis=1)
            del top
        del block
        yield stop, n
    return sims, index


def near_duplicate_similarity(sims: np.ndarray, ratio: float = NEAR_DUPLICATE_RATIO) -> float:
    """The centred cosine above which two images count as near-identical in this dataset."""
    median_distance = float(np.median(1.0 - sims[:, 0])) if sims.size else 0.0
    return 1.0 - ratio * max(median_distance, 1e-6)


def near_duplicate_pairs(sims: np.ndarray, index: np.ndarray, threshold: float,
                         same: Sequence[str] | None = None) -> list[list[int]]:
    """Every pair of images whose similarity is above `threshold`, once each, as [i, j] with i < j.

    Pairs, not connected groups: nearness is not transitive (A near B and B near C says nothing of A
    and C), so a group chained through B would call A a copy of C. `same`, when given (e.g. pixel
    digests), marks pairs that are exact copies: those are reported as exact duplicates already.
    """
    rows, cols = np.nonzero(sims > threshold)
    pairs = {tuple(sorted((i, j))) for i, j in zip(rows.tolist(), index[rows, cols].tolist())
             if i != j and (same is None or same[i] != same[j])}
    return [list(pair) for pair in sorted(pairs)]


def outlier_scores(sims: np.ndarray, k: int = OUTLIER_NEIGHBOURS) -> np.ndarray:
    """Distance of each image to its k nearest neighbours (1 - mean centred cosine): high means alone."""
    return 1.0 - sims[:, :k].mean(axis=1)


def robust_z(scores: np.ndarray) -> np.ndarray:
    median = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - median))  # 1.4826: a normal distribution's MAD -> its sigma
    return (scores - median) / max(float(mad), 1e-6)


def outliers(scores: np.ndarray, mads: float = OUTLIER_MADS) -> list[int]:
    """Indices whose robust z-score exceeds `mads`, most isolated first."""
    z = robust_z(scores)
    flagged = np.nonzero(z > mads)[0]
    return flagged[np.argsort(-z[flagged])].tolist()


def fold_count(labels: np.ndarray, folds: int = FOLDS) -> int:
    """Folds a stratified split can make: each class needs an image in every fold. 0: too few to try."""
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    return min(folds, smallest) if smallest >= 2 else 0


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int = FOLDS,
                              seed: int = 0) -> Iterator[tuple[int, int]]:
    """Class probabilities for every image from a logistic head that never saw it: k stratified folds,
    each head trained on the other k-1 (standardised features, L2 penalty). Yields (fold done, folds)
    and returns [n, classes] probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    classes = int(labels.max()) + 1
    probs = np.zeros((len(labels), classes), dtype=np.float64)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (fit, held) in enumerate(split.split(features, labels)):
        head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
        # One BLAS thread: these fits are small, and right after PyTorch computed the features its idle
        # threads still hold the cores; two BLAS threads then made the folds about 8x slower (README,
        # "Checking the data").
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore")  # an unconverged fit still ranks labels; its steps are capped for time
            head.fit(features[fit], labels[fit])
        probs[np.ix_(held, head.classes_)] = head.predict_proba(features[held])
        yield fold + 1, folds
    return probs


def likely_wrong_labels(labels: np.ndarray, probs: np.ndarray) -> list[int]:
    """Indices whose given label looks wrong by confident learning (cleanlab's `find_label_issues`):
    the given class gets a probability below that class's own average confidence while another class
    gets one above its average; ranked by how little the given label gets (self-confidence)."""
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about small classes; the ranking is still what we want
        # n_jobs=1: cleanlab would otherwise fork a process pool per call (the studio runs checks in threads),
        # and its result does not depend on the count; one process ranked 10,000 images in 0.14 s.
        ranked = find_label_issues(labels=labels, pred_probs=probs, return_indices_ranked_by="self_confidence",
                                   n_jobs=1)
    return [int(i) for i in ranked]


def suggested_classes(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """For each image, the most probable class other than its given one (what a wrong label should be)."""
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1.0
    return others.argmax(axis=1)
