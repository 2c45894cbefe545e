"""The Data tab's "Check data" panel: the data check (`tuner.train.doctor`) on the session's loaded
dataset, with progress and Stop as training has them; its findings, thumbnails of their examples, and
the images to leave out of the Train tab's runs (kept in the session; the user's files never change)."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from ...data.health import KINDS, Report, exclude_samples, relative_path
from ...data.preview import findings_grid
from ...errors import TunerError
from ...events import PHASES, Progress
from ...train.doctor import doctor_config, doctor_events
from ..common import HEAVY, LIGHT, Studio, user_facing
from .train import UPDATE_EVERY_S, TrainForm, progress_html

NO_DATA = "No data loaded yet: choose a data source above and press Load data (the demo set works offline)."
NOT_CHECKED = "Not checked yet: press Check data to look for duplicates, leaks, bad images and likely wrong labels"
NO_REPORT = ("No check of this data yet: press Check data first, then choose the findings whose images to leave out "
             "(or name the images themselves).")
COLUMNS = ["severity", "finding", "count", "fix"]
SHOWN_EXCLUSIONS = 10  # paths listed under the count; the JSON and the picker have them all
FORM_FIELDS = ("image_size", "batch_size", "seed", "device")  # the Train tab's settings the check reads


def findings_table(report: Report | None) -> pd.DataFrame:
    rows = [] if report is None else report.ordered()
    return pd.DataFrame([{"severity": f.severity, "finding": KINDS[f.kind].title + (f". {f.detail}" if f.detail else ""),
                          "count": f.count, "fix": f.fix} for f in rows], columns=COLUMNS)


def exclusion_text(exclude: list[str]) -> str:
    if not exclude:
        return "No image is left out of training."
    more = f", and {len(exclude) - SHOWN_EXCLUSIONS} more" if len(exclude) > SHOWN_EXCLUSIONS else ""
    return (f"**{len(exclude)} image{'' if len(exclude) == 1 else 's'} left out of training** (the Train tab's runs "
            f"skip {'it' if len(exclude) == 1 else 'them'}; your files are not changed): "
            + ", ".join(f"`{p}`" for p in exclude[:SHOWN_EXCLUSIONS]) + more + ".")


def build(studio: Studio) -> dict:
    with gr.Accordion("Check data: duplicates, leaks, bad images, likely wrong labels", open=True):
        gr.Markdown("Checks the loaded images at the Train tab's image size, as `tuner doctor` does. The near-duplicate, "
                    "outlier and wrong-label checks need pretrained weights (Model tab). Nothing in your data is "
                    "changed: images you exclude are only left out of the Train tab's runs.")
        with gr.Row():
            check = gr.Button("Check data", variant="primary", elem_id="check-data")
            stop = gr.Button("Stop", variant="stop", elem_id="check-stop")
        status = gr.HTML(progress_html(NOT_CHECKED, 0, 1), elem_id="check-status")
        summary = gr.Markdown(elem_id="check-summary")
        table = gr.Dataframe(findings_table(None), label="Findings (problems first)", interactive=False, wrap=True,
                             column_widths=["9%", "50%", "7%", "34%"], elem_id="check-findings")
        gallery = gr.Gallery(label="Examples: path in the dataset (its other copy or suggested class) · finding",
                             columns=5, height=300, object_fit="contain", elem_id="check-examples")
        with gr.Row():
            kinds = gr.CheckboxGroup([], label="Leave out every image of these findings", elem_id="exclude-findings")
            images = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                 label="... and these images (paths in the dataset)", elem_id="exclude-images")
        with gr.Row():
            apply = gr.Button("Exclude from training", elem_id="exclude-apply")
            keep = gr.Button("Keep every image", elem_id="exclude-keep")
        excluded = gr.Markdown(exclusion_text([]), elem_id="excluded")
        with gr.Accordion("The report as JSON (as tuner doctor --json writes it)", open=False):
            report_json = gr.JSON(elem_id="check-json")
    return {"check": check, "stop": stop, "status": status, "summary": summary, "table": table, "gallery": gallery,
            "kinds": kinds, "images": images, "apply": apply, "keep": keep, "excluded": excluded,
            "report_json": report_json}


def wire(studio: Studio, panel: dict, form: TrainForm, stop_job, heavy_limit: int) -> dict:
    """Wire the panel; returns the event that redraws it for the session's data (after each data load)."""
    act = user_facing(studio)
    outputs = [panel[name] for name in ("status", "summary", "table", "gallery", "kinds", "images", "excluded",
                                        "report_json")]

    def show(workspace) -> tuple:
        """The panel for the session's last check and exclusions (empty after a data load)."""
        report: Report | None = workspace.report
        exclude = list(workspace.exclude)
        if report is None:
            return (progress_html(NOT_CHECKED, 0, 1), "", findings_table(None), [], gr.update(choices=[], value=[]),
                    gr.update(choices=exclude, value=exclude), exclusion_text(exclude), None)
        done = "Stopped on request: the findings are those of the checks that finished" if report.stopped else \
            f"Checked {sum(r['train'] + r['val'] for r in report.counts)} images"
        lines = [f"**{report.summary()}**"] + [f"Not checked: {reason}." for reason in report.skipped]
        excludable = [f for f in report.ordered() if KINDS[f.kind].excludable]
        chosen = [f.kind for f in excludable if set(f.paths) <= set(exclude)]
        covered = set(report.flagged(chosen))
        images = {relative_path(s.path, workspace.spec.root) for s in workspace.spec.train + workspace.spec.val}
        flagged = sorted({p for f in report.findings for p in f.paths if p in images} | set(exclude))
        # The user's name for the data, never a server folder; reasons (a missing weights file's fix) scrubbed too.
        data = dict(report.to_dict(), root=workspace.data_label,
                    skipped=[studio.public(reason, workspace) for reason in report.skipped])
        return (progress_html(done, 1, 1), studio.public("\n\n".join(lines), workspace), findings_table(report),
                findings_grid(report, workspace.spec),
                gr.update(choices=[(f"{KINDS[f.kind].title} ({f.count})", f.kind) for f in excludable], value=chosen),
                gr.update(choices=flagged, value=[p for p in exclude if p not in covered]), exclusion_text(exclude), data)

    @act
    def check_data(request: gr.Request, **settings):
        workspace = studio.workspace(request)
        if workspace.spec is None:
            raise TunerError(NO_DATA)
        with workspace.job():
            train = form.config(settings)  # the Train tab's image size, batch size, seed and device
            config = doctor_config(workspace.data_source, str(workspace.root), train.image_size, workspace.weights,
                                   seed=train.seed, batch_size=train.batch_size, device=train.device)
            # Without the images already left out, as `tuner doctor --exclude` checks: what remains is the data
            # the next run trains on.
            events = doctor_events(config, spec=workspace.spec, exclude=workspace.exclude, stop=workspace.stop)
            last_draw = 0.0
            while True:
                try:
                    event = next(events)
                except StopIteration as finished:
                    workspace.report = finished.value
                    break
                if isinstance(event, Progress) and time.monotonic() - last_draw >= UPDATE_EVERY_S:
                    last_draw = time.monotonic()
                    label = f"{PHASES.get(event.phase, event.phase)}: step {event.step}/{event.steps}"
                    yield (progress_html(label, event.step, event.steps),) + (gr.skip(),) * (len(outputs) - 1)
            yield show(workspace)

    @act
    def set_exclusions(kinds: list[str], images: list[str], request: gr.Request):
        """Leave out of training every image of these findings (by kind, as the report names them) and
        these images (paths in the dataset); replaces the session's list. Nothing else changes."""
        workspace = studio.workspace(request)
        if workspace.spec is None:
            raise TunerError(NO_DATA)
        if kinds and workspace.report is None:
            raise TunerError(NO_REPORT)
        paths = set(workspace.report.flagged(kinds) if kinds else []) | {Path(p).as_posix() for p in images or []}
        exclude_samples(workspace.spec, paths)  # refuses unknown paths and a class or validation left empty
        workspace.exclude = sorted(paths)
        return exclusion_text(workspace.exclude)

    @act
    def show_check(request: gr.Request):
        return show(studio.workspace(request))

    settings = {name: form.fields[name] for name in FORM_FIELDS}
    panel["check"].click(check_data, None, outputs, inputs_kwargs=settings, api_name="check_data",
                         concurrency_id=HEAVY, concurrency_limit=heavy_limit, show_progress="minimal")
    # The session's one Stop: it ends whichever job runs (this check or a training run), at its next batch.
    panel["stop"].click(stop_job, None, panel["status"], api_name=False, concurrency_limit=None,
                        show_progress="hidden")
    panel["apply"].click(set_exclusions, [panel["kinds"], panel["images"]], panel["excluded"],
                         api_name="set_exclusions", concurrency_id=LIGHT)
    panel["keep"].click(lambda: ([], []), None, [panel["kinds"], panel["images"]], api_name=False, queue=False).then(
        set_exclusions, [panel["kinds"], panel["images"]], panel["excluded"], api_name=False, concurrency_id=LIGHT)
    return dict(fn=show_check, inputs=None, outputs=outputs, api_name=False, concurrency_id=LIGHT,
                show_progress="hidden")

