"""Export: every format that can run here, from a freshly trained tiny model, checked against PyTorch.

The checks here do not trust the export report alone: they load each file the way its user would
(plain torchvision, safetensors, ONNX Runtime, the standalone deploy script) and compare with the
checkpoint's own PyTorch model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from tuner import cli
from tuner.errors import TunerError
from tuner.export.formats import parse_formats
from tuner.export.onnx import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME
from tuner.export.pipeline import export_checkpoint
from tuner.export.tensorrt_setup import tensorrt_status
from tuner.export.verify import FP32_TARGET
from tuner.model.checkpoint import load_checkpoint, model_from_checkpoint

CPU_FORMATS = "pth,safetensors,onnx,int8,tensorrt"  # tensorrt included: here it must explain itself
TRT_READY, TRT_MISSING = tensorrt_status()
TRT_SKIP_REASON = (f"TensorRT engine build needs tensorrt and a CUDA GPU: {TRT_MISSING}. On a GPU machine, with "
                   "requirements-gpu.txt installed, run `TUNER_TEST_GPU=1 python -m pytest`")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    seen = []
    report = export_checkpoint(trained_run / "best.pt", CPU_FORMATS, out, benchmark=True, max_images=32,
                               progress=lambda done, total, label: seen.append((done, total, label)))
    return report, seen


@pytest.fixture(scope="module")
def reference_model(trained_run):
    return model_from_checkpoint(load_checkpoint(trained_run / "best.pt")).eval()


def probe(size: int, n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def rows_by_format(report) -> dict:
    return {row["format"]: row for row in report.verification}


def test_each_format_is_written_atomically_and_reported(exported):
    report, seen = exported
    assert set(report.files) >= {"pth", "model.json", "safetensors", "onnx", "int8", "predict_onnx.py"}
    assert "tensorrt" not in report.files or TRT_READY
    assert not list(report.out_dir.glob("*.tmp")) and not list(report.out_dir.glob(".*"))
    assert seen[-1][0] == seen[-1][1]  # progress reached the end
    assert [label for _, _, label in seen[1:6]] == [f"Exporting: {f}" for f in parse_formats(CPU_FORMATS)]


def test_pth_loads_strictly_into_plain_torchvision_and_gives_the_same_logits(exported, reference_model, trained_run):
    from torchvision.models import resnet50

    report, _ = exported
    meta = json.loads(report.files["model.json"].read_text())
    net = resnet50(num_classes=len(meta["classes"]))
    net.load_state_dict(torch.load(report.files["pth"], weights_only=True), strict=True)
    x = probe(meta["image_size"])
    with torch.no_grad():
        assert torch.equal(net.eval()(x), reference_model(x))
    state = load_checkpoint(trained_run / "best.pt")
    assert meta["classes"] == state["classes"] and meta["image_size"] == state["image_size"]
    assert meta["mean"] == list(state["mean"]) and meta["std"] == list(state["std"])
    assert meta["weights_source"] == state["weights_source"]
    assert meta["training_config"]["trainable"] == "head"
    assert meta["validation"]["epochs_trained"] == 2 and 0 <= meta["validation"]["best_val_acc"] <= 1
    # The best epoch's loss and per-class metrics, copied from the checkpoint (all from the same epoch).
    best = state["best_metrics"]
    assert meta["validation"]["best_val_acc"] == best["accuracy"] and meta["validation"]["best_epoch"] == state["best_epoch"]
    assert meta["validation"]["best_val_loss"] == pytest.approx(best["loss"]) and meta["validation"]["val_images"] > 0
    per_class = meta["validation"]["per_class"]
    assert [row["class"] for row in per_class] == state["classes"] + ["macro avg", "weighted avg"]
    assert all(set(row) == {"class", "precision", "recall", "f1", "support"} for row in per_class)
    assert [row["recall"] for row in per_class] == [round(row["recall"], 4) for row in best["per_class"]]
    assert {"tuner", "torch", "torchvision", "python"} <= set(meta["versions"])


def test_safetensors_holds_the_same_tensors_and_the_class_names(exported, reference_model):
    from safetensors import safe_open

    report, _ = exported
    with safe_open(str(report.files["safetensors"]), "pt") as f:
        assert json.loads(f.metadata()["classes"]) == ["circles", "squares", "stripes", "triangles"]
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    expected = reference_model.state_dict()
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)


def test_onnx_is_valid_dynamic_batch_with_metadata_and_matches_pytorch(exported, reference_model):
    import onnx
    import onnxruntime as ort

    report, _ = exported
    path = report.files["onnx"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= ONNX_OPSET
    assert [i.name for i in proto.graph.input] == [INPUT_NAME] and [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["circles", "squares", "stripes", "triangles"]
    assert int(meta["image_size"]) == 32 and len(json.loads(meta["mean"])) == 3

    # Independently of the report: batches of 1 and 5 through ONNX Runtime against PyTorch.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = probe(32, n)
        with torch.no_grad():
            expected = reference_model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        assert np.abs(got - expected).max() <= FP32_TARGET
        assert (got.argmax(1) == expected.argmax(1)).all()

    row = rows_by_format(report)["onnx"]
    assert row["passed"] and row["max_abs_diff"] <= FP32_TARGET and row["top1_agreement"] == 1.0
    assert row["images"] == 32  # real validation images, not noise


def test_int8_is_quantized_calibrated_and_its_accuracy_and_speed_are_reported(exported):
    import onnx

    report, _ = exported
    proto = onnx.load(str(report.files["int8"]))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert report.files["int8"].stat().st_size < 0.4 * report.files["onnx"].stat().st_size
    assert json.loads({p.key: p.value for p in proto.metadata_props}["classes"])[0] == "circles"
    row = rows_by_format(report)["int8"]
    assert 0.0 <= row["top1_agreement"] <= 1.0 and row["max_abs_diff"] > 0  # numbers, not placeholders
    assert row["judged"] is False and rows_by_format(report)["onnx"]["judged"] is True  # INT8: reported, not checked
    accuracy = {r["format"]: r["accuracy"] for r in report.accuracy}
    assert set(accuracy) == {"pytorch (fp32)", "onnx int8"} and all(0 <= v <= 1 for v in accuracy.values())
    speed = {r["format"]: r for r in report.speed}
    assert {"pytorch (eager, cpu)", "onnx (onnxruntime)", "onnx int8 (onnxruntime)"} <= set(speed)
    for r in speed.values():
        assert r["batch1_ms"] > 0 and r["throughput_img_s"] > 0 and r["latency_speedup"] > 0
    assert speed["pytorch (eager, cpu)"]["latency_speedup"] == 1.0


@pytest.mark.skipif(TRT_READY, reason="this machine can build TensorRT engines; the GPU test covers it")
def test_without_tensorrt_the_user_gets_the_reason_the_onnx_file_and_the_trtexec_command(exported):
    report, _ = exported
    row = rows_by_format(report)["tensorrt"]
    assert row["passed"] is None and "not built" in row["note"]
    message = next(m for m in report.messages if "TensorRT" in m)
    assert TRT_MISSING in message
    assert ("no CUDA GPU" in message) != torch.cuda.is_available()
    assert "trtexec --onnx=model.onnx --saveEngine=model.engine --minShapes=input:1x3x32x32" in message
    assert report.files["onnx"].is_file()  # what the user takes to the GPU machine


@pytest.mark.skipif(TRT_READY, reason="this machine builds (and calibrates) the INT8 engine itself")
def test_without_tensorrt_int8_is_never_handed_an_uncalibrated_trtexec_command(trained_run, tmp_path):
    # trtexec --int8 without calibration data uses placeholder scales: an engine that runs but classifies poorly.
    report = export_checkpoint(trained_run / "best.pt", "tensorrt", tmp_path, max_images=4, tensorrt_int8=True)
    message = next(m for m in report.messages if "TensorRT" in m)
    assert "trtexec --onnx=model.onnx" in message and "--int8" in message  # named, to say why it is left out
    command = message.split("model.onnx: ", 1)[1].split(". ", 1)[0]
    assert command.startswith("trtexec ") and command.endswith("--fp16") and "--int8" not in command
    assert "placeholder scales" in message and "--trt-int8 on the GPU machine" in message


@pytest.mark.parametrize("images", [0, -3, 2.5, True, None, 1001])
def test_an_impossible_image_count_is_refused_with_the_fix_before_anything_is_written(trained_run, tmp_path, images):
    with pytest.raises(TunerError, match=r"from 1 to 1000.*--images on the command line.*Export tab"):
        export_checkpoint(trained_run / "best.pt", "pth", tmp_path / "out", max_images=images)
    assert not (tmp_path / "out").exists()


def test_cli_images_zero_is_one_clear_line(trained_run, tmp_path, capsys):
    assert cli.main(["export", "--checkpoint", str(trained_run / "best.pt"), "--format", "pth",
                     "--out", str(tmp_path / "out"), "--images", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--images" in err and "Traceback" not in err


def test_tensorrt_int8_without_the_tensorrt_format_is_refused_not_ignored(trained_run, tmp_path):
    with pytest.raises(TunerError, match="choose the tensorrt format too"):
        export_checkpoint(trained_run / "best.pt", "onnx", tmp_path / "out", tensorrt_int8=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not TRT_READY, reason=TRT_SKIP_REASON)
def test_tensorrt_engine_is_built_and_agrees_with_pytorch(trained_run, tmp_path):
    report = export_checkpoint(trained_run / "best.pt", "tensorrt", tmp_path, benchmark=True, max_images=32)
    row = rows_by_format(report)["tensorrt"]
    assert report.files["tensorrt"].is_file()
    assert row["passed"] and row["top1_agreement"] >= 0.9  # FP16 activations: near-ties may flip
    speed = {r["format"]: r for r in report.speed}
    assert {"tensorrt fp16", "pytorch (eager, cuda)"} <= set(speed)
    assert speed["pytorch (eager, cuda)"]["latency_speedup"] == 1.0  # the engine's baseline is PyTorch on the GPU
    assert any("same device" in m for m in report.messages)


@pytest.mark.gpu
@pytest.mark.skipif(not TRT_READY, reason=TRT_SKIP_REASON)
def test_tensorrt_int8_engine_calibrates_on_fewer_images_than_a_batch_and_is_labelled_int8(trained_run, tmp_path):
    report = export_checkpoint(trained_run / "best.pt", "tensorrt", tmp_path, benchmark=True, max_images=3,
                               tensorrt_int8=True)  # 3 calibration images, opt batch 8
    row = rows_by_format(report)["tensorrt"]
    assert report.files["tensorrt"].is_file() and row["passed"] and "INT8" in row["note"]
    speed = {r["format"] for r in report.speed}
    assert "tensorrt int8+fp16" in speed and "tensorrt fp16" not in speed
    assert "tensorrt int8+fp16" in {r["format"] for r in report.accuracy}  # judged by accuracy, like INT8 ONNX


def odd_images(folder: Path) -> list[Path]:
    """Shapes and modes users upload: non-square, transparent, greyscale, 16-bit, palette."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    images = {
        "wide.jpg": Image.fromarray(rng.integers(0, 255, (37, 71, 3), dtype=np.uint8)),
        "tall.png": Image.fromarray(rng.integers(0, 255, (90, 41, 4), dtype=np.uint8), "RGBA"),
        "grey.png": Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8), "L"),
        "deep.png": Image.fromarray(rng.integers(0, 65535, (44, 60), dtype=np.uint16)),
        "palette.gif": Image.fromarray(rng.integers(0, 255, (33, 48, 3), dtype=np.uint8)).convert("P"),
    }
    paths = []
    for name, img in images.items():
        img.save(folder / name)
        paths.append(folder / name)
    return paths + [Path(__file__).resolve().parents[1] / "tuner/assets/examples/stripes.png"]


