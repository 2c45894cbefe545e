"""The data check finds what is planted: duplicates, leaks, label conflicts, bad images, outliers and
swapped labels, on generated images (pixel checks, the whole run with the real ResNet50 at 32 px) and
on generated feature matrices (the feature-space checks).

The feature-space checks are tested on synthetic features because the only backbone here is a random
one (nothing can be downloaded), whose features are chaotic: a JPEG re-encode of an image lands as
far from it as a different image does. Synthetic class clusters stand in for a pretrained backbone's.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SIZE
from PIL import Image, ImageFilter

from tuner.config import AugmentConfig, TrainConfig
from tuner.data import health_features as hf
from tuner.data.discover import discover_dataset
from tuner.data.exclusions import read_exclusions
from tuner.data.health import (
    KINDS,
    SEVERITIES,
    Finding,
    Report,
    duplicate_findings,
    exclude_samples,
)
from tuner.data.health_images import pixel_stats, sharpness
from tuner.errors import TunerError
from tuner.events import PHASES, Progress, StageStarted, drain
from tuner.train.doctor import check_dataset
from tuner.train.run import train

PATTERNS = ("checks", "hstripes", "vstripes")


def pattern_array(kind: str, rng: random.Random, width: int = 48, height: int = 48) -> np.ndarray:
    """Two random, clearly different colours in stripes or checks, with pixel noise (a sharp, textured image)."""
    period = rng.randint(3, 6)
    yy, xx = np.mgrid[0:height, 0:width]
    rows, cols = (yy + rng.randrange(period)) // period, (xx + rng.randrange(period)) // period
    on = {"hstripes": rows % 2 == 0, "vstripes": cols % 2 == 0, "checks": (rows + cols) % 2 == 0}[kind]
    a = np.array([rng.choice((rng.randint(0, 70), rng.randint(185, 255))) for _ in range(3)], dtype=np.float64)
    b = 255 - a  # at least 115 levels from `a` in every channel
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 8, (height, width, 3))
    return np.clip(np.where(on[..., None], a, b) + noise, 0, 255).astype(np.uint8)


def save(array: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def planted_dataset(root: Path, train: int = 12, val: int = 4) -> dict[str, set[str]]:
    """train/ and val/ folders of pattern classes with one of each problem planted; returns
    kind -> the dataset-relative paths the check must flag."""
    rng = random.Random(0)
    for split, count in (("train", train), ("val", val)):
        for kind in PATTERNS:
            for i in range(count):
                save(pattern_array(kind, rng), root / split / kind / f"{i:02d}.png")
    shutil.copy(root / "train/hstripes/00.png", root / "train/hstripes/copy.png")
    shutil.copy(root / "train/hstripes/01.png", root / "train/vstripes/looks_like_hstripes.png")
    shutil.copy(root / "train/checks/00.png", root / "val/checks/leaked.png")
    save(np.full((48, 48, 3), 128, np.uint8), root / "train/checks/blank.png")
    save(pattern_array("hstripes", rng, 8, 8), root / "train/hstripes/tiny.png")
    save(pattern_array("checks", rng, 120, 24), root / "train/checks/wide.png")
    dark = np.clip(pattern_array("vstripes", rng).astype(np.float64) / 10, 0, 255).astype(np.uint8)
    save(dark, root / "train/vstripes/dark.png")
    sharp = Image.fromarray(pattern_array("hstripes", rng))
    sharp.filter(ImageFilter.GaussianBlur(1.5)).save(root / "train/hstripes/blurry.png")
    Image.fromarray(pattern_array("vstripes", rng)).convert("L").convert("RGB").save(root / "train/vstripes/grey.png")
    return {"exact_duplicate": {"train/hstripes/copy.png"},
            "exact_conflict": {"train/hstripes/01.png", "train/vstripes/looks_like_hstripes.png"},
            "exact_leak": {"val/checks/leaked.png"}, "constant": {"train/checks/blank.png"},
            "small": {"train/hstripes/tiny.png"}, "odd_aspect": {"train/checks/wide.png"},
            "dark": {"train/vstripes/dark.png"}, "blurry": {"train/hstripes/blurry.png"},
            "greyscale": {"train/vstripes/grey.png"}}


def by_kind(report: Report) -> dict[str, Finding]:
    return {f.kind: f for f in report.findings}


def clusters(per_class: int = 60, classes: int = 4, dim: int = 64, separation: float = 0.6,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian class clusters, shifted positive like pooled ReLU features; at separation 0.6 a
    cross-validated logistic head gets about 95% of the true labels right (a pretrained backbone on an
    easy dataset)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, separation, (classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + rng.normal(0, 1, (len(labels), dim)) + 5).astype(np.float32), labels


# ---- the table of kinds and the report ----------------------------------------------------------------

def test_every_kind_has_a_severity_a_title_and_a_one_sentence_fix():
    for name, kind in KINDS.items():
        assert kind.severity in SEVERITIES, name
        assert kind.title and kind.fix.endswith("."), name
        assert ". " not in kind.fix, name  # one sentence


def test_a_finding_s_images_are_named_by_its_kind_and_only_where_leaving_them_out_is_the_fix():
    report = Report("data", [], [Finding("exact_leak", 1, ["val/a/1.png"]), Finding("blurry", 2, ["a/4.png", "a/2.png"]),
                                 Finding("small", 1, ["a/3.png"])])
    assert report.flagged(["blurry", "exact_leak"]) == ["a/2.png", "a/4.png", "val/a/1.png"]
    for kind in ("small", "wrong_label"):  # its fix is another (a smaller image size), or it was not found
        with pytest.raises(TunerError, match=f"'{kind}' is not a finding of this check whose images can be left "
                                             "out: choose from blurry, exact_leak"):
            report.flagged([kind])


def test_report_heads_with_a_count_of_problems_and_notes_and_lists_what_to_exclude():
    report = Report("data", [], [Finding("exact_leak", 1, ["val/a/1.png"]), Finding("wrong_label", 2, ["a/2.png", "b/3.png"]),
                                 Finding("imbalance", 2), Finding("blurry", 1, ["a/4.png"])])
    assert report.summary() == "2 problems worth fixing, 2 notes"
    assert Report("data", []).summary() == "No problems found"
    assert report.exclusions() == ["a/2.png", "b/3.png", "val/a/1.png"]  # problems only, and only images
    assert report.exclusions(("problem", "note")) == ["a/2.png", "a/4.png", "b/3.png", "val/a/1.png"]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["summary"] == report.summary()
    assert [f["severity"] for f in data["findings"]] == ["problem", "problem", "note", "note"]
    first = data["findings"][0]
    assert first["kind"] == "wrong_label" and first["count"] == 2 and first["fix"] == KINDS["wrong_label"].fix


# ---- duplicates ---------------------------------------------------------------------------------------------

def test_duplicate_groups_split_into_copies_label_conflicts_and_leaks():
    paths = ["train/a/1", "train/a/2", "train/b/3", "train/a/4", "val/a/5", "train/b/6", "train/b/7", "val/b/8"]
    labels = [0, 0, 1, 0, 0, 1, 1, 1]
    splits = [p.split("/")[0] for p in paths]
    groups = [[0, 1], [2, 3], [5, 6, 7], [3, 4]]
    found = {f.kind: f for f in duplicate_findings(groups, paths, labels, splits, ["a", "b"], "exact", accuracy=0.9)}
    assert found["exact_duplicate"].paths == ["train/a/2", "train/b/7"]
    assert found["exact_duplicate"].related == {"train/a/2": "train/a/1", "train/b/7": "train/b/6"}
    assert found["exact_conflict"].paths == ["train/a/4", "train/b/3"]
    assert found["exact_conflict"].related["train/a/4"] == "train/b/3 (b)"
    assert sorted(found["exact_leak"].paths) == ["val/a/5", "val/b/8"]
    # 2 of 2 validation images leaked: up to 100 points, and 100 x (1 - 0.9) = 10 at 90% accuracy.
    assert found["exact_leak"].figures == pytest.approx({"val_share": 1.0, "inflation": 0.1})
    assert "up to 100.0 points high (about 10.0" in found["exact_leak"].detail


# ---- pixel statistics -----------------------------------------------------------------------------------------

def test_sharpness_ignores_contrast_and_falls_with_blur():
    rng = random.Random(1)
    image = Image.fromarray(pattern_array("checks", rng))
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    assert sharpness(grey * 0.25) == pytest.approx(sharpness(grey), rel=1e-4)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)).convert("L"), dtype=np.float32)
    assert sharpness(blurred) < sharpness(grey) / 5
    assert sharpness(np.full((20, 20), 7.0, np.float32)) == 0.0


def test_pixel_hash_sees_decoded_pixels_not_file_bytes(tmp_path):
    array = pattern_array("hstripes", random.Random(2))
    Image.fromarray(array).save(tmp_path / "a.png")
    Image.fromarray(array).save(tmp_path / "b.png", compress_level=0)  # other bytes, same pixels
    Image.fromarray(array).save(tmp_path / "c.bmp")
    Image.fromarray(255 - array).save(tmp_path / "d.png")
    digests = [pixel_stats(tmp_path / name).digest for name in ("a.png", "b.png", "c.bmp", "d.png")]
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    assert digests[0] == digests[1] == digests[2] != digests[3]


# ---- the feature-space checks, on planted features --------------------------------------------------------------

def test_chunked_neighbour_search_equals_the_whole_similarity_matrix():
    x = hf.normalise(np.random.default_rng(0).normal(size=(300, 16)))
    sims, index = drain(hf.nearest_neighbours(x, k=5, budget_bytes=hf.BYTES_PER_CELL * 300 * 7))  # 7 rows a chunk
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expected = np.sort(full, axis=1)[:, ::-1][:, :5]
    assert np.allclose(sims, expected, atol=1e-5)
    assert np.allclose(np.take_along_axis(full, index, axis=1), sims, atol=1e-5)


def test_neighbour_search_stays_within_its_memory_budget():
    """n = 4000 compares 16 million pairs (64 MB of float32 similarities at once); with a 1 MiB budget
    the search's own allocations stay under the budget plus its n x k results."""
    n, k, budget = 4000, 10, 2**20
    x = hf.normalise(np.random.default_rng(0).normal(size=(n, 32)))
    assert hf.chunk_rows(n, budget) == budget // (hf.BYTES_PER_CELL * n) == 21
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        drain(hf.nearest_neighbours(x, k=k, budget_bytes=budget))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    results = n * k * (4 + 8)
    assert peak <= budget + results + 256 * 1024, peak
    assert peak < n * n * 4 / 20  # far from the whole matrix


