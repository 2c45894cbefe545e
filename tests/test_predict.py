"""Top-k prediction from a fine-tuned checkpoint and from the base ImageNet model; evaluation."""

from __future__ import annotations

import pytest
import torch
from conftest import decompression_bomb
from PIL import Image

from tuner.errors import TunerError
from tuner.infer.evaluate import evaluate_checkpoint
from tuner.infer.predict import Predictor


def test_checkpoint_predictions_are_ranked_probabilities(trained_run, demo_dir):
    predictor = Predictor.from_checkpoint(trained_run / "best.pt")
    assert predictor.classes == ["circles", "squares", "stripes", "triangles"]
    images = [demo_dir / "circles" / "circles_000.png", Image.open(demo_dir / "stripes" / "stripes_001.png")]
    results = predictor.predict(images, top_k=10)
    assert len(results) == 2
    for result in results:
        assert len(result.top_k) == 4  # k is capped at the number of classes
        probs = [p for _, p in result.top_k]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        eager = torch.softmax(predictor.model(predictor.preprocess(images[:1])), dim=1)[0]
    assert results[0].top_k[0][1] == pytest.approx(float(eager.max()), abs=1e-5)


def test_unreadable_images_and_bad_k_are_clear_errors(trained_run, tmp_path):
    predictor = Predictor.from_checkpoint(trained_run / "best.pt")
    bad = tmp_path / "photo.jpg"
    bad.write_text("not an image")
    with pytest.raises(TunerError, match="Cannot read photo.jpg"):
        predictor.predict([bad])
    bomb = decompression_bomb(tmp_path / "bomb.png")
    with pytest.raises(TunerError, match=r"Cannot read bomb.png as an image \(more than the 64 MP limit\)"):
        predictor.predict([bomb])
    with pytest.raises(TunerError, match="at least 1"):
        predictor.predict([bad], top_k=0)


def test_base_imagenet_model_names_imagenet_classes(imagenet_weights_file):
    predictor = Predictor.imagenet()
    assert len(predictor.classes) == 1000 and predictor.classes[0] == "tench"
    result = predictor.predict([Image.new("RGB", (64, 64), (120, 30, 200))], top_k=3)[0]
    assert len(result.top_k) == 3 and all(label in predictor.classes for label, _ in result.top_k)


def test_base_model_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nothing"))
    with pytest.raises(TunerError, match="resnet50-0676ba61.pth"):
        Predictor.imagenet()


def test_evaluate_checkpoint_reports_metrics_and_mistakes(trained_run):
    result = evaluate_checkpoint(str(trained_run / "best.pt"))
    assert result.classes == ["circles", "squares", "stripes", "triangles"]
    assert result.confusion.sum() == len(result.labels) == 40
    assert result.accuracy == pytest.approx((result.preds == result.labels).mean())
    report = result.report().set_index("class")
    assert report.loc["macro avg", "support"] == 40
    mistakes = result.mistakes()
    assert len(mistakes) == int((result.preds != result.labels).sum())
    assert all(m["true"] != m["predicted"] for m in mistakes)
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)


def test_the_mistakes_limit_counts_from_the_most_confident_and_zero_lists_none():
    import numpy as np

    from tuner.infer.evaluate import EvalResult

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    result = EvalResult(["a", "b"], 0.5, 0.25, labels=np.array([1, 0, 1, 1]), preds=probs.argmax(1), probs=probs,
                        paths=["p0", "p1", "p2", "p3"])
    assert [m["path"] for m in result.mistakes()] == ["p0", "p1", "p3"]  # 0.9, 0.8, 0.7 sure of a wrong class
    assert [m["path"] for m in result.mistakes(2)] == ["p0", "p1"]
    assert result.mistakes(0) == [] and result.mistakes(-1) == []


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(TunerError, match="not a tuner checkpoint"):
        Predictor.from_checkpoint(tmp_path / "plain.pt")