def test_standalone_onnx_predictor_agrees_with_tuner_predict_without_torch_or_tuner(exported, trained_run, tmp_path,
                                                                                     capsys):
    report, _ = exported
    images = [str(p) for p in odd_images(tmp_path / "odd")]
    # The deploy script must run where neither torch nor tuner is installed: both are made unimportable.
    runner = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['tuner'] = None; "
              "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    deployed = subprocess.run([sys.executable, "-c", runner, str(report.files["predict_onnx.py"]),
                               str(report.files["onnx"]), *images, "--json", "--top-k", "4"],
                              capture_output=True, text=True, check=True, timeout=120)
    assert cli.main(["predict", "--checkpoint", str(trained_run / "best.pt"), "--json", "--top-k", "4", *images]) == 0
    ours = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    theirs = [json.loads(line) for line in deployed.stdout.splitlines()]
    assert [t["image"] for t in theirs] == [o["image"] for o in ours] == images
    for mine, deployed_one in zip(ours, theirs, strict=True):
        assert [t["label"] for t in deployed_one["top_k"]] == [t["label"] for t in mine["top_k"]]
        np.testing.assert_allclose([t["prob"] for t in deployed_one["top_k"]], [t["prob"] for t in mine["top_k"]],
                                   atol=1e-4)
    # Like tuner predict: a file it cannot read is named on stderr and the others are answered (status 1);
    # a model file that is not ONNX, or --top-k 0, is one line, never a traceback.
    (tmp_path / "notes.jpg").write_text("not a picture")
    script, model = str(report.files["predict_onnx.py"]), str(report.files["onnx"])
    mixed = subprocess.run([sys.executable, script, model, str(tmp_path / "notes.jpg"), str(tmp_path / "odd"),
                            images[0], "--json"], capture_output=True, text=True, timeout=120)
    assert mixed.returncode == 1 and [json.loads(line)["image"] for line in mixed.stdout.splitlines()] == images[:1]
    assert mixed.stderr.count("skipped: cannot read") == 2 and "Traceback" not in mixed.stderr
    for args, words in (([images[0], images[0]], "is not an ONNX model onnxruntime can open"),
                        ([model, images[0], "--top-k", "0"], "--top-k=0: ask for at least 1.")):
        refused = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and words in refused.stderr and "Traceback" not in refused.stderr