def test_planted_near_copies_are_found_as_duplicates_conflicts_and_leaks():
    features, labels = clusters()
    rng = np.random.default_rng(3)
    originals = [0, 1, 70, 130]
    copies = features[originals] + rng.normal(0, 0.05, (len(originals), features.shape[1])).astype(np.float32)
    features = np.concatenate([features, copies])
    labels = np.concatenate([labels, [0, 0, 2, 3]])  # copies of 0 and 1 keep their class; of 70 and 130 not
    n = len(labels)
    sims, index = drain(hf.nearest_neighbours(hf.normalise(features)))
    threshold = hf.near_duplicate_similarity(sims)
    groups = hf.near_duplicate_pairs(sims, index, threshold)
    assert sorted(sorted(g) for g in groups) == [[0, n - 4], [1, n - 3], [70, n - 2], [130, n - 1]]
    paths = [f"img{i}" for i in range(n)]
    splits = ["train"] * n
    splits[n - 3] = "val"
    found = {f.kind: f for f in duplicate_findings(groups, paths, labels.tolist(), splits, list("abcd"), "near")}
    assert found["near_duplicate"].paths == [f"img{n - 4}"]
    assert found["near_leak"].paths == [f"img{n - 3}"]
    assert set(found["near_conflict"].paths) == {"img70", f"img{n - 2}", "img130", f"img{n - 1}"}
    # Exact copies are the pixel check's: marked the same, they do not link here.
    digests = [str(i) for i in range(n)]
    digests[n - 4] = digests[0]
    assert [0, n - 4] not in [sorted(g) for g in hf.near_duplicate_pairs(sims, index, threshold, same=digests)]


