"""Every fast path gives the plain path's results: feature caches, ONNX Runtime extraction and prediction.

Runs the real ResNet50 at 32 px on tiny generated data. "Plain" is `feature_cache='off'` (a full
forward pass every batch) and `backend='torch'` (eager PyTorch).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TINY_SIZE

from tuner.config import AugmentConfig, TrainConfig
from tuner.data.discover import discover_dataset
from tuner.data.images import ImageCache, ImageDataset
from tuner.data.transforms import eval_transform, resize_size, train_transform
from tuner.errors import TunerError
from tuner.events import EpochEnd, StageStarted
from tuner.export.ort import (
    OnnxModel,
    onnx_cache_dir,
    onnxruntime_installed,
    resolve_backend,
)
from tuner.infer.predict import Predictor
from tuner.model.checkpoint import load_checkpoint
from tuner.model.resnet import calibrate_batchnorm, new_resnet50
from tuner.runtime.setup import setup_runtime
from tuner.train import features, train
from tuner.train.features import CachePlan, build_store, cache_key

needs_ort = pytest.mark.skipif(not onnxruntime_installed(), reason="onnxruntime is not installed")
# Same data, same order, same arithmetic up to float rounding: the cached path sums the backbone in a
# separate pass, so PyTorch-extracted features give the plain loop's weights to 1e-5.
WEIGHTS_ATOL = 1e-5
# ONNX Runtime folds BatchNorm into the convolutions and picks its own kernels, which differ between
# CPUs (CI saw other roundings than our machines): features then match to float32 rounding relative to
# their size (about 5e-5 of the norm through 50 layers here), and a head trained on them lands within
# about 2e-4 of the plain loop's weights. Compare by relative norm, with a 10x margin.
ORT_FEATURES_REL = 5e-4
ORT_WEIGHTS_REL = 2e-3


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-12))


def run(tmp_path, name, data, **overrides):
    """Train a tiny config to the end; returns (events, last checkpoint)."""
    values = dict(data=str(data), out=str(tmp_path / name), weights="random", image_size=TINY_SIZE, epochs=2,
                  batch_size=4, augment=AugmentConfig.from_preset("none"), num_workers=0,
                  cache_dir=str(tmp_path / "features"))
    values.update(overrides)
    events = list(train(TrainConfig(**values)))
    return events, load_checkpoint(tmp_path / name / "last.pt")


def fast_path_of(events) -> str:
    return next(e for e in events if isinstance(e, StageStarted)).fast_path


def planned_fast_path(tmp_path, name, data, **overrides) -> str:
    """The fast path a run announces as its first stage starts (after any feature extraction, so the
    cache is written); the run is then closed, as a stop would, without training an epoch."""
    values = dict(data=str(data), out=str(tmp_path / name), weights="random", image_size=TINY_SIZE, epochs=1,
                  batch_size=4, augment=AugmentConfig.from_preset("none"), num_workers=0,
                  cache_dir=str(tmp_path / "features"))
    values.update(overrides)
    events = train(TrainConfig(**values))
    try:
        return next(e for e in events if isinstance(e, StageStarted)).fast_path
    finally:
        events.close()


def assert_same_training(fast, plain, names=None, atol=WEIGHTS_ATOL, rel=None, loss_rel=1e-4):
    """Same weights (all, or those named) to `atol` (or to `rel` in relative norm), and the same
    history apart from timings."""
    fast_state, plain_state = fast[1]["model_state"], plain[1]["model_state"]
    for name in names or plain_state:
        if rel is None:
            assert torch.allclose(fast_state[name].float(), plain_state[name].float(), atol=atol), name
        else:
            assert relative_error(fast_state[name], plain_state[name]) <= rel, name
    fast_rows = [e.row() for e in fast[0] if isinstance(e, EpochEnd)]
    plain_rows = [e.row() for e in plain[0] if isinstance(e, EpochEnd)]
    assert len(fast_rows) == len(plain_rows)
    for f, p in zip(fast_rows, plain_rows, strict=True):
        assert f["epoch"] == p["epoch"] and f["lr"] == p["lr"]
        assert f["train_acc"] == p["train_acc"] and f["val_acc"] == p["val_acc"]
        assert f["train_loss"] == pytest.approx(p["train_loss"], rel=loss_rel)
        assert f["val_loss"] == pytest.approx(p["val_loss"], rel=loss_rel)


@pytest.fixture(params=["torch", pytest.param("onnxruntime", marks=needs_ort)])
def extraction(request, monkeypatch):
    """Run the feature cache's extraction through each backend."""
    monkeypatch.setattr(features, "extraction_backend", lambda runtime, until="layer4": request.param)
    return request.param


