"""Synthetic BDGP-like ISH images with known ground truth (demo, tests, benchmarks).

Real BDGP images cannot ship with the package, so we render look-alikes: a lateral view of a
pale grey-beige ellipsoidal embryo (anterior left, dorsal up) on a white background, stained
blue-purple (NBT/BCIP) in anatomically placed regions, one region per controlled-vocabulary
term. Label sets are sampled from the *real* FlyExpress co-occurrence rows of the stage range
(:func:`~napari_ish_annotator.core.data.vocabulary.term_statistics`), so prevalence and
correlations between terms are realistic; pose, stain strength, illumination, noise and blur
vary so that the task is learnable but not trivial (nuisance haze and off-target blobs too).

Where each term's region lies on the embryo (parts in normalised embryo coordinates) is
:mod:`.regions`.

Fields are evaluated at half resolution and upsampled (stains are smooth and the image is
blurred afterwards), which keeps a 640 x 320 image well under 50 ms.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data.manifest import Sample, write_manifest
from ..data.vocabulary import default_vocabulary, resolve_stage, term_statistics
from ..utils.files import write_png_atomic, write_text_atomic
from ..utils.progress import Progress, ProgressGen, drive
from .regions import Part, blob, term_region

__all__ = ["BDGP_STAIN_RGB", "random_pose", "make_embryo", "slugify", "sample_label_sets",
           "iter_generate_dataset", "generate_dataset"]

BDGP_STAIN_RGB = (70, 60, 120)

# ---------------------------------------------------------------------------- rendering


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@lru_cache(maxsize=8)
def _grid(h: int, w: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (in full-resolution pixels) of an h x w sampling grid."""
    y = (np.arange(h, dtype=np.float32) + 0.5) * step - 0.5
    x = (np.arange(w, dtype=np.float32) + 0.5) * step - 0.5
    return y[:, None], x[None, :]


