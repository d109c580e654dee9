"""The model bundle: a folder with ``model.json`` + ``classifiers.npz`` (no pickle anywhere).

``model.json`` says everything needed to reproduce the features (backbone, weights spec and
identity, layer, input size, aspect handling, normalisation, precision), the vocabulary and
ensemble settings, what it was trained on (dataset fingerprint, number of images, per-term
counts), package versions and when. ``classifiers.npz`` holds ``coef__<i>`` (M, d) float32 and
``intercept__<i>`` (M,) float64 for vocabulary term ``i``, ``center`` (d,) and, from format
version 2 on, the probability calibration ``calibration_a`` / ``calibration_b`` (T,) float64
(see :mod:`.calibration`; model.json's ``"calibration"`` says the method). Version-1 bundles
load uncalibrated (a = 1, b = 0) with a note in :attr:`ModelBundle.notes`.

Saving is atomic at the folder level: the bundle is written into a temporary folder beside
the target and renamed into place; an existing bundle is replaced only once the new one is
complete, so a crash or cancel never leaves a half-written model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.specs import get_spec
from ..features.extractor import ExtractorConfig
from ..utils.arrays import MAX_INPUT_SIZE, NpzReader, load_json, model_budget, over_budget
from ..utils.errors import InputError
from .calibration import Calibration, identity
from .ensembles import EnsembleClassifier, TermEnsemble
from .logistic import EnsembleConfig, majority_vote

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelBundle", "save_bundle", "load_bundle",
           "file_in_bundle"]

FORMAT = "ish-annotator-model"
FORMAT_VERSION = 2
MODEL_JSON = "model.json"
ARRAYS = "classifiers.npz"
_PACKAGES = ("napari-ish-annotator", "torch", "torchvision", "numpy", "scikit-learn")
# extractor settings that describe the machine, not the features: not restored on load
_RUNTIME_FIELDS = ("device", "batch_size")


@dataclass
class ModelBundle:
    """A trained model. ``meta`` is free-form; on load it is the whole ``model.json``.

    Keys of ``meta`` that :func:`save_bundle` uses: ``weights_id``, ``training``
    (``fingerprint``, ``n_images``, ...), ``fingerprint`` / ``n_images`` (same, flat),
    ``normalisation`` (``mean``, ``std``), ``created``.
    """

    extractor: ExtractorConfig
    classifier: EnsembleClassifier
    meta: dict = field(default_factory=dict)
    #: per-term map of the members' mean probability; None = uncalibrated (a = 1, b = 0)
    calibration: Calibration | None = None
    #: one-line notes from loading (e.g. an old, uncalibrated bundle), for the user to see
    notes: tuple[str, ...] = ()

    def calibration_or_identity(self) -> Calibration:
        return self.calibration or identity(len(self.classifier.vocabulary))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated ``(n, T)`` probability of each term: what the package reports.

        The members' mean probability (``classifier.predict_proba``) mapped by the bundle's
        calibration to the term's training prevalence.
        """
        return self.calibration_or_identity().apply(self.classifier.predict_proba(X))

    def predict_votes(self, X: Any) -> np.ndarray:
        """``(n, T)`` bool: the paper's decision, the members' majority vote (uncalibrated)."""
        return self.classifier.predict(X)

    def predict_both(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_proba` and :meth:`predict_votes` from one pass over the members."""
        from scipy.special import expit

        dec = self.classifier.decision_members(X)
        return self.calibration_or_identity().apply(expit(dec).mean(axis=2)), majority_vote(dec)


def package_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (torch is not imported for this)."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _backbone_defaults(backbone: str) -> tuple[str | None, dict | None]:
    """Default layer and normalisation of a registered backbone (None if unknown)."""
    try:
        spec = get_spec(backbone)
    except InputError:
        return None, None
    norm = {"mean": list(spec.mean), "std": list(spec.std),
            "pixel_scale": float(spec.pixel_scale)}
    return spec.default_layer, norm


def _manifest(bundle: ModelBundle) -> dict:
    clf, ext, meta = bundle.classifier, bundle.extractor, dict(bundle.meta or {})
    if not clf.is_fitted:
        raise InputError("the classifier is not trained; train it before saving the model")
    default_layer, default_norm = _backbone_defaults(ext.backbone)
    layer = ext.layer if ext.layer is not None else default_layer
    training = dict(meta.get("training") or {})
    training.setdefault("fingerprint", meta.get("fingerprint", ""))
    training.setdefault("n_images", meta.get("n_images"))
    training["term_counts"] = {
        t.term: {"positives": int(t.n_pos), "negatives": int(t.n_neg),
                 "unknown": int(t.n_unknown)}
        for t in clf.terms
    }
    extractor = {k: v for k, v in ext.to_dict().items() if k not in _RUNTIME_FIELDS}
    extractor["layer"] = layer
    created = meta.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": ext.backbone,
        "weights": ext.weights,
        "weights_id": meta.get("weights_id"),
        "layer": layer,
        "input_size": int(ext.input_size),
        "keep_aspect": bool(ext.keep_aspect),
        "normalisation": meta.get("normalisation") or default_norm,
        "extractor": extractor,
        "vocabulary": list(clf.vocabulary),
        "n_features": int(clf.n_features),
        "ensemble": {"n_members": clf.config.n_members, "C": clf.config.C,
                     "seed": clf.config.seed, "normalize": clf.config.normalize,
                     "center": clf.config.center},
        "training": training,
        "calibration": bundle.calibration_or_identity().to_json(),
        "package_versions": package_versions(),
        "created": created,
        "arrays": ARRAYS,
    }


def check_bundle_target(path: str | Path) -> Path:
    """``path`` may receive a bundle: absent, an empty folder, or an existing bundle.

    Called by :func:`save_bundle` and by the CLI before training, so a bad ``--out`` fails
    before the features are extracted rather than after.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and ((path / MODEL_JSON).exists()
                                                 or not any(path.iterdir()))):
        raise InputError("exists and is not a model folder; refusing to overwrite it, "
                         "choose another output folder", path=path)
    return path


def save_bundle(path: str | Path, bundle: ModelBundle) -> None:
    """Write ``bundle`` to the folder ``path`` atomically (temp folder beside it, then rename).

    An existing *bundle* at ``path`` is replaced only after the new one is complete; any
    other existing file or non-empty folder is refused rather than deleted.
    """
    path = check_bundle_target(path)
    manifest = _manifest(bundle)
    arrays: dict[str, np.ndarray] = {}
    for i, term in enumerate(bundle.classifier.terms):
        arrays[f"coef__{i}"] = np.ascontiguousarray(term.coef, dtype=np.float32)
        arrays[f"intercept__{i}"] = np.asarray(term.intercept, dtype=np.float64)
    if bundle.classifier.center is not None:
        arrays["center"] = np.ascontiguousarray(bundle.classifier.center, dtype=np.float32)
    calibration = bundle.calibration_or_identity()
    n_terms = len(bundle.classifier.vocabulary)
    for key, values in (("calibration_a", calibration.a), ("calibration_b", calibration.b)):
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (n_terms,) or not np.isfinite(values).all():
            raise InputError(f"the calibration's {key} has shape {values.shape} or non-finite "
                             f"values, expected {n_terms} numbers; train the model again")
        arrays[key] = values
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    old = path.parent / f".{path.name}.old-{tag}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise InputError(f"cannot write the model here ({exc.strerror}); choose a writable "
                         "folder", path=path) from exc
    try:
        with open(tmp / ARRAYS, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        _bring_weights(manifest, tmp)
        with open(tmp / MODEL_JSON, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as exc:
        if old.exists() and not path.exists():
            os.replace(old, path)  # put the previous bundle back
        raise InputError(f"could not write the model ({exc.strerror}); the previous model, "
                         "if any, is unchanged", path=path) from exc
    except BaseException:  # Ctrl-C/SIGTERM between the two renames: keep the previous model
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    finally:
        for leftover in (tmp, old):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(leftover)


def _bring_weights(manifest: dict, folder: Path) -> None:
    """A backbone weights *file* travels inside the bundle (hard-linked where possible), so
    the bundle names only its own files and no path of this machine."""
    spec = str(manifest.get("weights") or "")
    if not spec or spec in ("imagenet", "random") or spec.startswith(("imagenet:", "random:")):
        return
    source = Path(spec).expanduser()
    name = "weights" + (source.suffix if source.suffix.isalnum() or source.suffix[1:].isalnum()
                        else ".pt")
    try:
        os.link(source, folder / name)
    except OSError:
        shutil.copyfile(source, folder / name)
    manifest["weights"] = manifest["extractor"]["weights"] = name


def _require(cond: bool, path: Path, message: str) -> None:
    if not cond:
        raise InputError(f"{message}; the model is damaged or incomplete, train it again",
                         path=path)


def file_in_bundle(folder: Path, name: object, what: str) -> Path:
    """The file ``name`` (``what`` says where it was named), which must lie in the bundle.

    Bundles travel between labs: a received ``model.json`` naming ``/etc/passwd``,
    ``../x`` or a symlink leading out would make this package open a file the user never
    gave. Checked before anything is opened: a plain relative name without ``..``, and its
    real path (symlinks resolved) inside the folder's real path.
    """
    def refuse(why: str) -> InputError:
        return InputError(f"{what} is {str(name)[:100]!r}, {why}; a model folder may only "
                          "name files inside itself - do not use this model, or ask its "
                          "authors for an intact copy", path=folder)

    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise refuse("not a file name")
    rel = Path(name)
    if rel.is_absolute() or rel.drive or name.startswith(("/", "\\")):
        raise refuse("an absolute path")
    if ".." in rel.parts or ".." in name.replace("\\", "/").split("/"):
        raise refuse("a path that climbs out with '..'")
    root = folder.resolve()
    target = (folder / rel).resolve()
    if target != root and root not in target.parents:
        raise refuse(f"a link that leads out of the folder (to {target})")
    return folder / rel


def load_bundle(
    path: str | Path,
    expect_backbone: str | None = None,
    expect_layer: str | None = None,
    expect_vocabulary: Sequence[str] | None = None,
) -> ModelBundle:
    """Read and check a bundle; ``expect_*`` mismatches are an InputError saying both sides."""
    path = Path(path)
    mj = path / MODEL_JSON
    if mj.is_symlink():
        file_in_bundle(path, MODEL_JSON, "the model description")
    if not mj.is_file():
        raise InputError(f"not a model folder (no {MODEL_JSON}); give the folder written by "
                         "'ish-annotator train --out'", path=path)
    info = load_json(mj, "model description", "train the model again")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise InputError(f"not an {FORMAT} file (format "
                         f"{str(info.get('format'))[:40] if isinstance(info, dict) else None!r})",
                         path=mj)
    version = info.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError("has no valid format_version; train the model again", path=mj)
    if version > FORMAT_VERSION:
        raise InputError(f"the model has format version {version}, newer than this "
                         f"napari-ish-annotator reads ({FORMAT_VERSION}); upgrade it with "
                         "'pip install -U napari-ish-annotator'", path=mj)
    try:
        vocabulary = [str(t) for t in info["vocabulary"]]
        if not vocabulary or len(set(vocabulary)) != len(vocabulary):  # said with the path
            raise ValueError("vocabulary (empty, or a term twice)")
        d = int(info["n_features"])
        ens = info["ensemble"]
        config = EnsembleConfig(n_members=int(ens["n_members"]), C=float(ens["C"]),
                                seed=int(ens["seed"]), normalize=bool(ens["normalize"]),
                                center=bool(ens.get("center", False)))
        backbone, layer = str(info["backbone"]), info["layer"]
        input_size = int(info.get("input_size", 224))
        training = info.get("training")
        term_counts = {} if training is None else training.get("term_counts") or {}
        if not isinstance(term_counts, dict):
            raise TypeError("training.term_counts is not a mapping")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise InputError(f"model description lacks or garbles {str(exc)[:100]}; train the "
                         "model again", path=mj) from None
    _check_sizes(mj, backbone, layer, input_size, d, config.n_members, len(vocabulary))
    layer = None if layer is None else str(layer)

    if expect_backbone is not None and expect_backbone != backbone:
        raise InputError(f"the model was trained on {backbone!r} features but backbone "
                         f"{expect_backbone!r} was asked for; use --backbone {backbone} or "
                         "train a model for that backbone", path=path)
    if expect_layer is not None and str(expect_layer) != layer:
        raise InputError(f"the model was trained on layer {layer} but layer {expect_layer} "
                         f"was asked for; use --layer {layer} or train a model for that "
                         "layer", path=path)
    if expect_vocabulary is not None and set(expect_vocabulary) != set(vocabulary):
        missing = [t for t in expect_vocabulary if t not in vocabulary]
        extra = [t for t in vocabulary if t not in set(expect_vocabulary)]
        raise InputError(f"the model's vocabulary is {'; '.join(vocabulary)} but "
                         f"{'; '.join(expect_vocabulary)} was asked for (not in the model: "
                         f"{'; '.join(missing) or '-'}; only in the model: "
                         f"{'; '.join(extra) or '-'}); train a model with those terms", path=path)

    npz_path = file_in_bundle(path, info.get("arrays", ARRAYS), "model.json's \"arrays\"")
    _require(npz_path.is_file(), path, f"{npz_path.name} is missing")
    terms = []
    center = None
    m = config.n_members
    with NpzReader(npz_path, f"cannot read {npz_path.name}:", "train the model again") as npz:
        for i, term in enumerate(vocabulary):
            ck, ik = f"coef__{i}", f"intercept__{i}"
            _require(ck in npz.files and ik in npz.files, path,
                     f"{npz_path.name} has no arrays for term {i} ({term!r})")
            coef, intercept = npz.read(ck, (m, d)), npz.read(ik, (m,))
            _require(bool(np.isfinite(coef).all() and np.isfinite(intercept).all()), path,
                     f"term {term!r}: arrays hold NaN or infinite values")
            n_pos, n_neg, n_unknown = _counts(term_counts.get(term), term, mj)
            terms.append(TermEnsemble(
                term=term, coef=coef.astype(np.float32, copy=False),
                intercept=intercept.astype(np.float64, copy=False),
                n_pos=n_pos, n_neg=n_neg, n_unknown=n_unknown))
        if config.center:
            _require("center" in npz.files, path,
                     f"{npz_path.name} lacks the centring row of shape ({d},)")
            center = npz.read("center", (d,))
        calibration, notes = _read_calibration(npz, info, version, len(vocabulary), path)
    classifier = EnsembleClassifier(vocabulary, config).set_terms(terms, center=center)

    stored = info.get("extractor") or {}
    _require(isinstance(stored, dict), path, "model.json's \"extractor\" is not a mapping")
    known = {f.name for f in fields(ExtractorConfig)} - set(_RUNTIME_FIELDS)
    kwargs: dict[str, Any] = {k: v for k, v in stored.items() if k in known}
    kwargs.update(backbone=backbone, weights=_bundle_weights(path, info.get(
                      "weights", kwargs.get("weights", "imagenet"))),
                  layer=layer, input_size=input_size,
                  keep_aspect=bool(info.get("keep_aspect", False)))
    extractor = ExtractorConfig(**kwargs)
    return ModelBundle(extractor=extractor, classifier=classifier, meta=info,
                       calibration=calibration, notes=notes)


def _check_sizes(mj: Path, backbone: str, layer: object, input_size: int, d: int,
                 n_members: int, n_terms: int) -> None:
    """Declared sizes against the backbone and the memory budget, before any array is read
    (a 7M-feature model.json would otherwise inflate gigabytes before its shape check)."""
    if not 1 <= input_size <= MAX_INPUT_SIZE:
        raise InputError(f"input size {input_size} is outside 1..{MAX_INPUT_SIZE}; the model is "
                         "damaged, train it again", path=mj)
    try:
        spec = get_spec(backbone)
        most = math.prod(spec.feature_shape(None if layer is None else str(layer), input_size))
    except InputError as exc:  # unknown backbone or layer: say which file names it
        raise InputError(f"{exc}; the model names it - train the model again", path=mj) from None
    if not (1 <= d <= most and 1 <= n_members <= 10_000 and 0 <= n_terms <= 100_000):
        raise InputError(f"declares {d} features x {n_members} members x {n_terms} terms, but "
                         f"{spec.name} layer {layer} at {input_size} px gives at most {most} "
                         "features; the model is damaged, train it again", path=mj)
    nbytes = n_terms * n_members * (d * 4 + 8) + d * 4
    if nbytes > model_budget():
        raise over_budget(nbytes, "the model's classifiers", mj)


def _counts(block: object, term: str, mj: Path) -> tuple[int, int, int]:
    """A term's recorded (positives, negatives, unknown): whole numbers, or one line."""
    if block is None:
        return 0, 0, 0
    values = []
    for key in ("positives", "negatives", "unknown"):
        v = block.get(key, 0) if isinstance(block, dict) else None
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**53:
            raise InputError(f"training.term_counts of {term[:60]!r} holds {str(v)[:20]!r} "
                             f"as {key}, not a whole number; train the model again", path=mj)
        values.append(v)
    return values[0], values[1], values[2]


def _bundle_weights(folder: Path, weights: object) -> str:
    """The backbone weights spec; a weights *file* must lie inside the bundle like every other
    file it names (``file_in_bundle``), so a received model.json cannot make us open any path."""
    if not isinstance(weights, str):
        raise InputError(f"model.json's \"weights\" is {str(weights)[:40]!r}, not a weights "
                         "spec; train the model again", path=folder)
    spec = weights.strip()
    if spec in ("imagenet", "random") or spec.startswith(("imagenet:", "random:")):
        return spec
    return str(file_in_bundle(folder, spec, "model.json's \"weights\""))


def _read_calibration(npz: Any, info: dict, version: int, n_terms: int, path: Path
                      ) -> tuple[Calibration, tuple[str, ...]]:
    """The stored calibration map; version-1 bundles have none (reported uncalibrated)."""
    if version < 2:
        return identity(n_terms), (
            f"note: {path} is a format-{version} model without probability calibration; "
            "its probabilities are the members' raw mean (calibrated to 50 % prevalence) - "
            "train it again for calibrated probabilities",)
    _require("calibration_a" in npz.files and "calibration_b" in npz.files, path,
             "the model lacks its calibration arrays")
    a, b = npz.read("calibration_a", (n_terms,)), npz.read("calibration_b", (n_terms,))
    _require(bool(np.isfinite(a).all() and np.isfinite(b).all()), path,
             f"calibration arrays hold non-finite values, expected ({n_terms},) finite numbers")
    meta = info.get("calibration") or {}
    prevalence = meta.get("prevalence") if isinstance(meta, dict) else None
    if prevalence is not None:
        ok = (isinstance(prevalence, list) and len(prevalence) == n_terms
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
                      for v in prevalence))
        _require(ok, path, f"model.json's calibration prevalence is not {n_terms} numbers in [0, 1]")
    method = str(meta.get("method", "prior"))[:40] if isinstance(meta, dict) else "prior"
    return Calibration(method, a.astype(np.float64), b.astype(np.float64),
                       None if prevalence is None else np.asarray(prevalence, np.float64)), ()
