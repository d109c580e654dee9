"""Running a received package without running anything it ships (issue 24, item 1).

TorchScript is code: ``torch.from_file(path, shared=True, size=n)`` in a scripted forward
maps any file for writing, so a "TorchScript only" package can overwrite the user's files.
A received package's TorchScript and Python are therefore never run unless the caller
trusts its authors. Instead, for a package this project exported, the network is rebuilt
from *this installation's* :func:`.network.build_network` with the keyword arguments in the
package's ``rdf.yaml`` (each checked: known backbone, bounded sizes, a memory budget), and
filled from the package's state dict, read with ``torch.load(weights_only=True)`` after its
tensor names and shapes were compared with the rebuilt network's (on the meta device, so
nothing is allocated first). What runs is this project's code and the package's numbers.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..utils.arrays import MAX_INPUT_SIZE, model_budget, over_budget, torch_load
from ..utils.errors import InputError
from .network import TermNetwork, build_network
from .received import ReceivedPackage, refuse

__all__ = ["rebuild_network"]

_INTS = {"layer_index": (0, 10_000), "input_size": (1, MAX_INPUT_SIZE),
         "n_terms": (1, 100_000), "n_features": (0, 1 << 28), "n_members": (1, 10_000),
         "in_features": (0, 1 << 20), "hidden": (0, 1 << 20), "pool": (1, 64)}
_BOOLS = ("keep_aspect", "center", "normalize")
_NOT_OURS = ("it is not a napari-ish-annotator package ({why}), so it could only run through "
             "its own TorchScript or Python, and TorchScript can read and write any file; "
             "run it only if you trust its authors, by passing trust_code=True")


def _architecture(package: ReceivedPackage) -> tuple[str, dict]:
    """The state-dict member and ``build_network`` kwargs of one of our packages."""
    rdf = package.rdf
    config = rdf.get("config")
    weights = rdf.get("weights")
    sd = weights.get("pytorch_state_dict") if isinstance(weights, dict) else None
    arch = sd.get("architecture") if isinstance(sd, dict) else None
    why = None
    if not (isinstance(config, dict) and isinstance(config.get("napari_ish_annotator"), dict)):
        why = "no napari_ish_annotator section in its config"
    elif not isinstance(arch, dict) or arch.get("callable") != "build_network":
        why = "its state dict is not for build_network"
    elif not isinstance(arch.get("kwargs"), dict) or not isinstance(sd.get("source"), str):
        why = "its state dict names no file or no architecture arguments"
    if why:
        raise InputError(_NOT_OURS.format(why=why), path=package.path)
    return str(sd["source"]).removeprefix("./"), dict(arch["kwargs"])


def _checked_kwargs(package: ReceivedPackage, kwargs: dict) -> dict:
    allowed = set(inspect.signature(build_network).parameters)
    extra = sorted(set(map(str, kwargs)) - allowed)
    if extra:
        raise refuse(package.path, f"its architecture has unknown arguments {extra[:3]}")
    bad = []
    for key, value in kwargs.items():
        if key in _INTS:
            low, high = _INTS[key]
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        elif key in _BOOLS:
            ok = isinstance(value, bool)
        elif key == "dropout":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and 0.0 <= float(value) <= 1.0
        elif key == "head":
            ok = value in ("ensemble", "multitask")
        else:  # backbone
            ok = isinstance(value, str) and len(value) < 100
        if not ok:
            bad.append(f"{key}={str(value)[:30]}")
    if bad:
        raise refuse(package.path, f"its architecture arguments are impossible ({', '.join(bad[:3])})")
    g = kwargs.get
    head = (g("n_features", 0) * g("n_terms", 1) * (g("n_members", 1) + 1)
            if g("head", "ensemble") == "ensemble"
            else g("in_features", 0) * g("pool", 1) ** 2 * g("hidden", 0))
    if 4 * head > model_budget():
        raise over_budget(4 * head, "the package's network head", package.path)
    return kwargs


def rebuild_network(package: ReceivedPackage) -> TermNetwork:
    """The package's network from this project's code and its state dict (eval, CPU)."""
    import torch

    member, kwargs = _architecture(package)
    kwargs = _checked_kwargs(package, kwargs)
    if member not in package.members:
        raise refuse(package.path, f"its state dict {member[:80]!r} is not inside the package")
    try:
        with torch.device("meta"):
            network = build_network(**kwargs)
    except InputError as exc:
        raise refuse(package.path, f"its architecture does not build ({exc})") from None
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise refuse(package.path, f"its architecture does not build ({type(exc).__name__}: "
                                   f"{' '.join(str(exc).split())[:120]})") from None
    reference = network.state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items()}
    state: Any = torch_load(f"{package.path}:{member}", "package's state dict",
                            "do not use this package", data=package.read(member))
    if not isinstance(state, dict) or set(map(str, state)) != set(expected):
        missing = sorted(set(expected) - set(map(str, state))) if isinstance(state, dict) else []
        raise refuse(package.path, f"its state dict does not fit the network it declares "
                                   f"(missing {missing[:2]} or extra tensors)")
    # each tensor as the network's own: shape, and floating point exactly where the network's
    # is (batch norm's num_batches_tracked is an integer counter)
    wrong = [k for k, v in state.items() if not isinstance(v, torch.Tensor)
             or tuple(v.shape) != expected[k]
             or v.is_floating_point() != reference[k].is_floating_point()]
    if wrong:
        kind = "float" if reference[wrong[0]].is_floating_point() else "integer"
        raise refuse(package.path, f"its state dict does not fit the network it declares "
                                   f"({wrong[0]} is not a {kind} tensor of shape "
                                   f"{expected[wrong[0]]})")
    network = network.to_empty(device="cpu")
    network.load_state_dict(state, strict=True)
    return network.float().eval()