def test_the_deploy_scripts_rgb_conversion_is_tuners_for_every_image_mode():
    import importlib.util

    from tuner.data.images import to_rgb

    spec = importlib.util.spec_from_file_location("predict_onnx", ROOT / "tuner/export/deploy/predict_onnx.py")
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    rng = np.random.default_rng(5)
    palette = Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 0
    images = {
        "I;16": Image.fromarray(rng.integers(0, 65535, (9, 7), dtype=np.uint16)),
        "I": Image.fromarray(rng.integers(0, 70000, (9, 7), dtype=np.int32)),
        "F": Image.fromarray(rng.normal(size=(9, 7)).astype(np.float32)),
        "RGBA": Image.fromarray(rng.integers(0, 255, (9, 7, 4), dtype=np.uint8), "RGBA"),
        "LA": Image.fromarray(rng.integers(0, 255, (9, 7, 4), dtype=np.uint8), "RGBA").convert("LA"),
        "P": palette,
        "CMYK": Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert("CMYK"),
        "L": Image.fromarray(rng.integers(0, 255, (9, 7), dtype=np.uint8)),
    }
    for mode, img in images.items():
        assert img.mode == mode
        ours, theirs = to_rgb(img.copy()), deploy.to_rgb(img.copy())
        assert theirs.mode == "RGB" and np.array_equal(np.asarray(theirs), np.asarray(ours)), mode


