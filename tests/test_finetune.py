"""Multi-task fine-tuning (issue 4) on CPU with tiny synthetic images and random-init VGG16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ish_annotator.core.explain.finetuned import gradcam_mtl
from napari_ish_annotator.core.finetune import (
    FORMAT,
    FinetuneConfig,
    build_head,
    finetune,
    iter_finetune,
    load_checkpoint,
    load_finetuned,
    masked_bce,
)
from napari_ish_annotator.core.learn.splits import validation_split
from napari_ish_annotator.core.utils.errors import InputError

VOCAB = ["anterior", "posterior", "ventral"]
STAIN = np.array([70, 45, 130])


def make_images(n: int, seed: int = 0, size=(48, 72)) -> tuple[list[np.ndarray], np.ndarray]:
    """Pale embryo-like images with a purple blob per present term at a term-specific place."""
    rng = np.random.default_rng(seed)
    H, W = size
    images, Y = [], np.zeros((n, len(VOCAB)), np.int8)
    for i in range(n):
        im = np.full((H, W, 3), 225.0)
        im += rng.normal(0, 6, im.shape)
        Y[i] = [(i >> k) & 1 for k in range(len(VOCAB))]
        if Y[i].sum() == 0:
            Y[i, i % len(VOCAB)] = 1 if i % 4 == 0 else 0
        boxes = [(slice(8, 30), slice(4, 28)), (slice(8, 30), slice(44, 68)),
                 (slice(30, 46), slice(20, 52))]
        for t, (ys, xs) in enumerate(boxes):
            if Y[i, t]:
                im[ys, xs] = STAIN + rng.normal(0, 8, 3)
        images.append(np.clip(im, 0, 255).astype(np.uint8))
    return images, Y


def small_config(**kw) -> FinetuneConfig:
    base = dict(weights="random", input_size=64, epochs=1, batch_size=6, hidden=32, dropout=0.0,
                frozen="24", augment=False, val_fraction=0.0, lr=3e-3)
    base.update(kw)
    return FinetuneConfig(**base)


def test_masked_loss_and_gradient_ignore_unknown_labels():
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    Y = torch.tensor([[1, 0, -1], [0, -1, 1], [-1, 1, 0], [1, 1, -1]], dtype=torch.float32)
    known = Y >= 0

    def loss_and_grads(garbage: float):
        head.zero_grad()
        logits = head(x)
        # garbage logits where labels are unknown must change nothing
        logits = torch.where(known, logits, torch.full_like(logits, garbage) + 0 * logits)
        logits.retain_grad()
        loss = masked_bce(logits, Y)
        loss.backward()
        return loss.detach(), head.weight.grad.clone(), logits.grad.clone()

    l1, g1, lg1 = loss_and_grads(0.0)
    l2, g2, lg2 = loss_and_grads(1e4)
    assert torch.isfinite(l2)
    assert torch.allclose(l1, l2) and torch.allclose(g1, g2)
    assert torch.all(lg1[~known] == 0) and torch.all(lg2[~known] == 0)
    # equals the sum over known entries of the BCE, averaged over images
    logits = head(x).detach()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[known], Y[known], reduction="sum") / 4
    assert torch.allclose(masked_bce(logits, Y), ref)
    # a different label where the mask is on does change the loss
    Y2 = Y.clone()
    Y2[0, 0] = 0
    assert not torch.allclose(masked_bce(logits, Y2), masked_bce(logits, Y))


def test_pos_weight_scales_positive_terms():
    logits = torch.zeros(2, 2)
    Y = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    plain = masked_bce(logits, Y)
    weighted = masked_bce(logits, Y, torch.tensor([3.0, 1.0]))
    # one positive of term 0 weighted x3: +2 * log(2) / 2 images
    assert torch.allclose(weighted - plain, torch.tensor(np.log(2.0), dtype=torch.float32))


def test_validation_split_keeps_genes_apart():
    groups = np.array([f"g{i // 3}" for i in range(30)])
    Y = np.tile(np.array([[1, 0], [0, 1], [1, 1]], np.int8), (10, 1))
    tr, va = validation_split(groups, Y, 0.3, seed=1)  # the split fine-tuning uses
    assert len(va) > 0 and len(tr) + len(va) == 30
    assert not set(groups[tr]) & set(groups[va])


def test_loss_decreases_with_cached_frozen_part(tmp_path):
    images, Y = make_images(12)
    cfg = small_config(epochs=3)
    res = finetune(images, Y, VOCAB, cfg, tmp_path / "ft.pt")
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 3
    assert losses[-1] < losses[0] * 0.95, losses
    assert res.metrics["cache_frozen"] is True  # CPU + no augmentation -> cached frozen trunk


@pytest.mark.slow  # four short runs: ~15 s idle, up to 50 s on a busy 2-core machine
def test_checkpoint_round_trip_and_resume_equals_uninterrupted(tmp_path):
    images, Y = make_images(12, seed=1)
    groups = [i // 2 for i in range(12)]
    cfg2 = small_config(epochs=2, val_fraction=0.3)
    finetune(images, Y, VOCAB, cfg2, tmp_path / "a.pt", groups=groups)

    first = finetune(images, Y, VOCAB, small_config(epochs=1, val_fraction=0.3),
                     tmp_path / "b.pt", groups=groups)
    assert len(first.history) == 1
    ck1 = torch.load(tmp_path / "b.pt", weights_only=True)
    assert ck1["epoch"] == 1
    resumed = finetune(images, Y, VOCAB, cfg2, tmp_path / "b.pt", groups=groups, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == ck1["history"][0]
    # resuming a finished run changes nothing and reports the stored history
    stamp = (tmp_path / "b.pt").stat().st_mtime_ns
    again = finetune(images, Y, VOCAB, cfg2, tmp_path / "b.pt", groups=groups, resume=True)
    assert again.history == resumed.history and again.best_epoch == resumed.best_epoch
    assert (tmp_path / "b.pt").stat().st_mtime_ns == stamp

    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = load_checkpoint(tmp_path / "b.pt")
    assert a["format"] == b["format"] == FORMAT and b["epoch"] == 2
    for key in ("backbone", "vocabulary", "frozen", "normalisation", "input_size",
                "training_fingerprint", "history", "metrics", "optimizer_state_dict"):
        assert key in b
    assert b["vocabulary"] == VOCAB and b["frozen"] == 24 and b["input_size"] == 64
    for sd in ("backbone_state_dict", "head_state_dict"):
        for k, v in a[sd].items():
            assert torch.allclose(v, b[sd][k], atol=1e-6), (sd, k)
    # state dict has the trunk's own layout, so it loads straight into a fresh vgg16().features
    import torchvision

    torchvision.models.vgg16().features.load_state_dict(b["backbone_state_dict"])

    # the loaded model predicts in [0, 1] for every term
    model = load_finetuned(tmp_path / "b.pt")
    p = model.predict_proba(images[:3])
    assert p.shape == (3, 3) and np.all((p >= 0) & (p <= 1))

    # resuming onto another training set is refused
    Y_other = Y.copy()
    Y_other[0, 0] = 1 - Y_other[0, 0]
    with pytest.raises(InputError, match="cannot resume"):
        finetune(images, Y_other, VOCAB, cfg2, tmp_path / "b.pt", groups=groups, resume=True)


def test_cancel_mid_epoch_keeps_last_complete_checkpoint(tmp_path):
    images, Y = make_images(12, seed=2)
    out = tmp_path / "ft.pt"
    gen = iter_finetune(images, Y, VOCAB, small_config(epochs=3), out)
    seen_epoch1 = None
    for step in gen:
        if step.kind == "epoch" and step.epoch == 1:
            seen_epoch1 = load_checkpoint(out)["history"]
        if step.kind == "batch" and step.epoch == 2 and step.batch == 1:
            break
    gen.close()  # what napari's worker.quit() / drive(cancel) does between batches
    ck = torch.load(out, weights_only=True)
    assert ck["epoch"] == 1 and ck["history"] == seen_epoch1
    assert [p.name for p in tmp_path.iterdir()] == ["ft.pt"]  # no temporary files left

    # a cancel before the first epoch ends writes nothing at all
    out2 = tmp_path / "none.pt"
    gen = iter_finetune(images, Y, VOCAB, small_config(epochs=2), out2)
    for step in gen:
        if step.kind == "batch":
            break
    gen.close()
    assert not out2.exists() and [p.name for p in tmp_path.iterdir()] == ["ft.pt"]


def test_frozen_layers_stay_and_trainable_layers_change_with_augmentation(tmp_path):
    from napari_ish_annotator.core.backbones.weights import load_backbone

    images, Y = make_images(6, seed=3)
    cfg = small_config(frozen="17", augment=True, batch_size=3, epochs=1, lr=1e-3)
    res = finetune(images, Y, VOCAB, cfg, tmp_path / "ft.pt")
    assert res.metrics["cache_frozen"] is False
    ck = load_checkpoint(tmp_path / "ft.pt")
    base = load_backbone("vgg16", "random", 0).module.state_dict()
    tuned = ck["backbone_state_dict"]
    assert set(base) == set(tuned)
    for k in base:
        layer = int(k.split(".")[0])
        if layer < 17:
            assert torch.equal(base[k], tuned[k]), k
    assert not torch.allclose(base["17.weight"], tuned["17.weight"])

    # layer-21 features of the fine-tuned trunk differ from the pretrained ones
    x = torch.randn(1, 3, 64, 64)
    pre = load_backbone("vgg16", "random", 0)
    post = load_backbone("vgg16", str(tmp_path / "ft.pt"), 0)
    with torch.no_grad():
        f_pre, f_post = pre.truncated("21")(x), post.truncated("21")(x)
        g_pre, g_post = pre.truncated("17")(x), post.truncated("17")(x)
    assert torch.allclose(g_pre, g_post)  # frozen part unchanged
    assert not torch.allclose(f_pre, f_post)


def test_gradcam_through_mtl_head_has_image_shape(tmp_path):
    images, Y = make_images(6, seed=4)
    finetune(images, Y, VOCAB, small_config(), tmp_path / "ft.pt")
    model = load_finetuned(tmp_path / "ft.pt")
    img = np.ascontiguousarray(np.pad(images[0], ((0, 3), (0, 5), (0, 0)), mode="edge"))  # 51 x 77
    maps = gradcam_mtl(model, img)
    assert maps.shape == (3, 51, 77) and maps.dtype == np.float32
    assert np.all(np.isfinite(maps)) and maps.min() >= 0 and maps.max() <= 1
    probs = model.predict_proba([img])[0]
    # maps are scaled by each term's probability: the peak never exceeds it
    assert np.all(maps.reshape(3, -1).max(axis=1) <= probs + 1e-5)
    # a subset in another order gives the same maps for those terms
    sub = gradcam_mtl(tmp_path / "ft.pt", img, terms=["ventral", "anterior"])
    assert np.allclose(sub, maps[[2, 0]], atol=1e-5)
    with pytest.raises(InputError, match="not in the checkpoint"):
        gradcam_mtl(model, img, terms=["wing"])


def test_bad_input_is_reported():
    images, Y = make_images(4)
    with pytest.raises(InputError, match="shape"):
        finetune(images, Y[:, :2], VOCAB, small_config(), "x.pt")
    bad = Y.copy()
    bad[0, 0] = 3
    with pytest.raises(InputError, match="present"):
        finetune(images, bad, VOCAB, small_config(), "x.pt")
    with pytest.raises(InputError, match="frozen depth"):
        finetune(images, Y, VOCAB, small_config(frozen="pool9"), "/tmp/never-written.pt")
    with pytest.raises(InputError, match="augmentation"):
        finetune(images, Y, VOCAB, small_config(cache_frozen="on", augment=True), "x.pt")
    # fp16 on the CPU would train without loss scaling; an unknown precision is not fp32
    with pytest.raises(InputError, match="fp16 is for GPUs"):
        finetune(images, Y, VOCAB, small_config(precision="fp16", device="cpu"), "x.pt")
    with pytest.raises(InputError, match="unknown precision"):
        finetune(images, Y, VOCAB, small_config(precision="fp64"), "x.pt")


def test_partial_weights_cannot_be_fine_tuned(tmp_path):
    """A checkpoint covering only the first layers leaves NaN deeper: training would be NaN."""
    from napari_ish_annotator.core.backbones.weights import load_backbone

    trunk = load_backbone("vgg16", "random", 0).module
    partial = {k: v for k, v in trunk.state_dict().items() if k.split(".")[0] in ("0", "2")}
    torch.save(partial, tmp_path / "partial.pt")
    images, Y = make_images(8)
    with pytest.raises(InputError, match="whole trunk"):
        finetune(images, Y, VOCAB, small_config(weights=str(tmp_path / "partial.pt")),
                 tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_frozen_depth_names():
    from napari_ish_annotator.core.backbones.weights import load_backbone
    from napari_ish_annotator.core.finetune import resolve_frozen

    vgg = load_backbone("vgg16", "random", 0)
    assert resolve_frozen(vgg, "auto") == resolve_frozen(vgg, "17") == 17  # up to pool3
    assert resolve_frozen(vgg, "21") == 21 and resolve_frozen(vgg, "none") == 0
    assert resolve_frozen(vgg, "all") == len(vgg.module) == 31
    assert resolve_frozen(vgg, "5") == 5  # a plain module count


def test_head_shapes():
    head = build_head(512, 7, 64, 0.5, 3)
    assert head(torch.zeros(2, 512, 5, 9)).shape == (2, 7)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a fine-tuning checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    Path(tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    # the right keys but weights that do not fit the network: a clear error, no traceback
    from napari_ish_annotator.core.backbones.weights import load_backbone

    trunk = load_backbone("vgg16", "random", 0).module.state_dict()
    head = build_head(512, 2, 16, 0.0, 3).state_dict()
    ckpt = {"format": FORMAT, "backbone": "vgg16", "backbone_state_dict": trunk,
            "head_state_dict": head, "vocabulary": ["a", "b", "c"],
            "head": {"in_features": 512, "hidden": 16, "dropout": 0.0, "pool": 3}}
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(InputError, match="do not fit"):
        load_finetuned(tmp_path / "mismatch.pt")
    ckpt["vocabulary"] = ["a", "b"]
    ckpt["backbone_state_dict"] = {k: v for k, v in trunk.items() if not k.startswith("28.")}
    with pytest.raises(InputError, match="do not fit"):
        load_finetuned(ckpt)


@pytest.mark.slow  # four CLI runs with feature extraction
def test_cli_finetune_then_tl_mtl_train_predict_evaluate(tiny_dataset, tmp_path, capsys):
    """TL+MTL end to end: finetune -> train/predict with --weights CKPT -> evaluate --compare."""
    import csv
    import json

    from napari_ish_annotator.cli import main

    ckpt = tmp_path / "ft.pt"
    cache = tmp_path / "cache"
    common = ["--device", "cpu", "--seed", "0", "-q"]
    assert main(["finetune", str(tiny_dataset), "--out", str(ckpt), "--weights", "random",
                 "--epochs", "1", "--batch-size", "8", "--input-size", "64", "--frozen", "17",
                 "--hidden", "32", "--no-augment", "--val-fraction", "0.25", *common]) == 0
    ck = load_checkpoint(ckpt)
    assert ck["epoch"] == 1 and ck["input_size"] == 64 and len(ck["history"]) == 1
    assert ck["training_fingerprint"]

    model = tmp_path / "model"
    assert main(["train", str(tiny_dataset), "--out", str(model), "--weights", str(ckpt),
                 "--input-size", "64", "--ensemble", "3", "--cache", str(cache), *common]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert "file:sha256=" in json.dumps(meta)  # the bundle records the fine-tuned weights
    pred = tmp_path / "pred.csv"
    assert main(["predict", str(model), str(tiny_dataset), "--out", str(pred),
                 "--cache", str(cache), *common]) == 0
    rows = list(csv.DictReader(pred.open()))
    assert len(rows) == 24 and all(0 <= float(v) <= 1 for r in rows for k, v in r.items()
                                   if k not in ("image", "calls"))

    capsys.readouterr()
    metrics = tmp_path / "m.json"
    assert main(["evaluate", str(tiny_dataset), "--compare", str(ckpt), "--weights", "random",
                 "--input-size", "64", "--folds", "2", "--layers", "21", "--ensemble", "3",
                 "--cache", str(cache), "--json", str(metrics), *common]) == 0
    out = capsys.readouterr().out
    assert "TL+MTL" in out and "auc" in out
    res = json.loads(metrics.read_text())
    tl = res["layers"]["21"]["mean"]["auc"]
    mtl = res["tl_mtl"]["layers"]["21"]["mean"]["auc"]
    assert 0 <= tl <= 1 and 0 <= mtl <= 1 and tl != mtl  # different features, same folds


def test_cli_finetune_bad_input_exits_2(tmp_path, capsys):
    from napari_ish_annotator.cli import main

    assert main(["finetune", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.pt"),
                 "-q"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"nope")
    assert main(["evaluate", str(tmp_path / "missing.csv"), "--compare", str(bogus), "-q"]) == 2


@pytest.mark.gui
def test_widget_finetunes_in_worker_plots_and_switches_models(make_napari_viewer, qtbot, tmp_path,
                                                              monkeypatch):
    from _gui_helpers import TERMS, dock, make_dataset
    from napari_ish_annotator.widgets import session_of as get_session

    monkeypatch.setenv("ISH_ANNOTATOR_CACHE", str(tmp_path / "cache"))
    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    embryos, annotate, train = dock(viewer, "Embryos"), dock(viewer, "Annotate"), dock(viewer, "Train")
    assert embryos.open_paths([manifest])
    session = get_session(viewer)
    annotate.model.set_settings(weights="random", input_size=64, layer="21", device="cpu")
    train.members_spin.setValue(3)
    train.train()
    qtbot.waitUntil(lambda: not train.runner.running, timeout=120_000)
    old_bundle, old_probs = session.model.bundle, session.model.probabilities.copy()
    old_features = session.model.features.copy()

    sec = train.finetune
    sec.epochs_spin.setValue(2)
    sec.batch_spin.setValue(4)
    sec.frozen_combo.setCurrentIndex(sec.frozen_combo.findData("17"))  # layer-21 features change
    sec.augment_check.setChecked(False)
    sec.device_combo.setCurrentText("cpu")
    sec.start()
    assert sec.runner.running and not sec.start_button.isEnabled()  # a worker, GUI stays free
    qtbot.waitUntil(lambda: not sec.runner.running, timeout=180_000)
    assert sec.runner.last_outcome == "done", sec.runner.last_error

    # the live plot got one point per epoch
    assert [h["epoch"] for h in sec.history] == [1, 2]
    assert list(sec.loss_line.get_xdata()) == [1, 2]
    # the session now uses the fine-tuned backbone: new features, refitted classifiers
    ckpt = str(sec.checkpoint)
    assert session.settings.weights == ckpt and session.model.bundle.extractor.weights == ckpt
    assert annotate.model.weights_combo.currentText() == ckpt
    assert session.model.bundle is not old_bundle and session.model.bundle.classifier.vocabulary == list(TERMS)
    assert session.model.features.shape == old_features.shape
    assert not np.allclose(session.model.features, old_features)
    new_probs = session.model.probabilities.copy()
    assert new_probs.shape == (8, 3)

    # ... and can switch back to the previous model and forth again
    assert sec.switch_button.isEnabled()
    sec.switch_model()
    assert session.model.bundle is old_bundle and session.settings.weights == "random"
    np.testing.assert_allclose(session.model.probabilities, old_probs)
    assert sec.switch_button.text() == "Switch to fine-tuned model"
    sec.switch_model()
    assert session.settings.weights == ckpt
    np.testing.assert_allclose(session.model.probabilities, new_probs)

    # Stop during a run: cancelled, the current (fine-tuned) model stays in use
    sec.epochs_spin.setValue(3)
    sec.start()
    qtbot.waitUntil(lambda: sec.runner.bar.value() > 0 or not sec.runner.running, timeout=60_000)
    sec.stop()
    qtbot.waitUntil(lambda: not sec.runner.running, timeout=60_000)
    assert sec.runner.last_outcome == "cancelled"
    assert session.settings.weights == ckpt and sec.start_button.isEnabled()


def test_cli_gradcam_through_checkpoint(tmp_path):
    from PIL import Image

    from napari_ish_annotator.cli import main

    images, Y = make_images(6, seed=5)
    finetune(images, Y, VOCAB, small_config(), tmp_path / "ft.pt")
    Image.fromarray(images[0]).save(tmp_path / "e.png")
    assert main(["gradcam", str(tmp_path / "ft.pt"), str(tmp_path / "e.png"), "--term", "posterior",
                 "--out", str(tmp_path / "h.png"), "--npy", str(tmp_path / "h.npy"), "-q"]) == 0
    heat = np.load(tmp_path / "h.npy", allow_pickle=False)
    assert heat.shape == images[0].shape[:2] and heat.min() >= 0 and heat.max() <= 1
    assert np.allclose(heat, gradcam_mtl(tmp_path / "ft.pt", images[0], ["posterior"])[0], atol=1e-4)
    assert Image.open(tmp_path / "h.png").size == (72, 48)
    assert main(["gradcam", str(tmp_path / "ft.pt"), str(tmp_path / "e.png"), "--term", "wing",
                 "--out", str(tmp_path / "x.png"), "-q"]) == 2
