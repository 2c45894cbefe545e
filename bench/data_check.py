"""How the data check's feature-space steps scale: `python bench/data_check.py [N] [--folds]`.

Times the chunked neighbour search over N images of 2048-d features (and its traced peak memory),
and with --folds the 5-fold cross-validated logistic heads and cleanlab's ranking over 10 classes.
The features are random: the search costs the same whatever they hold, and random labels make every
head fit run to its step cap, the slowest case of the cross-validation.
"""

import sys
import time
import tracemalloc

import numpy as np

from tuner.data import health_features as hf
from tuner.events import drain


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv and argv[0].isdigit() else 10_000
    rng = np.random.default_rng(0)
    features = np.abs(rng.normal(size=(n, 2048))).astype(np.float32)
    x = hf.normalise(features)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    drain(hf.nearest_neighbours(x))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    print(f"{n} images: neighbour search {seconds:.1f} s, {hf.chunk_rows(n)} rows a block, "
          f"peak {peak / 2**20:.0f} MiB beyond the features (budget {hf.SEARCH_BUDGET_BYTES / 2**20:.0f} MiB)")
    if "--folds" in argv:
        labels = rng.integers(0, 10, n)
        start = time.perf_counter()
        probs = drain(hf.out_of_fold_probabilities(features, labels, hf.FOLDS, 0))
        middle = time.perf_counter()
        hf.likely_wrong_labels(labels, probs)
        print(f"{hf.FOLDS}-fold cross-validation {middle - start:.1f} s, cleanlab ranking "
              f"{time.perf_counter() - middle:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
