"""Grad-CAM for the logistic head: closed-form gradients, scaling and resizing."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ish_annotator.core.explain.gradcam import (
    gradcam_linear,
    heat_to_rgb,
    member_gradient,
    overlay,
    upsample_to_image,
)
from napari_ish_annotator.core.utils.errors import InputError


def _decision(w: np.ndarray, x: np.ndarray, normalize: bool) -> float:
    return float(w @ (x / np.linalg.norm(x) if normalize else x))


@pytest.mark.parametrize("normalize", [False, True])
def test_member_gradient_matches_finite_differences(normalize):
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(3, 24))
    x = rng.random(24) + 0.1
    grad = member_gradient(coef, x.reshape(2, 3, 4), normalize)
    w = coef.mean(axis=0)
    eps = 1e-6
    numeric = np.array([
        (_decision(w, x + eps * e, normalize) - _decision(w, x - eps * e, normalize)) / (2 * eps)
        for e in np.eye(24)
    ])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_hirescam_is_the_decision_split_by_location():
    """Without normalisation the per-location shares add up to the decision value."""
    rng = np.random.default_rng(1)
    act = rng.random((4, 5, 6))
    coef = np.abs(rng.normal(size=(2, act.size)))  # all shares positive: ReLU keeps everything
    cam = gradcam_linear(act, coef, probability=1.0, normalize=False, method="hirescam")
    shares = (coef.mean(axis=0).reshape(act.shape) * act).sum(axis=0)
    np.testing.assert_allclose(cam, shares / shares.max(), rtol=1e-5)
    assert cam.shape == (5, 6) and cam.max() == pytest.approx(1.0)


def test_hirescam_localises_where_classic_gradcam_follows_activation():
    """A head that rewards one location: HiResCAM marks it; Grad-CAM marks the strongest activation."""
    act = np.ones((8, 7, 7))
    act[:, 2, 4] = 3.0  # strongest activation somewhere else
    weight_map = np.zeros((8, 7, 7))
    weight_map[:, 5, 1] = 1.0  # the classifier only rewards one location
    coef = np.repeat(weight_map.reshape(1, -1), 3, axis=0)
    hires = gradcam_linear(act, coef, 1.0, normalize=False, method="hirescam")
    assert np.unravel_index(hires.argmax(), hires.shape) == (5, 1)
    assert hires.sum() == pytest.approx(hires.max())
    classic = gradcam_linear(act, coef, 1.0, normalize=False, method="gradcam")
    assert np.unravel_index(classic.argmax(), classic.shape) == (2, 4)


def test_maps_are_scaled_by_probability_not_stretched():
    rng = np.random.default_rng(2)
    act = rng.random((4, 6, 6))
    coef = rng.normal(size=(5, act.size))
    high = gradcam_linear(act, coef, probability=0.9)
    low = gradcam_linear(act, coef, probability=0.05)
    assert high.max() == pytest.approx(0.9, rel=1e-5)
    assert low.max() == pytest.approx(0.05, rel=1e-4)
    np.testing.assert_allclose(low * 18, high, rtol=1e-4, atol=1e-6)


def test_wrong_feature_count_is_a_clear_error():
    with pytest.raises(InputError, match="another backbone, layer or input size"):
        gradcam_linear(np.ones((2, 3, 3)), np.ones((1, 10)))
    with pytest.raises(InputError, match="unknown Grad-CAM method"):
        gradcam_linear(np.ones((2, 3, 3)), np.ones((1, 18)), method="magic")


def test_upsample_keeps_image_shape_and_crops_padding():
    cam = np.zeros((28, 28), dtype=np.float32)
    cam[13:15, :] = 1.0  # a horizontal stripe through the middle
    out = upsample_to_image(cam, (100, 300))
    assert out.shape == (100, 300)
    assert out.min() >= 0.0 and out.max() <= 1.0
    # With keep_aspect the 300x100 image filled only the middle third of the square input,
    # so the stripe in the middle of the square lands in the middle of the image.
    padded = upsample_to_image(cam, (100, 300), keep_aspect=True)
    assert padded.shape == (100, 300)
    assert padded[45:55].mean() > 0.5 > padded[:10].mean()


def test_colouring_and_overlay_are_rgb_uint8():
    cam = np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10)
    rgb = heat_to_rgb(cam)
    assert rgb.shape == (5, 10, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].sum() < rgb[-1, -1].sum()  # inferno: dark for 0, bright for 1
    image = np.full((5, 10, 3), 200, np.uint8)
    blended = overlay(image, np.zeros_like(cam))
    np.testing.assert_array_equal(blended, image)  # a zero map leaves the image untouched


def test_extractor_must_match_the_models_layer():
    """VGG16 layers 24 and 30 have the same size: only the settings tell them apart."""
    from dataclasses import replace

    from napari_ish_annotator.core.explain.gradcam import gradcam_all_terms
    from napari_ish_annotator.core.features.extractor import (
        ExtractorConfig,
        FeatureExtractor,
    )
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_fit_bundle

    config = ExtractorConfig(weights="random", layer="24", input_size=64, device="cpu",
                             precision="fp32")
    right = FeatureExtractor(config)
    wrong = FeatureExtractor(replace(config, layer="30"), loaded=right.loaded)
    assert right.dim == wrong.dim
    rng = np.random.default_rng(0)
    X = rng.random((12, right.dim)).astype(np.float32)
    Y = (np.arange(12) % 2)[:, None]
    bundle = drive(iter_fit_bundle(X, Y, ["a"], config, EnsembleConfig(n_members=3)))
    image = np.full((40, 60, 3), 200, np.uint8)
    maps, proba = gradcam_all_terms(bundle, right, image)
    assert maps.shape == (1, 40, 60) and proba.shape == (1,)
    with pytest.raises(InputError, match="layer '30' instead of '24'"):
        gradcam_all_terms(bundle, wrong, image)


@pytest.mark.parametrize("method", ["hirescam", "gradcam"])
@pytest.mark.parametrize("normalize", [True, False])
def test_all_terms_at_once_in_torch_equal_the_per_term_maps(method, normalize):
    """The GPU's way (maps_on_device: every term in one go, float64 in torch), run on the
    CPU, gives gradcam_linear's maps; a zero activation gives zero maps, as there."""
    import torch

    from napari_ish_annotator.core.explain.gradcam import maps_on_device, mean_weight

    rng = np.random.default_rng(3)
    act = rng.random((6, 5, 7)).astype(np.float32)
    center = rng.random(act.size).astype(np.float32) * 0.5
    coefs = [rng.normal(size=(4, act.size)).astype(np.float32) for _ in range(3)]
    proba = np.array([0.9, 0.2, 1.3])  # clipped to 1, as gradcam_linear does
    weights = torch.stack([torch.from_numpy(mean_weight(c)) for c in coefs])
    got = maps_on_device(torch.from_numpy(act), weights, proba, normalize, method, center)
    want = np.stack([gradcam_linear(act, c, p, normalize, method, center)
                     for c, p in zip(coefs, proba, strict=True)])
    assert got.dtype == torch.float32 and got.shape == (3, 5, 7)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    zero = maps_on_device(torch.zeros(6, 5, 7), weights, proba, normalize, method)
    assert not zero.any()