# ---- (a)-(c): cached training equals plain training ---------------------------------------------

def test_head_only_feature_cache_matches_the_plain_loop(tmp_path, tiny_dataset, extraction):
    cached = run(tmp_path, "cached", tiny_dataset, seed=3)
    plain = run(tmp_path, "plain", tiny_dataset, seed=3, feature_cache="off")
    assert "feature cache on: backbone features" in fast_path_of(cached[0])
    assert "feature cache off" in fast_path_of(plain[0])
    if extraction == "onnxruntime":
        assert_same_training(cached, plain, rel=ORT_WEIGHTS_REL, loss_rel=1e-3)
    else:
        assert_same_training(cached, plain)


def test_augmented_views_match_the_plain_loop_when_there_is_one_per_epoch(tmp_path, tiny_dataset, monkeypatch):
    # The claim is that view v is exactly the image the plain loop augments in epoch v, which only eager
    # PyTorch features can show to 1e-5. With ONNX Runtime's features (float rounding away, see
    # features.extraction_backend) this tiny random-backbone run has a saturated softmax, and one
    # near-tie tipping the other way left the head 1.6% away on both an AMD EPYC and an Intel Xeon:
    # the same happens with eager features nudged by random relative noise of 1e-4 (one seed in six).
    # ONNX Runtime's augmented views are checked where its claim lies, in their features (below).
    monkeypatch.setattr(features, "extraction_backend", lambda runtime, until="layer4": "torch")
    light = AugmentConfig.from_preset("light")
    cached = run(tmp_path, "cached", tiny_dataset, augment=light, cache_views=2, seed=5)
    plain = run(tmp_path, "plain", tiny_dataset, augment=light, feature_cache="off", seed=5)
    assert "2 augmented views per image" in fast_path_of(cached[0])
    assert_same_training(cached, plain)


def test_fewer_views_than_epochs_reuse_views_and_say_so(tmp_path, tiny_dataset):
    light = AugmentConfig.from_preset("light")
    events, _ = run(tmp_path, "cached", tiny_dataset, augment=light, cache_views=1, epochs=2)
    assert "one augmented view per image reused every epoch" in fast_path_of(events)


def test_frozen_prefix_cache_matches_the_plain_loop(tmp_path, tiny_dataset):
    cached = run(tmp_path, "cached", tiny_dataset, trainable="layer4", seed=2)
    plain = run(tmp_path, "plain", tiny_dataset, trainable="layer4", feature_cache="off", seed=2)
    assert "frozen stages up to layer3" in fast_path_of(cached[0])
    trained = [n for n in plain[1]["model_state"] if n.startswith(("layer4.", "fc."))]
    assert_same_training(cached, plain, names=trained)
    for name, value in plain[1]["model_state"].items():  # and the frozen stages did not move at all
        if name.startswith(("conv1", "bn1", "layer1", "layer2", "layer3")):
            assert torch.equal(cached[1]["model_state"][name], value), name


