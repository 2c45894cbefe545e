"""The report: one entry per item, the Markdown table printed at the end, and the JSON file."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from ..paths import atomic_write
from .machine import describe_machine
from .settings import ITEMS
from .timing import spread


def item_entry(item_id: str, name: str, unit: str, tuner: float | None, plain: float | None, ratios: list[float],
               met: bool | None, target: str, higher_is_better: bool = False, skipped: str = "",
               tuner_text: str = "", plain_text: str = "", details: dict[str, Any] | None = None,
               ratio_means: str = "") -> dict[str, Any]:
    """One item's result; `ratios` are oriented by the caller, as `ratio_means` says (by default the
    speed-up of tuner over plain: tuner/plain for rates, plain/tuner for times)."""
    fmt = (lambda v: f"{v:.1f} {unit}") if unit != "img/s" else (lambda v: f"{v:.2f} {unit}")
    return {"id": item_id, "name": name, "unit": unit, "tuner": tuner, "plain": plain,
            "ratio": statistics.median(ratios) if ratios else None,
            "ratio_spread": spread(ratios) if ratios else None, "ratios": ratios,
            "ratio_means": ratio_means or ("tuner/plain" if higher_is_better
                                           else "plain/tuner (time: above 1 means tuner is faster)"),
            "target": target, "met": met, "skipped": skipped or None,
            "tuner_text": tuner_text or (fmt(tuner) if tuner is not None else ""),
            "plain_text": plain_text or (fmt(plain) if plain is not None else ""),
            "details": details or {}}


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of the items, then the CPU settings, then the machine."""
    lines = ["| # | measurement | tuner | plain PyTorch | ratio (min-max) | target | met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for item in report["items"]:
        number = ITEMS.index(item["id"]) + 1  # the numbering, also when only some items ran
        if item["skipped"]:
            lines.append(f"| {number} | {item['name']} | {item['skipped']} | | | {item['target']} | - |")
            continue
        sp = item["ratio_spread"]
        ratio = f"{item['ratio']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f})"
        met = "yes" if item["met"] else "no"
        lines.append(f"| {number} | {item['name']} | {item['tuner_text']} | {item['plain_text']} | {ratio} | "
                     f"{item['target']} | {met} |")
    extra = []
    for item in report["items"]:
        fwd = item["details"].get("forward_only") if item["id"] == "predict" else None
        if fwd:
            extra.append(f"Item 2, model forward alone: ONNX Runtime {fwd['tuner_ms']:.1f} ms, eager PyTorch "
                         f"{fwd['plain_ms']:.1f} ms ({fwd['ratio']:.2f}x); first call with the ONNX export: "
                         f"{item['details']['first_call_ms']:.0f} ms.")
        if item["id"] == "gpu" and not item["skipped"]:
            compiled, skipped = item["details"].get("compiled_img_s"), item["details"].get("compile_skipped")
            if compiled:
                extra.append(f"Item 4 with torch.compile: {statistics.median(compiled):.1f} img/s (the share of peak "
                             "uses the faster of the two).")
            elif skipped:
                extra.append(f"Item 4 without torch.compile: {skipped}")
        if item["id"] == "doctor":
            d = item["details"]
            r = d["typical_repeat"]
            extra.append(f"Item 5, where the time went (repeat {r + 1}, the median ratio's): check "
                         f"{_seconds(d['check_phases_s'][r])}; training {_seconds(d['training_breakdown_s'][r])}. "
                         f"The check ran {len(d['checked'])} checks "
                         f"({d['check_summary']}), the feature checks included (the backbone is given as a weights "
                         "file).")
    settings = report.get("cpu_settings")
    if settings:
        extra.append("")
        extra.append(f"{settings['name']}:")
        extra.append("")
        extra.append("| setting | speed-up (min-max) | tuner's CPU default |")
        extra.append("| --- | --- | --- |")
        for name, row in settings["rows"].items():
            sp = row["speedup"]
            extra.append(f"| {name} | {sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f}) | {row['default']} |")
    extra.append("")
    extra.append(f"Machine: {describe_machine(report['machine'])}. Backbone: {report['weights']}. "
                 f"Repeats: {report['settings']['repeats']} (ratios are medians). {report['date']}; load average "
                 f"(1 min) {_load_text(report)}.")
    return "\n".join(lines + ([""] + extra if extra else []))


def _seconds(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())


def _load_text(report: dict[str, Any]) -> str:
    load = report.get("load_average") or {}
    if not load.get("start") or not load.get("end"):
        return "unknown"
    return f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end"


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