def test_near_copies_do_not_chain_into_one_group():
    # A is near B and B near C, but A is not near C: only B and C (different classes) conflict, and A
    # is a plain near-copy of B, never called a copy of C.
    sims = np.array([[0.97, 0.0], [0.976, 0.97], [0.976, 0.0]], dtype=np.float32)
    index = np.array([[1, 2], [2, 0], [1, 0]])
    pairs = hf.near_duplicate_pairs(sims, index, threshold=0.965)
    assert pairs == [[0, 1], [1, 2]]
    found = {f.kind: f for f in duplicate_findings(pairs, ["A", "B", "C"], [0, 0, 1], ["train"] * 3, ["x", "y"], "near")}
    assert found["near_conflict"].paths == ["B", "C"] and "A" not in found["near_conflict"].related
    assert found["near_duplicate"].paths == ["B"] and found["near_duplicate"].related["B"] == "A"


def test_a_planted_outlier_is_the_only_one_found():
    # Tight classes, as a pretrained backbone makes of distinct subjects (median distance to the nearest
    # neighbours 0.17); the stranger lies off in a random direction (0.74 from its nearest; robust z 27,
    # the next image's 3).
    features, _ = clusters(separation=2.0)
    stranger = (np.random.default_rng(9).normal(0, 4, (1, features.shape[1])) + 5).astype(np.float32)
    features = np.concatenate([features, stranger])
    sims, _ = drain(hf.nearest_neighbours(hf.normalise(features)))
    assert hf.outliers(hf.outlier_scores(sims)) == [len(features) - 1]


