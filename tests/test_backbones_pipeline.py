"""Backbones beyond VGG16 through every stage after the network (issues 5, 10): features,
cache, ensembles, Grad-CAM, fine-tuning, bundles, the CLI, the Annotate panel and the demo, per
registered backbone (random weights and small inputs keep them fast; efficientnet_lite0's
ImageNet weights come from the installed `offline` extra, no network).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _backbone_helpers
from _backbone_helpers import EFFNET_ID_PREFIX, NAMES, SMALL, blobs
from napari_ish_annotator.core import backbones as backbones
from napari_ish_annotator.core.backbones.specs import REGISTRY, get_spec
from napari_ish_annotator.core.backbones.weights import load_backbone
from napari_ish_annotator.core.explain.gradcam import gradcam_linear, layer_activation
from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
from napari_ish_annotator.core.learn.ensembles import EnsembleClassifier
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.utils.errors import InputError

no_network = _backbone_helpers.no_network  # the shared fixture


# ----------------------------------------------------------------------------- pipeline per backbone

@pytest.mark.parametrize("name", NAMES)
def test_features_cache_ensemble_and_gradcam_per_backbone(name, tmp_path):
    ims, Y = blobs(16)
    cfg = ExtractorConfig(backbone=name, weights="random", input_size=SMALL.get(name, 64),
                          device="cpu", batch_size=8)
    fx = FeatureExtractor(cfg, cache_dir=tmp_path / "cache")
    sig = fx.signature()
    assert sig["backbone"] == name and sig["layer"] == get_spec(name).default_layer
    X = fx.extract(ims)
    assert X.shape == (16, fx.dim) and np.isfinite(X).all()
    # a second extractor reads the same features from the cache
    fx2 = FeatureExtractor(cfg, cache_dir=tmp_path / "cache")
    fx2.activation = None  # would fail if anything were recomputed
    np.testing.assert_array_equal(fx2.extract(ims), X)
    other = "vgg16" if name != "vgg16" else "resnet50"
    assert FeatureExtractor(ExtractorConfig(backbone=other, weights="random", input_size=64,
                                            device="cpu")).signature() != sig

    clf = EnsembleClassifier(vocabulary=["left", "right"], config=EnsembleConfig(n_members=3))
    clf.fit(X, Y)
    assert clf.terms[0].coef.shape == (3, fx.dim)
    act = layer_activation(fx, ims[1])  # left blob present
    assert act.shape == fx.shape
    p = clf.predict_proba(act.reshape(1, -1))[0]
    cam = gradcam_linear(act, clf.terms[0].coef, float(p[0]))
    assert cam.shape == fx.shape[1:] and cam.min() >= 0.0 and cam.max() <= 1.0


def test_efficientnet_features_cached_under_their_weights_identity(tmp_path, no_network):
    ims, _ = blobs(3)
    cfg = ExtractorConfig(backbone="efficientnet_lite0", weights="imagenet", input_size=64,
                          device="cpu")
    fx = FeatureExtractor(cfg, cache_dir=tmp_path)
    assert fx.signature()["weights_id"].startswith(EFFNET_ID_PREFIX)
    assert fx.signature()["normalisation"]["pixel_scale"] == 255.0
    X = fx.extract(ims)
    rnd = FeatureExtractor(ExtractorConfig(backbone="efficientnet_lite0", weights="random",
                                           input_size=64, device="cpu"), cache_dir=tmp_path)
    assert rnd.signature() != fx.signature()
    assert not np.allclose(rnd.extract(ims), X)


@pytest.mark.parametrize("name", NAMES)
def test_finetune_checkpoint_per_backbone(name, tmp_path):
    from napari_ish_annotator.core.explain.finetuned import gradcam_mtl
    from napari_ish_annotator.core.finetune import FinetuneConfig, finetune

    ims, Y = blobs(8, size=(48, 64))
    cfg = FinetuneConfig(backbone=name, weights="random", input_size=SMALL.get(name, 64),
                         epochs=1, batch_size=4,
                         hidden=16, dropout=0.0, augment=False, val_fraction=0.0, pool=1,
                         device="cpu")
    out = tmp_path / "ft.pt"
    res = finetune(ims, Y, ["left", "right"], cfg, out)
    assert res.checkpoint == out and len(res.history) == 1
    assert np.isfinite(res.history[0]["train_loss"])
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["backbone"] == name
    # the default frozen depth is the backbone's own
    spec = get_spec(name)
    assert ckpt["frozen"] == spec.layers[spec.frozen_default].index + 1
    # the checkpoint is usable as --weights for the same backbone, refused for another
    lb = load_backbone(name, str(out))
    assert lb.weights_id.startswith("file:sha256=")
    other = "vgg16" if name != "vgg16" else "efficientnet_lite0"
    with pytest.raises(InputError, match=f"made for backbone '{name}'.*--backbone {name}"):
        load_backbone(other, str(out))
    maps = gradcam_mtl(out, ims[3])
    assert maps.shape == (2, 48, 64) and np.isfinite(maps).all()


# ----------------------------------------------------------------------------- bundle and CLI

def test_bundle_records_backbone_and_refuses_another(tmp_path):
    from napari_ish_annotator.core.explain.gradcam import gradcam_for_image
    from napari_ish_annotator.core.learn.bundle import load_bundle, save_bundle
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_fit_bundle

    ims, Y = blobs(12)
    cfg = ExtractorConfig(backbone="efficientnet_lite0", weights="imagenet", input_size=64,
                          device="cpu")
    fx = FeatureExtractor(cfg)
    bundle = drive(iter_fit_bundle(fx.extract(ims), Y, ["left", "right"], cfg,
                                   EnsembleConfig(n_members=3), weights_id=fx.weights_id))
    save_bundle(tmp_path / "model", bundle)
    back = load_bundle(tmp_path / "model", expect_backbone="efficientnet_lite0")
    assert back.extractor.backbone == "efficientnet_lite0" and back.extractor.layer == "stage5"
    assert back.meta["weights_id"].startswith(EFFNET_ID_PREFIX)
    assert back.meta["normalisation"]["pixel_scale"] == 255.0
    with pytest.raises(InputError, match=r"trained on 'efficientnet_lite0' features.*'vgg16'"):
        load_bundle(tmp_path / "model", expect_backbone="vgg16")
    # Grad-CAM through the reloaded bundle at the image's own size
    cam = gradcam_for_image(back, FeatureExtractor(back.extractor), ims[1], "left")
    assert cam.shape == ims[1].shape[:2] and cam.max() <= 1.0


def test_cli_train_evaluate_predict_with_offline_backbone(tmp_path, no_network, capsys):
    from napari_ish_annotator.cli import main
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    manifest = generate_dataset(tmp_path / "data", 24, seed=1, size=(96, 192), write_masks=False)
    common = ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--input-size", "96",
              "--ensemble", "3", "--cache", str(tmp_path / "cache"), "--device", "cpu", "-q"]
    assert main(["train", str(manifest), "--out", str(tmp_path / "m"), *common]) == 0
    info = (tmp_path / "m" / "model.json").read_text()
    assert '"backbone": "efficientnet_lite0"' in info and '"layer": "stage5"' in info
    # evaluate without --layers uses the backbone's default layer (not VGG16's 21)
    assert main(["evaluate", str(manifest), "--folds", "2", "--json", str(tmp_path / "e.json"),
                 *common]) == 0
    import json

    assert list(json.loads((tmp_path / "e.json").read_text())["layers"]) == ["stage5"]
    assert main(["predict", str(tmp_path / "m"), str(manifest), "--out", str(tmp_path / "p.csv"),
                 "--cache", str(tmp_path / "cache"), "--device", "cpu", "-q"]) == 0
    assert (tmp_path / "p.csv").read_text().count("\n") == 25
    capsys.readouterr()
    assert main(["evaluate", str(manifest), "--layers", "21", *common]) == 2
    assert "layer '21' is not a layer of efficientnet_lite0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- transfer learning

def test_imagenet_efficientnet_features_beat_random_weights(tmp_path, no_network):
    """End to end: ImageNet features give a clearly higher grouped-CV mean AUC than random ones.

    Over synthetic seeds 0-4 (64 images, 160 px input, layer stage5, 3 gene-grouped folds) the
    gap was 0.11-0.19 AUC (ImageNet 0.84-0.92, random 0.72-0.80); the test asks for 0.05.
    """
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_evaluate

    ds = read_manifest(generate_dataset(tmp_path / "data", 64, seed=0, size=(128, 256),
                                        write_masks=False))
    auc = {}
    for weights in ("imagenet", "random"):
        cfg = ExtractorConfig(backbone="efficientnet_lite0", weights=weights, input_size=160,
                              device="cpu", batch_size=16)
        res = drive(iter_evaluate(ds, cfg, EnsembleConfig(n_members=5), layers=["stage5"],
                                  folds=3))
        auc[weights] = res["layers"]["stage5"]["mean"]["auc"]
    assert auc["imagenet"] > 0.8
    assert auc["imagenet"] > auc["random"] + 0.05, auc


# ----------------------------------------------------------------------------- widget

@pytest.mark.gui
def test_annotate_panel_offers_every_backbone_and_runs_efficientnet(make_napari_viewer, qtbot,
                                                                     tmp_path, monkeypatch):
    from _gui_helpers import TERMS, dock, make_dataset
    from napari_ish_annotator.widgets import session_of as get_session
    from napari_ish_annotator.widgets.explain import gradcam_layer

    monkeypatch.setenv("ISH_ANNOTATOR_CACHE", str(tmp_path / "cache"))
    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    embryos, annotate = dock(viewer, "Embryos"), dock(viewer, "Annotate")
    train, explain = dock(viewer, "Train"), dock(viewer, "Explain")
    assert embryos.open_paths([manifest])
    combo = annotate.model.backbone_combo
    assert [combo.itemText(i) for i in range(combo.count())] == list(REGISTRY)
    combo.setCurrentText("efficientnet_lite0")
    layers = [annotate.model.layer_combo.itemText(i) for i in range(annotate.model.layer_combo.count())]
    assert layers == list(get_spec("efficientnet_lite0").layers)
    assert annotate.model.layer_combo.currentText() == "stage5"
    annotate.model.set_settings(weights="imagenet", input_size=64, device="cpu")
    session = get_session(viewer)

    annotate.model.extract()
    qtbot.waitUntil(lambda: not annotate.model.runner.running, timeout=120_000)
    assert annotate.model.runner.last_outcome == "done", annotate.model.runner.last_error
    assert session.model.features.shape == (8, 112 * 4 * 4)  # stage5 at 64 px
    train.members_spin.setValue(3)
    train.train()
    qtbot.waitUntil(lambda: not train.runner.running, timeout=120_000)
    assert train.runner.last_outcome == "done", train.runner.last_error
    assert session.model.bundle.extractor.backbone == "efficientnet_lite0"
    explain.term_combo.setCurrentText(TERMS[0])
    explain.show_map()
    qtbot.waitUntil(lambda: not explain.runner.running, timeout=120_000)
    assert gradcam_layer(viewer).data.shape == session.image().shape[:2]


def test_demo_picks_a_pretrained_network_that_works_offline(monkeypatch, tmp_path):
    from napari_ish_annotator.demo import resolve_demo_model

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # empty hub cache
    backbone, weights, note = resolve_demo_model("auto", "auto")
    assert (backbone, weights) == ("efficientnet_lite0", "imagenet") and "VGG16" in note
    assert resolve_demo_model("efficientnet_lite0", "auto") == ("efficientnet_lite0", "imagenet",
                                                                 None)
    backbone, weights, note = resolve_demo_model("resnet50", "auto")
    assert (backbone, weights) == ("resnet50", "random") and "--backbone efficientnet_lite0" in note
    assert resolve_demo_model("auto", "random") == ("vgg16", "random", None)
    # with VGG16's weights in the hub cache, the demo uses the paper's network
    from torchvision.models import VGG16_Weights

    from napari_ish_annotator.core.backbones.weights import hub_cache_path

    cached = hub_cache_path(VGG16_Weights.IMAGENET1K_FEATURES)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert resolve_demo_model("auto", "auto") == ("vgg16", "imagenet", None)
