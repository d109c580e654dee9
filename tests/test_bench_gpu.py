"""benchmarks/bench_gpu.py (run by scripts/gpu-check.sh) works end to end: CPU smoke sizes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_gpu", None)


def test_cpu_smoke_run_writes_json_and_markdown(bench, tmp_path, capsys):
    out = tmp_path / "gpu-out"
    # one backbone and precision keep it short; the budget only guards a very slow machine
    assert bench.main(["--cpu-smoke", "--out", str(out), "--budget-s", "60",
                       "--backbones", "vgg16", "--precisions", "fp32"]) == 0
    report = json.loads((out / "gpu.json").read_text())
    steps = report["steps"]
    assert report["meta"]["mode"] == "cpu-smoke" and report["meta"]["device_type"] == "cpu"
    # no measurement failed; one the budget left out says why
    assert all(s["status"] in ("ok", "skipped") for s in steps.values()), steps
    assert all(s.get("reason") for s in steps.values() if s["status"] == "skipped")
    # the first measurements always run: files, extraction from them, CPU/device agreement
    assert steps["images"]["files"] == 8
    ext = steps["extract/vgg16/fp32/b4"]
    assert ext["status"] == "ok" and ext["layer"] == "21" and ext["images"] == 8
    assert ext["images_per_s"] > 0 and ext["decode"].startswith("processes x2")
    agree = steps["agreement/features/vgg16/fp32"]
    assert agree["min_cosine"] >= 0.9999 and agree["pass"] is True
    assert steps["agreement/probabilities/vgg16"]["max_abs_diff"] <= 0.01  # auto: maybe bf16
    if steps["finetune/vgg16/1-epoch"]["status"] == "ok":
        ft = steps["finetune/vgg16/1-epoch"]
        assert ft["epoch_seconds"] > 0 and ft["checkpoint_loads_on_cpu"] is True
    target = report["target"]
    assert target["met"] is None and target["target_images_per_s"] == 3000
    assert target["vgg16_layer21_images_per_s"] == ext["images_per_s"]
    # each headline figure against its target, one line each (gpu-check.sh shows them)
    figures = {t["figure"]: t for t in report["targets"]}
    assert len(figures) == 3 and all(t["met"] is None for t in figures.values())  # CPU: n/a
    assert figures["end-to-end extraction, VGG16 layer 21 (img/s)"]["value"] == \
        ext["images_per_s"]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[target]")]
    assert len(lines) == 3 and all(ln.startswith("[target] N/A") for ln in lines)
    assert any("Grad-CAM" in ln and "target <= 20" in ln for ln in lines)
    md = (out / "gpu.md").read_text()
    assert md.startswith("# GPU check")
    assert "| backbone | layer | weights | precision | batch | decode | images/s | status |" in md
    assert "| vgg16 | 21 | random:seed=0 | fp32 | 4 | processes x2" in md
    for name in steps:  # every step appears in one of the two tables
        if not name.startswith(("extract/", "model-only/")):
            assert f"| {name} |" in md
