"""Feature extraction speed at VGG16 layer 21: tuned FeatureExtractor vs a naive baseline.

Both run in the same process on the same synthetic embryo PNGs (``core.synthetic``, 320x640)
with the same seeded random VGG16 weights (timing does not depend on the weights' values):

* **naive** - what a straightforward script does: decode one image, resize, full torchvision
  ``vgg16`` forward (all 13 convs *and* the classifier) in fp32 at batch 1, keep
  ``features[20]`` through a forward hook;
* **tuned** - :class:`FeatureExtractor`: only ``features[:21]``, batches, decoding of the
  next batches in a thread pool, and the precision / memory-format variants listed.

Each round runs every variant once over all images (interleaved, so load from other
processes hits them alike); the table shows the best round per variant. Accuracy of reduced
precision is checked on the same images: feature error against fp32, and the per-term
logistic ensembles (``core.classify``) fitted by gene-grouped cross-validation once on fp32
and once on bf16 features - "unchanged" means the same votes and the same mean AUC.

    python benchmarks/bench_extraction.py                    # default run (~2-3 min on 2 cores)
    python benchmarks/bench_extraction.py --compile          # also time torch.compile
    python benchmarks/bench_extraction.py --n-images 16 --rounds 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _naive(model, fx, paths):
    """Batch-1 fp32 full VGG16 forward per image; returns layer-21 features (n, d)."""
    import torch

    from napari_ish_annotator.core.data.images import read_rgb

    grabbed = {}
    hook = model.features[20].register_forward_hook(lambda m, i, o: grabbed.__setitem__("x", o))
    out = []
    try:
        with torch.inference_mode():
            for p in paths:
                x = fx.preprocess(read_rgb(p))[None]
                model(x)
                out.append(grabbed["x"].reshape(-1).numpy().copy())
    finally:
        hook.remove()
    return np.stack(out)


def _timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def _cv_agreement(X32, X16, Y, groups, vocabulary, folds, seed):
    """Grouped-CV predictions of the ensembles fitted on fp32 vs on bf16 features."""
    from napari_ish_annotator.core.learn.ensembles import EnsembleClassifier
    from napari_ish_annotator.core.learn.evaluation import score_predictions
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.learn.splits import grouped_folds

    folds_list = grouped_folds(groups, folds, seed)
    # small runs: keep the terms that have both classes in every training part
    keep = [t for t in range(Y.shape[1])
            if all(0 < Y[train, t].sum() < len(train) for train, _ in folds_list)]
    Y = Y[:, keep]
    vocabulary = [vocabulary[t] for t in keep]
    results = {}
    for name, X in (("fp32", X32), ("bf16", X16)):
        proba = np.zeros(Y.shape)
        vote = np.zeros(Y.shape, dtype=bool)
        for train, test in folds_list:
            clf = EnsembleClassifier(list(vocabulary), EnsembleConfig(seed=seed))
            clf.fit(X[train], Y[train])
            proba[test] = clf.predict_proba(X[test])
            vote[test] = clf.predict(X[test])
        results[name] = (proba, vote, score_predictions(Y, vote, proba, vocabulary).summary["mean"])
    p32, v32, m32 = results["fp32"]
    p16, v16, m16 = results["bf16"]
    return {
        "votes_changed": int((v32 != v16).sum()), "votes_total": int(v32.size),
        "max_abs_probability_change": float(np.abs(p32 - p16).max()),
        "fp32": m32, "bf16": m16, "terms": len(vocabulary),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-images", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow start)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)

    import torch
    from torchvision.models import vgg16

    from napari_ish_annotator.core.backbones.weights import load_backbone
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
    from napari_ish_annotator.core.features.preprocess import cpu_has_native_bf16
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    info = {
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "n_images": args.n_images,
        "input_size": args.input_size, "batch_size": args.batch_size,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        manifest = generate_dataset(tmp, args.n_images, stage="13-16", seed=0, size=(320, 640),
                                    write_masks=False)
        ds = read_manifest(manifest)
        paths = ds.paths

        loaded = load_backbone("vgg16", "random", seed=0)
        with torch.random.fork_rng(devices=[]):
            naive_model = vgg16(weights=None).eval()
        naive_model.features.load_state_dict(loaded.module.state_dict())

        def make(precision, batch, cl=None):
            fx = FeatureExtractor(ExtractorConfig(weights="random", precision=precision,
                                                  batch_size=batch, input_size=args.input_size,
                                                  device="cpu"), loaded=loaded)
            if cl is not None:  # force the memory format to measure its effect
                fx.channels_last = cl
            return fx

        variants = {
            "tuned fp32, batch 1": make("fp32", 1),
            f"tuned fp32, batch {args.batch_size}": make("fp32", args.batch_size),
            f"tuned fp32, batch {args.batch_size}, channels_last": make("fp32", args.batch_size,
                                                                       cl=True),
        }
        if cpu_has_native_bf16():
            variants[f"tuned bf16, batch {args.batch_size}, channels_last"] = make(
                "bf16", args.batch_size)
        auto = make("auto", args.batch_size)
        auto_name = next((k for k, v in variants.items() if v.precision == auto.precision
                          and v.batch_size == auto.batch_size), None)
        compile_s = None
        if args.compile:
            cfx = make(auto.precision, args.batch_size)
            cfx._module = torch.compile(cfx.module)
            compile_s, _ = _timed(lambda: cfx.extract(paths[: args.batch_size]))
            variants[f"tuned {auto.precision}, batch {args.batch_size}, torch.compile"] = cfx

        # warm-up (oneDNN primitive creation, first-touch allocations) on one batch each
        naive_fx = make("fp32", 1)
        _naive(naive_model, naive_fx, paths[:1])
        for fx in variants.values():
            fx.extract(paths[: fx.batch_size])

        times: dict[str, list[float]] = {"naive (full vgg16, fp32, batch 1)": []}
        times.update({k: [] for k in variants})
        feats: dict[str, np.ndarray] = {}
        for r in range(args.rounds):
            dt, feats["naive"] = _timed(lambda: _naive(naive_model, naive_fx, paths))
            times["naive (full vgg16, fp32, batch 1)"].append(dt)
            print(f"round {r + 1}: naive {len(paths) / dt:.2f} img/s", flush=True)
            for name, fx in variants.items():
                dt, feats[name] = _timed(lambda fx=fx: fx.extract(paths))
                times[name].append(dt)
                print(f"round {r + 1}: {name} {len(paths) / dt:.2f} img/s", flush=True)

    n = len(paths)
    base = n / min(times["naive (full vgg16, fp32, batch 1)"])
    rows = []
    naive_ts = times["naive (full vgg16, fp32, batch 1)"]
    for name, ts in times.items():
        ips = n / min(ts)
        # within a round the variants run back to back, so per-round ratios resist load drift
        per_round = [round(t_naive / t, 2) for t_naive, t in zip(naive_ts, ts, strict=True)]
        rows.append({"variant": name, "images_per_s": round(ips, 2),
                     "ms_per_image": round(1000 * min(ts) / n, 1),
                     "speedup": round(ips / base, 2), "speedup_per_round": per_round,
                     "auto": name == auto_name})
    width = max(len(r["variant"]) for r in rows) + 9
    print()
    print(f"{'variant':<{width}} {'img/s':>8} {'ms/img':>8} {'speedup':>8}  per round")
    for r in rows:
        label = r["variant"] + ("  [auto]" if r["auto"] else "")
        print(f"{label:<{width}} {r['images_per_s']:>8.2f} {r['ms_per_image']:>8.1f} "
              f"{r['speedup']:>7.2f}x  " + " ".join(f"{v:.2f}x" for v in r["speedup_per_round"]))
    if compile_s is not None:
        print(f"torch.compile: first batch incl. compilation {compile_s:.1f} s")

    # ---- accuracy of the tuned paths against the naive fp32 features
    ref = feats["naive"].astype(np.float64)
    acc = {}
    for name in variants:
        x = feats[name].astype(np.float64)
        cos = (x * ref).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref, axis=1))
        acc[name] = {"relative_l2_error": float(np.linalg.norm(x - ref) / np.linalg.norm(ref)),
                     "min_cosine": float(cos.min())}
    print()
    for name, a in acc.items():
        print(f"{name}: relative L2 error vs naive fp32 {a['relative_l2_error']:.2e}, "
              f"min cosine {a['min_cosine']:.6f}")
    agreement = None
    bf16_name = next((k for k in variants if "bf16" in k and "compile" not in k), None)
    fp32_name = f"tuned fp32, batch {args.batch_size}"
    t_cv = time.perf_counter()
    if bf16_name is not None:
        Y = ds.labels().astype(np.int8)
        agreement = _cv_agreement(feats[fp32_name], feats[bf16_name], Y, ds.groups(),
                                  ds.vocabulary, args.folds, seed=0)
        print(f"ensembles ({args.folds}-fold grouped CV, {agreement['terms']} terms): votes "
              f"changed fp32->bf16 {agreement['votes_changed']}/{agreement['votes_total']}, "
              f"max |delta probability| {agreement['max_abs_probability_change']:.2e}")
        for k in ("fp32", "bf16"):
            m = agreement[k]
            print(f"  {k}: " + ", ".join(f"{key} {val:.3f}" for key, val in m.items()))
    print(f"\nwall time: {time.perf_counter() - t_start:.0f} s (ensemble check "
          f"{time.perf_counter() - t_cv:.0f} s)")
    print(f"auto precision on this machine: {auto.precision}; 1-min load average before/after: "
          f"{info['load_average_1min']}/{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows, "accuracy": acc,
                                         "ensemble_agreement": agreement,
                                         "compile_seconds": compile_s,
                                         "auto_precision": auto.precision}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
