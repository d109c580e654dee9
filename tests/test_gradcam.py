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
