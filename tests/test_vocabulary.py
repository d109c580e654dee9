"""Built-in vocabularies derived from FlyExpress, loaded from the package only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_ish_annotator.core.data import vocabulary as V
from napari_ish_annotator.core.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", V.STAGE_RANGES)
def test_ten_terms_sorted_by_prevalence(stage):
    terms = V.default_vocabulary(stage)
    stats = V.term_statistics(stage)
    assert len(terms) == 10 == len(set(terms))
    assert stats["terms"] == terms
    prev = stats["prevalence"]
    assert prev == sorted(prev, reverse=True)
    assert all(0 < p < 1 for p in prev)
    assert stats["n_images"] > 1000
    for t in terms:
        assert "ubiquitous" not in t and t not in ("maternal", "subset", "gap")
    rows = stats["label_sets"]
    assert 500 < len(rows) <= 3000
    assert len(stats["images_per_label_set"]) == len(rows)
    assert all(all(0 <= i < 10 for i in r) and r == sorted(set(r)) for r in rows)
    # the stored rows reflect the real prevalence ordering: most frequent term in more rows
    counts = [sum(i in r for r in rows) for i in range(10)]
    assert counts[0] > counts[-1]


def test_known_terms():
    assert "embryonic midgut" in V.default_vocabulary("13-16")
    assert "ventral nerve cord" in V.default_vocabulary("13-17")
    assert "posterior midgut primordium" in V.default_vocabulary("11_12")


def test_unknown_stage():
    with pytest.raises(InputError, match="13-16"):
        V.default_vocabulary("17-18")


def test_copy_is_independent():
    s = V.term_statistics("4-6")
    s["terms"].append("x")
    s["label_sets"].clear()
    assert len(V.term_statistics("4-6")["terms"]) == 10
    assert V.term_statistics("4-6")["label_sets"]


def test_all_default_terms():
    terms = V.all_default_terms()
    assert len(terms) == len(set(terms))
    for stage in V.STAGE_RANGES:
        assert set(V.default_vocabulary(stage)) <= set(terms)


def test_loaded_without_shared(tmp_path):
    """The package file alone suffices: run from a folder where ../shared does not exist."""
    code = ("from napari_ish_annotator.core.data.vocabulary import default_vocabulary;"
            "print(default_vocabulary('9-10')[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == V.default_vocabulary("9-10")[0]
    from importlib import resources

    ref = resources.files("napari_ish_annotator").joinpath("data", "flyexpress_stats.json")
    assert ref.is_file()


def _flyexpress_tables() -> Path | None:
    """The FlyExpress tables: ``$ISH_FLYEXPRESS_DIR``, or ``../shared/data/flyexpress`` beside
    the checkout as it was reached (a symlinked or copied checkout's resolved path has no
    ``../shared`` beside it, which made this test skip on CI's clean clone)."""
    here = Path(__file__).absolute().parents[1]
    candidates = [os.environ.get("ISH_FLYEXPRESS_DIR"), here.parent / "shared/data/flyexpress",
                  REPO.parent / "shared/data/flyexpress", Path.cwd().parent / "shared/data/flyexpress"]
    for c in filter(None, candidates):
        if (Path(c) / "standard_annotations.csv").is_file():
            return Path(c)
    return None


def test_json_small_and_script_reproduces(tmp_path):
    packaged = REPO / "src" / "napari_ish_annotator" / "data" / "flyexpress_stats.json"
    assert packaged.stat().st_size < 1_000_000
    src = _flyexpress_tables()
    if src is None:
        pytest.skip("FlyExpress tables not available beside the repository (../shared) or in "
                    "$ISH_FLYEXPRESS_DIR")
    out = tmp_path / "stats.json"
    subprocess.run([sys.executable, str(REPO / "scripts" / "derive_vocabularies.py"), str(src),
                    "--out", str(out)], check=True, capture_output=True)
    assert json.loads(out.read_text()) == json.loads(packaged.read_text())
