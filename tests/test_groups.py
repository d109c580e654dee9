"""Gene x stage records: grouping, combining, group labels, group-level evaluation and the CLI's
``predict --by`` / ``evaluate --by`` (CPU, random weights)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from napari_ish_annotator.cli import main
from napari_ish_annotator.core.learn.evaluation import score_groups
from napari_ish_annotator.core.learn.groups import (
    combine_probabilities,
    group_labels,
    parse_by,
    record_groups,
)
from napari_ish_annotator.core.utils.errors import InputError

FAST = ["--weights", "random", "--input-size", "96", "--device", "cpu", "--quiet"]


# ------------------------------------------------------------------------------- the core
def test_records_group_by_gene_and_stage_and_isolate_images_without_them():
    genes = ["a", "a", "b", "a", None, "b", ""]
    stages = ["13-16", "13-16", "13-16", "11-12", "13-16", None, "11-12"]
    rec = record_groups(genes, stages)
    assert list(rec.index) == [0, 0, 1, 2, 3, 4, 5]
    assert rec.genes[:3] == ("a", "b", "a") and rec.stages[:3] == ("13-16", "13-16", "11-12")
    assert rec.notes[:3] == ("", "", "")
    assert "gene" in rec.notes[3] and "alone" in rec.notes[3]
    assert "stage" in rec.notes[4] and "gene" not in rec.notes[4]
    assert list(rec.sizes()) == [2, 1, 1, 1, 1, 1]
    by_gene = record_groups(genes, stages, by=("gene",))
    assert list(by_gene.index[:4]) == [0, 0, 1, 0]  # stages merged


def test_parse_by_accepts_the_two_keys_only():
    assert parse_by("gene,stage") == ("gene", "stage")
    assert parse_by(" stage ") == ("stage",)
    for bad in ("", "gene,gene", "view", "gene;stage"):
        with pytest.raises(InputError, match="--by"):
            parse_by(bad)


def test_combinations_and_nan_handling():
    rec = record_groups(["a", "a", "b"], ["1", "1", "1"])
    P = np.array([[0.9, 0.2], [0.5, np.nan], [np.nan, np.nan]])
    mean = combine_probabilities(P, rec, "mean")
    assert mean[0] == pytest.approx([0.7, 0.2])
    assert np.isnan(mean[1]).all()  # no scored image: no probability, not 0.5
    logit_mean = combine_probabilities(P, rec)  # the default
    assert logit_mean[0, 0] == pytest.approx(0.75)  # odds 9 and 1 -> geometric mean 3
    noisy = combine_probabilities(P, rec, "noisy-or")
    assert noisy[0, 0] == pytest.approx(1 - 0.1 * 0.5)
    with pytest.raises(InputError, match="combination"):
        combine_probabilities(P, rec, "max")


def test_group_label_is_present_if_any_image_shows_it():
    rec = record_groups(["a", "a", "b", "c"], ["1"] * 4)
    Y = np.array([[1, 0, -1], [0, 0, -1], [0, -1, -1], [-1, -1, 1]])
    assert group_labels(Y, rec).tolist() == [[1, 0, -1], [0, -1, -1], [-1, -1, 1]]


def test_score_groups_leaves_out_terms_the_image_level_did_not_evaluate():
    rng = np.random.default_rng(0)
    genes = [f"g{i // 3}" for i in range(60)]
    rec = record_groups(genes, ["13-16"] * 60)
    y_group = rng.random((20, 2)) < 0.5
    Y = np.repeat(y_group, 3, axis=0).astype(np.int8)
    P = np.clip(Y * 0.6 + rng.random(Y.shape) * 0.4, 0, 1)  # separable per image
    result = score_groups(Y, P, rec, ["t0", "t1"], not_evaluated={"t1": "all in one gene"})
    assert result.summary["n_groups"] == 20
    assert result.summary["terms"]["t0"]["auc"] == pytest.approx(1.0)
    assert result.summary["terms"]["t0"]["n_pos"] == int(y_group[:, 0].sum())
    assert "t1" in result.not_evaluated and "all in one gene" in result.not_evaluated["t1"]
    assert result.n_evaluated == 1


# -------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    root = tmp_path_factory.mktemp("groups")
    generate_dataset(root / "data", n_images=30, stage="13-16", seed=3, size=(96, 192),
                     min_positives=4)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_predict_by_gene_stage_writes_one_row_per_record(data, tmp_path):
    manifest = data / "data" / "manifest.csv"
    model = data / "model"
    assert main(["train", str(manifest), "--out", str(model), "--ensemble", "3",
                 "--cache", str(data / "cache"), *FAST]) == 0
    rows = _rows(manifest)
    rows[0]["gene"] = ""  # an image without a gene is a record of its own
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "image": str(manifest.parent / r["image"])} for r in rows)
    per_image, by_record = tmp_path / "images.csv", tmp_path / "groups.csv"
    for out, extra in ((per_image, []), (by_record, ["--by", "gene,stage"])):
        assert main(["predict", str(model), str(edited), "--out", str(out),
                     "--cache", str(data / "cache"), "--quiet", *extra]) == 0
    vocabulary = json.loads((model / "model.json").read_text())["vocabulary"]
    records = _rows(by_record)
    assert list(records[0])[:3] == ["gene", "stage", "images"]
    assert list(records[0])[3:] == [*vocabulary, "calls", "note"]
    genes = {r["gene"] for r in rows[1:]}
    assert len(records) == len(genes) + 1  # one stage: a record per gene, + the lone image
    assert sum(int(r["images"]) for r in records) == len(rows)
    alone = [r for r in records if r["note"]]
    assert len(alone) == 1 and alone[0]["images"] == "1" and alone[0]["gene"] == ""
    image_p = {r["image"]: r for r in _rows(per_image)}
    first = records[1] if records[0]["note"] else records[0]
    members = [str(manifest.parent / r["image"]) for r in rows[1:] if r["gene"] == first["gene"]]
    for term in vocabulary:
        p = np.clip([float(image_p[m][term]) for m in members], 1e-6, 1 - 1e-6)
        expected = 1 / (1 + np.exp(-np.mean(np.log(p / (1 - p)))))
        assert float(first[term]) == pytest.approx(expected, abs=2e-6)
        assert (term in first["calls"].split(";")) == (float(first[term]) >= 0.5)


@pytest.mark.parametrize("protocol", [["--folds", "3"], ["--repeats", "2"]], ids=["folds", "repeats"])
def test_evaluate_by_adds_groups_with_the_layers_shape(data, tmp_path, capsys, protocol):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(data / "data" / "manifest.csv"), *protocol, "--by", "gene,stage",
                 "--ensemble", "3", "--json", str(out), "--cache", str(data / "cache"),
                 *FAST]) == 0
    printed = capsys.readouterr().out
    assert "Images" in printed and "Gene x stage records" in printed
    metrics = json.loads(out.read_text())
    images, groups = metrics["layers"]["21"], metrics["groups"]["21"]
    assert set(groups) >= {"mean", "terms", "n_evaluated", "not_evaluated"}
    assert set(groups["mean"]) >= {"accuracy", "sensitivity", "specificity", "auc", "brier"}
    assert ("std" in groups) == ("--repeats" in protocol)
    assert set(images["not_evaluated"]) <= set(groups["not_evaluated"])
    for term, why in images["not_evaluated"].items():
        assert groups["terms"][term]["auc"] is None, (term, why)
    if "--folds" in protocol:  # every gene is held out once: every record is scored
        n_genes = len({r["gene"] for r in _rows(data / "data" / "manifest.csv")})
        assert groups["n_groups"] == n_genes


def test_bad_by_is_one_line_and_exit_2(data, tmp_path, capsys):
    code = main(["evaluate", str(data / "data" / "manifest.csv"), "--by", "colour",
                 "--cache", str(data / "cache"), *FAST])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--by" in err[0]


# ------------------------------------------------------------------------------ the report
def test_evaluate_report_writes_figures_and_an_index_naming_untrainable_terms(data, tmp_path):
    from PIL import Image

    report = tmp_path / "report"
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(data / "data" / "manifest.csv"), "--folds", "3", "--by",
                 "gene,stage", "--report", str(report), "--json", str(out), "--ensemble", "3",
                 "--cache", str(data / "cache"), *FAST]) == 0
    metrics = json.loads(out.read_text())["layers"]["21"]
    index = (report / "index.md").read_text(encoding="utf-8")
    for name in ("auc-per-term-L21.png", "roc-L21.png", "reliability-L21.png"):
        assert f"]({name})" in index
        with Image.open(report / name) as img:
            assert img.format == "PNG" and min(img.size) > 200
    table = [line for line in index.splitlines() if line.startswith("| ") and "±" in line]
    assert len(table) == metrics["n_evaluated"]  # one row per evaluated term, no more
    for term, why in metrics["not_evaluated"].items():
        assert f"- {term}: {why}" in index
        assert not any(line.startswith(f"| {term} |") for line in table)
    assert not list(report.glob(".*tmp*"))  # written atomically, nothing left behind


def test_split_aucs_mean_and_std_over_folds():
    from napari_ish_annotator.core.learn.evaluation import Evaluation, HeldOut
    from napari_ish_annotator.core.learn.report import split_aucs

    Y = np.array([[1, 1], [0, 1], [1, 0], [0, 0], [1, 1], [0, 0]], dtype=np.int8)
    raw = np.array([[0.9, 0.6], [0.1, 0.4], [0.8, 0.5], [0.3, 0.5], [0.4, 0.7], [0.6, 0.2]])
    held = HeldOut(np.arange(6), np.array([0, 0, 0, 0, 1, 1]), raw, raw)
    ev = Evaluation(("a", "b"), {"mean": {}, "terms": {}}, None, 1, 2, {"b": "why"},
                    held_out=held)
    a, b = split_aucs(ev, Y)
    assert a.mean == pytest.approx(0.5) and a.std == pytest.approx(0.5) and a.n_splits == 2
    assert b.mean is None  # not evaluated: no figure, not 0