def test_cli_export_prints_the_tables_and_a_bad_format_is_one_clear_line(trained_run, tmp_path, capsys):
    assert cli.main(["export", "--checkpoint", str(trained_run / "best.pt"), "--format", "pth,tensorrt",
                     "--out", str(tmp_path / "cli"), "--images", "8"]) == 0
    out = capsys.readouterr().out
    assert "Verification against PyTorch" in out and "model.pth" in out
    assert "not built" in out and "judged" not in out  # a format that cannot be built here says so
    assert (tmp_path / "cli" / "model.pth").is_file() and (tmp_path / "cli" / "model.json").is_file()

    assert cli.main(["export", "--checkpoint", str(trained_run / "best.pt"), "--format", "onnx,tflite",
                     "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tflite" in err and "pth,safetensors,onnx,int8,tensorrt" in err
    assert not (tmp_path / "bad").exists()


def test_stop_between_formats_keeps_the_finished_files(trained_run, tmp_path):
    stop = threading.Event()

    def progress(done, total, label):
        if label == "Exporting: pth":
            stop.set()  # the user presses stop while .pth is written

    with pytest.raises(TunerError, match="stopped"):
        export_checkpoint(trained_run / "best.pt", "pth,onnx", tmp_path, max_images=8, progress=progress, stop=stop)
    assert (tmp_path / "model.pth").is_file() and not (tmp_path / "model.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_verification_data_with_other_classes_is_refused_with_the_fix(trained_run, tmp_path):
    from conftest import make_image_folder

    other = make_image_folder(tmp_path / "other", {"cat": 4, "dog": 4})
    with pytest.raises(TunerError, match="same class folders"):
        export_checkpoint(trained_run / "best.pt", "onnx", tmp_path / "out", data=str(other))
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.skipif(TRT_READY, reason="the GPU tests build real engines here")
@pytest.mark.parametrize("int8", [False, True])
def test_a_built_engine_is_judged_labelled_and_timed_by_its_precision(trained_run, tmp_path, monkeypatch, int8):
    # Without a GPU, an "engine" that is the ONNX file run by ONNX Runtime goes through the engine's path.
    from tuner.export import onnx as onnx_format
    from tuner.export import tensorrt as trt_format

    built = []
    monkeypatch.setattr(trt_format, "tensorrt_status", lambda: (True, "TensorRT and a CUDA GPU are present."))
    monkeypatch.setattr(trt_format, "build_engine", lambda onnx_path, path, size, fp16, int8, calibration:
                        built.append((fp16, int8, calibration)) or path.write_bytes(b"engine"))
    monkeypatch.setattr(trt_format, "engine_runner", lambda path: onnx_format.ort_runner(path.with_suffix(".onnx")))
    report = export_checkpoint(trained_run / "best.pt", "tensorrt", tmp_path, benchmark=True, max_images=4,
                               tensorrt_int8=int8)
    label = "tensorrt int8+fp16" if int8 else "tensorrt fp16"
    assert built[0][:2] == (True, int8) and (built[0][2] is not None) == int8  # calibrated only for INT8
    row = rows_by_format(report)["tensorrt"]
    assert row["passed"] and row["judged"] == (not int8) and row["top1_agreement"] == 1.0
    assert list(report.files) == ["onnx", "tensorrt", "predict_onnx.py"]
    assert [r["format"] for r in report.speed][-2:] == ["onnx (onnxruntime)", label]
    assert (label in {r["format"] for r in report.accuracy}) == int8  # INT8 is judged by its accuracy
    assert any(m.startswith("The FP16 version" if int8 else "The same engine") for m in report.messages)
