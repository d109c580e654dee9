"""The whole trained model as one PyTorch network, for the bioimage.io export.

This file is also the *architecture source* of the exported ``pytorch_state_dict`` weights:
bioimage.io tools import it on its own (not as part of this package) and call
:func:`build_network` with the keyword arguments stored in the model's ``rdf.yaml``, then
load the state dict. It therefore uses absolute imports only; the backbone trunks come from
``napari_ish_annotator.core.backbones`` (one place that knows how each trunk is built).

Input: ``(batch, 3, y, x)`` float32 RGB with 0-255 values, any size. Output: ``(batch, terms)``
probabilities. Inside, in order:

1. :class:`Preprocess` - as ``core.features`` does it: optional padding to a square with the
   border colour (``keep_aspect``), bilinear antialiased resize to ``input_size`` (rounded to
   whole 0-255 levels, as the package resizes 8-bit images), then ``(v - offset) * factor``
   with ``core.features.normalisation_affine``'s vectors (stored as buffers).
2. The backbone trunk up to the model's layer.
3. The head: :class:`EnsembleHead` (features rounded through float16 as ``core.features``
   stores them, centring, L2 normalisation, every ensemble member as one
   row of a linear layer, sigmoids, mean per term, logit-affine calibration) or
   :class:`MultitaskHead` (a fine-tuned checkpoint's pooled MLP and sigmoid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_ish_annotator.core.backbones.specs import get_spec
from napari_ish_annotator.core.finetune import build_head

#: probabilities are clipped to [EPS, 1 - EPS] before the calibration's logit, as
#: ``core.learn.calibration.apply`` does (tests/test_export_network.py compares the two)
CALIBRATION_EPS = 1e-6

__all__ = ["Preprocess", "EnsembleHead", "MultitaskHead", "TermNetwork", "build_network"]


class Preprocess(nn.Module):
    """0-255 RGB of any size -> the backbone's normalised ``input_size`` square."""

    def __init__(self, input_size: int, keep_aspect: bool = False) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.keep_aspect = bool(keep_aspect)
        self.register_buffer("offset", torch.zeros(3))
        self.register_buffer("factor", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        h, w = int(x.shape[2]), int(x.shape[3])
        if self.keep_aspect and h != w:
            x = self._pad_square(x, h, w)
        s = self.input_size
        if int(x.shape[2]) != s or int(x.shape[3]) != s:
            # core.features' RESIZE_METHOD "bilinear-antialias"
            x = F.interpolate(x, size=[s, s], mode="bilinear", align_corners=False,
                              antialias=True)
            x = x.round().clamp(0.0, 255.0)
        return (x - self.offset.view(1, 3, 1, 1)) * self.factor.view(1, 3, 1, 1)

    def _pad_square(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Centre on a square canvas of the median border colour (``features.preprocess.border_colour``)."""
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        edges = torch.cat([x[:, :, 0, :], x[:, :, h - 1, :], x[:, :, :, 0], x[:, :, :, w - 1]],
                          dim=2)
        fill = torch.quantile(edges, 0.5, dim=2).round()  # numpy's median: mean of the middle two
        canvas = fill[:, :, None, None].expand(x.shape[0], 3, side, side).clone()
        canvas[:, :, top:top + h, left:left + w] = x
        return canvas


class EnsembleHead(nn.Module):
    """Per-term logistic ensembles on centred, L2-normalised rows (``core.learn.ensembles``).

    ``members`` holds every member of every term as one output row, term-major (term ``t``'s
    member ``m`` is row ``t * n_members + m``), so all ``T x M`` decisions are one matmul.
    """

    def __init__(self, n_features: int, n_terms: int, n_members: int, center: bool = True,
                 normalize: bool = True) -> None:
        super().__init__()
        self.n_terms, self.n_members = int(n_terms), int(n_members)
        self.use_center, self.normalize = bool(center), bool(normalize)
        self.eps = CALIBRATION_EPS
        self.register_buffer("center", torch.zeros(int(n_features)))
        self.members = nn.Linear(int(n_features), self.n_terms * self.n_members)
        self.register_buffer("calibration_a", torch.ones(self.n_terms))
        self.register_buffer("calibration_b", torch.zeros(self.n_terms))

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        x = activation.flatten(1)
        # core.features rounds every feature through float16 (its cache's type), keeping
        # float32 only where float16 overflows; the ensembles were fitted on those values
        x16 = x.half().float()
        x = torch.where(torch.isfinite(x16), x16, x)
        if self.use_center:
            x = x - self.center
        if self.normalize:
            norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
            x = x / torch.where(norm == 0, torch.ones_like(norm), norm)
        p = torch.sigmoid(self.members(x)).view(-1, self.n_terms, self.n_members).mean(dim=2)
        p = p.clamp(self.eps, 1.0 - self.eps)
        return torch.sigmoid(self.calibration_a * torch.logit(p) + self.calibration_b)


class MultitaskHead(nn.Module):
    """A fine-tuned checkpoint's head (``core.finetune.build_head``) and its sigmoid."""

    def __init__(self, in_features: int, n_terms: int, hidden: int, dropout: float,
                 pool: int) -> None:
        super().__init__()

        self.layers = build_head(int(in_features), int(n_terms), int(hidden), float(dropout),
                                 int(pool))

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(activation))


class TermNetwork(nn.Module):
    """Preprocessing, trunk and head: image in, per-term probabilities out."""

    def __init__(self, prep: nn.Module, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.prep, self.trunk, self.head = prep, trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.prep(x)))


def build_network(backbone: str, layer_index: int, input_size: int, n_terms: int,
                  keep_aspect: bool = False, head: str = "ensemble", n_features: int = 0,
                  n_members: int = 1, center: bool = True, normalize: bool = True,
                  in_features: int = 0, hidden: int = 0, dropout: float = 0.0,
                  pool: int = 1) -> TermNetwork:
    """The architecture with placeholder values; the exported state dict fills them in.

    ``layer_index`` is the last trunk module run (``BackboneSpec.layers[name].index``; the
    whole trunk for a fine-tuned checkpoint). ``head`` is ``"ensemble"`` (uses
    ``n_features``, ``n_members``, ``center``, ``normalize``) or ``"multitask"`` (uses
    ``in_features``, ``hidden``, ``dropout``, ``pool``).
    """
    trunk = get_spec(backbone).build_trunk()[: int(layer_index) + 1]
    if head == "ensemble":
        top: nn.Module = EnsembleHead(n_features, n_terms, n_members, center, normalize)
    elif head == "multitask":
        top = MultitaskHead(in_features, n_terms, hidden, dropout, pool)
    else:
        raise ValueError(f"unknown head {head!r}; expected 'ensemble' or 'multitask'")
    return TermNetwork(Preprocess(input_size, keep_aspect), trunk, top).eval()
