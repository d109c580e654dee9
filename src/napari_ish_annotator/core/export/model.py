"""A trained model (bundle folder or fine-tuning checkpoint) as one :class:`TermNetwork`.

Everything the exporters need to know about the model comes out of here as a frozen
:class:`ExportableModel`: the network with its weights, the keyword arguments that rebuild its
architecture (:func:`.network.build_network`), and what the documentation reports. Loading
problems (a missing bundle, a weights file that no longer exists, a damaged checkpoint) are
one :class:`InputError` raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..explain.finetuned import gradcam_mtl
from ..explain.gradcam import gradcam_for_image
from ..features.extractor import FeatureExtractor
from ..features.preprocess import normalisation_affine
from ..finetune import load_finetuned
from ..learn.bundle import load_bundle
from ..utils.errors import InputError
from ..utils.hashing import content_hash

if TYPE_CHECKING:  # pragma: no cover
    from .network import TermNetwork

__all__ = ["ExportableModel", "load_exportable"]


@dataclass(frozen=True)
class ExportableModel:
    """The network plus what the package documents about it."""

    kind: str                       # "bundle" or "checkpoint"
    source: Path
    network: TermNetwork            # fp32, CPU, eval mode
    architecture: dict              # kwargs of network.build_network
    vocabulary: tuple[str, ...]
    backbone: str
    layer: str
    weights_id: str
    input_size: int
    keep_aspect: bool
    training: dict                  # fingerprint, n_images, term counts where known
    metrics: dict | None            # per-term metrics where the model records them
    calibration: dict               # method and the per-term a, b (core.learn.calibration)
    #: Grad-CAM of one term for an HxWx3 uint8 image -> (H, W) map in [0, 1]
    gradcam: Callable[[np.ndarray, str], np.ndarray] = field(repr=False, compare=False)


def _wrap_load_error(exc: InputError, source: Path) -> InputError:
    return InputError(f"cannot be exported: {exc}", path=source)


def load_exportable(source: str | Path) -> ExportableModel:
    """A bundle folder or a fine-tuning checkpoint file, ready to export."""
    source = Path(source)
    if source.is_dir():
        return _from_bundle(source)
    if source.is_file():
        return _from_checkpoint(source)
    raise InputError("not found; give a model folder (ish-annotator train --out) or a "
                     "fine-tuning checkpoint (ish-annotator finetune --out)", path=source)


def _from_bundle(path: Path) -> ExportableModel:
    import torch

    from .network import EnsembleHead, Preprocess, TermNetwork

    bundle = load_bundle(path)
    config = replace(bundle.extractor, device="cpu", precision="fp32")
    try:
        fx = FeatureExtractor(config)
    except InputError as exc:
        raise InputError(f"cannot be exported: the backbone weights it was trained with "
                         f"({config.weights}) do not load ({exc}); the export needs exactly "
                         "those weights - put the file back at that path, or train the model "
                         "again", path=path) from exc
    clf = bundle.classifier
    vocabulary = tuple(clf.vocabulary)
    if int(clf.n_features) != fx.dim:
        raise InputError(f"cannot be exported: the classifiers expect {clf.n_features} features "
                         f"but {fx.spec.name} layer {fx.layer} at {fx.input_size} px gives "
                         f"{fx.dim}; the model is damaged - train it again", path=path)
    n_members = clf.config.n_members
    arch = {"backbone": fx.spec.name, "layer_index": fx.layer_index,
            "input_size": fx.input_size, "n_terms": len(vocabulary),
            "keep_aspect": bool(config.keep_aspect), "head": "ensemble",
            "n_features": fx.dim, "n_members": n_members,
            "center": bool(clf.config.center), "normalize": bool(clf.config.normalize)}
    cal = bundle.calibration_or_identity()  # v1 bundles: a = 1, b = 0 (uncalibrated)
    calibration = {"method": cal.method, "a": [float(v) for v in cal.a],
                   "b": [float(v) for v in cal.b]}
    with torch.device("meta"):  # no init, no RNG draws: every value is set below
        head = EnsembleHead(fx.dim, len(vocabulary), n_members, arch["center"],
                            arch["normalize"])
    head = head.to_empty(device="cpu")
    weight = np.concatenate([t.coef for t in clf.terms]).astype(np.float32)
    bias = np.concatenate([t.intercept for t in clf.terms]).astype(np.float32)
    center = clf.center if clf.center is not None else np.zeros(fx.dim, np.float32)
    prep = Preprocess(fx.input_size, bool(config.keep_aspect))
    offset, factor = normalisation_affine(fx.mean, fx.std, fx.pixel_scale)
    with torch.no_grad():
        head.members.weight.copy_(torch.from_numpy(weight))
        head.members.bias.copy_(torch.from_numpy(bias))
        head.center.copy_(torch.from_numpy(np.asarray(center, np.float32)))
        head.calibration_a.copy_(torch.tensor(calibration["a"]))
        head.calibration_b.copy_(torch.tensor(calibration["b"]))
        prep.offset.copy_(torch.from_numpy(offset))
        prep.factor.copy_(torch.from_numpy(factor))
    import copy

    trunk = copy.deepcopy(fx.loaded.truncated(fx.layer)).float().eval()
    network = TermNetwork(prep, trunk, head).eval()
    info = bundle.meta
    training = dict(info.get("training") or {})
    return ExportableModel(
        kind="bundle", source=path, network=network, architecture=arch,
        vocabulary=vocabulary, backbone=fx.spec.name, layer=fx.layer,
        weights_id=str(fx.weights_id), input_size=fx.input_size,
        keep_aspect=bool(config.keep_aspect), training=training,
        metrics=_metrics(info), calibration=calibration,
        gradcam=lambda image, term: gradcam_for_image(bundle, fx, image, term),
    )


def _metrics(info: dict) -> dict | None:
    """Per-term metrics a bundle records (``evaluation``/``metrics`` with ``terms``), if any."""
    for key in ("evaluation", "metrics"):
        block = info.get(key)
        if isinstance(block, dict) and isinstance(block.get("terms"), dict):
            return block
    return None


def _from_checkpoint(path: Path) -> ExportableModel:
    import torch

    from .network import MultitaskHead, Preprocess, TermNetwork

    try:
        model = load_finetuned(path, device="cpu")
    except InputError as exc:
        raise _wrap_load_error(exc, path) from exc
    ckpt: dict[str, Any] = model.checkpoint
    h = ckpt["head"]
    vocabulary = tuple(model.vocabulary)
    trunk = model.network.trunk.float().eval()
    arch = {"backbone": model.backbone, "layer_index": len(trunk) - 1,
            "input_size": model.input_size, "n_terms": len(vocabulary),
            "keep_aspect": False, "head": "multitask",
            "in_features": int(h["in_features"]), "hidden": int(h["hidden"]),
            "dropout": float(h["dropout"]), "pool": int(h["pool"])}
    with torch.device("meta"):
        head = MultitaskHead(arch["in_features"], len(vocabulary), arch["hidden"],
                             arch["dropout"], arch["pool"])
    head.layers = model.network.head.float().eval()
    prep = Preprocess(model.input_size, False)
    offset, factor = normalisation_affine(model.mean, model.std, model.pixel_scale)
    with torch.no_grad():
        prep.offset.copy_(torch.from_numpy(offset))
        prep.factor.copy_(torch.from_numpy(factor))
    network = TermNetwork(prep, trunk, head).eval()
    metrics = ckpt.get("metrics") or {}
    per_term = metrics.get("val_auc_per_term")
    n_train = (ckpt.get("split") or {}).get("n_train")
    n_val = (ckpt.get("split") or {}).get("n_val")
    training = {"fingerprint": ckpt.get("training_fingerprint", ""),
                "n_images": (int(n_train) + int(n_val)) if n_train is not None and n_val is not None
                else None,
                "n_train": n_train, "n_val": n_val, "epochs": ckpt.get("epoch"),
                "base_weights": Path(str(ckpt.get("base_weights"))).name}  # no machine paths
    return ExportableModel(
        kind="checkpoint", source=path, network=network, architecture=arch,
        vocabulary=vocabulary, backbone=model.backbone, layer="whole trunk + multi-task head",
        weights_id=f"file:sha256={content_hash(path, 'weights')} (fine-tuned from "
                   f"{ckpt.get('base_weights_id') or Path(str(ckpt.get('base_weights'))).name})",
        input_size=model.input_size, keep_aspect=False, training=training,
        metrics={"terms": {t: {"val_auc": v} for t, v in per_term.items()}} if per_term else None,
        calibration={"method": "none", "a": [1.0] * len(vocabulary),
                     "b": [0.0] * len(vocabulary)},
        gradcam=lambda image, term: gradcam_mtl(model, image, [term])[0],
    )
