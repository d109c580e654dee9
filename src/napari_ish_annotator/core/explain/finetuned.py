"""Grad-CAM through a fine-tuned network's own multi-task head (:func:`gradcam_mtl`).

The linear Grad-CAM of the logistic ensembles lives in :mod:`..gradcam`; this one needs the
fine-tuned models of this package and autograd (the head is non-linear), so it lives here,
above :mod:`.checkpoint` and :mod:`.ensemble`, and :mod:`..gradcam` knows nothing of
fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..backbones.specs import get_spec
from ..finetune.checkpoint import FinetunedModel
from ..finetune.ensemble import FinetunedEnsemble, load_ensemble
from ..utils.errors import InputError

__all__ = ["gradcam_mtl"]


def gradcam_mtl(model: FinetunedModel | FinetunedEnsemble | str | Path | dict, image_rgb: np.ndarray,
                terms: Sequence[str] | None = None, layer: str | None = None,
                out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Grad-CAM through the fine-tuned network's own term outputs: ``(T, H_img, W_img)`` in [0, 1].

    One forward pass; the trunk runs up to ``layer`` (default: the backbone's default layer, 21
    for VGG16) and that activation ``A`` becomes the tensor we differentiate against directly
    (module backward hooks break on torchvision VGG's in-place ReLUs). The gradients of all
    term logits are taken in one batched autograd call. Each map is scaled by its term's
    predicted probability (as in ``core.explain.gradcam``), so absent terms stay dark. An ensemble
    (or an ensemble checkpoint) gives the mean of its members' maps.
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(model, FinetunedModel | FinetunedEnsemble):
        model = load_ensemble(model)
    if isinstance(model, FinetunedEnsemble):
        if len(model.members) > 1:
            return np.mean([gradcam_mtl(m, image_rgb, terms, layer, out_shape)
                            for m in model.members],
                           axis=0).astype(np.float32)
        model = model.members[0]
    spec = get_spec(model.backbone)
    layer = str(layer or spec.default_layer)
    if layer not in model.layers:
        raise InputError(f"layer {layer!r} is not a layer of {model.backbone}; use one of "
                         f"{', '.join(model.layers)}")
    terms = list(terms) if terms is not None else list(model.vocabulary)
    unknown = [t for t in terms if t not in model.vocabulary]
    if unknown:
        raise InputError(f"term(s) {', '.join(unknown)} not in the checkpoint's vocabulary "
                         f"({', '.join(model.vocabulary)})")
    cols = [model.vocabulary.index(t) for t in terms]
    k = model.layers[layer]
    trunk, head = model.network.trunk, model.network.head
    model.network.eval()
    x = model.preprocess(image_rgb)[None].to(model.device)
    with torch.no_grad():
        a = trunk[:k + 1](x)
    a = a.detach().requires_grad_(True)
    logits = head(trunk[k + 1:](a.clone()))[0, cols]  # clone: later in-place ReLUs must not hit the leaf
    eye = torch.eye(len(cols), device=a.device, dtype=logits.dtype)
    try:
        (grads,) = torch.autograd.grad(logits, a, grad_outputs=eye, is_grads_batched=True)
        grads = grads[:, 0]                                   # (T, C, h, w)
    except RuntimeError:  # an op without a batching rule: fall back to one call per term
        grads = torch.stack([torch.autograd.grad(logits[i], a, retain_graph=True)[0][0]
                             for i in range(len(cols))])
    weights = grads.mean(dim=(2, 3), keepdim=True)            # (T, C, 1, 1)
    cam = F.relu((weights * a.detach()[0][None]).sum(dim=1))  # (T, h, w)
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    prob = torch.sigmoid(logits.detach()).view(-1, 1, 1)
    cam = cam / peak * prob
    H, W = out_shape if out_shape is not None else image_rgb.shape[:2]
    up = F.interpolate(cam[None].float().cpu(), size=(H, W), mode="bilinear",
                       align_corners=False)[0]  # only the displayed maps have the image's size
    return up.clamp_(0, 1).numpy()
