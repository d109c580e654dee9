"""The GPU's fine-tuning paths, checked on the CPU (issue 28): augmentation of a whole batch
at once, and channels-last training whose checkpoint loads on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_ish_annotator.core.finetune import FinetuneConfig, finetune, load_finetuned
from napari_ish_annotator.core.finetune import trainer as trainer_module
from napari_ish_annotator.core.finetune.data import augment_batch, augmenter, batch_augmenter

FILL = [230, 220, 210]


def batch(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(40, 200, (1, 3, size, size), generator=g, dtype=torch.uint8)
    return x.repeat(n, 1, 1, 1)  # the same image n times: any difference is the augmentation


def test_no_ranges_leave_the_batch_unchanged():
    x = batch()
    y = augment_batch(x, rotation=0.0, scale=0.0, fill=FILL, jitter=0.0, shift=0.0)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert torch.equal(y, x)


def test_each_image_gets_its_own_draw_and_the_corners_the_fill():
    torch.manual_seed(0)
    x = batch(8)
    y = augment_batch(x, rotation=40.0, scale=0.0, fill=FILL, jitter=0.0, shift=0.0)
    distinct = {bytes(y[i].flatten().tolist()) for i in range(8)}
    assert len(distinct) >= 6  # a draw within ~2 degrees of 0 may leave 32 px unchanged
    corners = y[:, :, 0, 0].tolist() + y[:, :, -1, -1].tolist()
    assert sum(c == FILL for c in corners) >= 8  # rotated away from most corners
    # the centre pixel stays where it was (rotation and scale are about the centre)
    assert torch.equal(y[:, :, 16, 16], x[:, :, 16, 16])


def test_colour_jitter_stays_within_its_ranges():
    torch.manual_seed(1)
    x = torch.full((64, 3, 8, 8), 120, dtype=torch.uint8)
    x[:, 2] = 150  # a little colour, for saturation and hue to act on
    y = augment_batch(x, rotation=0.0, scale=0.0, fill=FILL, shift=0.0).float()
    ratio = y.mean(dim=(1, 2, 3)) / x.float().mean()
    assert 0.7 < float(ratio.min()) < 0.97 and 1.03 < float(ratio.max()) < 1.3
    assert y.std(dim=0).mean() > 1.0  # the draws differ between images


def test_the_cpu_keeps_the_per_image_augmentation():
    """On the CPU the batch goes image by image through augmenter: results unchanged."""
    config = FinetuneConfig(weights="random")
    x = batch(3, seed=2)
    torch.manual_seed(5)
    got = batch_augmenter(config, FILL, torch.device("cpu"))(x)
    torch.manual_seed(5)
    one = augmenter(config, FILL)
    assert torch.equal(got, torch.stack([one(xi) for xi in x]))


@pytest.mark.slow  # two short fine-tuning runs
def test_channels_last_training_checkpoint_loads_on_the_cpu(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = [rng.integers(60, 220, (40, 56, 3), dtype=np.uint8) for _ in range(8)]
    Y = np.array([[i % 2, (i // 2) % 2] for i in range(8)], np.int8)
    cfg = FinetuneConfig(weights="random", input_size=32, epochs=1, batch_size=4, hidden=8,
                         frozen="24", augment=True, val_fraction=0.0, device="cpu")
    plain = finetune(images, Y, ["a", "b"], cfg, tmp_path / "plain.pt")
    monkeypatch.setattr(trainer_module, "channels_last_for", lambda device: True)
    last = finetune(images, Y, ["a", "b"], cfg, tmp_path / "last.pt")
    model = load_finetuned(tmp_path / "last.pt", device="cpu")
    p_last = model.predict_proba(images[:3])
    p_plain = load_finetuned(tmp_path / "plain.pt", device="cpu").predict_proba(images[:3])
    assert np.isfinite(p_last).all()
    np.testing.assert_allclose(p_last, p_plain, atol=1e-3)  # the same training, another layout
    assert last.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"],
                                                          rel=1e-3)