# Measured on this planted case (240 images, 24 labels swapped, 5-fold logistic heads + cleanlab's
# find_label_issues): 25 flagged, 20 of them swapped, each with its true class suggested. Pinned
# exactly, so any change in the finder shows.
WRONG_LABEL_PRECISION, WRONG_LABEL_RECALL = 0.8, 20 / 24


def test_swapped_labels_are_found_with_the_measured_precision_and_recall():
    features, truth = clusters()
    rng = np.random.default_rng(1)
    swapped = rng.choice(len(truth), 24, replace=False)
    given = truth.copy()
    given[swapped] = (truth[swapped] + rng.integers(1, 4, len(swapped))) % 4
    probs = drain(hf.out_of_fold_probabilities(features, given, folds=5, seed=0))
    found = hf.likely_wrong_labels(given, probs)
    hits = len(set(found) & set(swapped.tolist()))
    assert hits / len(found) == pytest.approx(WRONG_LABEL_PRECISION, abs=1e-9)
    assert hits / len(swapped) == pytest.approx(WRONG_LABEL_RECALL, abs=1e-9)
    suggested = hf.suggested_classes(given, probs)
    assert np.all(suggested != given)
    caught = sorted(set(found) & set(swapped.tolist()))
    assert np.array_equal(suggested[caught], truth[caught])  # each swap caught is sent back to its true class


# ---- exclusions ----------------------------------------------------------------------------------------------------

def test_excluded_images_leave_the_dataset_and_the_rest_keep_their_split(tmp_path):
    root = tmp_path / "data"
    planted_dataset(root, train=3, val=2)
    spec = discover_dataset(root)
    exclude_file = tmp_path / "exclude.txt"
    exclude_file.write_text("# from the data check\n\n./val/checks/leaked.png\ntrain/checks/blank.png\n")
    kept = exclude_samples(spec, read_exclusions(exclude_file))
    names = {Path(s.path).relative_to(root).as_posix() for s in kept.train + kept.val}
    assert "val/checks/leaked.png" not in names and "train/checks/blank.png" not in names
    assert len(kept.train) == len(spec.train) - 1 and len(kept.val) == len(spec.val) - 1
    assert (root / "val/checks/leaked.png").is_file()  # nothing on disk changes
    with pytest.raises(TunerError, match="not in the dataset .*train/nope.png.*paths inside the dataset folder"):
        exclude_samples(spec, ["train/nope.png"])
    with pytest.raises(TunerError, match="no training image in hstripes"):
        exclude_samples(spec, [Path(s.path).relative_to(root).as_posix() for s in spec.train if s.label == 1])


