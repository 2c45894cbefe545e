"""Shared test setup: every test runs offline, with its caches in temporary folders.

Nothing here downloads: the "pretrained" path is exercised with a weights file that a fixture
writes into a temporary TORCH_HOME of its own under torchvision's real file name. Every other test
sees the session's empty hub cache, so the offline fallback to random initialisation is what they get,
whatever order the tests run in.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Before anything imports tuner or torch: isolate caches and forbid downloads for the whole session.
_SESSION_TMP = Path(os.environ.get("TUNER_TEST_TMP", "/tmp")) / f"tuner-tests-{os.getpid()}"
os.environ["TUNER_HOME"] = str(_SESSION_TMP / "tuner-home")
os.environ["TORCH_HOME"] = str(_SESSION_TMP / "torch-home")
# Gradio copies every file it serves (checkpoints, exports) into its cache: keep it with the session's files.
os.environ["GRADIO_TEMP_DIR"] = str(_SESSION_TMP / "gradio-cache")
os.environ["TUNER_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
# The CPU tests compare runs to 1e-5 or bit for bit, which holds in fp32 on a CPU. With a GPU visible,
# device="auto" would train them on it in bf16 with TF32 (and torchrun tests would need a GPU per rank).
# So the default run hides every GPU from itself and the processes it starts; `TUNER_TEST_GPU=1` makes
# the GPU pass instead, which runs only the tests marked gpu.
GPU_PASS = os.environ.get("TUNER_TEST_GPU") == "1"
if not GPU_PASS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
GPU_SKIP_REASON = ("needs a CUDA GPU: on a machine with one, run `TUNER_TEST_GPU=1 python -m pytest` (the default "
                   "run hides GPUs so that its exact CPU comparisons hold)")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

TINY_SIZE = 32  # image size for training tests: the real ResNet50, at a size a CPU does quickly


def pytest_report_header(config):
    if GPU_PASS:
        return "GPU pass (TUNER_TEST_GPU=1): only the tests marked gpu run"
    return "CPU pass: GPUs hidden (CUDA_VISIBLE_DEVICES=''); TUNER_TEST_GPU=1 runs the GPU tests"


def pytest_collection_modifyitems(config, items):
    if not GPU_PASS:
        return
    cpu_tests = [item for item in items if item.get_closest_marker("gpu") is None]
    if cpu_tests:
        config.hook.pytest_deselected(items=cpu_tests)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is not None]


@pytest.fixture(scope="session", autouse=True)
def _session_dirs():
    _SESSION_TMP.mkdir(parents=True, exist_ok=True)
    yield
    import shutil
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _layout_probe_pinned():
    """CPU runs pick their memory layout by timing both (tuner/probe.py). On a busy CI machine that
    answer would change from run to run while tests compare runs to 1e-5, so the measurement is pinned
    to "the default layout is faster". tests/test_probe.py tests the probe itself (with the real
    timing too), and a test there trains with channels_last on."""
    from tuner.runtime import probe

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe, "measure_channels_last", lambda image_size, *args, **kwargs: 0.5)
        yield


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    from tuner.data.demo import demo_dataset_dir
    return demo_dataset_dir()


def make_image_folder(root: Path, classes: dict[str, int], size: int = 40, seed: int = 0) -> Path:
    """Class folders of small generated images whose colour depends on the class (learnable)."""
    rng = random.Random(seed)
    for k, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)][k % 4]
            colour = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in base)
            img = Image.new("RGB", (size + rng.randint(0, 8), size), colour)
            img.putpixel((rng.randrange(size), rng.randrange(size)), (255, 255, 255))
            img.save(root / name / f"{name}_{i}.png")
    return root


def decompression_bomb(path: Path, side: int = 20_000) -> Path:
    """A few hundred bytes of PNG whose header claims side x side pixels: so many that PIL itself refuses
    it inside Image.open (DecompressionBombError) before any size check of ours runs."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")  # chunk type; width and height follow it, then 5 bytes, then the CRC
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", side, side)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data", {"red": 6, "green": 6, "blue": 6})


@pytest.fixture
def imagenet_weights_file(monkeypatch) -> Path:
    """A ResNet50 state_dict saved under torchvision's file name, in a hub cache only this test sees.

    Its values are random (no download is possible here) but its names and shapes are the real
    ones, so every code path that reads pretrained weights runs for real. TORCH_HOME points at the
    stand-in's own folder for the asking test alone (and the subprocesses it starts): written into
    the session's shared cache, it would turn every later test's default weights="imagenet" into
    "pretrained" and make results depend on test order. The file is written once per session.
    """
    from torchvision.models import resnet50

    from tuner.model.weights import IMAGENET_FILENAME, hub_checkpoint_dir

    monkeypatch.setenv("TORCH_HOME", str(_SESSION_TMP / "torch-home-imagenet-stand-in"))
    path = hub_checkpoint_dir() / IMAGENET_FILENAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):  # the same file every time; the tests' generator is untouched
            torch.manual_seed(1234)
            torch.save(resnet50(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_dir) -> Path:
    """One short head-only run on the demo data (shared by predict/evaluate/export/UI tests)."""
    from tuner.config import AugmentConfig, TrainConfig
    from tuner.train import run_to_end

    out = tmp_path_factory.mktemp("trained") / "run"
    config = TrainConfig(out=str(out), weights="random", image_size=TINY_SIZE, epochs=2, batch_size=16,
                         augment=AugmentConfig.from_preset("none"))
    finished = run_to_end(config)
    assert finished.status == "completed"
    return out
