"""The GPU check's report (benchmarks/bench_gpu.py): the guarded steps, each figure against
its target, and the markdown page."""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# issue 28, on one H100: end to end from files, one fine-tuning epoch, one Grad-CAM
TARGET_VGG16_IMAGES_PER_S = 3000
TARGET_FINETUNE_IMAGES_PER_S = 600
TARGET_GRADCAM_MS = 20.0


@dataclass
class Recorder:
    """Runs guarded steps against a deadline; keeps and writes the results after each."""

    out: Path
    budget_s: float
    needs_scale: float = 1.0
    meta: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def step(self, name: str, fn: Callable[[], dict], needs_s: float = 5.0) -> dict | None:
        """Run ``fn`` (returns a dict of figures) unless under ``needs_s`` seconds are left."""
        needs_s *= self.needs_scale
        if self.left() < needs_s:
            self.steps[name] = {"status": "skipped",
                                "reason": f"time budget: {self.left():.0f} s left, needs ~{needs_s:.0f} s"}
            print(f"[skip] {name}: time budget", flush=True)
            self.write()
            return None
        start = time.perf_counter()
        try:
            result = fn()
            record = {"status": "ok", **result}
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the others
            tail = traceback.format_exc().strip().splitlines()[-6:]
            record = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": tail}
            result = None
        record["seconds"] = round(time.perf_counter() - start, 3)
        self.steps[name] = record
        figure = _headline(record)
        print(f"[{record['status']}] {name} ({record['seconds']:.1f} s){figure}", flush=True)
        self.write()
        return result

    def report(self) -> dict:
        meta = dict(self.meta, total_seconds=round(time.perf_counter() - self.t0, 1))
        return {"meta": meta, "target": _target(self.steps, meta),
                "targets": targets(self.steps, meta), "steps": self.steps}

    def write(self) -> None:
        report = self.report()
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu.json", json.dumps(report, indent=1, default=str)),
                           ("gpu.md", markdown(report))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.out / name)


def _headline(record: dict) -> str:
    if record["status"] == "error":
        return f": {record['error']}"
    for key in ("images_per_s", "min_cosine", "max_abs_diff", "epoch_seconds", "median_ms"):
        if key in record:
            return f": {key} {record[key]}"
    return ""


def _target(steps: dict, meta: dict) -> dict:
    rates = [s["images_per_s"] for name, s in steps.items()
             if name.startswith("extract/vgg16/") and s.get("status") == "ok"
             and str(s.get("decode", "")).startswith("processes")]
    best = max(rates) if rates else None
    on_gpu = meta.get("device_type") == "cuda"
    return {"vgg16_layer21_images_per_s": best, "target_images_per_s": TARGET_VGG16_IMAGES_PER_S,
            "met": (best >= TARGET_VGG16_IMAGES_PER_S) if (best is not None and on_gpu) else None,
            "note": "end to end from image files; target is for one H100" if on_gpu
            else "CPU smoke run: the target does not apply"}


def targets(steps: dict, meta: dict) -> list[dict]:
    """Each headline figure against its target (issue 28): ``met`` is None where the figure
    is missing or the run is not on a GPU (the targets are for one H100)."""
    on_gpu = meta.get("device_type") == "cuda"
    best = _target(steps, meta)["vgg16_layer21_images_per_s"]
    ft = steps.get("finetune/vgg16/1-epoch", {})
    cam = steps.get("gradcam/logistic-head", {})
    rows = [("end-to-end extraction, VGG16 layer 21 (img/s)", best, ">=",
             TARGET_VGG16_IMAGES_PER_S),
            ("fine-tuning epoch (train img/s)", ft.get("train_images_per_s"), ">=",
             TARGET_FINETUNE_IMAGES_PER_S),
            ("Grad-CAM, logistic head, all terms (ms)", cam.get("median_ms"), "<=",
             TARGET_GRADCAM_MS)]
    out = []
    for what, value, op, goal in rows:
        met = None
        if value is not None and on_gpu:
            met = value >= goal if op == ">=" else value <= goal
        out.append({"figure": what, "value": value, "target": f"{op} {goal:g}", "met": met})
    return out


def target_lines(report: dict) -> list[str]:
    """One line per target: ``PASS``/``FAIL`` (``N/A`` off a GPU or when not measured)."""
    lines = []
    for t in report["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[t["met"]]
        value = "not measured" if t["value"] is None else f"{t['value']:g}"
        lines.append(f"[target] {verdict} {t['figure']}: {value} (target {t['target']})")
    return lines


def markdown(report: dict) -> str:
    """The report as a short markdown page: settings, extraction table, other figures."""
    meta, steps, target = report["meta"], report["steps"], report["target"]
    lines = ["# GPU check", "",
             f"Device: {meta.get('device_name', '?')} ({meta.get('mode', '?')}); torch "
             f"{meta.get('torch', '?')}, CUDA {meta.get('cuda', '-')}, {meta.get('cpu_count', '?')} "
             f"CPU cores; {meta.get('total_seconds', '?')} s in all.", ""]
    best = target.get("vgg16_layer21_images_per_s")
    verdict = {True: "met", False: "NOT met", None: "n/a"}[target.get("met")]
    lines += [f"VGG16 layer 21, end to end from files: best {best if best is not None else '-'} "
              f"images/s (target >= {target['target_images_per_s']} on an H100: {verdict}; "
              f"{target['note']}).", "",
              "| backbone | layer | weights | precision | batch | decode | images/s | status |",
              "|---|---|---|---|---:|---|---:|---|"]
    for name, s in steps.items():
        if not name.startswith(("extract/", "model-only/")):
            continue
        parts = name.split("/")
        if s.get("status") != "ok":
            lines.append(f"| {parts[1]} | | | {parts[2] if len(parts) > 2 else ''} | | | | "
                         f"{s['status']}: {s.get('error') or s.get('reason', '')} |")
            continue
        rate = s["images_per_s"]
        lines.append(f"| {s['backbone']} | {s['layer']} | {s['weights']} | {s['precision']} | "
                     f"{s['batch_size']} | {s['decode']} | {rate:.{0 if rate >= 100 else 2}f} "
                     "| ok |")
    lines += ["", "| figure | value | target | verdict |", "|---|---:|---|---|"]
    for t in report.get("targets", []):
        lines.append(f"| {t['figure']} | {'-' if t['value'] is None else t['value']} | "
                     f"{t['target']} | {({True: 'PASS', False: 'FAIL'}).get(t['met'], 'n/a')} |")
    lines += ["", "| measurement | status | figures |", "|---|---|---|"]
    skip_keys = {"status", "traceback", "seconds"}
    for name, s in steps.items():
        if name.startswith(("extract/", "model-only/")):
            continue
        figures = "; ".join(f"{k} {v}" for k, v in s.items()
                            if k not in skip_keys and not isinstance(v, (dict, list)))
        lines.append(f"| {name} | {s['status']} | {figures} ({s.get('seconds', 0)} s) |")
    return "\n".join(lines)