# ---- the whole check, with the real ResNet50 ----------------------------------------------------------------------

def test_check_finds_every_planted_pixel_problem_and_says_why_feature_checks_need_weights(tmp_path):
    expected = planted_dataset(tmp_path / "data")
    events = []
    report = check_dataset(str(tmp_path / "data"), str(tmp_path / "work"), image_size=TINY_SIZE, weights="random",
                           on_event=events.append)
    found = by_kind(report)
    assert {kind: set(f.paths) for kind, f in found.items()} == expected
    assert report.summary() == "3 problems worth fixing, 6 notes"
    assert "17% of the width" in found["odd_aspect"].detail  # 5:1 at 32 px keeps 32 of 37 x 5 px
    assert "1 of 13 validation images" in found["exact_leak"].detail
    assert any("need a pretrained backbone" in s for s in report.skipped)
    assert {e.phase for e in events if isinstance(e, Progress)} == {"pixels"} <= set(PHASES)
    assert all((tmp_path / "data" / p).is_file() for p in report.exclusions())  # nothing moved or deleted


def test_feature_checks_share_head_only_training_s_feature_cache(tmp_path, imagenet_weights_file):
    data = make_small_pattern_set(tmp_path / "data")
    cache = str(tmp_path / "features")
    first = check_dataset(str(data), str(tmp_path / "work"), image_size=TINY_SIZE, weights="imagenet",
                          cache_dir=cache, folds=3)
    assert not first.skipped and not first.stopped
    assert any(c.startswith("labels, by 3-fold") for c in first.checked)
    assert any(c.startswith("near duplicates") for c in first.checked)
    assert len(list(Path(cache).glob("*.pt"))) == 1
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), weights="imagenet", image_size=TINY_SIZE,
                         epochs=1, batch_size=4, augment=AugmentConfig.from_preset("none"), num_workers=0,
                         cache_dir=cache)
    events = train(config)
    try:
        stage = next(e for e in events if isinstance(e, StageStarted))
    finally:
        events.close()
    assert "loaded from the cache folder" in stage.fast_path
    assert len(list(Path(cache).glob("*.pt"))) == 1


def make_small_pattern_set(root: Path) -> Path:
    rng = random.Random(5)
    for kind in PATTERNS:
        for i in range(6):
            save(pattern_array(kind, rng, 40, 40), root / kind / f"{i}.png")
    return root


def test_a_stop_request_returns_the_checks_that_finished(tmp_path):
    data = make_small_pattern_set(tmp_path / "data")
    stop = threading.Event()
    stop.set()
    report = check_dataset(str(data), str(tmp_path / "work"), image_size=TINY_SIZE, weights="random", stop=stop)
    assert report.stopped and report.summary().endswith("(stopped before every check ran)")
    assert report.checked == ["class balance of 3 classes"]


def test_a_stop_during_feature_extraction_keeps_the_pixel_checks(tmp_path, imagenet_weights_file):
    data = make_small_pattern_set(tmp_path / "data")
    shutil.copy(data / "checks/0.png", data / "checks/again.png")
    stop = threading.Event()

    def stop_once_extracting(event):
        if isinstance(event, Progress) and event.phase == "features":
            stop.set()

    report = check_dataset(str(data), str(tmp_path / "work"), image_size=TINY_SIZE, weights="imagenet",
                           cache_dir=str(tmp_path / "features"), batch_size=4, stop=stop,
                           on_event=stop_once_extracting)
    assert report.stopped
    assert by_kind(report)["exact_duplicate"].paths == ["checks/again.png"]
    assert not any(c.startswith(("near duplicates", "labels", "outliers")) for c in report.checked)
    assert not list((tmp_path / "features").glob("*.pt"))  # no half-computed cache is kept


def test_the_demo_set_has_no_problems_only_notes(demo_dir, tmp_path):
    # A clean dataset gets no false alarms beyond notes. The demo set has shapes whose colour differs
    # from the background while their grey level barely does: blankness is judged per colour channel.
    report = check_dataset(str(demo_dir), str(tmp_path / "work"), image_size=TINY_SIZE, weights="random")
    assert report.counts and not [f.kind for f in report.findings if f.severity == "problem"]
