"""One preprocessing path: feature extraction and fine-tuning prepare an image identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_ish_annotator.core.backbones.weights import load_backbone
from napari_ish_annotator.core.features import preprocess
from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
from napari_ish_annotator.core.features.preprocess import (
    normalise,
    normalise_np,
    resize_uint8,
)
from napari_ish_annotator.core.finetune import FinetuneConfig, finetune
from napari_ish_annotator.core.finetune.data import iter_load_images
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.core.utils.progress import drive


def embryo(seed: int = 0, shape=(45, 83)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    im = np.clip(rng.normal(200, 30, (*shape, 3)), 0, 255).astype(np.uint8)
    im.flags.writeable = False  # decoded images can be read-only
    return im


@pytest.mark.parametrize("name", ["vgg16", "efficientnet_lite0"])
def test_extraction_and_fine_tuning_give_identical_tensors(name):
    """Same image, size and normalisation: the extractor's numpy path, the fine-tuning trainer's
    torch path and the fine-tuned model's inference path agree bit for bit."""
    from napari_ish_annotator.core.finetune.checkpoint import FinetunedModel

    loaded = load_backbone(name, "random")
    fx = FeatureExtractor(ExtractorConfig(backbone=name, weights="random", input_size=57,
                                          device="cpu"), loaded=loaded)
    images = [embryo(0), embryo(1, (60, 60))]
    data = drive(iter_load_images(images, 57))
    trainer_input = normalise(data.pixels, loaded.mean, loaded.std, loaded.pixel_scale)
    model = FinetunedModel(network=None, backbone=name, vocabulary=[], input_size=57,
                           mean=loaded.mean, std=loaded.std, pixel_scale=loaded.pixel_scale,
                           frozen=0, layers={}, checkpoint={})
    for i, im in enumerate(images):
        extractor_input = fx.preprocess(im)
        assert extractor_input.dtype == torch.float32 and extractor_input.shape == (3, 57, 57)
        assert torch.equal(extractor_input, trainer_input[i])
        assert torch.equal(extractor_input, model.preprocess(im))
    # the normalisation really is the backbone's: (x * scale / 255 - mean) / std
    x = resize_uint8(images[0], 57).float() * (loaded.pixel_scale / 255.0)
    ref = (x - torch.tensor(loaded.mean).view(3, 1, 1)) / torch.tensor(loaded.std).view(3, 1, 1)
    assert torch.allclose(trainer_input[0], ref, rtol=1e-5, atol=1e-4)


def test_normalisation_numpy_and_torch_agree_exactly():
    u8 = np.random.default_rng(3).integers(0, 256, (2, 3, 9, 9), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert np.array_equal(normalise_np(u8, mean, std), normalise(torch.from_numpy(u8), mean, std).numpy())


def test_keep_aspect_pads_with_border_colour_before_resizing():
    im = np.full((20, 40, 3), (10, 20, 30), np.uint8)
    im[5:15, 10:30] = 250
    t = resize_uint8(im, 40, keep_aspect=True)
    assert t.shape == (3, 40, 40)
    assert tuple(int(v) for v in t[:, 0, 0]) == (10, 20, 30)  # the padding is the border colour
    stack = np.stack([im, im])
    assert preprocess.border_colour(stack) == preprocess.border_colour(im) == (10, 20, 30)


def test_bf16_check_applies_to_fine_tuning_too(monkeypatch):
    """Fine-tuning used to skip the extractor's bf16 check; now both refuse emulated bf16."""
    monkeypatch.setattr(preprocess, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(preprocess, "cpu_flags_native_bf16", lambda: False)  # torch-free probe
    cpu = torch.device("cpu")
    with pytest.raises(InputError, match="no native bf16"):
        preprocess.resolve_precision("bf16", cpu)
    assert preprocess.resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(InputError, match="no native bf16"):
        FeatureExtractor(ExtractorConfig(weights="random", precision="bf16", device="cpu"))
    images = [embryo(i) for i in range(4)]
    Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.int8)
    cfg = FinetuneConfig(weights="random", input_size=32, precision="bf16", device="cpu")
    with pytest.raises(InputError, match="no native bf16"):
        finetune(images, Y, ["a", "b"], cfg, "never-written.pt")
    # training's "auto" stays fp32 on a CPU even where bf16 is native (no silent bf16 gradients)
    monkeypatch.setattr(preprocess, "cpu_has_native_bf16", lambda: True)
    assert preprocess.resolve_precision("auto", cpu, cpu_auto_bf16=False) == "fp32"
