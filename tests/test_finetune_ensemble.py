"""Ensembles of fine-tuned networks (issue 10 part 4): one checkpoint, K members, mean and spread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_ish_annotator.core.backbones.weights import load_backbone
from napari_ish_annotator.core.explain.finetuned import gradcam_mtl
from napari_ish_annotator.core.finetune import (
    FinetunedEnsemble,
    finetune,
    finetune_ensemble,
    iter_finetune_ensemble,
    load_checkpoint,
    load_ensemble,
    load_finetuned,
)
from napari_ish_annotator.core.utils.errors import InputError
from test_finetune import VOCAB, make_images, small_config

GROUPS = [f"gene{i // 2}" for i in range(12)]


def config(**kw):
    return small_config(**{"epochs": 2, "val_fraction": 0.34, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One ensemble of two members and the plain run member 1 should equal."""
    d = tmp_path_factory.mktemp("ens")
    images, Y = make_images(12, seed=5)
    res = finetune_ensemble(images, Y, VOCAB, config(), d / "ens.pt", 2, groups=GROUPS)
    # random base weights are seeded by the run's seed: give the plain run the ensemble's base
    single = finetune(images, Y, VOCAB, config(seed=1), d / "single1.pt", groups=GROUPS,
                      loaded=load_backbone("vgg16", "random", 0))
    return d, images, Y, res, single


def test_ensemble_file_layout_and_members_are_ordinary_runs(trained):
    d, images, Y, res, single = trained
    assert sorted(p.name for p in d.iterdir()) == ["ens.pt", "single1.pt"]  # parts removed
    raw = torch.load(d / "ens.pt", weights_only=True)  # tensors and plain containers only
    ens = raw["ensemble"]
    assert ens["k"] == 2 and ens["seeds"] == [0, 1] and len(ens["members"]) == 2
    assert ens["val_groups"][0] != ens["val_groups"][1]  # other validation genes per member
    scores = [-1 if s is None else s for s in ens["best_scores"]]
    assert ens["representative"] == res.representative == int(np.argmax(scores))
    rep = ens["members"][ens["representative"]]
    # the top level is the representative's complete checkpoint, without optimizer state
    for key, v in rep["backbone_state_dict"].items():
        assert torch.equal(raw["backbone_state_dict"][key], v)
    assert "optimizer_state_dict" not in rep and "optimizer_state_dict" not in raw
    # member 1 is the plain run with seed 1 from the same base weights (split, batches, init)
    member1 = ens["members"][1]
    plain = load_checkpoint(single.checkpoint)
    assert member1["split"] == plain["split"] and member1["history"][0]["train_loss"] == pytest.approx(
        plain["history"][0]["train_loss"], rel=1e-6)
    for key, v in plain["head_state_dict"].items():
        assert torch.allclose(member1["head_state_dict"][key], v, atol=1e-6), key


