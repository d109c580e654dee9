"""Where each term's stain goes on a synthetic embryo (:mod:`.synthetic` renders it).

Regions are defined in normalised embryo coordinates: ``u`` in [-1, 1] along the
anterior-posterior axis (-1 = anterior pole, left) and ``d`` in [-1, 1] along the
dorsal-ventral axis (+1 = dorsal, up). Each term has a list of parts (blob, box, tube or
dots, optionally restricted to the outer shell and/or cut into segmental stripes). Unknown
terms get a deterministic placement hashed from their name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["Part", "blob", "box", "tube", "dots", "TERM_REGIONS", "term_region"]

#: one part of a term's region: a dict of its ``kind`` and shape parameters
Part = dict


def blob(u: float, d: float, ru: float, rd: float, **kw: object) -> Part:
    """An ellipse centred at ``(u, d)`` with radii ``(ru, rd)``."""
    return {"kind": "blob", "u": u, "d": d, "ru": ru, "rd": rd, **kw}


def box(u0: float, u1: float, d0: float, d1: float, **kw: object) -> Part:
    """A rectangle ``[u0, u1] x [d0, d1]``."""
    return {"kind": "box", "u0": u0, "u1": u1, "d0": d0, "d1": d1, **kw}


def tube(points: Sequence[tuple[float, float]], width: float, **kw: object) -> Part:
    """A polyline of the given half-width (guts)."""
    return {"kind": "tube", "points": tuple(points), "width": width, **kw}


def dots(n: int, u0: float, u1: float, d: float, ru: float, rd: float, **kw: object) -> Part:
    """``n`` small ellipses spaced evenly from ``u0`` to ``u1`` at height ``d`` (segments)."""
    return {"kind": "dots", "n": n, "u0": u0, "u1": u1, "d": d, "ru": ru, "rd": rd, **kw}


_BRAIN = blob(-0.70, 0.30, 0.20, 0.33)
_VNC = box(-0.50, 0.78, -0.84, -0.56)
_PHARYNX = tube([(-0.96, -0.22), (-0.80, -0.08), (-0.62, 0.04)], 0.07)

#: Placement of every built-in term (all stage ranges) on a lateral embryo.
TERM_REGIONS: dict[str, list[Part]] = {
    # --- stages 4-6 (blastoderm, gastrulation onset) ---
    "cellular blastoderm": [box(-1.1, 1.1, -1.1, 1.1, shell=0.13)],
    "dorsal ectoderm anlage in statu nascendi": [box(-0.55, 0.85, 0.25, 1.1, shell=0.16)],
    "ventral ectoderm anlage in statu nascendi": [box(-0.55, 0.85, -0.75, -0.20, shell=0.30)],
    "procephalic ectoderm anlage in statu nascendi": [box(-1.1, -0.50, -0.20, 1.1, shell=0.22)],
    "anlage in statu nascendi": [box(-0.60, 0.70, -1.1, 1.1, stripes=(7, 0.35))],
    "posterior endoderm anlage in statu nascendi": [blob(0.92, 0.0, 0.20, 0.45)],
    "mesoderm anlage in statu nascendi": [box(-0.80, 0.85, -1.1, -0.62)],
    "yolk nuclei": [blob(0.0, 0.0, 0.68, 0.58, gain=0.7, speckle=True)],
    "hindgut anlage in statu nascendi": [blob(0.80, 0.45, 0.12, 0.16)],
    "foregut anlage in statu nascendi": [blob(-0.80, -0.25, 0.10, 0.16)],
    # --- stages 7-8 (germ band extension) ---
    "ventral ectoderm primordium P2": [box(-0.50, 0.80, -1.1, -0.30, shell=0.22,
                                            stripes=(10, 0.5))],
    "trunk mesoderm primordium P2": [box(-0.50, 0.75, -0.55, -0.20)],
    "posterior endoderm primordium P2": [blob(0.55, 0.55, 0.22, 0.25)],
    "head mesoderm primordium P4": [blob(-0.62, -0.35, 0.15, 0.20)],
    "procephalic ectoderm anlage": [box(-1.1, -0.55, -0.30, 1.1, shell=0.22)],
    "anterior endoderm anlage": [blob(-0.78, -0.15, 0.12, 0.25)],
    "dorsal ectoderm primordium": [box(-0.50, 0.60, 0.35, 1.1, shell=0.18)],
    "hindgut anlage": [blob(0.40, 0.70, 0.10, 0.12)],
    "ventral nerve cord anlage": [box(-0.45, 0.75, -0.95, -0.70)],
    "foregut anlage": [blob(-0.85, -0.45, 0.08, 0.12)],
    # --- stages 9-10 ---
    "trunk mesoderm primordium": [box(-0.50, 0.80, -0.55, 0.20, stripes=(11, 0.55))],
    "head mesoderm primordium P2": [blob(-0.55, -0.40, 0.14, 0.16)],
    "posterior endoderm primordium": [blob(0.50, 0.30, 0.22, 0.28)],
    "anterior endoderm primordium": [blob(-0.65, 0.0, 0.16, 0.25)],
    "procephalic ectoderm primordium": [box(-1.1, -0.50, -0.40, 1.1, shell=0.25)],
    "ventral ectoderm primordium": [box(-0.50, 0.85, -1.1, -0.35, shell=0.20)],
    "ventral nerve cord primordium P3": [dots(12, -0.50, 0.80, -0.78, 0.035, 0.07)],
    "inclusive hindgut primordium": [blob(0.25, 0.75, 0.12, 0.13)],
    "foregut primordium": [blob(-0.72, -0.35, 0.10, 0.14)],
    # --- stages 11-12 ---
    "posterior midgut primordium": [blob(0.35, 0.20, 0.28, 0.30)],
    "anterior midgut primordium": [blob(-0.45, 0.05, 0.22, 0.30)],
    "brain primordium": [blob(-0.72, 0.35, 0.20, 0.30)],
    "ventral nerve cord primordium": [box(-0.55, 0.90, -0.75, -0.50)],
    "hindgut proper primordium": [tube([(0.20, 0.75), (0.50, 0.70), (0.75, 0.45),
                                         (0.85, 0.10)], 0.08)],
    "dorsal epidermis primordium": [box(-0.50, 0.90, 0.50, 1.1, shell=0.20,
                                         stripes=(11, 0.45))],
    "ventral epidermis primordium": [box(-0.50, 0.90, -1.1, -0.35, shell=0.18,
                                          stripes=(11, 0.40))],
    "somatic muscle primordium": [dots(11, -0.45, 0.85, 0.10, 0.045, 0.12),
                                  dots(11, -0.45, 0.85, -0.25, 0.045, 0.10)],
    # --- stages 13-16 ---
    "embryonic midgut": [blob(-0.25, 0.05, 0.17, 0.30), blob(0.05, 0.02, 0.17, 0.32),
                         blob(0.35, 0.05, 0.17, 0.30)],
    "ventral nerve cord": [_VNC],
    "embryonic brain": [_BRAIN],
    "embryonic dorsal epidermis": [box(-0.65, 0.90, 0.45, 1.1, shell=0.20,
                                        stripes=(11, 0.50))],
    "embryonic hindgut": [tube([(0.55, 0.35), (0.75, 0.25), (0.82, 0.0), (0.72, -0.20)],
                                0.07)],
    "embryonic ventral epidermis": [box(-0.55, 0.90, -1.1, -0.45, shell=0.15,
                                         stripes=(11, 0.50))],
    "embryonic central nervous system": [_BRAIN, _VNC],
    "embryonic/larval muscle system": [box(-0.55, 0.85, -0.40, 0.50, stripes=(11, 0.22)),
                                       blob(-0.86, -0.05, 0.07, 0.10)],
    "embryonic head epidermis": [box(-1.1, -0.60, -1.1, 1.1, shell=0.15)],
    "embryonic foregut": [_PHARYNX],
}


def term_region(term: str) -> list[Part]:
    """Parts of a term's region; unknown terms get a stable placement hashed from the name."""
    if term in TERM_REGIONS:
        return TERM_REGIONS[term]
    seed = int.from_bytes(hashlib.sha256(term.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(int(rng.integers(1, 3))):
        parts.append(blob(float(rng.uniform(-0.7, 0.7)), float(rng.uniform(-0.55, 0.55)),
                           float(rng.uniform(0.10, 0.25)), float(rng.uniform(0.12, 0.30))))
    return parts
