"""Grad-CAM at the classifier's layer (layer 21 for VGG16) for the logistic-regression head.

Each ensemble member scores an image as ``d(x) = w·φ(x) + b`` where ``φ(x)`` is the flattened
layer activation ``A`` (C×H×W), optionally L2-normalised. The gradient of ``d`` with respect to
``A`` is therefore available in closed form (the weight vector reshaped to C×H×W, projected when
rows are normalised), so no backward pass through the CNN is needed and a map costs one forward
pass plus a few array operations.

Two maps are offered:

* ``"gradcam"`` (Selvaraju et al.): channel weights are the spatial mean of the gradient,
  ``ReLU(Σ_c mean_hw(g_c) A_c)``.
* ``"hirescam"`` (Draelos & Carin): ``ReLU(Σ_c g_c ⊙ A_c)``. For a linear head on the
  flattened activation this is exactly the per-location share of the decision value, so it
  keeps the spatial layout the classifier learned. It is the default because the logistic
  head has a separate weight per location, which classic Grad-CAM averages away.

Ensemble members are averaged through their gradients (the gradient of the mean decision).
Maps are scaled by the term's predicted probability instead of being min-max stretched per
term: a term predicted absent stays dark, so maps are comparable across terms.

:func:`.finetune.gradcam_mtl` (in :mod:`.explain.finetuned`) does the same through a fine-tuned
network's own multi-task head, with autograd (the head is non-linear).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils.errors import InputError

if TYPE_CHECKING:
    from ..features.extractor import FeatureExtractor
    from ..learn.bundle import ModelBundle

METHODS = ("hirescam", "gradcam")


def mean_weight(coef: np.ndarray) -> np.ndarray:
    """The members' mean weight vector ``(C*H*W,)`` in float64 (no float64 copy of ``coef``)."""
    return np.asarray(coef).mean(axis=0, dtype=np.float64)


class _MeanWeights:
    """:func:`mean_weight` per term of the last model explained (and on the last device): the
    Explain panel asks the same model for image after image, and averaging 11 x 400k weights
    per term was a third of a map's CPU time. Only one model's rows are kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: Callable[[], object] = lambda: None
        self._rows: dict[tuple[int, str], object] = {}

    def get(self, classifier: object, index: int, device: object = None) -> Any:
        """Term ``index``'s mean weight: numpy, or a float64 tensor on ``device``."""
        key = (index, str(device))
        with self._lock:
            if self._owner() is not classifier:
                self._owner, self._rows = weakref.ref(classifier), {}
            row = self._rows.get(key)
        if row is None:
            row = mean_weight(classifier.terms[index].coef)  # type: ignore[attr-defined]
            if device is not None:
                import torch

                row = torch.from_numpy(row).to(device)
            with self._lock:
                if self._owner() is classifier:
                    self._rows[key] = row
        return row


_MEAN_WEIGHTS = _MeanWeights()


def member_gradient(coef: np.ndarray, activation: np.ndarray, normalize: bool,
                    weight: np.ndarray | None = None) -> np.ndarray:
    """Mean over members of ∂d/∂A, flattened: shape ``(C*H*W,)``.

    ``activation`` is the classifier's input before normalisation (already centred when the
    classifier centres). With normalisation ``x̂ = x/‖x‖`` the gradient of ``w·x̂`` is
    ``(w − (w·x̂) x̂) / ‖x‖``. ``weight``: :func:`mean_weight` of ``coef``, if known.
    """
    w = mean_weight(coef) if weight is None else weight
    if not normalize:
        return w
    x = activation.reshape(-1).astype(np.float64, copy=False)
    norm = float(np.linalg.norm(x))
    if norm == 0.0:
        return np.zeros_like(w)
    x_hat = x / norm
    return (w - float(w @ x_hat) * x_hat) / norm


