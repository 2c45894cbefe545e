"""The studio through its API, as a user of gradio_client sees it: a launched app, real HTTP, real sessions.

Each gradio_client.Client is one session, like one browser tab: it gets its own workspace.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, make_image_folder
from gradio_client import Client, handle_file

DEMO = "Built-in demo (4 shape classes)"
ZIP = "Upload a .zip"
FINE_TUNED = "Fine-tuned model (this session's best checkpoint)"
FAST = dict(image_size=32, batch_size=32)  # the real ResNet50 at a size a CPU trains in seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from tuner.ui.app import build_app, launch_kwargs
    from tuner.ui.common import StudioSettings

    settings = StudioSettings(workdir=str(tmp_path_factory.mktemp("workspaces")), heavy_jobs=2, max_upload_mb=20)
    demo = build_app(settings)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(demo))
    demo.url = f"http://127.0.0.1:{port}/"
    demo.workdir = Path(settings.workdir)
    yield demo
    demo.close()
    demo.studio.registry.close_all()


def client(studio) -> Client:
    return Client(studio.url, verbose=False)


def load(c: Client, source: str = DEMO, zip_path: Path | None = None):
    return c.predict(source, handle_file(str(zip_path)) if zip_path else None, "", 0.25, api_name="/load_data")


def error_text(exc: BaseException) -> str:
    return str(exc)


def test_served_file_copies_are_pruned_as_sessions_expire(tmp_path):
    """Gradio copies each file it serves into its cache; those copies must not outlive the session."""
    from tuner.ui.app import build_app
    from tuner.ui.common import StudioSettings

    demo = build_app(StudioSettings(workdir=str(tmp_path), session_ttl_min=30))
    assert demo.delete_cache == (1800, 1800)
    demo = build_app(StudioSettings(workdir=str(tmp_path), session_ttl_min=360))
    assert demo.delete_cache == (3600, 6 * 3600)


# Handlers with no API of their own, because they only keep the page in step (what they compute, an API
# client gets from a named endpoint or does not need).
UI_ONLY_HANDLERS = {
    "<lambda>": "mirrors one widget's value into another",
    "preset_values": "sets the augmentation switches from a preset",
    "preview_augmentation": "redraws the augmentation preview",
    "note_queued_start": "marks a Start as waiting in the queue (the job itself is /train or /resume)",
    "show_commands": "rewrites the CLI and torchrun commands as settings change",
    "close_session": "deletes a closed tab's workspace",
    "show_check": "redraws the Check data panel after a data load (a load resets the check and exclusions)",
}


def test_every_working_event_has_an_api_name(studio, tmp_path):
    from tuner.ui.app import build_app
    from tuner.ui.common import StudioSettings

    names = set(client(studio).view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/load_data", "/train", "/resume", "/stop", "/evaluate", "/predict", "/inspect_model",
            "/upload_weights", "/export", "/check_data", "/set_exclusions"} <= names
    # A new handler wired without an api_name shows up here: give it one, or say above why it needs none.
    fns = build_app(StudioSettings(workdir=str(tmp_path))).fns.values()
    named = {fn.name for fn in fns if fn.api_visibility != "private"}  # public, or callable but undocumented
    private_only = {fn.name for fn in fns if fn.api_visibility == "private"} - named
    assert private_only <= set(UI_ONLY_HANDLERS), private_only - set(UI_ONLY_HANDLERS)


def test_demo_data_train_one_epoch_evaluate_and_predict(studio):
    c = client(studio)
    summary, warnings, counts, samples, augmented = load(c)
    assert "4 classes" in summary and len(samples) == len(augmented) == 12
    status, curves, log, checkpoint = c.predict(epochs=1, **FAST, api_name="/train")
    assert "Finished" in status and "Epoch 1/1" in log
    assert "Settings: --epochs 1 --image-size 32." in log  # what the run used (batch 32 is the default)
    assert Path(checkpoint).name == "best.pt"
    assert curves is not None
    accuracy, confusion, per_class, mistakes = c.predict(api_name="/evaluate")
    assert "Validation accuracy" in accuracy
    assert [row for row in per_class["data"] if row[0] == "circles"]
    label, chart, gallery, table = c.predict([handle_file(str(ROOT / "tuner/assets/examples/circles.png"))], FINE_TUNED, 3,
                                    api_name="/predict")
    assert label["label"] in {"circles", "squares", "stripes", "triangles"}
    assert len(label["confidences"]) == 3
    with pytest.raises(Exception) as err:
        c.predict(["onnx"], False, False, 0, api_name="/export")
    assert "minimum value 1" in error_text(err.value)
    messages, verification, speed, accuracy, files = c.predict(["onnx", "tensorrt"], True, False, 16,
                                                               api_name="/export")
    rows = {row[0]: row for row in verification["data"]}
    assert rows["onnx"][verification["headers"].index("result")] == "matches"
    assert rows["onnx"][verification["headers"].index("images")] == 16  # as many as asked for
    assert rows["tensorrt"][verification["headers"].index("result")] == "not built"
    assert "trtexec --onnx=model.onnx" in messages and "/tmp" not in messages  # no server paths
    assert {Path(f).name for f in files} == {"model.onnx", "predict_onnx.py"}
    assert [row[0] for row in speed["data"]][:2] == ["pytorch (eager, cpu)", "onnx (onnxruntime)"]
    assert "batch-1 latency (ms)" in speed["headers"]


def test_stop_mid_run_leaves_a_checkpoint_and_resume_continues(studio, imagenet_weights_file):
    c = client(studio)
    load(c)
    # A deeper freeze depth trains layer4 on every batch: slow enough to stop in the middle of an epoch.
    job = c.submit(epochs=30, trainable="layer4", augment_preset="none", **FAST, api_name="/train")
    deadline = time.time() + 120
    while not any("Training: epoch" in (out[0] or "") for out in job.outputs()) and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(Exception) as err:  # other data now would orphan the running job's outputs
        load(c)
    assert "A job is running in this session" in error_text(err.value)
    # Prediction has its own concurrency limit: another session gets answers while this one trains.
    label = client(studio).predict([handle_file(str(ROOT / "tuner/assets/examples/circles.png"))],
                                   "Base ImageNet model (1000 classes)", 3, api_name="/predict")[0]
    assert len(label["confidences"]) == 3 and not job.done()
    c.predict(api_name="/stop")
    status, curves, log, checkpoint = job.result(timeout=120)
    assert "Stopped on request" in status
    done = int(re.search(r"(\d+) epochs? done", status).group(1))
    assert done < 30
    assert checkpoint and Path(checkpoint).name in {"best.pt", "last.pt"}  # last.pt when no epoch ended yet
    # Resume continues the same run where the stop left it, and finishes the next epoch; a setting that
    # would make it another run (the learning rate) is kept as it was, and the log says so.
    status, curves, log, checkpoint = c.predict(epochs=done + 1, trainable="layer4", augment_preset="none", lr="0.1",
                                                **FAST, api_name="/resume")
    assert f"Resuming at epoch {done + 1}" in log
    assert "Resuming keeps the run's own settings, so these were ignored: lr=0.1. On resume only" in log
    assert "Finished" in status and re.search(rf"\b{done + 1} epochs? done", status)
    assert Path(checkpoint).name == "best.pt"


def test_two_sessions_see_only_their_own_data_and_models(studio, tmp_path):
    alice, bob = client(studio), client(studio)
    folder = make_image_folder(tmp_path / "pets", {"cat": 6, "dog": 6})
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.rglob("*.png"):
            zf.write(path, path.relative_to(folder).as_posix())

    summary_a, warnings_a = load(alice, ZIP, archive)[:2]
    assert "Few training images" in warnings_a  # 6 per class: the Data tab says 10+ is more reliable
    summary_b = load(bob)[0]
    assert "2 classes" in summary_a and "`cat`" in summary_a
    assert "(class folders, split 75%/25% into train/val)" in summary_a
    assert "4 classes" in summary_b and "cat" not in summary_b

    results = {}

    def train(name, c):
        results[name] = c.predict(epochs=1, **FAST, api_name="/train")

    threads = [threading.Thread(target=train, args=pair) for pair in (("alice", alice), ("bob", bob))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert "Finished" in results["alice"][0] and "Finished" in results["bob"][0]
    image = handle_file(str(ROOT / "tuner/assets/examples/circles.png"))
    label_a = alice.predict([image], FINE_TUNED, 4, api_name="/predict")[0]
    label_b = bob.predict([image], FINE_TUNED, 4, api_name="/predict")[0]
    assert {c["label"] for c in label_a["confidences"]} == {"cat", "dog"}
    assert {c["label"] for c in label_b["confidences"]} == {"circles", "squares", "stripes", "triangles"}

    workspaces = list(studio.studio.registry._workspaces.values())
    roots = {ws.root for ws in workspaces}
    assert len(roots) == len(workspaces)  # one folder per session, none shared
    # A third session has nothing: no checkpoint of anyone else's to evaluate or predict with.
    carol = client(studio)
    for event in ("/evaluate", "/export"):
        with pytest.raises(Exception) as err:
            carol.predict(api_name=event) if event == "/evaluate" else carol.predict(["onnx"], False, api_name=event)
        assert "No checkpoint yet" in error_text(err.value)


def test_errors_reach_the_user_as_one_message_with_the_fix_and_no_server_paths(studio, tmp_path):
    c = client(studio)
    with pytest.raises(Exception) as err:
        c.predict(epochs=1, **FAST, api_name="/train")
    assert "No data loaded yet" in error_text(err.value)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape/a.png", b"x")
        zf.writestr("cats/a.png", b"x")
    with pytest.raises(Exception) as err:
        load(c, ZIP, evil)
    message = error_text(err.value)
    assert "Traceback" not in message
    assert str(studio.studio.registry.root) not in message and "/tmp/" not in message
    assert not (tmp_path / "escape").exists()
    load(c)
    with pytest.raises(Exception) as err:
        c.predict(epochs=2, head_epochs=2, trainable="layer4", **FAST, api_name="/train")
    message = error_text(err.value)
    assert "head_epochs=2 leaves no epoch to fine-tune" in message  # the API's own names, as the call used them
    # ... and where a person in the browser finds each setting named
    assert ("In the studio: head_epochs is 'Two-stage recipe: head-only epochs first (0 = off)' (Train tab); "
            "epochs is 'Epochs' (Train tab).") in message


def test_the_export_table_never_calls_an_unchecked_int8_row_a_match():
    from tuner.ui.tabs.export import UNJUDGED, verification_table

    rows = [{"format": "onnx", "file": "model.onnx", "max_abs_diff": 1e-5, "top1_agreement": 1.0, "images": 8,
             "passed": True, "judged": True, "note": ""},
            {"format": "onnx int8", "file": "model.int8.onnx", "max_abs_diff": 0.56, "top1_agreement": 0.975,
             "images": 8, "passed": True, "judged": False, "note": "quantized"},
            {"format": "tensorrt", "file": "", "max_abs_diff": float("nan"), "top1_agreement": float("nan"),
             "images": 0, "passed": None, "judged": False, "note": "no GPU"}]
    assert list(verification_table(rows)["result"]) == ["matches", UNJUDGED, "not built"]


def test_a_server_folder_outside_the_servers_own_folders_can_be_evaluated(studio, tmp_path, monkeypatch):
    # Gradio serves files only from the working directory, the temp dir and `allowed_paths`; a user's
    # folder (or the demo set in ~/.cache/tuner) is usually elsewhere. Here the temp dir moves away
    # from the data, so returning the data's own paths would fail; thumbnails and the workspace (an
    # allowed path, like --workdir anywhere) must still reach the client.
    import tempfile

    from PIL import Image

    data = tmp_path / "outside" / "twins"
    for name in ("left", "right"):  # identical pictures in both classes: some are surely misclassified
        (data / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (90, 120, 150)).save(data / name / f"{i}.png")
    elsewhere = tmp_path / "server-tmp"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    assert not Path(tempfile.gettempdir()) in data.parents and ROOT not in data.parents

    c = client(studio)
    split = tmp_path / "outside" / "split"
    for part in ("train", "val"):
        make_image_folder(split / part, {"left": 2, "right": 2})
    summary = c.predict("Folder on this server", None, str(split), 0.5, api_name="/load_data")[0]
    assert "4 training and 4 validation images (train/ and val/ folders)" in summary
    summary = c.predict("Folder on this server", None, str(data), 0.5, api_name="/load_data")[0]
    assert "2 classes" in summary and "(class folders, split 50%/50% into train/val)" in summary
    status, curves, log, checkpoint = c.predict(epochs=1, augment_preset="none", **FAST, api_name="/train")
    assert "Finished" in status and Path(checkpoint).name == "best.pt"
    accuracy, confusion, per_class, mistakes = c.predict(api_name="/evaluate")
    wrong = int(re.search(r"(\d+) misclassified", accuracy).group(1))
    assert wrong >= 1 and len(mistakes) == wrong
    assert all(Path(item["image"]).is_file() for item in mistakes)  # copies in the client's download folder
    assert {item["caption"].split(" → ")[0] for item in mistakes} <= {"left", "right"}


def test_model_tab_follows_the_freeze_depth_and_filters_by_stage(studio):
    c = client(studio)
    outputs = c.predict("layer3", "", "layer3", 32, 2, api_name="/inspect_model")
    table, tree = outputs[3], outputs[5]
    headers, rows = table["headers"], table["data"]
    names = [row[headers.index("name")] for row in rows]
    assert names and all(name.startswith("layer3.") for name in names)  # the stage filter
    assert all(row[headers.index("trainable")] in (True, "True", "true") for row in rows)  # layer3 trains
    rows_frozen = c.predict("layer4", "", "layer3", 32, 2, api_name="/inspect_model")[3]["data"]
    assert all(row[headers.index("trainable")] in (False, "False", "false") for row in rows_frozen)
    assert "layer4" in str(tree) and "fc" in str(tree)  # the layer tree with its modules


def test_uploaded_weights_load_by_name_and_shape_and_a_pickle_is_refused(studio, tmp_path):
    import pickle

    import torch

    c = client(studio)
    partial = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(7, 2048)}, partial)
    status, report = c.predict(handle_file(str(partial)), api_name="/upload_weights")
    # conv1 matches by name and shape; a 7-class fc does not fit this head and is skipped, not forced.
    assert re.search(r"partial\.pth:\*\* 1 tensors? loaded, 1 skipped", report) and "fc.weight" in report
    assert "your file partial.pth" in status

    # A refused file of the same name as the weights in use replaces nothing.
    (tmp_path / "again").mkdir()
    unrelated = tmp_path / "again" / "partial.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, unrelated)
    with pytest.raises(Exception) as err:
        c.predict(handle_file(str(unrelated)), api_name="/upload_weights")
    assert "No tensor in partial.pth matches ResNet50 by name and shape: use ResNet50 weights" in error_text(err.value)
    assert "your file partial.pth" in c.predict("head", "", "all stages", 32, 2, api_name="/inspect_model")[0]
    [kept] = studio.workdir.rglob("weights-partial.pth")
    assert set(torch.load(kept, weights_only=True)) == {"conv1.weight", "fc.weight"}

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    with pytest.raises(Exception) as err:
        c.predict(handle_file(str(evil)), api_name="/upload_weights")
    assert "Traceback" not in error_text(err.value)
    assert not marker.exists()


def test_predict_several_images_with_the_base_imagenet_model(studio, tmp_path, monkeypatch, imagenet_weights_file):
    from PIL import Image

    c = client(studio)
    with monkeypatch.context() as offline:  # nothing cached: the base model says what it needs
        offline.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
        with pytest.raises(Exception) as err:
            c.predict([handle_file(str(ROOT / "tuner/assets/examples/circles.png"))], "Base ImageNet model (1000 classes)",
                      3, api_name="/predict")
        assert "needs its pretrained weights" in error_text(err.value) and "resnet50-0676ba61.pth" in error_text(
            err.value)
    c = client(studio)  # a fresh session: the stand-in ImageNet file of the fixture is found now
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        paths.append(tmp_path / f"photo{i}.png")
        Image.new("RGB", (64, 48), colour).save(paths[-1])
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a picture")  # one bad file among the uploads costs its own answer only
    label, chart, gallery, table = c.predict([handle_file(str(p)) for p in [paths[0], fake, paths[1]]],
                                             "Base ImageNet model (1000 classes)", 5, api_name="/predict")
    assert len(gallery) == 2 and len(label["confidences"]) == 5
    with pytest.raises(Exception) as err:  # nothing readable: the reason is the answer, without server paths
        c.predict([handle_file(str(fake))], "Base ImageNet model (1000 classes)", 5, api_name="/predict")
    message = error_text(err.value)
    assert message.startswith("Cannot read fake.jpg as an image") and "/" not in message.split("):")[0]
    images = [row[0] for row in table["data"]]
    assert images.count("photo0.png") == images.count("photo1.png") == 5  # top-5 for each image
    from torchvision.models import ResNet50_Weights

    assert label["label"] in ResNet50_Weights.IMAGENET1K_V1.meta["categories"]


def test_an_upload_over_the_cap_is_refused(studio, tmp_path):
    import os

    folder = make_image_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:  # a valid dataset zip, over the fixture's 20 MB
        for path in folder.rglob("*.png"):
            zf.write(path, path.relative_to(folder).as_posix())
        zf.writestr("cat/padding.bin", os.urandom(21 * 1024 * 1024))
    with pytest.raises(Exception) as err:
        load(client(studio), ZIP, big)
    assert "exceeds the maximum file size of 20971520 bytes" in error_text(err.value)  # the cap, as Gradio says it

    # gradio_client refuses before sending; the server must refuse too (a browser or script may not ask).
    import httpx

    with httpx.Client(base_url=studio.url, timeout=60) as http:
        small = http.post("gradio_api/upload", files={"files": ("small.zip", b"PK" + b"0" * 1000)})
        assert small.status_code == 200, small.text  # the positive control: the route and form are right
        with big.open("rb") as f:
            refused = http.post("gradio_api/upload", files={"files": ("big.zip", f)})
    assert refused.status_code == 413, (refused.status_code, refused.text[:200])


def test_uploaded_files_are_never_served_back_by_path(studio, tmp_path):
    # Gradio serves `allowed_paths` by path: only the folder of files tuner writes (checkpoints,
    # exports) may be there, never unpacked uploads, which may hold HTML or SVG.
    import urllib.error
    import urllib.request

    folder = make_image_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    (folder / "cat" / "page.html").write_text("<script>alert(1)</script>")
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.rglob("*.*"):
            zf.write(path, path.relative_to(folder).as_posix())
    load(client(studio), ZIP, archive)
    registry = studio.studio.registry
    unpacked = list(registry.root.rglob("page.html"))
    assert unpacked
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{studio.url}gradio_api/file={unpacked[0]}", timeout=30)
    assert err.value.code in (403, 404)
    made = registry.served_root / "control.txt"  # the same URL form does serve what tuner writes
    made.parent.mkdir(parents=True, exist_ok=True)
    made.write_text("made by tuner")
    with urllib.request.urlopen(f"{studio.url}gradio_api/file={made}", timeout=30) as response:
        assert response.read() == b"made by tuner"


def test_a_shared_server_offers_no_server_folders(tmp_path):
    from tuner.ui.app import build_app, launch_kwargs
    from tuner.ui.common import StudioSettings

    demo = build_app(StudioSettings(workdir=str(tmp_path / "sessions"), shared=True))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(demo))
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception) as err:  # not even offered as a choice
            c.predict("Folder on this server", None, str(tmp_path), 0.25, api_name="/load_data")
        assert "not in the list of choices" in error_text(err.value)
        assert "Upload a .zip" in error_text(err.value)
    finally:
        demo.close()
        demo.studio.registry.close_all()


# ---- the Data tab's "Check data" panel ------------------------------------------------------------------

FOLDER = "Folder on this server"
CHECK_OUTPUTS = ("status", "summary", "table", "gallery", "kinds", "images", "excluded", "report")
PLANTED_PROBLEMS = ("exact_conflict", "exact_leak", "constant")  # what a random backbone finds (test_cli_doctor)


def check(c: Client, **settings) -> dict:
    return dict(zip(CHECK_OUTPUTS, c.predict(image_size=32, **settings, api_name="/check_data")))


def session_of(studio, c: Client):
    return studio.studio.registry._workspaces[c.session_hash]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    from test_health import planted_dataset

    root = tmp_path_factory.mktemp("planted") / "data"
    return root, planted_dataset(root)


def test_check_data_finds_what_the_doctor_finds_and_exclusions_follow_the_data(studio, planted, tmp_path):
    from tuner.events import drain
    from tuner.train.doctor import doctor_config, doctor_events

    root, expected = planted
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    c = client(studio)
    c.predict(FOLDER, None, str(root), 0.25, api_name="/load_data")
    out = check(c)
    # The engine on the same data, at the same size, with the session's weights (ImageNet, missing offline).
    report = drain(doctor_events(doctor_config(str(root), str(tmp_path), 32, "imagenet")))
    assert {f["kind"]: set(f["paths"]) for f in out["report"]["findings"]} == expected
    assert out["report"]["findings"] == report.to_dict()["findings"] and out["report"]["root"] == "data"
    assert out["summary"].startswith(f"**{report.summary()}**")
    assert "Not checked: near duplicates, outliers and wrong labels: these need a pretrained backbone" in out["summary"]
    assert f"Checked {sum(r['train'] + r['val'] for r in report.counts)} images" in out["status"]
    table = out["table"]
    assert table["headers"] == ["severity", "finding", "count", "fix"]
    assert [row[0] for row in table["data"]] == ["problem"] * 3 + ["note"] * 6
    captions = [item["caption"] for item in out["gallery"]]
    assert "val/checks/leaked.png (matches train/checks/00.png) · Validation images that are also training images" \
        in captions and len(captions) == sum(len(paths) for paths in expected.values())
    assert all(Path(item["image"]).is_file() for item in out["gallery"])  # thumbnails, copied to the client
    # Offered for exclusion: the findings whose fix is to leave their images out, problems first.
    choices = [tuple(choice) for choice in out["kinds"]["choices"]]
    assert [kind for _, kind in choices] == ["exact_conflict", "constant", "exact_leak", "dark", "blurry",
                                             "exact_duplicate"]
    assert choices[0] == ("Identical images under different classes (2)", "exact_conflict")
    assert out["kinds"]["value"] == [] and out["images"]["value"] == []
    assert out["excluded"] == "No image is left out of training."

    # One click per finding, and single images: the session keeps the list, the data stays as it was.
    flagged = sorted(set().union(*(expected[k] for k in PLANTED_PROBLEMS)))
    text = c.predict(list(PLANTED_PROBLEMS), [], api_name="/set_exclusions")
    assert text.startswith("**4 images left out of training**") and "your files are not changed" in text
    assert session_of(studio, c).exclude == flagged
    c.predict(["constant"], ["./train/checks/wide.png"], api_name="/set_exclusions")
    assert session_of(studio, c).exclude == ["train/checks/blank.png", "train/checks/wide.png"]
    # A finding whose fix is not exclusion (small images: train at a smaller size) is not offered.
    for kinds, images, message in ((["small"], [], "'small' (type: <class 'str'>) is not in the list of choices"),
                                   ([], ["cats/01.jpg"], "not in the dataset (e.g. cats/01.jpg): write paths inside")):
        with pytest.raises(Exception) as err:
            c.predict(kinds, images, api_name="/set_exclusions")
        assert message in error_text(err.value)
    assert session_of(studio, c).exclude == ["train/checks/blank.png", "train/checks/wide.png"]  # kept on error
    # A second check looks at the data without them, as `tuner doctor --exclude` does: the blank image's
    # finding is gone, and both left-out images stay picked, so the next Exclude keeps them.
    again = check(c)
    assert "constant" not in [kind for _, kind in (tuple(x) for x in again["kinds"]["choices"])]
    assert again["images"]["value"] == ["train/checks/blank.png", "train/checks/wide.png"]
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before

    # Other data: the check and its exclusions go with the data they were made on.
    load(c)
    assert session_of(studio, c).exclude == [] and session_of(studio, c).report is None
    with pytest.raises(Exception) as err:
        c.predict(["exact_conflict"], [], api_name="/set_exclusions")
    assert "No check of this data yet: press Check data first" in error_text(err.value)


def test_checking_before_loading_and_stopping_midway_each_say_so(studio, planted, monkeypatch):
    from tuner.train import doctor

    c = client(studio)
    with pytest.raises(Exception) as err:
        check(c)
    assert "No data loaded yet: choose a data source above and press Load data" in error_text(err.value)

    # Stop pressed while the pixels are being judged: the check ends there with what it found so far.
    root, _ = planted
    c.predict(FOLDER, None, str(root), 0.25, api_name="/load_data")
    reached, go_on = threading.Event(), threading.Event()
    findings = doctor.image_findings

    def held(*args, **kwargs):
        reached.set()
        go_on.wait(60)
        return findings(*args, **kwargs)

    monkeypatch.setattr(doctor, "image_findings", held)
    job = c.submit(image_size=32, api_name="/check_data")
    assert reached.wait(120)
    c.predict(api_name="/stop")
    go_on.set()
    out = dict(zip(CHECK_OUTPUTS, job.result(timeout=120)))
    assert "Stopped on request: the findings are those of the checks that finished" in out["status"]
    assert "(stopped before every check ran)" in out["summary"] and out["report"]["stopped"]
    assert "constant" in {f["kind"] for f in out["report"]["findings"]}  # the pixel checks had finished


def train_has_exclude() -> bool:
    import dataclasses

    from tuner.config import TrainConfig

    return "exclude" in {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.skipif(not train_has_exclude(), reason="TrainConfig.exclude (training that leaves images out) is not "
                    "in this branch yet: the Train tab passes the session's exclusions once it is")
def test_the_images_excluded_on_the_data_tab_are_left_out_of_the_training_run(studio, planted):
    import json

    root, expected = planted
    c = client(studio)
    c.predict(FOLDER, None, str(root), 0.25, api_name="/load_data")
    check(c)
    c.predict(list(PLANTED_PROBLEMS), [], api_name="/set_exclusions")
    status = c.predict(epochs=1, augment_preset="none", **FAST, api_name="/train")[0]
    assert "Finished" in status
    metrics = json.loads((session_of(studio, c).run_dir / "metrics.json").read_text())
    assert metrics["excluded"] == sorted(set().union(*(expected[k] for k in PLANTED_PROBLEMS)))
