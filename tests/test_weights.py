"""Where weights come from, and reading weights files without ever unpickling them."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50

from tuner.errors import TunerError
from tuner.model import weights as W
from tuner.model.resnet import build_model


def test_hub_cache_is_used_when_the_file_is_there(imagenet_weights_file):
    source = W.resolve_weights("imagenet")
    assert source.kind == "imagenet" and source.pretrained
    assert source.origin == "torch hub cache"
    assert Path(source.path) == imagenet_weights_file
    assert imagenet_weights_file.name == "resnet50-0676ba61.pth"
    assert imagenet_weights_file.parent == Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"


def test_tests_without_the_stand_in_see_an_empty_hub_cache():
    # The stand-in ImageNet file lives in a TORCH_HOME of its own, set only for the tests that ask for
    # it: here, in any test order, the default weights are the offline fallback.
    source = W.resolve_weights("imagenet")
    assert source.kind == "random" and not source.pretrained
    assert not (W.hub_checkpoint_dir() / W.IMAGENET_FILENAME).exists()


def test_offline_without_cache_falls_back_to_random_and_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    called = []
    monkeypatch.setattr(W, "download_imagenet_weights", lambda target: called.append(target))
    source = W.resolve_weights("imagenet")
    assert not called  # TUNER_OFFLINE=1 in tests: no network attempt at all
    assert source.kind == "random" and not source.pretrained
    assert "resnet50-0676ba61.pth" in source.message
    assert str(tmp_path / "empty-torch-home" / "hub" / "checkpoints") in source.message
    assert "copy" in source.message and W.IMAGENET_URL in source.message


def test_failed_download_falls_back_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("TUNER_OFFLINE")

    def fail(target):
        raise OSError("network unreachable")

    monkeypatch.setattr(W, "download_imagenet_weights", fail)
    monkeypatch.setattr(W, "_last_failure", None)
    source = W.resolve_weights("imagenet")
    assert not source.pretrained and "network unreachable" in source.message

    # The next callers (every Model tab change in the studio) get that failure, not a new wait for it...
    tries = []
    monkeypatch.setattr(W, "download_imagenet_weights", lambda target: tries.append(target))
    again = W.resolve_weights("imagenet")
    assert not tries and not again.pretrained
    assert re.search(r"the download failed \d+ s ago \(network unreachable; tried again 5 minutes after", again.message)
    # ...until the wait is over: then it is tried again.
    monkeypatch.setattr(W, "DOWNLOAD_RETRY_AFTER_S", 0)
    W.resolve_weights("imagenet")
    assert len(tries) == 1


def test_download_checks_the_hash_and_lands_in_the_hub_cache(tmp_path, monkeypatch):
    payload = b"pretend weights"
    remote = tmp_path / "remote.pth"
    remote.write_bytes(payload)
    monkeypatch.setattr(W, "IMAGENET_URL", remote.as_uri())
    target = tmp_path / "cache" / "resnet50-0676ba61.pth"
    monkeypatch.setattr(W, "IMAGENET_SHA256_PREFIX", hashlib.sha256(payload).hexdigest()[:8])
    W.download_imagenet_weights(target)
    assert target.read_bytes() == payload
    target.unlink()
    monkeypatch.setattr(W, "IMAGENET_SHA256_PREFIX", "deadbeef")
    with pytest.raises(TunerError, match="checksum"):
        W.download_imagenet_weights(target)
    assert not target.exists() and not list(target.parent.glob(".download-*"))  # nothing half-written


def test_user_file_must_exist():
    with pytest.raises(TunerError, match="Weights file not found"):
        W.resolve_weights("/no/such/weights.pth")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['TUNER_MARKER']}",))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("TUNER_MARKER", str(marker))
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"fc.weight": _Evil()}, f)
    torch.save({"state_dict": {"x": _Evil()}}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):  # a raw pickle, and one inside torch.save's zip format
        with pytest.raises(TunerError, match="refused"):
            W.read_state_dict(path)
        with pytest.raises(TunerError):
            build_model(3, W.resolve_weights(str(path)))
    assert not marker.exists()


def test_state_dict_formats_are_all_read(tmp_path):
    state = resnet50(weights=None).state_dict()
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.ckpt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    for name in ("plain.pth", "ddp.ckpt", "w.safetensors"):
        built = build_model(5, W.resolve_weights(str(tmp_path / name)))
        report = built.report
        assert len(report.loaded) == len(state) - 2, name  # everything but the 1000-class fc
        assert {n for n, _ in report.skipped} == {"fc.weight", "fc.bias"}, name
        assert "[1000, 2048] in file, [5, 2048] in model" in dict(report.skipped)["fc.weight"]
        assert report.missing == ["fc.weight", "fc.bias"]
        assert torch.equal(built.model.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])


def test_a_file_without_batchnorm_counters_reports_nothing_missing(tmp_path):
    # Older torchvision files have no num_batches_tracked buffers: step counters, not weights, so
    # their absence is not worth a line in the report.
    state = {k: v for k, v in resnet50(weights=None).state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 320 - 53
    torch.save(state, tmp_path / "old.pth")
    model = resnet50(weights=None)
    report = W.apply_state_dict(model, W.read_state_dict(tmp_path / "old.pth"))
    assert report.missing == [] and report.skipped == [] and len(report.loaded) == len(state)
    assert "missing (kept" not in report.summary()
    assert torch.equal(model.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    five = build_model(5, W.resolve_weights(str(tmp_path / "old.pth"))).report  # a new head: only it is missing
    assert five.missing == ["fc.weight", "fc.bias"]


def test_unrelated_or_broken_files_are_refused(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(TunerError, match="No tensor .* matches ResNet50"):
        build_model(2, W.resolve_weights(str(tmp_path / "other.pth")))
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(TunerError, match=r"not a readable PyTorch file: .* Save just the weights"):
        W.read_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(TunerError, match="safetensors"):
        W.read_state_dict(tmp_path / "junk.safetensors")
    torch.save({"note": "no tensors"}, tmp_path / "empty.pth")
    with pytest.raises(TunerError, match="no tensors"):
        W.read_state_dict(tmp_path / "empty.pth")


def test_nothing_touches_the_network_at_import(monkeypatch):
    import importlib
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("network used at import")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    import tuner
    for name in ("model.weights", "model.resnet", "data.images", "data.discover", "data.archives", "data.transforms",
                 "data.sampling", "train.run", "infer.predict", "cli.parser", "model.summary", "infer.evaluate",
                 "ui.plots", "train.features", "export.pipeline", "data.demo"):
        importlib.reload(importlib.import_module(f"tuner.{name}"))
    assert tuner.__version__