def test_onnxruntime_extracts_only_the_whole_backbone_in_fp32_on_a_cpu():
    cpu = setup_runtime(TrainConfig(device="cpu"))
    expected = "onnxruntime" if onnxruntime_installed() else "torch"
    assert features.extraction_backend(cpu, "layer4") == expected
    assert features.extraction_backend(cpu, "layer3") == "torch"  # prefix caches: see extraction_backend
    assert features.extraction_backend(dataclasses.replace(cpu, amp_dtype=torch.bfloat16), "layer4") == "torch"
    assert features.extraction_backend(dataclasses.replace(cpu, world_size=2), "layer4") == "torch"


def test_prefix_cache_is_skipped_when_augmentation_or_budget_forbid_it(tmp_path, tiny_dataset):
    assert "feature cache off: augmentation" in planned_fast_path(tmp_path, "aug", tiny_dataset, trainable="layer4",
                                                                  augment=AugmentConfig.from_preset("light"))
    assert "more than cache_budget_mb=0" in planned_fast_path(tmp_path, "budget", tiny_dataset, trainable="layer4",
                                                              cache_budget_mb=0)


# ---- (d): the cache is reused when nothing changed and recomputed when anything did ----------------

def test_cache_is_loaded_from_disk_when_nothing_changed(tmp_path, tiny_dataset):
    first = planned_fast_path(tmp_path, "first", tiny_dataset)
    again = planned_fast_path(tmp_path, "again", tiny_dataset)
    bigger = planned_fast_path(tmp_path, "bigger", tiny_dataset, image_size=TINY_SIZE + 8)
    assert "feature cache on" in first and "loaded from the cache folder" not in first
    assert "loaded from the cache folder" in again
    assert "feature cache on" in bigger and "loaded from the cache folder" not in bigger
    assert len(list((tmp_path / "features").glob("*.pt"))) == 2


@pytest.fixture
def key_parts(tiny_dataset):
    """Everything cache_key needs, for a small calibrated model (no training)."""
    spec = discover_dataset(tiny_dataset)
    cache = ImageCache(resize_size(TINY_SIZE))
    config = TrainConfig(image_size=TINY_SIZE, device="cpu")
    train_ds = ImageDataset(spec.train, train_transform(AugmentConfig.from_preset("none"), TINY_SIZE), cache)
    val_ds = ImageDataset(spec.val, eval_transform(TINY_SIZE), cache)
    torch.manual_seed(0)
    model = new_resnet50(len(spec.classes))
    calibrate_batchnorm(model, [torch.stack([val_ds[i][0] for i in range(len(val_ds))])])
    return dict(model=model.eval(), plan=CachePlan("layer4", 1), data_fingerprint=spec.fingerprint(),
                train_ds=train_ds, val_ds=val_ds, runtime=setup_runtime(config), seed=0)


def test_cache_key_changes_with_weights_image_size_transform_and_backend(key_parts):
    base = cache_key(**key_parts)
    assert cache_key(**key_parts) == base  # stable

    model = key_parts["model"]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.fc.weight += 1  # the head is not cached: its weights do not matter
        assert cache_key(**key_parts) == base
        model.layer2[0].conv1.weight[0, 0, 0, 0] += 1e-3
        assert cache_key(**key_parts) != base
        model.load_state_dict(original)
        model.bn1.running_mean[0] += 1  # BatchNorm statistics are part of the frozen function
        assert cache_key(**key_parts) != base
        model.load_state_dict(original)
    assert cache_key(**key_parts) == base

    other_size = dict(key_parts, train_ds=ImageDataset(key_parts["train_ds"].samples,
                                                       train_transform(AugmentConfig.from_preset("none"), 40),
                                                       key_parts["train_ds"].cache))
    assert cache_key(**other_size) != base
    augmented = dict(key_parts, train_ds=ImageDataset(key_parts["train_ds"].samples,
                                                      train_transform(AugmentConfig.from_preset("light"), TINY_SIZE),
                                                      key_parts["train_ds"].cache))
    assert cache_key(**augmented) != base
    assert cache_key(**key_parts, backend="torch") != cache_key(**key_parts, backend="onnxruntime")
    assert cache_key(**dict(key_parts, plan=CachePlan("layer3", 1))) != base
    assert cache_key(**dict(key_parts, plan=CachePlan("layer4", 2, augmented=True))) != base


