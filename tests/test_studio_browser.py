"""The studio in a real browser (Debian's Chromium through Playwright): a newcomer's first session.

Model -> Data -> Train -> Evaluate -> Predict by clicking, asserting what a person would see at
1280x800, with a full-page screenshot of every tab in test-artifacts/screenshots/ for a human to
look at. The app runs in this process on a free port; weights fall back to random initialisation
(TUNER_OFFLINE=1 from conftest), which the page says.

Skipped when /usr/bin/chromium is missing (scripts/test.sh installs it where it can): Playwright's
own browser downloads are never used.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_SIZE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CLASSES = ("circles", "squares", "stripes", "triangles")  # the built-in demo set
ONE_CLASS = re.compile("|".join(CLASSES))
# Generous: two CPU cores are shared with other test runs; a wait ends as soon as its condition holds.
PAGE_MS = 60_000
TRAIN_MS = 150_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                "(apt-get install chromium; scripts/test.sh does it when it can)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-test.txt)")
expect = sync_api.expect


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def studio_url(studio):
    return studio.url


@pytest.fixture
def studio(tmp_path, monkeypatch):
    from tuner.ui.app import build_app, launch_kwargs
    from tuner.ui.common import StudioSettings

    # An empty hub cache of its own: this test shows what a newcomer sees offline with nothing cached,
    # whatever else has run in this session.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    settings = StudioSettings(workdir=str(tmp_path / "sessions"))
    demo = build_app(settings)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(demo))
    demo.url = f"http://127.0.0.1:{port}/"
    try:
        yield demo
    finally:
        demo.close()
        demo.studio.registry.close_all()


@pytest.fixture
def page():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(PAGE_MS)
            expect.set_options(timeout=PAGE_MS)  # expect() has its own 5 s default, too short on a busy CPU
            page.uncaught = []  # JavaScript exceptions: a broken page, even when it looks fine
            page.on("pageerror", lambda exc: page.uncaught.append(str(exc)))
            yield page
        finally:
            expect.set_options(timeout=5_000)  # Playwright's default, for anything else in this process
            browser.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute("aria-selected", "true")


def set_slider(page, label: str, value: int) -> None:
    """Type into a slider's number box, as a person would, and check the slider itself followed."""
    box = page.get_by_label(f"number input for {label}", exact=True)
    box.fill(str(value))
    box.press("Enter")
    box.blur()
    expect(page.get_by_label(f"range slider for {label}", exact=True)).to_have_value(str(value))


