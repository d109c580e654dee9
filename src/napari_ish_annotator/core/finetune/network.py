"""The multi-task network: the backbone trunk, a shared hidden layer, one logit per term."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..backbones.weights import LoadedBackbone


def build_head(in_features: int, n_terms: int, hidden: int, dropout: float, pool: int) -> torch.nn.Sequential:
    """Pool -> flatten -> shared hidden FC (ReLU, dropout) -> one logit per term.

    The head pools onto a coarse ``pool x pool`` grid instead of one global average: many terms
    differ only by position (anterior vs posterior midgut primordium).
    """
    from torch import nn

    return nn.Sequential(
        nn.AdaptiveAvgPool2d(pool),
        nn.Flatten(),
        nn.Linear(in_features * pool * pool, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_terms),
    )


def resolve_frozen(loaded: LoadedBackbone, frozen: str | int | None) -> int:
    """Number of leading trunk modules to freeze.

    ``"17"`` (a layer name of the backbone spec, paper numbering for VGG16) freezes everything up
    to and including that layer, i.e. ``features[:17]`` = up to pool3. A plain number that is not
    a layer name counts modules; ``"none"``/``0`` freezes nothing, ``"all"`` the whole trunk,
    ``"auto"`` the backbone spec's ``frozen_default`` or else its shallowest named layer (VGG16:
    "17").
    """
    n = len(loaded.module)
    text = str(frozen if frozen is not None else "none").strip().lower()
    if text == "auto":  # the backbone's own default, else its shallowest named layer (VGG16: "17")
        default = getattr(loaded.spec, "frozen_default", None)
        if default is None and loaded.spec.layers:
            default = min(loaded.spec.layers.values(), key=lambda spec: spec.index).name
        text = str(default or "none").lower()
    if text in ("none", "", "0"):
        return 0
    if text == "all":
        return n
    names = {name.lower(): spec for name, spec in loaded.spec.layers.items()}
    if text in names:
        return names[text].index + 1
    if text.isdigit() and 0 <= int(text) <= n:
        return int(text)
    listed = ", ".join(sorted(loaded.spec.layers, key=lambda s: (len(s), s)))
    raise InputError(f"frozen depth {frozen!r} is not a layer of {loaded.spec.name} ({listed}), "
                     f"a module count 0-{n}, 'auto', 'none' or 'all'; pick one of those")


def trunk_out_channels(trunk: torch.nn.Module, input_size: int) -> int:
    """Channels at the end of the trunk (the head's input), from one zero image."""
    import torch

    with torch.no_grad():
        p = next(trunk.parameters())
        out = trunk(torch.zeros(1, 3, input_size, input_size, dtype=p.dtype, device=p.device))
    return int(out.shape[1])


def make_network(trunk: torch.nn.Sequential, head: torch.nn.Sequential) -> torch.nn.Module:
    """Trunk (same state-dict layout as the backbone) followed by the multi-task head."""
    from torch import nn

    class MTLNetwork(nn.Module):
        """Trunk (same state-dict layout as the backbone) followed by the multi-task head."""

        def __init__(self) -> None:
            super().__init__()
            self.trunk = trunk
            self.head = head

        def forward(self, x):  # noqa: D102
            return self.head(self.trunk(x))

    return MTLNetwork()


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over terms of the binary cross-entropy, mean over images; targets ``-1`` are ignored.

    Unknown entries are replaced by 0 before the loss (so garbage there cannot produce NaN) and
    multiplied by a zero mask, so they contribute neither loss nor gradient - guessing them as
    absent would teach the network wrong negatives.
    """
    import torch
    import torch.nn.functional as F

    mask = (targets >= 0).to(logits.dtype)
    safe = torch.where(targets >= 0, targets, torch.zeros_like(targets)).to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits.float(), safe.float(), reduction="none",
                                             pos_weight=pos_weight)
    return (per * mask).sum() / max(int(logits.shape[0]), 1)