def _embryo_coords(pose: dict, h: int, w: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = _grid(h, w, step)
    c, s = math.cos(pose["theta"]), math.sin(pose["theta"])
    dx, dy = xx - pose["cx"], yy - pose["cy"]
    u = (dx * c + dy * s) / pose["a"]
    d = -(-dx * s + dy * c) / pose["b"]  # image y grows downwards, d grows dorsally
    d = d - pose["bend"] * (u * u - 0.35)  # slight kidney shape: ventral side convex
    return u.astype(np.float32), d.astype(np.float32)


def _part_density(part: Part, u: np.ndarray, d: np.ndarray, r: np.ndarray, e: float,
                  jitter: tuple[float, float, float], grain: np.ndarray | None = None,
                  ) -> np.ndarray:
    du, dd, sc = jitter
    uu = (u - du) / sc
    vv = (d - dd) / sc
    kind = part["kind"]
    if kind == "blob":
        q = ((uu - part["u"]) / part["ru"]) ** 2 + ((vv - part["d"]) / part["rd"]) ** 2
        dens = _smoothstep(1.0 + 4 * e, 1.0 - 4 * e, q)
    elif kind == "box":
        dens = (_smoothstep(part["u0"] - e, part["u0"] + e, uu)
                * _smoothstep(part["u1"] + e, part["u1"] - e, uu)
                * _smoothstep(part["d0"] - e, part["d0"] + e, vv)
                * _smoothstep(part["d1"] + e, part["d1"] - e, vv))
    elif kind == "tube":
        dist2 = np.full(u.shape, np.inf, dtype=np.float32)
        pts = part["points"]
        for (u0, d0), (u1, d1) in zip(pts[:-1], pts[1:], strict=True):
            su, sd = u1 - u0, d1 - d0
            t = np.clip(((uu - u0) * su + (vv - d0) * sd) / (su * su + sd * sd), 0.0, 1.0)
            # the embryo is ~2.5x longer than high: measure distances in isotropic units
            dist2 = np.minimum(dist2, (uu - u0 - t * su) ** 2
                               + ((vv - d0 - t * sd) * 0.4) ** 2)
        width = part["width"]
        dens = _smoothstep(width + e, width - e, np.sqrt(dist2))
    elif kind == "dots":
        n = part["n"]
        period = (part["u1"] - part["u0"]) / max(n - 1, 1)
        k = np.clip(np.rint((uu - part["u0"]) / period), 0, n - 1)
        cu = part["u0"] + k * period
        q = ((uu - cu) / part["ru"]) ** 2 + ((vv - part["d"]) / part["rd"]) ** 2
        dens = _smoothstep(1.0 + 4 * e, 1.0 - 4 * e, q)
    else:  # pragma: no cover - programming error in TERM_REGIONS
        raise ValueError(f"unknown region kind {kind!r}")
    if part.get("shell"):
        dens = dens * _smoothstep(1.0 - part["shell"] - e, 1.0 - part["shell"] + e, r)
    if part.get("stripes"):
        n, duty = part["stripes"]
        phase = (uu - part["u0"]) / (part["u1"] - part["u0"]) * n
        frac = phase - np.floor(phase)
        tri = np.abs(frac - 0.5) * 2.0  # 1 at period boundaries (stripe centres), 0 midway
        dens = dens * _smoothstep(1.0 - duty - 0.15, 1.0 - duty + 0.15, tri)
    if part.get("speckle") and grain is not None:  # scattered nuclei: granular stain
        dens = dens * _smoothstep(-0.3, 0.6, grain)
    return dens * float(part.get("gain", 1.0))


def _part_extent(part: Part) -> tuple[float, float, float, float]:
    """``(u_min, u_max, d_min, d_max)`` of a part in embryo coordinates (before margins)."""
    kind = part["kind"]
    if kind == "blob":
        return (part["u"] - part["ru"], part["u"] + part["ru"],
                part["d"] - part["rd"], part["d"] + part["rd"])
    if kind == "box":
        return part["u0"], part["u1"], part["d0"], part["d1"]
    if kind == "tube":
        us = [p[0] for p in part["points"]]
        ds = [p[1] for p in part["points"]]
        wd = part["width"] / 0.4
        return min(us) - part["width"], max(us) + part["width"], min(ds) - wd, max(ds) + wd
    return (part["u0"] - part["ru"], part["u1"] + part["ru"],
            part["d"] - part["rd"], part["d"] + part["rd"])


def _pixel_window(part: Part, pose: dict, shape: tuple[int, int], step: float,
                  ) -> tuple[slice, slice]:
    """Low-resolution pixel window that contains a part in this pose (with margins for
    jitter, warp and soft edges), so small parts are evaluated on a small crop only."""
    u0, u1, d0, d1 = _part_extent(part)
    m = 0.16
    # the per-term jitter scales coordinates by 0.93-1.07 and shifts them by <= 0.03
    u0, u1 = max(min(u0 * 0.92, u0 * 1.08) - m, -1.15), min(max(u1 * 0.92, u1 * 1.08) + m, 1.15)
    d0, d1 = max(min(d0 * 0.92, d0 * 1.08) - m, -1.3), min(max(d1 * 0.92, d1 * 1.08) + m, 1.3)
    gu, gd = np.meshgrid(np.linspace(u0, u1, 7), np.linspace(d0, d1, 7))
    draw = gd + pose["bend"] * (gu * gu - 0.35)
    c, s_ = math.cos(pose["theta"]), math.sin(pose["theta"])
    x = pose["cx"] + gu * pose["a"] * c + draw * pose["b"] * s_
    y = pose["cy"] + gu * pose["a"] * s_ - draw * pose["b"] * c
    xl = (x + 0.5) / step - 0.5
    yl = (y + 0.5) / step - 0.5
    h, w = shape
    ys = slice(int(np.clip(np.floor(yl.min()) - 1, 0, h)), int(np.clip(np.ceil(yl.max()) + 2, 0, h)))
    xs = slice(int(np.clip(np.floor(xl.min()) - 1, 0, w)), int(np.clip(np.ceil(xl.max()) + 2, 0, w)))
    return ys, xs


def _term_density(term: str, u, d, r, e, jitter, grain=None, pose=None, step=2.0
                  ) -> np.ndarray:
    out = np.zeros(u.shape, np.float32)
    for part in term_region(term):
        if pose is None:
            win: tuple[slice, slice] = (slice(None), slice(None))
        else:
            win = _pixel_window(part, pose, u.shape, step)
            if win[0].start >= win[0].stop or win[1].start >= win[1].stop:
                continue
        dens = _part_density(part, u[win], d[win], r[win], e, jitter,
                             None if grain is None else grain[win])
        np.maximum(out[win], dens, out=out[win])
    return out


def _low_freq_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int],
                    ) -> np.ndarray:
    """Smooth random field in about [-1, 1] (bilinear upsampling of a coarse grid)."""
    from PIL import Image

    coarse = rng.standard_normal(cells).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.BICUBIC)
    return np.clip(np.asarray(img), -2.5, 2.5) / 1.5


