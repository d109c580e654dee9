"""Synthetic BDGP-like embryos: determinism, masks vs stain, label statistics, manifest."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_ish_annotator.core.data.manifest import read_manifest
from napari_ish_annotator.core.data.vocabulary import (
    STAGE_RANGES,
    all_default_terms,
    default_vocabulary,
    term_statistics,
)
from napari_ish_annotator.core.synthetic.embryos import (
    generate_dataset,
    make_embryo,
    random_pose,
    sample_label_sets,
    slugify,
)
from napari_ish_annotator.core.synthetic.regions import TERM_REGIONS, term_region

SIZE = (96, 192)


def _blueness(rgb: np.ndarray) -> np.ndarray:
    f = rgb.astype(np.float32)
    return f[..., 2] - 0.5 * (f[..., 0] + f[..., 1])


def _darkness(rgb: np.ndarray) -> np.ndarray:
    return 255.0 - rgb.astype(np.float32).mean(axis=-1)


def test_every_builtin_term_has_a_region_with_pixels():
    rng = np.random.default_rng(0)
    terms = all_default_terms()
    assert set(terms) <= set(TERM_REGIONS)
    pose = random_pose(rng, (160, 320))
    _, masks = make_embryo([], terms, rng, size=(160, 320), pose=pose)
    for t in terms:
        assert masks[t].sum() > 20, t


def test_unknown_term_placement_is_deterministic():
    a = term_region("my lab's custom term")
    assert a == term_region("my lab's custom term")
    assert a != term_region("another custom term")
    img, masks = make_embryo(["my lab's custom term"], ["my lab's custom term"],
                             np.random.default_rng(3), size=SIZE)
    m = masks["my lab's custom term"]
    assert m.any() and img.shape == (*SIZE, 3) and img.dtype == np.uint8
    assert _blueness(img)[m].mean() > _blueness(img)[~m].mean() + 10


def test_make_embryo_deterministic_for_rng_seed():
    v = default_vocabulary("11-12")
    a, ma = make_embryo(v[:2], v, np.random.default_rng(7), size=SIZE)
    b, mb = make_embryo(v[:2], v, np.random.default_rng(7), size=SIZE)
    c, _ = make_embryo(v[:2], v, np.random.default_rng(8), size=SIZE)
    np.testing.assert_array_equal(a, b)
    assert all(np.array_equal(ma[t], mb[t]) for t in v)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("stage", STAGE_RANGES)
def test_stain_inside_masks_of_present_terms(stage):
    v = default_vocabulary(stage)
    rng = np.random.default_rng(11)
    wins = 0
    checks = 0
    for i in range(12):
        present = [v[i % 10], v[(i * 3 + 1) % 10]]
        img, masks = make_embryo(present, v, rng, size=(128, 256))
        union = np.zeros(img.shape[:2], bool)
        for t in present:
            union |= masks[t]
        # embryo pixels away from any present-term region (masks are already inside the body)
        body = np.zeros_like(union)
        for m in masks.values():
            body |= m
        outside = body & ~union
        if outside.sum() < 50:
            continue
        blue, dark = _blueness(img), _darkness(img)
        for t in present:
            only = masks[t]
            if only.sum() < 10:
                continue
            checks += 1
            wins += (blue[only].mean() > blue[outside].mean() + 5
                     and dark[only].mean() > dark[outside].mean() + 5)
        # and the background (outside the embryo) stays pale
        assert img[:3, :3].mean() > 200
    assert checks >= 15 and wins / checks > 0.9


def test_absent_terms_leave_no_stain():
    v = default_vocabulary("13-16")
    rng = np.random.default_rng(5)
    diffs = []
    for _ in range(10):
        img, masks = make_embryo([], v, rng, size=(128, 256))
        body = np.zeros(img.shape[:2], bool)
        for m in masks.values():
            body |= m
        diffs.append(_blueness(img)[masks["embryonic brain"]].mean()
                     - _blueness(img)[body & ~masks["embryonic brain"]].mean())
    assert abs(np.mean(diffs)) < 8


@pytest.mark.parametrize("stage", ["4-6", "13-16"])
def test_label_statistics_follow_prevalence(stage):
    stats = term_statistics(stage)
    sets = sample_label_sets(3000, stats["terms"], stage, np.random.default_rng(0))
    freq = np.array([np.mean([t in s for s in sets]) for t in stats["terms"]])
    np.testing.assert_allclose(freq, stats["prevalence"], atol=0.05)
    assert np.corrcoef(freq, stats["prevalence"])[0, 1] > 0.9
    # real co-occurrence: CNS implies brain or VNC in most 13-16 rows
    if stage == "13-16":
        cns = [s for s in sets if "embryonic central nervous system" in s]
        both = [s for s in cns if "embryonic brain" in s or "ventral nerve cord" in s]
        assert len(both) / len(cns) > 0.5


def test_custom_vocabulary_terms_sampled():
    sets = sample_label_sets(400, ["embryonic brain", "zz custom"], "13-16",
                             np.random.default_rng(1))
    f = np.mean([("zz custom" in s) for s in sets])
    assert 0.15 < f < 0.35


def test_generate_dataset_layout_and_roundtrip(tmp_path):
    m = generate_dataset(tmp_path / "ds", 20, stage="13-17", seed=3, size=SIZE)
    assert m == tmp_path / "ds" / "manifest.csv"
    vocab = (m.parent / "vocabulary.txt").read_text().split("\n")[:-1]
    assert vocab == default_vocabulary("13-16")
    ds = read_manifest(m, vocabulary=vocab)
    assert len(ds) == 20 and set(ds.stages) == {"13-16"}
    Y = ds.labels()
    assert (Y.sum(axis=0) >= 3).all()  # min_positives
    genes = np.array(ds.genes)
    for g in set(ds.genes):
        rows = Y[genes == g]
        assert 1 <= len(rows) <= 3
        assert (rows == rows[0]).all()  # one gene, one label set
    for s in ds.samples:
        img = np.asarray(Image.open(s.image))
        assert img.shape == (*SIZE, 3)
        for t in s.terms:
            mask = np.asarray(Image.open(m.parent / "masks" / f"{s.image.stem}__{slugify(t)}.png"))
            assert mask.shape == SIZE and mask.max() == 255
    n_masks = sum(len(s.terms) for s in ds.samples)
    assert len(list((m.parent / "masks").glob("*.png"))) == n_masks
    assert not list(m.parent.rglob("*.tmp-*"))


def test_generate_dataset_deterministic(tmp_path):
    a = generate_dataset(tmp_path / "a", 6, stage="9-10", seed=1, size=SIZE, n_genes=3)
    b = generate_dataset(tmp_path / "b", 6, stage="9-10", seed=1, size=SIZE, n_genes=3)
    c = generate_dataset(tmp_path / "c", 6, stage="9-10", seed=2, size=SIZE, n_genes=3)
    assert a.read_bytes() == b.read_bytes()
    for p in sorted((a.parent / "images").iterdir()):
        assert p.read_bytes() == (b.parent / "images" / p.name).read_bytes()
    assert any(p.read_bytes() != (c.parent / "images" / p.name).read_bytes()
               for p in (a.parent / "images").iterdir())
    assert len(set(read_manifest(a, require_positives=False).genes)) == 3


def test_slugify():
    assert slugify("embryonic/larval muscle system") == "embryonic-larval-muscle-system"
    assert slugify("ventral ectoderm primordium P2") == "ventral-ectoderm-primordium-p2"


def test_tiny_dataset_fixture(tiny_dataset, tiny_vocabulary):
    ds = read_manifest(tiny_dataset, vocabulary=tiny_vocabulary)
    assert len(ds) == 24 and len(tiny_vocabulary) == 10
    assert np.asarray(Image.open(ds.paths[0])).shape == (128, 256, 3)


def test_windowed_evaluation_matches_full_inside_embryo():
    """Parts are evaluated on a crop around them for speed; inside the embryo (where stain
    can appear) that must equal evaluating on the whole grid."""
    from napari_ish_annotator.core.synthetic import embryos as S

    rng = np.random.default_rng(0)
    for _ in range(8):
        pose = S.random_pose(rng, (160, 320))
        u, d = S._embryo_coords(pose, 80, 160, 2.0)
        r = np.sqrt(u * u + d * d)
        wu = u + 0.045 * S._low_freq_noise(rng, (80, 160), (5, 9))
        wd = d + 0.07 * S._low_freq_noise(rng, (80, 160), (5, 9))
        grain = S._low_freq_noise(rng, (80, 160), (16, 32))
        for t in [*all_default_terms(), "custom term"]:
            jit = (rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(0.93, 1.07))
            a = S._term_density(t, wu, wd, r, 0.06, jit, grain, pose)
            b = S._term_density(t, wu, wd, r, 0.06, jit, grain, None)
            np.testing.assert_array_equal(a[r < 1.0], b[r < 1.0])