def gradcam_linear(
    activation: np.ndarray,
    coef: np.ndarray,
    probability: float = 1.0,
    normalize: bool = True,
    method: str = "hirescam",
    center: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Map at the activation's resolution ``(H, W)`` in [0, 1] for one term (``weight``:
    :func:`mean_weight` of ``coef``, if known).

    ``activation`` is ``(C, H, W)``; ``coef`` is the term's ``(M, C*H*W)`` member weights;
    ``center`` the classifier's mean training row, subtracted first: the head sees ``A − μ``,
    so HiResCAM splits ``w·(A − μ)`` by location, i.e. evidence relative to a typical
    embryo. (Weighing the raw ``A`` instead lets ``w·μ``, the same for every image, dominate:
    on synthetic embryos the peak then never fell inside the term's region.)
    """
    if method not in METHODS:
        raise InputError(f"unknown Grad-CAM method {method!r}; choose one of {', '.join(METHODS)}")
    act = np.asarray(activation, dtype=np.float64)
    if act.ndim != 3:
        raise ValueError(f"activation must be (C, H, W), got shape {act.shape}")
    if coef.shape[-1] != act.size:
        raise InputError(
            f"the model's weights have {coef.shape[-1]} features but the layer gives {act.size}; "
            "the model was trained with another backbone, layer or input size"
        )
    if center is not None:
        act = act - np.asarray(center, dtype=np.float64).reshape(act.shape)
    grad = member_gradient(coef, act, normalize, weight).reshape(act.shape)
    if method == "gradcam":
        channel_weights = grad.mean(axis=(1, 2))
        cam = np.tensordot(channel_weights, act, axes=(0, 0))
    else:
        cam = (grad * act).sum(axis=0)
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max())
    if peak <= 0.0:
        return np.zeros(cam.shape, dtype=np.float32)
    return (cam / peak * float(np.clip(probability, 0.0, 1.0))).astype(np.float32)


def upsample_to_image(cam: Any, image_shape: tuple[int, int], keep_aspect: bool = False,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Resize a layer-resolution map ``(h, w)``, or a stack ``(T, h, w)`` in one call (numpy
    or a tensor on any device), to the image's own height and width (float32).

    Without ``keep_aspect`` the network saw the whole image squashed to a square, so the map
    covers the whole image. With it, the image was centred on a square canvas; the padding
    is cropped before resizing. The map is computed at the analysis resolution; only this
    final, displayed map has the image's size: float32, clipped in place, written into
    ``out`` when given (no other full-size array is made).
    """
    import torch
    import torch.nn.functional as F

    height, width = int(image_shape[0]), int(image_shape[1])
    t = cam if isinstance(cam, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(cam, dtype=np.float32))
    single = t.ndim == 2
    t = t.reshape(1, -1, *t.shape[-2:])
    if keep_aspect and height != width:
        side = t.shape[-1]
        if width > height:
            inner = max(1, round(side * height / width))
            top = (side - inner) // 2
            t = t[..., top:top + inner, :]
        else:
            inner = max(1, round(side * width / height))
            left = (side - inner) // 2
            t = t[..., :, left:left + inner]
    up = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0]
    up = up.clamp_(0.0, 1.0).cpu()  # the one copy to the host on a GPU
    result = up[0] if single else up
    if out is None:
        return result.numpy()
    out[...] = result.numpy()
    return out


def _term_index(bundle: ModelBundle, term: str) -> int:
    vocabulary = bundle.classifier.vocabulary
    if term not in vocabulary:
        raise InputError(f"term {term!r} is not in the model's vocabulary ({', '.join(vocabulary)})")
    return vocabulary.index(term)


def _check_extractor(bundle: ModelBundle, extractor: FeatureExtractor) -> None:
    """The extractor must give the model's own features: layers of equal size (VGG16 "24"
    and "30") would otherwise pass the size check and give a wrong map without any error."""
    cfg = bundle.extractor
    want = (cfg.backbone, extractor.spec.layer(cfg.layer).name if cfg.backbone ==
            extractor.spec.name else cfg.layer, int(cfg.input_size), bool(cfg.keep_aspect))
    have = (extractor.spec.name, extractor.layer, int(extractor.input_size),
            bool(extractor.config.keep_aspect))
    if want != have:
        names = ("backbone", "layer", "input size", "keep_aspect")
        diff = "; ".join(f"{n} {h!r} instead of {w!r}"
                         for n, w, h in zip(names, want, have, strict=True) if w != h)
        raise InputError(f"the feature extractor does not match the model ({diff}); build it "
                         "from the model's own settings (bundle.extractor)")


