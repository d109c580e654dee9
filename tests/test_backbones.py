"""Backbone registry, weights loading (files, torch hub cache, errors) and device resolution."""

from __future__ import annotations

import hashlib
from urllib.error import URLError

import pytest
import torch

from napari_ish_annotator.core import backbones as backbones
from napari_ish_annotator.core.backbones.devices import resolve_device
from napari_ish_annotator.core.backbones.specs import IMAGENET_MEAN, IMAGENET_STD, get_spec
from napari_ish_annotator.core.backbones.weights import imagenet_weights_available, load_backbone
from napari_ish_annotator.core.utils.errors import InputError

PAPER_LAYERS = {"17": (16, "pool3", (256, 28, 28)), "21": (20, "relu4_2", (512, 28, 28)),
                "24": (23, "pool4", (512, 14, 14)), "30": (29, "relu5_3", (512, 14, 14))}


@pytest.fixture(scope="module")
def vgg() -> backbones.LoadedBackbone:
    return load_backbone("vgg16", "random", seed=0)


@pytest.fixture(scope="module")
def other_state() -> dict:
    """A different (seed 1) trunk's weights, as fp16 to keep the test files small."""
    trunk = load_backbone("vgg16", "random", seed=1).module
    return {k: v.half() for k, v in trunk.state_dict().items()}


class Evil:
    """An arbitrary object: weights files holding one must never be unpickled."""


def _same_weights(module: torch.nn.Module, state: dict, prefix: str = "") -> bool:
    sd = module.state_dict()
    return all(torch.equal(sd[k], state[prefix + k].float()) for k in sd)


def test_layer_map_matches_paper_and_torchvision(vgg):
    spec = get_spec("vgg16")
    assert spec.default_layer == "21" and spec.input_size == 224
    for name, (index, desc, shape) in PAPER_LAYERS.items():
        layer = spec.layers[name]
        assert (layer.index, layer.description, layer.shape) == (index, desc, shape)
    kinds = {16: torch.nn.MaxPool2d, 20: torch.nn.ReLU, 23: torch.nn.MaxPool2d, 29: torch.nn.ReLU}
    for index, kind in kinds.items():
        assert isinstance(vgg.module[index], kind)
    assert len(vgg.module) == 31  # the whole vgg16().features trunk
    assert 512 * 28 * 28 == 401_408