def test_round_trip_predictions_mean_and_spread(trained):
    d, images, Y, res, _ = trained
    ensemble = load_ensemble(d / "ens.pt")
    assert isinstance(ensemble, FinetunedEnsemble) and len(ensemble.members) == 2
    assert ensemble.vocabulary == VOCAB
    p = ensemble.predict_proba(images[:5], batch_size=2)
    assert p.mean.shape == p.std.shape == (5, 3) and p.members.shape == (2, 5, 3)
    # the same as loading each member on its own and averaging
    raw = load_checkpoint(d / "ens.pt")
    each = np.stack([load_finetuned(m).predict_proba(images[:5]) for m in raw["ensemble"]["members"]])
    np.testing.assert_allclose(p.members, each, atol=1e-6)
    np.testing.assert_allclose(p.mean, each.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(p.std, each.std(axis=0), atol=1e-6)
    assert p.std.max() > 1e-4  # different seeds: the members disagree somewhere
    # loading again gives the same predictions
    again = load_ensemble(d / "ens.pt").predict_proba(images[:5])
    np.testing.assert_array_equal(again.mean, p.mean)
    # a single checkpoint is an ensemble of one with zero spread
    one = load_ensemble(d / "single1.pt").predict_proba(images[:2])
    assert one.members.shape[0] == 1 and not one.std.any()


def test_weights_and_load_finetuned_use_the_representative(trained):
    d, images, _, res, _ = trained
    raw = load_checkpoint(d / "ens.pt")
    rep = raw["ensemble"]["members"][res.representative]
    lb = load_backbone("vgg16", str(d / "ens.pt"))  # --weights CKPT
    for key, v in rep["backbone_state_dict"].items():
        assert torch.equal(lb.module.state_dict()[key], v)
    single = load_finetuned(d / "ens.pt").predict_proba(images[:3])
    np.testing.assert_allclose(single, load_ensemble(d / "ens.pt").predict_proba(images[:3])
                               .members[res.representative], atol=1e-6)
    # Grad-CAM through an ensemble is the mean of its members' maps
    ensemble = load_ensemble(d / "ens.pt")
    maps = gradcam_mtl(ensemble, images[1])
    each = [gradcam_mtl(m, images[1]) for m in ensemble.members]
    np.testing.assert_allclose(maps, np.mean(each, axis=0), atol=1e-6)


def test_resume_rules(trained):
    d, images, Y, res, _ = trained
    out = d / "ens.pt"
    stamp = out.stat().st_mtime_ns
    again = finetune_ensemble(images, Y, VOCAB, config(), out, 2, groups=GROUPS, resume=True)
    assert again.representative == res.representative
    assert [m.history for m in again.members] == [m.history for m in res.members]
    assert out.stat().st_mtime_ns == stamp  # nothing rewritten
    with pytest.raises(InputError, match="ensemble of 2 networks, not 3"):
        finetune_ensemble(images, Y, VOCAB, config(), out, 3, groups=GROUPS, resume=True)
    with pytest.raises(InputError, match="complete"):
        finetune_ensemble(images, Y, VOCAB, config(epochs=4), out, 2, groups=GROUPS, resume=True)
    Y_other = Y.copy()
    Y_other[0, 0] = 1 - Y_other[0, 0]
    with pytest.raises(InputError, match="different training images or labels"):
        finetune_ensemble(images, Y_other, VOCAB, config(), out, 2, groups=GROUPS, resume=True)
    with pytest.raises(InputError, match="single fine-tuned network"):
        finetune_ensemble(images, Y, VOCAB, config(), d / "single1.pt", 2, groups=GROUPS,
                          resume=True)
    with pytest.raises(InputError, match="at least 2"):
        finetune_ensemble(images, Y, VOCAB, config(), d / "x.pt", 1)
    assert out.stat().st_mtime_ns == stamp


@pytest.mark.slow  # an interrupted and a resumed ensemble run
def test_interrupted_ensemble_resumes_to_the_same_networks(trained, tmp_path):
    _, images, Y, res, _ = trained
    out = tmp_path / "ens.pt"
    gen = iter_finetune_ensemble(images, Y, VOCAB, config(), out, 2, groups=GROUPS)
    for step in gen:
        if step.member == 1 and step.kind == "batch" and step.epoch == 2:
            break
    gen.close()  # cancelled in member 2's second epoch
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.member0.pt", "ens.member1.pt"]
    assert load_checkpoint(tmp_path / "ens.member1.pt")["epoch"] == 1
    resumed = finetune_ensemble(images, Y, VOCAB, config(), out, 2, groups=GROUPS, resume=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ens.pt"]
    assert [len(m.history) for m in resumed.members] == [len(m.history) for m in res.members]
    p_resumed = load_ensemble(out).predict_proba(images[:4])
    p_straight = load_ensemble(res.checkpoint).predict_proba(images[:4])
    np.testing.assert_allclose(p_resumed.members, p_straight.members, atol=1e-5)


def test_cli_finetune_ensemble_and_gradcam(tmp_path, capsys):
    from PIL import Image

    from napari_ish_annotator.cli import main

    images, Y = make_images(8, seed=6)
    rows = ["image,gene,terms"]
    for i, (im, y) in enumerate(zip(images, Y, strict=True)):
        Image.fromarray(im).save(tmp_path / f"im{i}.png")
        rows.append(f"im{i}.png,g{i // 2}," + ";".join(t for t, v in zip(VOCAB, y, strict=True) if v))
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "ens.pt"
    args = ["finetune", str(tmp_path / "m.csv"), "--out", str(out), "--ensemble", "2",
            "--weights", "random", "--input-size", "48", "--epochs", "1", "--hidden", "16",
            "--frozen", "24", "--no-augment", "--batch-size", "4", "--device", "cpu",
            "--terms", ";".join(VOCAB)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "ensemble of 2 vgg16 networks" in err and "--weights" in err
    assert load_checkpoint(out)["ensemble"]["k"] == 2
    assert main(["gradcam", str(out), str(tmp_path / "im1.png"), "--term", VOCAB[0], "--out",
                 str(tmp_path / "g.png"), "--device", "cpu", "-q"]) == 0
    assert (tmp_path / "g.png").is_file()
    assert main([*args, "--resume", "--ensemble", "3"]) == 2
    assert "not 3" in capsys.readouterr().err
