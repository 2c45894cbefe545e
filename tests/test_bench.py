"""The benchmark runs and reports what really happened: structure, arithmetic and accuracies, never timings.

One `--quick` run (32 px, a few demo images, one repeat) covers every item; its accuracies are checked
by evaluating the checkpoints it left behind, independently of the benchmark's own code.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tuner.bench.gpu import (
    NO_GPU,
    backend_flags,
    gpu_peak_tflops,
    gpu_training_rate,
    training_share_of_peak,
)
from tuner.bench.machine import machine_info
from tuner.bench.report import format_table, write_report
from tuner.bench.settings import TARGETS, BenchSettings, settings_from_args
from tuner.bench.suite import build_parser, run_bench
from tuner.bench.timing import time_breakdown, train_phase_seconds
from tuner.cli import main
from tuner.events import Progress, StageStarted
from tuner.infer.evaluate import evaluate_checkpoint


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    settings = BenchSettings.quick_settings()
    report = run_bench(settings, workdir=work)
    yield report, settings
    shutil.rmtree(work, ignore_errors=True)  # ~2 GB of runs and checkpoints: gone once this module is done


def item(report, item_id):
    return next(i for i in report["items"] if i["id"] == item_id)


@pytest.mark.slow
def test_quick_bench_reports_every_item_with_consistent_numbers(quick_report, tmp_path):
    report, settings = quick_report
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["torch"] == torch.__version__
    assert [i["id"] for i in report["items"]] == ["head", "predict", "finetune", "gpu", "doctor"]
    for entry in report["items"]:
        if entry["skipped"]:
            continue
        assert entry["tuner"] > 0 and entry["plain"] > 0
        assert len(entry["ratios"]) == settings.repeats
        target = TARGETS[entry["id"]]
        if entry["id"] == "doctor":  # check/training time, at most its target
            assert entry["ratio"] == pytest.approx(entry["tuner"] / entry["plain"], rel=1e-9)
            assert entry["met"] is (entry["ratio"] <= target)
            continue
        # One repeat: the ratio is the two values' ratio, oriented so that above 1 means tuner is faster.
        faster = entry["tuner"] / entry["plain"] if entry["unit"] == "img/s" else entry["plain"] / entry["tuner"]
        assert entry["ratio"] == pytest.approx(faster, rel=1e-9)
        ok = entry["ratio"] >= target and entry["details"].get("accuracy_ok", True)
        assert entry["met"] is ok
    gpu = item(report, "gpu")
    if not torch.cuda.is_available():
        assert gpu["skipped"] == NO_GPU and gpu["met"] is None
    assert item(report, "predict")["details"]["backend"] in ("onnxruntime", "torch")
    # Each tuner fine-tune run says which device, precision and memory layout it chose (and why).
    runtimes = item(report, "finetune")["details"]["tuner_runtime"]
    assert len(runtimes) == settings.repeats
    assert all("channels_last measured" in r for r in runtimes) != torch.cuda.is_available()
    # The data check ran whole (the feature checks too) on its own images, each side from its own cold cache,
    # and its phases add up to its wall time.
    doctor = item(report, "doctor")["details"]
    assert doctor["images"] == settings.doctor_images and doctor["image_size"] == settings.doctor_image_size
    assert any(c.startswith("outliers") for c in doctor["checked"])
    assert any(c.startswith("labels, by") for c in doctor["checked"])
    assert any(c.startswith("near duplicates") for c in doctor["checked"])
    assert doctor["check_cache_dir"] != doctor["training_cache_dir"] and not doctor["check_features_from_disk"]
    for phases, seconds in zip(doctor["check_phases_s"], doctor["check_seconds"], strict=True):
        assert sum(phases.values()) == pytest.approx(seconds, abs=0.01)
    assert len(doctor["training_breakdown_s"]) == settings.repeats and doctor["typical_repeat"] == 0
    rows = report["cpu_settings"]["rows"]
    assert len(rows) == 4 and all(r["speedup"]["median"] > 0 for r in rows.values())

    path = write_report(report, tmp_path / "bench.json")
    assert json.loads(path.read_text())["items"][0]["id"] == "head"
    table = format_table(report)
    assert table.count("\n| 1 |") == 1 and "| 3 |" in table and "| 5 | data check" in table
    assert "Item 5, where the time went" in table
    assert (NO_GPU in table) != torch.cuda.is_available()


@pytest.mark.slow
def test_both_sides_of_head_only_training_reached_the_accuracies_reported(quick_report):
    report, settings = quick_report
    details = item(report, "head")["details"]
    data = report["workdir"] + "/data"

    # tuner: its best checkpoint, evaluated by the evaluate module (eager PyTorch). Training validated
    # on ONNX Runtime features, whose rounding may flip a borderline image at most.
    result = evaluate_checkpoint(details["tuner_checkpoint"], data)
    assert len(result.labels) == details["n_val"]
    assert result.accuracy == pytest.approx(details["tuner_best_val_acc"], abs=1 / details["n_val"] + 1e-9)

    # plain: the weights of its best epoch, evaluated here the way the tutorial's loop does.
    from torchvision import datasets, models
    from torchvision import transforms as T

    model = models.resnet50(num_classes=4)
    model.load_state_dict(torch.load(details["plain_weights"], weights_only=True))
    size = settings.image_size
    tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    val = datasets.ImageFolder(f"{data}/val", tf)
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val, batch_size=settings.batch_size):
            correct += int((model.eval()(x).argmax(1) == y).sum())
    assert correct / len(val) == pytest.approx(details["plain_best_val_acc"])
    assert details["accuracy_ok"] is (details["tuner_best_val_acc"] >= details["plain_best_val_acc"]
                                      - details["accuracy_tolerance"] - 1e-9)
    assert "feature cache on" in details["fast_path"]


def test_training_phase_is_timed_from_the_events_around_it():
    stage = StageStarted(1, "all", 1, 1, "full forward pass every batch")
    timed = [(0.0, stage), (1.0, Progress("train", 1, 1, 2)), (3.0, Progress("train", 1, 2, 2)),
             (4.0, Progress("val", 1, 1, 1)), (10.0, stage),  # e.g. a checkpoint written between epochs
             (11.0, Progress("train", 2, 1, 2)), (12.5, Progress("train", 2, 2, 2))]
    assert train_phase_seconds(timed) == {1: 3.0, 2: 2.5}
    assert time_breakdown(timed, start=-1.0) == {"setup and other": 7.0, "train": 5.5, "val": 1.0}


def test_gpu_item_settings_run_anywhere_and_leave_backend_flags_alone():
    flags = backend_flags()
    settings = BenchSettings.quick_settings(image_size=32, gpu_batch_size=2, gpu_steps=1, gpu_warmup=1)
    for tuner_settings in (True, False):
        assert gpu_training_rate(torch.device("cpu"), settings, tuner_settings) > 0
    assert backend_flags() == flags


def test_share_of_peak_and_the_peak_table():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("Some Future GPU") == 0.0
    # 224 px: 3 x 4.1 GMACs x 2 FLOPs per image; 1000 images/s on 989 TFLOP/s is 2.49% of peak.
    assert training_share_of_peak(1000, 224, 989.0) == pytest.approx(24.6e12 / 989e12)


def test_bad_settings_are_refused_with_the_fix(capsys):
    assert main(["bench", "--quick", "--repeats", "0"]) == 2
    assert "repeats=0: use at least 1" in capsys.readouterr().err
    assert main(["bench", "--quick", "--items", "head,speed"]) == 2
    assert "choose from head,predict" in capsys.readouterr().err.replace(", ", ",")
    assert main(["bench", "--quick", "--train-per-class", "4", "--batch-size", "3"]) == 2
    assert "last batch of one image" in capsys.readouterr().err
    assert main(["bench", "--quick", "--doctor-images", "8"]) == 2
    assert "doctor_images=8: use at least 20" in capsys.readouterr().err


def test_image_size_sets_every_item_the_data_check_included():
    assert settings_from_args(build_parser().parse_args([])).doctor_image_size == 128  # issue 16's size
    settings = settings_from_args(build_parser().parse_args(["--image-size", "96", "--doctor-images", "200"]))
    assert (settings.image_size, settings.doctor_image_size, settings.doctor_split) == (96, 96, (40, 10))


def test_the_table_says_how_torch_compile_did_on_the_gpu_or_why_it_was_left_out():
    gpu = {"id": "gpu", "skipped": None, "name": "GPU training images/s", "ratio": 2.6, "met": True,
           "ratio_spread": {"min": 2.5, "max": 2.7}, "tuner_text": "1000 img/s", "plain_text": "385 img/s",
           "target": ">= 2.5x", "details": {"compiled_img_s": [1100.0, 1200.0], "compile_skipped": None}}
    report = {"items": [gpu], "cpu_settings": None, "machine": machine_info(), "weights": "random",
              "settings": {"repeats": 2}, "date": "2026-11-23 12:00", "load_average": {}}
    assert "Item 4 with torch.compile: 1150.0 img/s" in format_table(report)
    gpu["details"] = {"compiled_img_s": None, "compile_skipped": "compile=True (--compile) needs a C compiler"}
    assert "Item 4 without torch.compile: compile=True (--compile) needs a C compiler" in format_table(report)
