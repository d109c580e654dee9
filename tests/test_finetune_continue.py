"""``finetune --init CKPT``: continue a fine-tuned network with new labels (CPU, random VGG16)."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch

from napari_ish_annotator.cli import main
from napari_ish_annotator.core.finetune import build_head, finetune, load_checkpoint, load_finetuned
from napari_ish_annotator.core.finetune.starting import apply_head, load_warm_start
from napari_ish_annotator.core.utils.errors import InputError
from test_finetune import VOCAB, make_images, small_config


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A checkpoint fine-tuned on VOCAB (anterior, posterior, ventral)."""
    out = tmp_path_factory.mktemp("continue") / "first.pt"
    images, Y = make_images(12, seed=1)
    finetune(images, Y, VOCAB, small_config(epochs=1), out, groups=[i // 2 for i in range(12)])
    return out


def test_head_keeps_shared_terms_and_gives_new_ones_fresh_outputs(first):
    new_vocab = ["ventral", "dorsal", "posterior"]
    start = load_warm_start(first, small_config(), new_vocab)
    assert any("dropped" in n and "anterior" in n for n in start.notes)
    assert any("new" in n and "dorsal" in n for n in start.notes)
    old = start.head_state
    torch.manual_seed(123)
    head = build_head(old["2.weight"].shape[1] // 9, 3, 32, 0.0, 3)
    fresh = {k: v.clone() for k, v in head.state_dict().items()}
    apply_head(head, start, new_vocab)
    state = head.state_dict()
    assert torch.equal(state["2.weight"], old["2.weight"])  # the shared hidden layer is kept
    assert torch.equal(state["5.weight"][0], old["5.weight"][2])  # ventral
    assert torch.equal(state["5.weight"][2], old["5.weight"][1])  # posterior
    assert torch.equal(state["5.bias"][0], old["5.bias"][2])
    assert torch.equal(state["5.weight"][1], fresh["5.weight"][1])  # dorsal: new, untouched


def test_continued_run_starts_from_the_checkpoint_and_records_it(first, tmp_path):
    images, Y = make_images(16, seed=4)
    new_vocab = ["posterior", "ventral", "dorsal"]
    Y_new = np.stack([Y[:, 1], Y[:, 2], Y[:, 0]], axis=1)  # "dorsal" is anterior's blob, renamed
    out = tmp_path / "continued.pt"
    result = finetune(images, Y_new, new_vocab, small_config(epochs=1, seed=5), out,
                      groups=[i // 2 for i in range(16)], init=first)
    assert any("anterior" in n for n in result.notes) and any("dorsal" in n for n in result.notes)
    ckpt, base = load_checkpoint(out), load_checkpoint(first)
    assert ckpt["vocabulary"] == new_vocab
    record = ckpt["continued_from"]
    assert record["file"] == "first.pt" and str(tmp_path) not in str(record)
    assert record["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert record["training_fingerprint"] == base["training_fingerprint"]
    assert ckpt["normalisation"] == base["normalisation"]
    # the frozen layers (features[:24]) are the checkpoint's, not seed 5's random ones
    for k, v in base["backbone_state_dict"].items():
        if int(k.split(".")[0]) < 24:
            assert torch.equal(v, ckpt["backbone_state_dict"][k]), k
    p = load_finetuned(out).predict_proba(images[:2])  # plugs in like any checkpoint
    assert p.shape == (2, 3)


def test_init_refuses_another_backbone_and_a_missing_file(first, tmp_path):
    images, Y = make_images(8, seed=2)
    with pytest.raises(InputError, match="resnet50"):
        load_warm_start(first, small_config(backbone="resnet50"), VOCAB)
    with pytest.raises(InputError, match="not found"):
        finetune(images, Y, VOCAB, small_config(), tmp_path / "x.pt", init=tmp_path / "no.pt")


def test_cli_finetune_init_notes_terms_and_output_is_usable_as_weights(first, tmp_path, capsys):
    from PIL import Image

    images, Y = make_images(12, seed=6)
    rows = []
    for i, (im, y) in enumerate(zip(images, Y, strict=True)):
        Image.fromarray(im).save(tmp_path / f"e{i}.png")
        terms = [t for t, v in zip(["posterior", "ventral", "dorsal"], y, strict=True) if v]
        rows.append({"image": f"e{i}.png", "terms": ";".join(terms), "gene": f"g{i // 2}"})
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "terms", "gene"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "next.pt"
    code = main(["finetune", str(manifest), "--init", str(first), "--out", str(out),
                 "--weights", "random", "--input-size", "64", "--epochs", "1", "--hidden", "32",
                 "--frozen", "24", "--no-augment", "--val-fraction", "0", "--device", "cpu"])
    assert code == 0
    err = capsys.readouterr().err
    assert "anterior" in err and "dropped" in err and "dorsal" in err
    assert load_checkpoint(out)["continued_from"]["file"] == "first.pt"
    assert main(["finetune", str(manifest), "--init", str(first), "--resume", "--out",
                 str(tmp_path / "y.pt"), "--weights", "random", "--device", "cpu"]) == 2