def drain(generator):
    """Run a build_store generator to its end and return its FeatureStore."""
    while True:
        try:
            next(generator)
        except StopIteration as finished:
            return finished.value


@needs_ort
def test_onnxruntime_features_match_eager_features(key_parts, tmp_path):
    stores = {}
    for backend in ("torch", "onnxruntime"):
        key = cache_key(**key_parts, backend=backend)
        stores[backend] = drain(build_store(key_parts["model"], key_parts["plan"], key_parts["train_ds"],
                                            key_parts["val_ds"], TINY_SIZE, key_parts["runtime"], key, tmp_path,
                                            batch_size=8, backend=backend))
    eager, ort = stores["torch"], stores["onnxruntime"]
    assert eager.train.shape == ort.train.shape == (1, len(key_parts["train_ds"]), 2048)
    assert relative_error(ort.train, eager.train) <= ORT_FEATURES_REL
    assert relative_error(ort.val, eager.val) <= ORT_FEATURES_REL
    assert len(list(tmp_path.glob("*.pt"))) == 2  # one file per backend, never mixed


@needs_ort
def test_onnxruntime_features_of_augmented_views_match_eager_features(key_parts, tmp_path):
    light = ImageDataset(key_parts["train_ds"].samples, train_transform(AugmentConfig.from_preset("light"), TINY_SIZE),
                         key_parts["train_ds"].cache)
    parts = dict(key_parts, train_ds=light, plan=CachePlan("layer4", 2, augmented=True))
    stores = {}
    for backend in ("torch", "onnxruntime"):
        key = cache_key(**parts, backend=backend)
        stores[backend] = drain(build_store(parts["model"], parts["plan"], light, parts["val_ds"], TINY_SIZE,
                                            parts["runtime"], key, tmp_path, batch_size=8, backend=backend))
    eager, ort = stores["torch"], stores["onnxruntime"]
    assert eager.train.shape == ort.train.shape == (2, len(light), 2048)
    assert not torch.equal(eager.train[0], eager.train[1])  # two different augmented views
    for view in range(2):
        assert relative_error(ort.train[view], eager.train[view]) <= ORT_FEATURES_REL


@needs_ort
def test_exporting_the_backbone_keeps_frozen_batchnorm_in_eval_mode(key_parts):
    model = key_parts["model"]
    model.train()
    model.layer1.eval()  # a frozen stage under the default BatchNorm policy
    OnnxModel(features.BackbonePrefix(model, "layer2"), TINY_SIZE, "backbone-layer2")
    assert model.training and model.layer2.training and not model.layer1.training
    assert not any(m.training for m in model.layer1.modules())


# ---- (e): ONNX Runtime prediction agrees with eager PyTorch -------------------------------------------

@needs_ort
def test_onnxruntime_predictions_match_eager(trained_run, demo_dir):
    images = sorted(demo_dir.glob("*/*_00[0-2].png"))
    eager = Predictor.from_checkpoint(trained_run / "best.pt", backend="torch")
    fast = Predictor.from_checkpoint(trained_run / "best.pt", backend="onnxruntime")
    auto = Predictor.from_checkpoint(trained_run / "best.pt")
    assert (eager.backend, fast.backend, auto.backend) == ("torch", "onnxruntime", "onnxruntime")
    p_eager, p_fast = eager.probabilities(images), fast.probabilities(images)
    assert torch.equal(p_eager.argmax(1), p_fast.argmax(1))
    assert torch.allclose(p_eager, p_fast, atol=1e-4)  # float rounding differs between CPUs' kernels
    for a, b in zip(eager.predict(images, top_k=2), fast.predict(images, top_k=2), strict=True):
        assert [label for label, _ in a.top_k] == [label for label, _ in b.top_k]