def no_error_shown(page) -> None:
    """gr.Error reaches the user as a toast; none may be on screen after a step of the happy path."""
    toasts = page.locator("[data-testid='toast-body']")
    assert toasts.count() == 0, "error shown to the user: " + " | ".join(toasts.all_inner_texts())
    assert not page.uncaught, f"JavaScript errors in the page: {page.uncaught}"


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_newcomer_goes_from_data_to_prediction_by_clicking(studio_url, page):
    page.goto(studio_url)

    # Model: the named_parameters() table and the weights status (random init here, and the page says so).
    expect(page.get_by_role("tab", name="Model", exact=True)).to_have_attribute("aria-selected", "true")
    params = page.locator("#param-table")
    expect(params).to_contain_text("conv1.weight")
    expect(page.locator("#weights-status")).to_contain_text("Weights:")
    expect(page.locator("#weights-status")).to_contain_text(re.compile("random initialisation", re.I))
    # The head follows the demo set the page loads (4 classes), not ImageNet's 1000.
    expect(page.locator("#trainable-counts")).to_contain_text("8,196 of 23,516,228 parameters train (0.03%)")
    expect(page.locator("#stage-plot .js-plotly-plot")).to_be_visible()
    shot(page, "1-model")
    # The table is long (only its first rows are drawn): the name filter finds the head, which trains.
    page.get_by_label("Filter parameters by name").fill("fc.")
    page.get_by_label("Filter parameters by name").press("Enter")
    expect(params).not_to_contain_text("conv1.weight")
    expect(params.get_by_role("row", name=re.compile(r"^fc\.weight .*true$"))).to_be_visible()
    no_error_shown(page)

    # Data: a new session starts on the built-in demo set (loaded with the page); pressing Load data
    # again shows the same summary, counts and samples.
    open_tab(page, "Data")
    expect(page.locator("#data-summary")).to_contain_text("4 classes")
    page.locator("#load-data").click()
    summary = page.locator("#data-summary")
    expect(summary).to_contain_text("4 classes")
    for name in CLASSES:
        expect(summary).to_contain_text(name)
    samples = page.locator("#samples img")
    expect(samples.first).to_be_visible()
    assert samples.count() >= len(CLASSES), "the sample gallery should show images of every class"
    assert samples.first.evaluate("img => img.complete && img.naturalWidth > 0"), "sample image did not load"
    expect(page.locator("#augmented img").first).to_be_visible()
    expect(page.locator("#class-counts .js-plotly-plot")).to_be_visible()
    no_error_shown(page)
    # Check data: findings with example thumbnails, and (offline, no pretrained weights) what was not checked.
    page.locator("#check-data").click()
    expect(page.locator("#check-status")).to_contain_text("Checked 192 images", timeout=TRAIN_MS)
    expect(page.locator("#check-summary")).to_contain_text("Not checked: near duplicates, outliers and wrong labels")
    expect(page.locator("#check-findings")).to_contain_text(re.compile(r"problem|note"))
    expect(page.locator("#check-examples img").first).to_be_visible()
    # One click leaves a finding's images out of training; another keeps them all again.
    page.locator("#exclude-findings label").first.click()
    page.locator("#exclude-apply").click()
    expect(page.locator("#excluded")).to_contain_text(re.compile(r"\d+ images? left out of training"))
    no_error_shown(page)
    shot(page, "2-data")
    page.locator("#exclude-keep").click()
    expect(page.locator("#excluded")).to_contain_text("No image is left out of training.")

    # Train: one epoch at 32 px, typed into the sliders' number boxes; then the curves and "Finished".
    open_tab(page, "Train")
    expect(page.locator("#train-status")).to_contain_text("Not started")
    set_slider(page, "Epochs", 1)
    set_slider(page, "Image size (px)", TINY_SIZE)
    # The command-line panel follows the form: proof the typed values reached the server.
    page.get_by_text("Same run from the command line").click()
    command = page.locator("#train-command")
    expect(command).to_contain_text("--epochs 1")
    expect(command).to_contain_text(f"--image-size {TINY_SIZE}")
    # The multi-GPU form of the same run, ready to paste (issue: torchrun command in the Train tab).
    torchrun = page.locator("#torchrun-command")
    expect(torchrun).to_contain_text("torchrun --nproc_per_node=NUM_GPUS -m tuner train")
    expect(torchrun).to_contain_text(f"--image-size {TINY_SIZE}")
    expect(torchrun).to_contain_text(re.compile(r"--rdzv_endpoint=HOST:29500 -m tuner train .*--image-size"))
    page.locator("#train-start").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("Finished", timeout=TRAIN_MS)
    expect(status).to_contain_text(re.compile(r"\b1 epochs? done"))
    expect(page.locator("#train-curves .js-plotly-plot")).to_be_visible()
    expect(page.locator("#train-curves .js-plotly-plot svg").first).to_be_visible()
    expect(page.locator("#train-log textarea")).to_have_value(re.compile(r"Epoch 1/1: train loss"))
    expect(page.locator("#train-checkpoint")).to_contain_text("best.pt")
    no_error_shown(page)
    shot(page, "3-train")

    # Evaluate: accuracy on the held-out images, a confusion matrix over the four classes, a per-class table.
    open_tab(page, "Evaluate")
    page.locator("#evaluate").click()
    expect(page.locator("#eval-summary")).to_contain_text("Validation accuracy")
    expect(page.locator("#confusion .js-plotly-plot")).to_be_visible()
    for name in CLASSES:
        expect(page.locator("#per-class")).to_contain_text(name)
    no_error_shown(page)
    shot(page, "4-evaluate")

    # Predict: pick the "circles" example under the upload box, predict with the fine-tuned model.
    open_tab(page, "Predict")
    page.get_by_role("button", name="circles", exact=True).click()
    expect(page.locator("#predict-images")).to_contain_text(re.compile(r"circles\s*\.png"))  # name and extension apart
    label = page.locator("#predict-label")
    expect(label).not_to_contain_text(ONE_CLASS)  # nothing predicted yet
    page.locator("#predict").click()
    # The label's headline is the top class (a tiny random-init model may pick any of the four).
    expect(label).to_contain_text(ONE_CLASS)
    expect(label.get_by_text(re.compile(r"\d+%")).first).to_be_visible()
    expect(page.locator("#predict-chart .js-plotly-plot")).to_be_visible()
    expect(page.locator("#predict-table")).to_contain_text("circles.png")
    no_error_shown(page)
    shot(page, "5-predict")

    # Export: ONNX, verified against PyTorch in the table, and the files to download.
    open_tab(page, "Export")
    page.locator("#export-benchmark input").uncheck()  # timing is the speed table's job, not this test's
    page.locator("#export").click()
    verification = page.locator("#export-verification")
    expect(verification).to_contain_text("model.onnx", timeout=TRAIN_MS)
    expect(verification).to_contain_text("matches")
    expect(page.locator("#export-files")).to_contain_text(re.compile(r"model\s*\.onnx"))
    expect(page.locator("#export-messages")).to_contain_text("Speed not measured")  # the empty table says why
    no_error_shown(page)
    shot(page, "6-export")


