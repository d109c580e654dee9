#!/usr/bin/env python
"""Derive the built-in stage-range vocabularies and label statistics from FlyExpress.

Reads ``standard_annotations.csv`` (gene, stage, annotation tuple) and
``standard_images.csv`` (gene, stage, direction, image ids) from the FlyExpress folder and
writes ``src/napari_ish_annotator/data/flyexpress_stats.json``, which the package reads at
run time (the shared folder itself is never needed after this).

Per stage range, annotations are joined with LATERAL images on (gene, stage); each image id
counts once. Only anatomical terms are kept (pattern descriptors such as "ubiquitous",
"maternal", "subset", "pair rule" and curation flags are dropped). The ten terms on the most
images form the vocabulary; we store each term's per-image prevalence, the number of
images, and one label set (indices of vocabulary terms present) per gene-stage annotation
that has lateral images -- the real co-occurrence structure the synthetic generator samples.

Usage: python scripts/derive_vocabularies.py [FLYEXPRESS_DIR] [--out JSON]
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import random
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "flyexpress"
DEFAULT_OUT = REPO / "src" / "napari_ish_annotator" / "data" / "flyexpress_stats.json"

STAGE_CODES = {"2": "4-6", "3": "7-8", "4": "9-10", "5": "11-12", "6": "13-16"}
N_TERMS = 10
MAX_LABEL_SETS = 3000

# Terms that describe an expression *pattern* or curation state, not an anatomical structure.
NON_ANATOMICAL = {
    "ubiquitous", "faint ubiquitous", "strong ubiquitous", "maternal", "no staining",
    "subset", "gap", "pair rule", "pair_rule", "segment polarity", "segmentally repeated",
    "anterior", "middle", "posterior", "apically cleared", "rapidly degraded",
    "flag_for_volker", "flag_as_nonspecific", "need new term(localised)", "fertilized egg",
}


def is_anatomical(term: str) -> bool:
    t = term.strip().lower()
    return t not in NON_ANATOMICAL and not t.startswith(("flag", "need new term")) \
        and "ubiquitous" not in t and "staining" not in t


def parse_tuple(cell: str) -> list[str]:
    cell = cell.strip()
    if cell.startswith("("):
        return [str(x) for x in ast.literal_eval(cell)]
    return [cell] if cell else []


def derive(src: Path) -> dict:
    annotations: dict[tuple[str, str], set[str]] = defaultdict(set)
    with open(src / "standard_annotations.csv", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            annotations[(row["gene"], row["stage"])].update(parse_tuple(row["annotation"]))
    images: dict[tuple[str, str], list[str]] = defaultdict(list)
    seen_ids: set[str] = set()
    with open(src / "standard_images.csv", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["direction"].strip().lower() != "lateral":
                continue
            for image_id in parse_tuple(row["image_url"]):
                if image_id not in seen_ids:  # each image id counts once
                    seen_ids.add(image_id)
                    images[(row["gene"], row["stage"])].append(image_id)

    out: dict = {
        "source": "FlyExpress/BDGP standard_annotations.csv + standard_images.csv "
                  "(lateral images joined on gene and stage)",
        "n_terms": N_TERMS,
        "excluded_terms": sorted(NON_ANATOMICAL),
        "stages": {},
    }
    rng = random.Random(0)
    for code, stage in STAGE_CODES.items():
        keys = sorted(k for k in images if k[1] == code and k in annotations)
        counts: Counter[str] = Counter()
        n_images = 0
        for k in keys:
            n = len(images[k])
            n_images += n
            for term in annotations[k]:
                if is_anatomical(term):
                    counts[term] += n
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:N_TERMS]
        terms = [t for t, _ in ranked]
        index = {t: i for i, t in enumerate(terms)}
        rows = [sorted(index[t] for t in annotations[k] if t in index) for k in keys]
        per_row_images = [min(len(images[k]), 9) for k in keys]
        if len(rows) > MAX_LABEL_SETS:
            pick = sorted(rng.sample(range(len(rows)), MAX_LABEL_SETS))
            rows = [rows[i] for i in pick]
            per_row_images = [per_row_images[i] for i in pick]
        out["stages"][stage] = {
            "code": int(code),
            "terms": terms,
            "image_counts": [c for _, c in ranked],
            "prevalence": [round(c / n_images, 4) for _, c in ranked],
            "n_images": n_images,
            "n_gene_stages": len(keys),
            "label_sets": rows,
            "images_per_label_set": per_row_images,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=str(DEFAULT_SRC),
                    help="folder with standard_annotations.csv and standard_images.csv")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    data = derive(Path(args.src))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n",
                   encoding="utf-8")
    os.replace(tmp, out)
    for stage, s in data["stages"].items():
        print(f"{stage}: {s['n_images']} images, {len(s['label_sets'])} label sets")
        for t, p in zip(s["terms"], s["prevalence"], strict=True):
            print(f"    {p:6.3f}  {t}")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