def _activation_tensor(extractor: FeatureExtractor, image_rgb: np.ndarray) -> Any:
    """The classifier layer's activation ``(C, H, W)``, float32, where the network ran."""
    import torch

    batch = extractor.preprocess(image_rgb)[None]
    with torch.inference_mode():
        return extractor.activation(batch)[0].float()


def layer_activation(extractor: FeatureExtractor, image_rgb: np.ndarray) -> np.ndarray:
    """The classifier layer's activation ``(C, H, W)`` for one image, as float32."""
    return _activation_tensor(extractor, image_rgb).cpu().numpy()


def maps_on_device(act: Any, weights: Any, probability: np.ndarray, normalize: bool = True,
                   method: str = "hirescam", center: np.ndarray | None = None) -> Any:
    """:func:`gradcam_linear` for T terms at once in torch, where ``act`` (``(C, H, W)``
    tensor) lies: ``weights`` are the terms' mean weights ``(T, C*H*W)`` float64 on the same
    device. On a GPU nothing goes back to the host until the maps are drawn; the same float64
    arithmetic as on the CPU (maps equal to within float32 rounding, see tests)."""
    import torch

    if method not in METHODS:
        raise InputError(f"unknown Grad-CAM method {method!r}; choose one of {', '.join(METHODS)}")
    a = act.to(torch.float64)
    if center is not None:
        a = a - torch.from_numpy(np.asarray(center, dtype=np.float64)).to(a.device).reshape(a.shape)
    x = a.reshape(-1)
    grad = weights
    if normalize:
        norm = torch.linalg.vector_norm(x)
        x_hat = x / norm.clamp_min(torch.finfo(torch.float64).tiny)
        grad = (weights - (weights @ x_hat)[:, None] * x_hat[None]) / norm
        grad = torch.where(norm > 0, grad, torch.zeros_like(grad))
    grad = grad.reshape(len(weights), *a.shape)
    if method == "gradcam":
        cam = torch.einsum("tc,chw->thw", grad.mean(dim=(2, 3)), a)
    else:
        cam = (grad * a).sum(dim=1)
    cam = cam.clamp_min(0.0)
    peak = cam.amax(dim=(1, 2), keepdim=True)
    p = torch.from_numpy(np.clip(np.asarray(probability, np.float64), 0.0, 1.0)).to(a.device)
    scaled = cam / peak.clamp_min(torch.finfo(torch.float64).tiny) * p[:, None, None]
    return torch.where(peak > 0, scaled, torch.zeros_like(scaled)).to(torch.float32)


#: the napari views show every term's map as a layer over the image: beyond this many pixels on
#: its longer side a map is drawn at this size and scaled up by napari, so a (T, H, W) stack
#: stays small however large the image (the CLI's --npy keeps the image's own size)
DISPLAY_MAX_SIDE = 1024


def display_shape(image_shape: tuple[int, int], max_side: int = DISPLAY_MAX_SIDE
                  ) -> tuple[int, int]:
    """The shape a displayed map needs: the image's, shrunk to ``max_side`` on its longer side."""
    height, width = int(image_shape[0]), int(image_shape[1])
    factor = min(1.0, max_side / max(height, width, 1))
    return max(1, round(height * factor)), max(1, round(width * factor))


