"""Export checks that need no trained model: the format table, how each format is judged against
PyTorch, and the TensorRT setup. They run in milliseconds; tests/test_export.py exports for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuner.export.tensorrt_setup import trtexec_command
from tuner.export.verify import FP32_TARGET


def test_trtexec_command_builds_the_same_dynamic_profile():
    line = trtexec_command("my model.onnx", "out.engine", 224, max_batch=16)
    assert line.startswith("trtexec '--onnx=my model.onnx' --saveEngine=out.engine")
    assert "--minShapes=input:1x3x224x224 --optShapes=input:8x3x224x224 --maxShapes=input:16x3x224x224" in line
    assert line.endswith("--fp16")


def test_an_int8_engine_is_labelled_int8_and_judged_like_int8_onnx():
    from tuner.export.tensorrt_setup import tensorrt_precision
    from tuner.export.verify import FP16_REL_TARGET, compare

    reference = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    flipped = reference.clone()
    flipped[0] = torch.tensor([0.0, 2.0])  # 75% agreement: a broken FP16 engine, a possible INT8 one
    fp16, int8 = tensorrt_precision(False), tensorrt_precision(True)
    assert fp16["label"] == "tensorrt fp16" and "FP16" in fp16["note"] and fp16["rel_target"] == FP16_REL_TARGET
    assert "int8" in int8["label"] and "INT8" in int8["note"] and "FP16 engine" not in int8["note"]

    def judged(rule, logits):
        return compare("tensorrt", Path("model.engine"), reference, logits, 4, None, rule["note"],
                       None, rule["rel_target"])

    assert not judged(fp16, flipped)["passed"]
    row = judged(int8, flipped)
    assert row["passed"] and row["top1_agreement"] == 0.75  # reported, like the INT8 ONNX row, not a failure


@pytest.mark.parametrize("count, batches", [(3, 1), (8, 1), (19, 3)])
def test_int8_calibration_always_hands_tensorrt_full_batches_of_every_image(count, batches):
    from tuner.export.tensorrt import calibration_batches

    images = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 3, 2, 2)
    got = calibration_batches(images, 8)
    assert len(got) == batches and all(b.shape == (8, 3, 2, 2) for b in got)  # the opt shape TensorRT reads
    seen = torch.cat(got)[:, 0, 0, 0]
    assert set(seen.tolist()) == set(range(count))  # every image is used, none invented
    assert seen[:count].tolist() == list(range(count))  # in order; repeats only fill the end


def test_verification_images_are_spread_over_every_class():
    from tuner.export.job import spread_evenly

    samples = [(c, i) for c in "abcd" for i in range(25)]  # class-ordered, as datasets are
    picked = spread_evenly(samples, 64)
    assert len(picked) == 64 and len(set(picked)) == 64
    assert {c: sum(1 for k, _ in picked if k == c) for c in "abcd"} == {"a": 16, "b": 16, "c": 16, "d": 16}
    assert spread_evenly(samples[:10], 64) == samples[:10]


def test_speedups_compare_each_row_with_pytorch_eager_on_the_same_device():
    from tuner.export.speed import add_speedups

    def row(name, ms, per_s):
        return {"format": name, "batch1_ms": ms, "batch": 16, "throughput_img_s": per_s}

    rows = [row("pytorch (eager, cpu)", 100.0, 10.0), row("pytorch (eager, cuda)", 10.0, 400.0),
            row("onnx (onnxruntime)", 50.0, 20.0), row("tensorrt fp16", 2.0, 1600.0)]
    add_speedups(rows, ["cpu", "cuda", "cpu", "cuda"])
    speed = {r["format"]: (r["latency_speedup"], r["throughput_speedup"]) for r in rows}
    assert speed == {"pytorch (eager, cpu)": (1.0, 1.0), "pytorch (eager, cuda)": (1.0, 1.0),
                     "onnx (onnxruntime)": (2.0, 2.0), "tensorrt fp16": (5.0, 4.0)}  # not 50x against the CPU
    cpu_only = rows[:1] + rows[2:3]
    add_speedups(cpu_only, ["cpu", "cpu"])  # no GPU: everything against CPU eager, as before
    assert [(r["latency_speedup"], r["throughput_speedup"]) for r in cpu_only] == [(1.0, 1.0), (2.0, 2.0)]


def test_model_json_of_an_older_checkpoint_without_best_metrics_keeps_the_history_summary():
    from tuner.export.job import model_json as _model_json

    state = {"classes": ["a", "b"], "image_size": 32, "mean": [0.5] * 3, "std": [0.2] * 3,
             "history": [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}]}
    assert _model_json(state, "best.pt")["validation"] == {"best_val_acc": 0.75, "best_epoch": 2, "epochs_trained": 2}


def test_tensorrt_11_is_named_as_the_missing_piece(monkeypatch):
    import importlib.metadata
    import importlib.util

    from tuner.export import tensorrt_setup as export

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tensorrt"
                        else real_find_spec(name, *a))
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: {"tensorrt-cu13": "11.4.0.106"}.get(dist) or
                        (_ for _ in ()).throw(importlib.metadata.PackageNotFoundError(dist)))
    assert export.tensorrt_version() == (11, 4)
    usable, why = export.tensorrt_status()
    assert not usable and "TensorRT 11.4 is installed" in why and "requirements-gpu.txt" in why
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "10.16.1.11")
    assert export.tensorrt_version() == (10, 16)
    assert "removed" not in export.tensorrt_status()[1]  # 10.x is what the build expects


def test_verification_fails_fp32_drift_and_a_disagreeing_engine_but_only_informs_for_int8():
    from tuner.export.verify import FP16_REL_TARGET, compare

    reference = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    drift = reference + 1e-3  # same labels, logits off by more than the FP32 target
    flipped = reference.clone()
    flipped[0] = torch.tensor([0.0, 2.0])  # one label in four differs by the whole logit scale: broken
    path = Path("model.x")
    assert compare("onnx", path, reference, reference, 4, FP32_TARGET)["passed"]
    assert not compare("onnx", path, reference, drift, 4, FP32_TARGET)["passed"]
    assert not compare("tensorrt", path, reference, flipped, 4, None, min_agreement=None,
                       rel_target=FP16_REL_TARGET)["passed"]
    assert compare("tensorrt", path, reference, drift, 4, None, min_agreement=None, rel_target=FP16_REL_TARGET)["passed"]
    # FP16 rounding flips a near-tie (top two 0.02 apart, moved by 0.03 = 1.5% of the scale): 75% agreement
    # on 4 images, still the same model. Any fixed agreement threshold would fail small verification sets.
    near_tie = reference.clone()
    near_tie[1] = torch.tensor([1.00, 1.02])
    rounded = near_tie.clone()
    rounded[1] = torch.tensor([1.02, 0.99])
    row = compare("tensorrt", path, near_tie, rounded, 4, None, min_agreement=None, rel_target=FP16_REL_TARGET)
    assert row["passed"] and row["top1_agreement"] == 0.75
    assert not compare("tensorrt", path, near_tie, near_tie * 1.2, 4, None, min_agreement=None,
                       rel_target=FP16_REL_TARGET)["passed"]  # 20% off: too far for rounding
    row = compare("int8", path, reference, flipped, 4, None, min_agreement=None)
    assert row["passed"] and row["top1_agreement"] == 0.75


# (largest |logit difference|, largest |logit|) of ONNX Runtime against PyTorch on validation images of
# models trained here (10 or 4 classes, 32-128 px, head to all trainable), on an AMD EPYC (AVX2).
AMD_ROUNDING = [(3.60e-5, 4.02), (2.05e-5, 2.67), (3.81e-5, 39.18), (2.43e-5, 5.32), (1.37e-4, 171.97)]


INTEL_ROUNDING = (1.12e-4, 5.0)  # the Xeon with AVX-512/AMX: 10 classes, 32 px, layer4, 1 epoch


# The first of those models exported wrongly: BatchNorm in train mode, the last bottleneck missing, every
# BatchNorm eps 1e-3 instead of 1e-5, the weights rounded through FP16.
BROKEN = [(2.33, 4.02), (1.37, 4.02), (0.66, 4.02), (0.036, 4.02)]


@pytest.mark.parametrize("max_diff, max_logit", AMD_ROUNDING + [INTEL_ROUNDING])
def test_fp32_rounding_of_either_cpu_kind_passes(max_diff, max_logit):
    from tuner.export.verify import FP32, passes

    assert passes(FP32, max_diff, 1.0, max_logit)


@pytest.mark.parametrize("max_diff, max_logit", BROKEN)
def test_a_broken_fp32_export_fails(max_diff, max_logit):
    from tuner.export.verify import FP32, passes

    assert not passes(FP32, max_diff, 1.0, max_logit)


def test_fp32_still_needs_every_label_to_agree_and_a_bound_near_zero_logits():
    from tuner.export.verify import FP32, passes

    assert not passes(FP32, 1e-6, 31 / 32, 5.0)  # rounding cannot flip a label in 32 unless it is a tie
    assert passes(FP32, 0.9e-4, 1.0, 0.0) and not passes(FP32, 2e-4, 1.0, 0.0)


def test_the_intel_figures_pass_through_compare_as_the_export_calls_it():
    from tuner.export.verify import FP32, compare

    reference = torch.tensor([[5.0, -1.0, 0.5], [0.2, 3.0, -4.0]])
    shifted = reference.clone()
    shifted[0, 0] += INTEL_ROUNDING[0]
    row = compare("onnx", Path("model.onnx"), reference, shifted, 2, FP32.target, "", FP32.min_agreement,
                  FP32.rel_target)
    assert row["passed"] and row["judged"]
    assert not compare("onnx", Path("model.onnx"), reference, reference * 1.01, 2, FP32.target, "",
                       FP32.min_agreement, FP32.rel_target)["passed"]  # 1% off: no rounding does that


def test_every_format_is_a_leaf_module_that_writes_and_runs_its_file():
    import ast

    from tuner.export.formats import FORMATS
    from tuner.export.pipeline import MODULES

    assert list(MODULES) == [f.name for f in FORMATS]
    for name, module in MODULES.items():
        assert callable(module.write) and callable(module.runner), name
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "pipeline" not in imported and "tuner.export.pipeline" not in imported, name


def test_the_format_table_loads_without_torch_so_the_cli_help_stays_fast():
    code = ("import sys; from tuner.cli.parser import build_parser; build_parser(); "
            "import tuner.export.formats; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