def _resize(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR))


def random_pose(rng: np.random.Generator, size: tuple[int, int]) -> dict:
    """Embryo pose: rotation within +-8 deg, shift, scale and aspect variation."""
    h, w = size
    a = rng.uniform(0.36, 0.44) * w
    b = min(a * rng.uniform(0.36, 0.44), 0.42 * h)
    return {"cx": w / 2 + rng.uniform(-0.04, 0.04) * w, "cy": h / 2 + rng.uniform(-0.05, 0.05) * h,
            "a": a, "b": b, "theta": math.radians(rng.uniform(-8.0, 8.0)),
            "bend": rng.uniform(0.0, 0.08)}


def make_embryo(terms_present: Sequence[str], vocabulary: Sequence[str],
                rng: np.random.Generator, size: tuple[int, int] = (320, 640),
                pose: dict | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one embryo stained in the regions of ``terms_present``.

    Returns the ``(H, W, 3)`` uint8 image and, for *every* vocabulary term (and every
    present term), the boolean ``(H, W)`` mask of where that term's region lies in this pose
    -- the ground truth for stain location and for judging Grad-CAM maps.
    """
    h, w = int(size[0]), int(size[1])
    pose = random_pose(rng, (h, w)) if pose is None else pose
    hl, wl = (h + 1) // 2, (w + 1) // 2  # smooth fields live on a half-resolution grid
    u, d = _embryo_coords(pose, hl, wl, 2.0)
    r = np.sqrt(u * u + d * d)
    # organic, non-elliptic region shapes: warp the embryo frame with smooth noise
    wu = u + 0.045 * _low_freq_noise(rng, (hl, wl), (5, 9))
    wd = d + 0.07 * _low_freq_noise(rng, (hl, wl), (5, 9))
    grain = _low_freq_noise(rng, (hl, wl), (max(hl // 5, 2), max(wl // 5, 2)))
    e = rng.uniform(0.025, 0.06)  # stain edge softness (the "blur" of the pattern)

    present = list(dict.fromkeys(terms_present))
    wanted = list(dict.fromkeys(list(vocabulary) + present))
    dens_low: dict[str, np.ndarray] = {}
    for term in wanted:
        jitter = (rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(0.93, 1.07))
        dens_low[term] = _term_density(term, wu, wd, r, e, jitter, grain, pose)

    texture = np.clip(0.78 + 0.22 * _low_freq_noise(rng, (hl, wl), (6, 12))
                      + 0.08 * grain, 0.3, 1.2)
    keep = np.ones((hl, wl), np.float32)
    for term in present:
        strength = rng.uniform(0.5, 1.0)
        keep *= 1.0 - np.clip(dens_low[term] * (strength * texture), 0.0, 1.0)
    if rng.random() < 0.25:  # faint ubiquitous haze (a non-anatomical annotation in BDGP)
        keep *= 1.0 - rng.uniform(0.05, 0.2)
    if rng.random() < 0.2:  # faint off-target blob that is not in the vocabulary
        junk = blob(rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.5), rng.uniform(0.08, 0.2),
                     rng.uniform(0.1, 0.3))
        keep *= 1.0 - rng.uniform(0.15, 0.35) * _part_density(junk, wu, wd, r, e, (0, 0, 1))
    stain = (1.0 - keep) * _smoothstep(1.0, 0.96, r)

    # body shading: darker rim, thin dark vitelline outline, yolk granularity
    shade = (1.0 - 0.20 * _smoothstep(0.55, 1.0, r) - 0.03 * grain
             + 0.03 * _low_freq_noise(rng, (hl, wl), (8, 16)))
    yy, xx = _grid(hl, wl, 2.0)
    ang = rng.uniform(0, 2 * math.pi)
    light = 1.0 + ((xx / w - 0.5) * math.cos(ang) + (yy / h - 0.5) * math.sin(ang)) \
        * rng.uniform(0.0, 0.10)

    rf = _resize(r, (h, w))
    edge = rng.uniform(1.0, 2.5) / pose["b"]
    inside = _smoothstep(1.0 + edge, 1.0 - edge, rf)
    rim = np.exp(-((rf - (1.0 - edge)) / (1.5 * edge + 0.006)) ** 2) * rng.uniform(0.08, 0.2)
    body_shade = (_resize(shade, (h, w)) - rim) * inside
    S = _resize(stain, (h, w)) * 0.92
    L = _resize(light.astype(np.float32), (h, w))

    bg = np.array([1.0, 0.995, 0.985], np.float32) * rng.uniform(0.93, 0.99)
    tone = (np.array([0.84, 0.81, 0.74]) * rng.uniform(0.92, 1.03)
            + rng.uniform(-0.02, 0.02, 3)).astype(np.float32)
    stain_rgb = ((np.array(BDGP_STAIN_RGB) + rng.uniform(-15, 15, 3)) / 255.0).astype(np.float32)
    # out = (bg * outside + tone * body) * (1 - S) + stain * S, times illumination, + noise
    clear = (1.0 - S) * L
    A = (1.0 - inside) * clear
    B = body_shade * clear
    C = S * L
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * (rng.uniform(1.5, 4.0) / 255.0)
    out = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        ch = bg[c] * A + tone[c] * B + stain_rgb[c] * C + noise[..., c]
        out[..., c] = np.clip(ch * 255.0 + 0.5, 0, 255)
    inside_mask = rf < 1.0
    masks = {t: _upsample_mask(dens > 0.5, (h, w)) & inside_mask for t, dens in dens_low.items()}
    return out, masks


def _upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)[: shape[0], : shape[1]]


# ---------------------------------------------------------------------------- datasets


def slugify(term: str) -> str:
    """File-name-safe form of a term (``embryonic/larval muscle system`` ->
    ``embryonic-larval-muscle-system``)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", term).strip("-").lower() or "term"


def sample_label_sets(n_sets: int, vocabulary: Sequence[str], stage: str,
                      rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Draw ``n_sets`` label sets with the real prevalence/co-occurrence of ``stage``.

    Rows of FlyExpress gene-stage annotations are drawn with their lateral image counts as
    weights (so per-image statistics are followed); vocabulary terms not in the built-in
    table are drawn independently with probability 0.25.
    """
    stats = term_statistics(stage)
    rows = stats["label_sets"]
    weights = np.asarray(stats["images_per_label_set"], dtype=np.float64)
    weights /= weights.sum()
    names = stats["terms"]
    vocab = list(vocabulary)
    known = set(names)
    picks = rng.choice(len(rows), size=n_sets, p=weights)
    out = []
    for i in picks:
        present = {names[j] for j in rows[i]}
        terms = [t for t in vocab if (t in present if t in known else rng.random() < 0.25)]
        out.append(tuple(terms))
    return out


def _images_per_gene(n_images: int, n_genes: int | None, rng: np.random.Generator) -> list[int]:
    if n_genes is None:
        counts: list[int] = []
        while sum(counts) < n_images:
            counts.append(int(rng.integers(1, 4)))
        counts[-1] -= sum(counts) - n_images
        return [c for c in counts if c > 0]
    n_genes = max(1, min(int(n_genes), n_images))
    extra = rng.multinomial(n_images - n_genes, np.full(n_genes, 1.0 / n_genes))
    return [1 + int(x) for x in extra]


def _ensure_min_positives(sets: list[tuple[str, ...]], counts: list[int], vocab: list[str],
                          stage: str, k: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Re-sample gene label sets until every term has >= k positive images (if possible)."""
    sets = list(sets)
    pool = sample_label_sets(400, vocab, stage, rng)
    for _ in range(20 * len(vocab) + 50):
        pos = {t: sum(c for s, c in zip(sets, counts, strict=True) if t in s) for t in vocab}
        short = [t for t in vocab if pos[t] < k]
        if not short:
            break
        t = min(short, key=lambda x: pos[x])
        with_t = [s for s in pool if t in s] or [(t,)]
        # replace a gene whose terms all stay >= k without it, preferring the largest gene
        safe = [g for g, s in enumerate(sets)
                if t not in s and all(pos[x] - counts[g] >= k for x in s)]
        if safe:
            g = max(safe, key=lambda i: (counts[i], -len(sets[i]), rng.random()))
            sets[g] = with_t[int(rng.integers(len(with_t)))]
        else:
            lacking = [g for g, s in enumerate(sets) if t not in s]
            if not lacking:
                break
            g = lacking[int(rng.integers(len(lacking)))]
            sets[g] = tuple(x for x in vocab if x in sets[g] or x == t)
    return sets


def iter_generate_dataset(out_dir: str | Path, n_images: int, stage: str = "13-16",
                          seed: int = 0, size: tuple[int, int] = (320, 640),
                          n_genes: int | None = None, vocabulary: Sequence[str] | None = None,
                          min_positives: int = 3, write_masks: bool = True) -> ProgressGen[Path]:
    """Generator version of :func:`generate_dataset` (yields progress, returns the CSV path)."""
    if n_images < 1:
        raise ValueError("n_images must be >= 1")
    stage = resolve_stage(stage)
    vocab = list(vocabulary) if vocabulary is not None else default_vocabulary(stage)
    rng = np.random.default_rng(seed)
    counts = _images_per_gene(n_images, n_genes, rng)
    sets = sample_label_sets(len(counts), vocab, stage, rng)
    k = min(int(min_positives), n_images // 4)
    if k > 0:
        sets = _ensure_min_positives(sets, counts, vocab, stage, k, rng)

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if write_masks:
        (out / "masks").mkdir(parents=True, exist_ok=True)

    samples: list[Sample] = []
    i = 0
    for g, (count, terms) in enumerate(zip(counts, sets, strict=True)):
        gene = f"synG{g:04d}"
        for _ in range(count):
            img_rng = np.random.default_rng([seed, i])
            rgb, masks = make_embryo(terms, vocab, img_rng, size=size)
            stem = f"emb{i:05d}"
            path = out / "images" / f"{stem}.png"
            write_png_atomic(path, rgb)
            if write_masks:
                for t in terms:
                    write_png_atomic(out / "masks" / f"{stem}__{slugify(t)}.png",
                                     masks[t].astype(np.uint8) * 255)
            samples.append(Sample(path, tuple(terms), stage, gene))
            i += 1
            yield Progress(i, n_images, f"embryo {i}/{n_images}")
    manifest = out / "manifest.csv"
    write_manifest(manifest, samples)
    # usable as --terms/--vocab
    write_text_atomic(out / "vocabulary.txt", "".join(f"{t}\n" for t in vocab))
    return manifest


def generate_dataset(out_dir: str | Path, n_images: int, stage: str = "13-16", seed: int = 0,
                     size: tuple[int, int] = (320, 640), n_genes: int | None = None,
                     vocabulary: Sequence[str] | None = None, min_positives: int = 3,
                     write_masks: bool = True) -> Path:
    """Write a synthetic dataset and return its ``manifest.csv`` path.

    Layout: ``images/embNNNNN.png``, ``masks/embNNNNN__<term-slug>.png`` (present terms
    only; white = region), ``manifest.csv`` (image, terms, stage, gene) and
    ``vocabulary.txt`` (the vocabulary, one term per line, in order). Genes get 1-3
    images each (different poses, same terms) unless ``n_genes`` fixes their number; each
    term gets at least ``min(min_positives, n_images // 4)`` positive images. The same
    ``seed`` gives byte-identical output.
    """
    return drive(iter_generate_dataset(out_dir, n_images, stage, seed, size, n_genes,
                                       vocabulary, min_positives, write_masks))