def test_output_shapes_at_224_for_all_paper_layers(vgg):
    seen = {}
    hooks = [vgg.module[spec.index].register_forward_hook(
        lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
        for name, spec in vgg.spec.layers.items()]
    try:
        with torch.inference_mode():
            vgg.truncated("30")(torch.randn(1, 3, 224, 224))
    finally:
        for h in hooks:
            h.remove()
    for name, (_, _, shape) in PAPER_LAYERS.items():
        assert seen[name] == shape
        assert vgg.output_shape(name, 224) == shape
    assert vgg.output_shape("21", 64) == (512, 8, 8)


def test_truncation_runs_only_the_layers_needed(vgg):
    ran: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: ran.append(k))
             for k, m in enumerate(vgg.module)]
    try:
        with torch.inference_mode():
            out = vgg.truncated("17")(torch.randn(1, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    assert ran == list(range(17))
    assert out.shape == (1, 256, 4, 4)
    # the truncated network shares parameters with the full trunk (no copy)
    assert vgg.truncated("21")[0].weight is vgg.module[0].weight


def test_unknown_names_are_input_errors(vgg):
    with pytest.raises(InputError, match="unknown backbone"):
        load_backbone("alexnet", "random")
    with pytest.raises(InputError, match="layer '22'.*17, 21, 24, 30"):
        vgg.truncated("22")
    with pytest.raises(InputError, match="unknown weights"):
        load_backbone("vgg16", "imagenet:NOPE")
    with pytest.raises(InputError, match="not found"):
        load_backbone("vgg16", "/nonexistent/weights.pth")
    # a malformed random spec is a clear error, not a ValueError or a silently ignored seed
    for bad in ("random:seed=abc", "random:7", "random:seed="):
        with pytest.raises(InputError, match="random:seed=N"):
            load_backbone("vgg16", bad)


def test_random_weights_are_seeded_and_leave_global_rng_alone(vgg):
    state = torch.get_rng_state()
    again = load_backbone("vgg16", "random", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert again.weights_id == "random:seed=0"
    assert torch.equal(again.module[0].weight, vgg.module[0].weight)
    other = load_backbone("vgg16", "random:seed=3")
    assert other.weights_id == "random:seed=3"
    assert not torch.equal(other.module[0].weight, vgg.module[0].weight)
    # torchvision's VGG init: kaiming normal (fan_out), zero bias - not the Conv2d default;
    # draw for draw what torch.nn.init.kaiming_normal_ gives with the same generator
    ref = torch.empty_like(vgg.module[0].weight)
    torch.nn.init.kaiming_normal_(ref, mode="fan_out", nonlinearity="relu",
                                  generator=torch.Generator().manual_seed(0))
    assert torch.equal(vgg.module[0].weight, ref)
    w = vgg.module[28].weight.detach()
    assert abs(float(w.std()) - (2.0 / (512 * 9)) ** 0.5) < 1e-3
    assert float(vgg.module[28].bias.detach().abs().max()) == 0.0
    assert vgg.mean == (0.48235, 0.45882, 0.40784)


@pytest.mark.parametrize("flavour", ["full", "features_prefixed", "bare", "checkpoint"])
def test_weights_from_local_file(tmp_path, other_state, flavour):
    path = tmp_path / f"{flavour}.pth"
    if flavour == "full":  # torchvision layout; classifier keys (tiny here) are ignored
        obj = {f"features.{k}": v for k, v in other_state.items()}
        obj.update({"classifier.0.weight": torch.zeros(4, 8), "classifier.0.bias": torch.zeros(4)})
    elif flavour == "features_prefixed":
        obj = {f"features.{k}": v for k, v in other_state.items()}
    elif flavour == "bare":
        obj = dict(other_state)
    else:
        obj = {"backbone": "vgg16", "backbone_state_dict": dict(other_state),
               "normalisation": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]},
               "head_state_dict": {"0.weight": torch.zeros(2, 2)}}
    torch.save(obj, path)
    loaded = load_backbone("vgg16", str(path))
    assert _same_weights(loaded.module, other_state)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.weights_id == f"file:sha256={digest}"
    assert loaded.available_upto is None
    if flavour == "checkpoint":
        assert loaded.mean == (0.1, 0.2, 0.3) and loaded.std == (0.5, 0.5, 0.5)
    else:  # an unrecognised plain state dict gets torchvision's standard normalisation
        assert loaded.mean == IMAGENET_MEAN and loaded.std == IMAGENET_STD


def test_partial_checkpoint_covers_only_its_layers(tmp_path, other_state):
    part = {k: v for k, v in other_state.items() if int(k.split(".")[0]) <= 19}
    path = tmp_path / "ft.pth"
    torch.save({"backbone": "vgg16", "backbone_state_dict": part}, path)
    loaded = load_backbone("vgg16", str(path))
    assert loaded.available_upto == 20
    assert _same_weights(loaded.truncated("21"), other_state)
    with pytest.raises(InputError, match="only cover.*index 20.*layer 24"):
        loaded.truncated("24")
    assert torch.isnan(loaded.module[21].weight).all()  # never silently garbage


def test_bad_weight_files_name_the_file_and_the_expectation(tmp_path, other_state):
    wrong_shape = dict(other_state)
    wrong_shape["0.weight"] = torch.zeros(64, 1, 3, 3)
    p1 = tmp_path / "shape.pth"
    torch.save(wrong_shape, p1)
    with pytest.raises(InputError, match=r"shape.pth.*0.weight has shape \(64, 1, 3, 3\), "
                                         r"expected \(64, 3, 3, 3\).*expected a torchvision"):
        load_backbone("vgg16", str(p1))

    bn = {f"features.{k}": v for k, v in other_state.items()}
    bn["features.1.running_mean"] = torch.zeros(64)  # a vgg16_bn file
    p2 = tmp_path / "bn.pth"
    torch.save(bn, p2)
    with pytest.raises(InputError, match="bn.pth.*unexpected keys 1.running_mean"):
        load_backbone("vgg16", str(p2))

    holes = {k: v for k, v in other_state.items() if not k.startswith("2.")}
    p3 = tmp_path / "holes.pth"
    torch.save(holes, p3)
    with pytest.raises(InputError, match="holes.pth.*missing keys 2.weight"):
        load_backbone("vgg16", str(p3))

    p4 = tmp_path / "other.pth"
    torch.save({"backbone": "resnet50", "backbone_state_dict": dict(other_state)}, p4)
    with pytest.raises(InputError, match="other.pth.*resnet50.*--backbone resnet50"):
        load_backbone("vgg16", str(p4))

    p5 = tmp_path / "garbage.pth"
    p5.write_bytes(b"not a torch file at all")
    with pytest.raises(InputError, match="garbage.pth.*cannot read"):
        load_backbone("vgg16", str(p5))

    p6 = tmp_path / "pickle.pth"
    torch.save({"x": Evil()}, p6)
    with pytest.raises(InputError, match="pickle.pth.*cannot read"):
        load_backbone("vgg16", str(p6))


def _features_weights():
    from torchvision.models import VGG16_Weights

    return VGG16_Weights.IMAGENET1K_FEATURES


def test_imagenet_loads_from_torch_hub_cache_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    w = _features_weights()
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16_features-amdegroot-88682ab5.pth"
    assert backbones.hub_cache_path(w) == expected
    assert not imagenet_weights_available("vgg16")
    # a seeded random VGG16 state dict in torchvision's layout, under the cached name
    trunk = load_backbone("vgg16", "random", seed=5).module
    state = {f"features.{k}": v.clone() for k, v in trunk.state_dict().items()}
    expected.parent.mkdir(parents=True)
    torch.save(state, expected)
    assert imagenet_weights_available("vgg16")
    loaded = load_backbone("vgg16", "imagenet")
    assert _same_weights(loaded.module, state, prefix="features.")
    assert loaded.weights_id == "torchvision:VGG16_Weights.IMAGENET1K_FEATURES"
    meta = w.transforms()
    assert loaded.mean == tuple(meta.mean) and loaded.std == tuple(meta.std)
    assert loaded.std[0] == pytest.approx(1 / 255)


def test_imagenet_not_cached_and_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cached = tmp_path / "torch" / "hub" / "checkpoints"
    with pytest.raises(InputError) as err:
        load_backbone("vgg16", "imagenet")
    text = str(err.value)
    assert str(cached / "vgg16_features-amdegroot-88682ab5.pth") in text
    assert "--weights FILE" in text and "URLError" in text
    assert calls == [_features_weights().url]
    assert not any(cached.iterdir())  # nothing half-written

    with pytest.raises(InputError, match="vgg16-397923af.pth"):
        load_backbone("vgg16", "imagenet:V1")


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="MPS is not available"):
        resolve_device("mps")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(InputError, match="cuda:1.*1 CUDA device"):
        resolve_device("cuda:1")


def test_weights_file_of_tells_a_file_from_the_named_specs(tmp_path):
    """The session's "network behind the model" and load_backbone read a SPEC the same way."""
    from pathlib import Path

    from napari_ish_annotator.core.backbones.weights import weights_file_of

    for spec in ("random", "random:seed=3", "imagenet", "imagenet:V1", "", "  "):
        assert weights_file_of(spec) is None, spec
    assert weights_file_of(str(tmp_path / "net.pt")) == tmp_path / "net.pt"
    assert weights_file_of("~/net.pt") == Path.home() / "net.pt"