def test_stop_cancels_a_start_that_waits_behind_another_sessions_training(studio, page):
    # One heavy job at a time (the default): B's Start waits in the queue while A trains. Stop in B
    # must cancel that waiting run, not answer "nothing is running" and let it start later.
    a = page
    b = page.context.browser.new_page(viewport={"width": 1280, "height": 800})  # another session
    b.set_default_timeout(PAGE_MS)
    b.uncaught = []
    b.on("pageerror", lambda exc: b.uncaught.append(str(exc)))
    for p in (a, b):
        p.goto(studio.url)
        open_tab(p, "Data")  # the demo set loads with the page; Start before that would say "No data loaded yet"
        expect(p.locator("#data-summary")).to_contain_text("4 classes")
        open_tab(p, "Train")
        set_slider(p, "Image size (px)", TINY_SIZE)
    set_slider(a, "Epochs", 30)
    a.locator("#train-trainable").get_by_test_id("layer4 + head-radio-label").click()  # every batch trains layer4
    a.locator("#train-start").click()
    expect(a.locator("#train-status")).to_contain_text("Training: epoch", timeout=TRAIN_MS)
    no_error_shown(a)

    b.locator("#train-start").click()
    registry = studio.studio.registry
    deadline = time.time() + 60  # B's Start has been noted and its job waits (A holds the only slot)
    while not any(ws._waiting for ws in registry._workspaces.values()) and time.time() < deadline:
        time.sleep(0.1)
    b.locator("#train-stop").click()
    expect(b.locator("#train-status")).to_contain_text("will not start")
    a.locator("#train-stop").click()
    expect(a.locator("#train-status")).to_contain_text("Stopped on request", timeout=TRAIN_MS)
    # B's turn came and went: it did not train.
    expect(b.locator("#train-status")).to_contain_text("Stopped before it started", timeout=TRAIN_MS)
    expect(b.locator("#train-log textarea")).to_have_value("")
    no_error_shown(a)
    no_error_shown(b)

    # Closing a tab ends its session: its workspace folder goes.
    folders = {folder for ws in registry._workspaces.values() for folder in ws.folders}  # uploads and outputs
    assert len(folders) == 4 and all(folder.is_dir() for folder in folders)
    b.close()
    deadline = time.time() + 60
    while (len(registry._workspaces) > 1 or sum(f.is_dir() for f in folders) > 2) and time.time() < deadline:
        time.sleep(0.2)  # the folders go in the background, once the session's job (none here) lets go
    assert len(registry._workspaces) == 1
    assert sum(folder.is_dir() for folder in folders) == 2