@needs_ort
def test_onnx_file_is_exported_once_per_model_and_rebuilt_when_damaged(trained_run, demo_dir, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path / "home"))
    image = [demo_dir / "circles" / "circles_000.png"]
    first = Predictor.from_checkpoint(trained_run / "best.pt", backend="onnxruntime")
    expected = first.probabilities(image)
    files = list(onnx_cache_dir().glob("classifier-*.onnx"))
    assert len(files) == 1
    exported_at = files[0].stat().st_mtime_ns

    again = Predictor.from_checkpoint(trained_run / "best.pt", backend="onnxruntime")
    assert torch.equal(again.probabilities(image), expected)
    assert list(onnx_cache_dir().glob("classifier-*.onnx")) == files  # same weights: same file, reused

    files[0].write_bytes(b"damaged")
    rebuilt = Predictor.from_checkpoint(trained_run / "best.pt", backend="onnxruntime")
    assert torch.equal(rebuilt.probabilities(image), expected)
    assert files[0].stat().st_size > 1000 and files[0].stat().st_mtime_ns != exported_at

    state = load_checkpoint(trained_run / "best.pt")
    other = Predictor(new_resnet50(len(state["classes"])), state["classes"], TINY_SIZE, "other", backend="onnxruntime")
    other.probabilities(image)
    assert len(list(onnx_cache_dir().glob("classifier-*.onnx"))) == 2  # other weights: another file


def test_backend_choices_are_checked(trained_run, monkeypatch):
    with pytest.raises(TunerError, match="choose one of auto, torch, onnxruntime"):
        Predictor.from_checkpoint(trained_run / "best.pt", backend="tensorrt")
    with pytest.raises(TunerError, match="runs on the CPU"):
        resolve_backend("onnxruntime", "cuda")
    assert resolve_backend("auto", "cuda") == "torch"
    monkeypatch.setattr("tuner.export.ort.onnxruntime_installed", lambda: False)
    assert Predictor.from_checkpoint(trained_run / "best.pt").backend == "torch"  # auto falls back quietly
    with pytest.raises(TunerError, match="pip install onnxruntime"):
        Predictor.from_checkpoint(trained_run / "best.pt", backend="onnxruntime")


@needs_ort
def test_a_failed_export_falls_back_to_pytorch_and_says_why(trained_run, demo_dir, monkeypatch):
    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("tuner.export.onnx.export_onnx", broken_export)
    model = new_resnet50(2)
    predictor = Predictor(model, ["a", "b"], TINY_SIZE, "test")
    probs = predictor.probabilities([demo_dir / "circles" / "circles_000.png"])
    assert predictor.backend == "torch" and "unsupported operator" in predictor.backend_note
    assert torch.allclose(probs, torch.full((1, 2), 0.5))  # the zero head of a new model
    strict = Predictor(model, ["a", "b"], TINY_SIZE, "test", backend="onnxruntime")
    with pytest.raises(TunerError, match="backend='torch'"):
        strict.probabilities([demo_dir / "circles" / "circles_000.png"])


def test_a_failed_backbone_export_trains_on_pytorch_features_and_says_why(tmp_path, tiny_dataset, monkeypatch):
    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("tuner.export.onnx.export_onnx", broken_export)
    monkeypatch.setattr(features, "extraction_backend", lambda runtime, until="layer4": "onnxruntime")
    monkeypatch.setenv("TUNER_HOME", str(tmp_path / "home"))  # no earlier test's export of these weights to reuse
    assert ("computed by PyTorch, not ONNX Runtime: ONNX export failed (unsupported operator)"
            in planned_fast_path(tmp_path, "fallback", tiny_dataset))
    # Eager features do not belong under the ONNX Runtime key, so none are kept for the next run to load.
    assert not list((tmp_path / "features").glob("*.pt"))
