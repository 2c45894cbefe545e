"""The installed project: the `tuner` and `tuner-studio` commands exist, and the files the package
needs at run time (the studio's CSS, the example images, the deploy script) ship inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import metadata, resources
from pathlib import Path

import tuner


def test_the_console_commands_are_installed_next_to_this_python():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts") if ep.dist.name == "tuner"}
    assert scripts == {"tuner": "tuner.cli:main", "tuner-studio": "tuner.ui.serve:main"}
    command = shutil.which("tuner", path=str(Path(sys.executable).parent))
    assert command, "no tuner command beside this interpreter: run bash scripts/setup.sh"
    result = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0 and "train" in result.stdout and "export" in result.stdout, result.stderr


def test_tuner_is_the_package_of_this_checkout():
    # An editable install of another checkout would test that checkout's code instead of this one.
    assert Path(tuner.__file__).resolve().parent == Path(__file__).resolve().parents[1] / "tuner"


RUN_TIME_FILES = ["tuner/assets/studio.css", "tuner/assets/examples/circles.png", "tuner/export/deploy/predict_onnx.py"]


def test_run_time_files_ship_inside_the_package():
    assert all(resources.files("tuner").joinpath(name.removeprefix("tuner/")).is_file() for name in RUN_TIME_FILES)


def test_a_built_wheel_holds_the_package_data_and_no_tests(tmp_path):
    # Built from a copy, so the checkout gets no build/ or egg-info folders.
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    shutil.copytree(root / "tuner", source / "tuner", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-test.txt", "requirements-gpu.txt"):
        shutil.copy(root / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "--disable-pip-version-check", "-w", str(tmp_path / "wheel"), str(source)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = (tmp_path / "wheel").glob("tuner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(RUN_TIME_FILES) <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
