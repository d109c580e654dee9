"""Ensemble fitting: Gram-matrix (dual) fit vs the naive per-member scikit-learn fit.

Fits the whole ensemble (default 10 terms x 11 members) on synthetic layer-21-sized features
(2,000 images x 401,408 float32 dims = 3.2 GB, a low-rank signal plus noise, written in chunks
to a memory-mapped .npy) and reports wall time and peak memory (``ru_maxrss`` of a fresh
subprocess per method; it includes the memmap's file-backed pages that were read).

The naive fit (``LogisticRegression(C).fit(X[rows], y[rows])`` per member, sklearn defaults:
lbfgs, tol 1e-4) of all 110 members would take very long, so by default it is timed on the
members of ``--naive-terms`` terms (those whose member size is closest to the average) and
extrapolated linearly, both by member count and by training rows; both measured and
extrapolated figures are printed. The decision values of the timed naive members are compared
with the Gram fit's members (same rows) as a correctness check at full size.

    python benchmarks/bench_fit.py                       # full size (~3.2 GB in a temp dir)
    python benchmarks/bench_fit.py --n-images 300 --dims 20000   # quick

Targets: Gram fit >= 10x faster than the (extrapolated) naive fit, peak memory < 8 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PREVALENCE = (0.40, 0.30, 0.25, 0.20, 0.15, 0.12, 0.10, 0.08, 0.06, 0.05)
N_EVAL = 200  # images whose decision values are compared between the methods


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def generate(workdir: Path, n: int, d: int, n_terms: int, seed: int, rank: int = 32) -> None:
    """Low-rank signal + noise, written chunk by chunk (never all in memory)."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, rank)).astype(np.float32)
    B = rng.normal(size=(rank, d)).astype(np.float32) / np.sqrt(rank)
    X = np.lib.format.open_memmap(workdir / "X.npy", mode="w+", dtype=np.float32, shape=(n, d))
    chunk = max(1, (256 * 2**20) // (4 * d))
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        block = rng.standard_normal(size=(r1 - r0, d), dtype=np.float32)
        block += 1.5 * (Z[r0:r1] @ B)
        np.maximum(block, 0, out=block)  # ReLU-like, as VGG activations
        X[r0:r1] = block
    X.flush()
    del X
    Y = np.zeros((n, n_terms), dtype=np.int8)
    for t in range(n_terms):
        p = PREVALENCE[t % len(PREVALENCE)]
        score = Z[:, t % rank] + 0.5 * Z[:, (t + 1) % rank] + 0.7 * rng.normal(size=n)
        Y[:, t] = score > np.quantile(score, 1 - p)
    np.save(workdir / "Y.npy", Y)


def worker_gram(workdir: Path, members: int, C: float, seed: int) -> dict:
    from napari_ish_annotator.core.learn.ensembles import EnsembleClassifier
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig

    X = np.load(workdir / "X.npy", mmap_mode="r")
    Y = np.load(workdir / "Y.npy")
    vocab = [f"term{t}" for t in range(Y.shape[1])]
    t0 = time.perf_counter()
    clf = EnsembleClassifier(vocab, EnsembleConfig(n_members=members, C=C, seed=seed))
    clf.fit(X, Y)
    wall = time.perf_counter() - t0
    np.save(workdir / "gram_dec.npy", clf.decision_members(X[:N_EVAL]))
    return {"wall_s": wall, "peak_gib": _peak_gib()}


def _members(Y: np.ndarray, members: int, seed: int) -> list[list[np.ndarray]]:
    """The same member rows as EnsembleClassifier.iter_fit draws (no unknown labels here)."""
    from napari_ish_annotator.core.learn.logistic import member_rows

    seqs = np.random.SeedSequence(seed).spawn(Y.shape[1])
    return [member_rows(Y[:, t], members, np.random.default_rng(seqs[t]))
            for t in range(Y.shape[1])]


def worker_naive(workdir: Path, members: int, C: float, seed: int, terms: list[int],
                 tol: float) -> dict:
    """Per member: copy its rows, prepare them as the ensemble does, sklearn LR fit."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from napari_ish_annotator.core.learn.logistic import EnsembleConfig

    cfg = EnsembleConfig(n_members=members, C=C, seed=seed)
    warnings.simplefilter("ignore", ConvergenceWarning)
    X = np.load(workdir / "X.npy", mmap_mode="r")
    Y = np.load(workdir / "Y.npy")
    rows_all = _members(Y, members, seed)
    t0 = time.perf_counter()
    mu = None
    if getattr(cfg, "center", False):  # the ensemble centres on the mean labelled row
        mu = np.zeros(X.shape[1])
        for r0 in range(0, X.shape[0], 64):
            mu += X[r0:r0 + 64].sum(axis=0, dtype=np.float64)
        mu = (mu / X.shape[0]).astype(np.float32)

    def prepare(A: np.ndarray) -> np.ndarray:
        if mu is not None:
            A -= mu
        if cfg.normalize:
            A /= np.linalg.norm(A, axis=1, keepdims=True)
        return A

    Xe = prepare(np.array(X[:N_EVAL], dtype=np.float32))
    dec = np.zeros((N_EVAL, len(terms), members))
    for k, t in enumerate(terms):
        for j, rows in enumerate(rows_all[t]):
            Xm = prepare(np.array(X[rows], dtype=np.float32))  # the member's rows (a copy)
            lr = LogisticRegression(C=C, tol=tol, max_iter=10_000).fit(Xm, Y[rows, t])
            dec[:, k, j] = Xe @ lr.coef_[0] + lr.intercept_[0]
            del Xm
    wall = time.perf_counter() - t0
    np.save(workdir / f"naive_dec_{tol:g}.npy", dec)
    return {"wall_s": wall, "peak_gib": _peak_gib()}


def _run_worker(args: argparse.Namespace, which: str, workdir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", which, "--workdir", str(workdir),
           "--members", str(args.members), "--C", str(args.C), "--seed", str(args.seed), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{which} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--dims", type=int, default=512 * 28 * 28)
    p.add_argument("--terms", type=int, default=10)
    p.add_argument("--members", type=int, default=11)
    p.add_argument("--C", type=float, default=10.0)  # the classifier default
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--naive-terms", type=int, default=1,
                   help="number of terms whose members the naive fit times (then extrapolated)")
    p.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir")
    p.add_argument("--keep", action="store_true", help="keep the generated features")
    p.add_argument("--worker", choices=["gram", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--term-list", default="", help=argparse.SUPPRESS)
    p.add_argument("--tol", type=float, default=1e-4, help=argparse.SUPPRESS)
    p.add_argument("--naive-tols", default="1e-4,1e-6",
                   help="sklearn tolerances to time the naive fit at (1e-4 = sklearn's default; "
                        "1e-6 reaches the optimum to ~1e-3 like the Gram fit)")
    args = p.parse_args()

    if args.worker == "gram":
        print(json.dumps(worker_gram(args.workdir, args.members, args.C, args.seed)))
        return
    if args.worker == "naive":
        terms = [int(t) for t in args.term_list.split(",")]
        print(json.dumps(worker_naive(args.workdir, args.members, args.C, args.seed, terms,
                                      args.tol)))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_fit_"))
    workdir.mkdir(parents=True, exist_ok=True)
    n, d = args.n_images, args.dims
    print(f"# ensemble fit: {n} images x {d} dims float32 ({n * d * 4 / 2**30:.2f} GiB memmap), "
          f"{args.terms} terms x {args.members} members, C={args.C}; "
          f"{os.cpu_count()} CPUs; workdir {workdir}")
    try:
        t0 = time.perf_counter()
        generate(workdir, n, d, args.terms, args.seed)
        print(f"generated features in {time.perf_counter() - t0:.1f} s")
        Y = np.load(workdir / "Y.npy")
        sizes = np.array([2 * min(Y[:, t].sum(), n - Y[:, t].sum()) for t in range(args.terms)])
        print("positives per term:", ", ".join(str(int(Y[:, t].sum())) for t in range(args.terms)))

        gram = _run_worker(args, "gram", workdir, [])
        print(f"Gram fit, all {args.terms * args.members} members: {gram['wall_s']:.1f} s wall, "
              f"peak RSS {gram['peak_gib']:.2f} GiB")

        k = max(1, min(args.naive_terms, args.terms))
        order = np.argsort(np.abs(sizes - sizes.mean()), kind="stable")
        terms = sorted(int(t) for t in order[:k])
        timed_members = len(terms) * args.members
        total_members = args.terms * args.members
        ok = gram["peak_gib"] < 8
        for tol in [float(t) for t in args.naive_tols.split(",")]:
            naive = _run_worker(args, "naive", workdir,
                                ["--term-list", ",".join(map(str, terms)), "--tol", str(tol)])
            by_count = naive["wall_s"] * total_members / timed_members
            by_rows = naive["wall_s"] * sizes.sum() / sizes[terms].sum()
            g = np.load(workdir / "gram_dec.npy")[:, terms, :]
            v = np.load(workdir / f"naive_dec_{tol:g}.npy")
            rel = np.abs(g - v).max() / np.abs(v).max()
            print(f"naive sklearn fit (lbfgs, tol={tol:g}), measured: {timed_members} members "
                  f"(terms {terms}, {int(sizes[terms][0])} rows each) {naive['wall_s']:.1f} s "
                  f"wall, peak RSS {naive['peak_gib']:.2f} GiB; max |decision difference| / "
                  f"max |decision| vs the Gram fit: {rel:.1e}")
            print(f"  extrapolated to {total_members} members: {by_count:.0f} s (by member "
                  f"count), {by_rows:.0f} s (by training rows); speed-up of the Gram fit "
                  f"{by_count / gram['wall_s']:.1f}x / {by_rows / gram['wall_s']:.1f}x")
            ok = ok and by_count / gram["wall_s"] >= 10
        print(f"targets (>= 10x faster, peak < 8 GiB): {'met' if ok else 'NOT met'}")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