def test_a_stack_of_maps_upsamples_like_each_map():
    rng = np.random.default_rng(4)
    cams = rng.random((3, 14, 14)).astype(np.float32) * 1.2  # some above 1: clipped
    for keep_aspect in (False, True):
        stack = upsample_to_image(cams, (60, 150), keep_aspect)
        for k in range(3):
            np.testing.assert_array_equal(stack[k], upsample_to_image(cams[k], (60, 150),
                                                                      keep_aspect))
    out = np.empty((3, 60, 150), np.float32)
    assert upsample_to_image(cams, (60, 150), out=out) is out and out.max() <= 1.0


def test_maps_of_two_models_never_mix():
    """Each term's mean member weight is kept for the model last explained (the Explain
    panel asks it image after image); switching models back and forth must give each
    model's own maps, as gradcam_linear computes them afresh."""
    from napari_ish_annotator.core.explain.gradcam import gradcam_all_terms, layer_activation
    from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_fit_bundle

    config = ExtractorConfig(weights="random", layer="24", input_size=64, device="cpu",
                             precision="fp32")
    fx = FeatureExtractor(config)
    rng = np.random.default_rng(5)
    X = rng.random((12, fx.dim)).astype(np.float32)
    Y = (np.arange(12) % 2)[:, None]
    a, b = (drive(iter_fit_bundle(X, labels, ["t"], config, EnsembleConfig(n_members=3)))
            for labels in (Y, 1 - Y))
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    act = layer_activation(fx, image)

    def fresh(bundle, probability: float) -> np.ndarray:
        clf = bundle.classifier
        cam = gradcam_linear(act, clf.terms[0].coef, probability, bool(clf.config.normalize),
                             "hirescam", clf.center)
        return upsample_to_image(cam, image.shape[:2], bool(bundle.extractor.keep_aspect))

    seen = []
    for bundle in (a, b, a, b):
        maps, proba = gradcam_all_terms(bundle, fx, image)
        np.testing.assert_allclose(maps[0], fresh(bundle, float(proba[0])), rtol=0, atol=1e-5)
        seen.append(maps[0])
    assert not np.allclose(seen[0], seen[1], atol=1e-3)  # the two models do differ