def gradcam_all_terms(
    bundle: ModelBundle,
    extractor: FeatureExtractor,
    image_rgb: np.ndarray,
    terms: Sequence[str] | None = None,
    method: str = "hirescam",
    out_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps for several terms from one forward pass.

    Returns ``(maps, probabilities)``: maps ``(T, H_img, W_img)`` in [0, 1] (or ``out_shape``,
    e.g. :func:`display_shape`, with the image's aspect) and the terms' calibrated
    probabilities ``(T,)``, by which each map is scaled.
    """
    terms = list(bundle.classifier.vocabulary if terms is None else terms)
    indices = [_term_index(bundle, t) for t in terms]
    _check_extractor(bundle, extractor)
    act_t = _activation_tensor(extractor, image_rgb)
    act = act_t.cpu().numpy()  # the classifier's probabilities are computed on the host
    proba = bundle.predict_proba(act.reshape(1, -1))[0]
    clf = bundle.classifier
    normalize = bool(clf.config.normalize)
    shape = tuple(out_shape) if out_shape is not None else image_rgb.shape[:2]
    maps = np.empty((len(indices), *shape), dtype=np.float32)
    if act_t.device.type != "cpu":  # all terms at once, on the device
        import torch

        weights = torch.stack([_MEAN_WEIGHTS.get(clf, i, act_t.device) for i in indices])
        cams = maps_on_device(act_t, weights, proba[indices], normalize, method, clf.center)
    else:  # centred once, not once per term (gradcam_linear's own arithmetic)
        centred = act.astype(np.float64)
        if clf.center is not None:
            centred = centred - np.asarray(clf.center, dtype=np.float64).reshape(act.shape)
        cams = np.stack([gradcam_linear(centred, clf.terms[i].coef, float(proba[i]), normalize,
                                        method, None, _MEAN_WEIGHTS.get(clf, i))
                         for i in indices]) if indices else np.zeros((0, 1, 1), np.float32)
    if indices:  # one resize for every term
        upsample_to_image(cams, shape, bool(bundle.extractor.keep_aspect), out=maps)
    return maps, proba[indices].astype(np.float32)


def gradcam_for_image(
    bundle: ModelBundle,
    extractor: FeatureExtractor,
    image_rgb: np.ndarray,
    term: str,
    method: str = "hirescam",
) -> np.ndarray:
    """One term's map at the image's own size, ``(H_img, W_img)`` in [0, 1]."""
    maps, _ = gradcam_all_terms(bundle, extractor, image_rgb, [term], method=method)
    return maps[0]


#: pixels coloured per step: the float temporaries of one step stay near 30 MB
_CHUNK_PIXELS = 1 << 19


def _colour_table(colormap: str) -> np.ndarray:
    """The colormap's colours as float64 RGB: matplotlib maps a float ``v`` in [0, 1] to
    entry ``min(int(v * N), N - 1)``, so indexing this table gives its exact colours."""
    from matplotlib import colormaps

    cmap = colormaps[colormap]
    return cmap(np.arange(cmap.N))[:, :3]


def _lut_index(cam: np.ndarray, n: int) -> np.ndarray:
    return np.minimum((np.clip(cam, 0.0, 1.0) * n).astype(np.intp), n - 1)


def _rows_per_step(width: int) -> int:
    return max(1, _CHUNK_PIXELS // max(int(width), 1))


def heat_to_rgb(cam: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """Colour a [0, 1] map with a perceptual colormap, as RGB uint8 (a band of rows at a
    time, so a map of a huge image needs no float copy of itself)."""
    table = (_colour_table(colormap) * 255.0 + 0.5).astype(np.uint8)
    cam = np.asarray(cam)
    if cam.ndim != 2:
        return table[_lut_index(cam, len(table))]
    out = np.empty((*cam.shape, 3), dtype=np.uint8)
    step = _rows_per_step(cam.shape[1])
    for r in range(0, cam.shape[0], step):
        out[r:r + step] = table[_lut_index(cam[r:r + step], len(table))]
    return out


def overlay(image_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.85,
            saturate: float = 0.6, colormap: str = "inferno") -> np.ndarray:
    """Blend a map over the image with a perceptual colormap (for PNG export).

    The blend weight rises linearly to ``alpha`` at ``cam = saturate``: the same curve for
    every term, so overlays stay comparable across terms, weak evidence is still visible and
    near-zero values leave the image untouched. Built a band of rows at a time: the only
    full-size array made is the uint8 result.
    """
    table = _colour_table(colormap)
    out = np.empty(image_rgb.shape[:2] + (3,), dtype=np.uint8)
    step = _rows_per_step(image_rgb.shape[1])
    for r in range(0, image_rgb.shape[0], step):
        heat = np.clip(cam[r:r + step], 0.0, 1.0)
        colours = table[_lut_index(heat, len(table))]
        weight = (alpha * np.clip(heat / saturate, 0.0, 1.0))[..., None]
        blended = image_rgb[r:r + step].astype(np.float32) / 255.0 * (1.0 - weight) \
            + colours * weight
        out[r:r + step] = (np.clip(blended, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out

