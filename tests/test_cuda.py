"""The GPU paths, executed on a real CUDA device (marker ``cuda``; skipped without one).

Run them with ``pytest -m cuda tests/test_cuda.py -rs`` (``scripts/gpu-check.sh`` does).
Each compares the CUDA result with the CPU's fp32 result on the same images and weights.
Tolerances: reduced precision (fp16/bf16) and TF32 convolutions change features by about
1e-3 relative, so features are compared by cosine (>= 0.999) and maps/probabilities by
absolute difference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from napari_ish_annotator.core.backbones.devices import resolve_device
from napari_ish_annotator.core.backbones.weights import load_backbone
from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: torch.cuda.is_available() is False"),
]

S = 96  # small input: the point is the device path, not the 224 px shape


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embryos(n: int, seed: int = 0, size=(64, 160)) -> list[np.ndarray]:
    """Synthetic stained embryos (the real test images' look, fast to make)."""
    from napari_ish_annotator.core.synthetic.embryos import make_embryo

    rng = np.random.default_rng(seed)
    vocab = ["ventral nerve cord", "brain", "embryonic midgut"]
    return [make_embryo([vocab[i % 3]], vocab, rng, size=size)[0] for i in range(n)]


@pytest.fixture(scope="module")
def loaded():
    return load_backbone("vgg16", "random", seed=0)


def extractor(loaded, device: str, precision: str, **kw) -> FeatureExtractor:
    cfg = ExtractorConfig(weights="random", input_size=S, device=device, precision=precision,
                          batch_size=4)
    return FeatureExtractor(cfg, loaded=loaded, **kw)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_images")
    paths = []
    for i, img in enumerate(embryos(10)):
        paths.append(root / f"e{i}.bmp")
        Image.fromarray(img).save(paths[-1])
    return paths


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_cuda_extraction_matches_cpu_fp32(loaded, image_files, precision):
    """fp16/bf16 with channels-last on the GPU, decoded in worker processes, vs CPU fp32."""
    cpu = extractor(loaded, "cpu", "fp32").extract(image_files)
    fx = extractor(loaded, "cuda", precision)
    assert fx.channels_last and fx.decode_workers >= 0
    assert next(fx.module.parameters()).is_cuda
    gpu = fx.extract(image_files)
    assert gpu.dtype == np.float32 and np.isfinite(gpu).all()
    assert cosines(gpu, cpu).min() >= 0.999


def test_cuda_decoding_in_processes_equals_threads(loaded, image_files):
    procs = extractor(loaded, "cuda", "fp16", decode_workers=2).extract(image_files)
    threads = extractor(loaded, "cuda", "fp16", decode_workers=0).extract(image_files)
    assert cosines(procs, threads).min() >= 0.9999  # same inputs; kernels may differ in order


def test_device_auto_picks_cuda(loaded):
    from napari_ish_annotator.core.features.decoding import default_decode_workers
    from napari_ish_annotator.core.features.preprocess import resolve_precision
    from napari_ish_annotator.core.finetune import FinetuneConfig

    assert resolve_device("auto").type == "cuda"
    fx = FeatureExtractor(ExtractorConfig(weights="random", input_size=S), loaded=loaded)
    assert fx.device.type == "cuda" and fx.precision == "fp16"  # the defaults: auto, auto
    assert fx.decode_workers == default_decode_workers("cuda")
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert FinetuneConfig().device == "auto"


def _small_finetune(tmp_path, device: str):
    from napari_ish_annotator.core.finetune import FinetuneConfig, finetune

    images = embryos(12, seed=1)
    Y = np.zeros((12, 3), np.int8)
    for i in range(12):
        Y[i, i % 3] = 1
    Y[0, 1] = -1  # an unknown label is masked on the GPU too
    config = FinetuneConfig(weights="random", input_size=S, epochs=1, batch_size=4, hidden=32,
                            frozen="17", augment=True, val_fraction=0.25, device=device,
                            precision="auto")
    out = tmp_path / f"ft-{device}.pt"
    result = finetune(images, Y, ["a", "b", "c"], config, out)
    return images, result


def test_finetune_one_epoch_with_autocast_and_grad_scaler(tmp_path):
    from napari_ish_annotator.core.finetune import load_checkpoint, load_finetuned

    images, result = _small_finetune(tmp_path, "cuda")
    assert np.isfinite(result.history[0]["train_loss"])
    ckpt = load_checkpoint(result.checkpoint)
    assert "scaler_state_dict" in ckpt  # fp16 autocast ran with a gradient scaler
    assert all(v.device.type == "cpu" for v in ckpt["backbone_state_dict"].values())
    model = load_finetuned(result.checkpoint, device="cpu")  # written on the GPU, read on a CPU
    p_cpu = model.predict_proba(images[:4])
    assert p_cpu.shape == (4, 3) and np.isfinite(p_cpu).all()
    on_gpu = load_finetuned(result.checkpoint, device="cuda")
    assert on_gpu.device.type == "cuda"
    np.testing.assert_allclose(on_gpu.predict_proba(images[:4]), p_cpu, atol=1e-2)
    # and the checkpoint is a --weights file for GPU extraction
    loaded = load_backbone("vgg16", str(result.checkpoint))
    assert np.isfinite(extractor(loaded, "cuda", "fp16").extract(images[:2])).all()


def test_fine_tuned_model_moves_between_devices(tmp_path):
    from napari_ish_annotator.core.explain.finetuned import gradcam_mtl
    from napari_ish_annotator.core.finetune import load_finetuned

    images, result = _small_finetune(tmp_path, "cuda")
    model = load_finetuned(result.checkpoint, device="cuda")
    p_gpu = model.predict_proba(images[:3])
    maps_gpu = gradcam_mtl(model, images[0])
    model.network.to("cpu")
    assert model.device.type == "cpu"
    np.testing.assert_allclose(model.predict_proba(images[:3]), p_gpu, atol=1e-2)
    maps_cpu = gradcam_mtl(model, images[0])
    assert maps_cpu.shape == maps_gpu.shape == (3, *images[0].shape[:2])
    assert np.abs(maps_cpu - maps_gpu).max() <= 0.05


@pytest.fixture(scope="module")
def bundle(loaded):
    """A small logistic-ensemble model fitted on CPU fp32 features."""
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_fit_bundle

    images = embryos(16, seed=2)
    X = extractor(loaded, "cpu", "fp32").extract(images)
    Y = np.array([[i % 3 == 0, i % 2 == 0] for i in range(16)], dtype=np.int8)
    config = ExtractorConfig(weights="random", input_size=S, device="cpu", precision="fp32")
    return drive(iter_fit_bundle(X, Y, ["a", "b"], config, EnsembleConfig(n_members=3)))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gradcam_on_cuda_equals_cpu(loaded, bundle, precision):
    from napari_ish_annotator.core.explain.gradcam import gradcam_all_terms

    image = embryos(1, seed=5)[0]
    maps_cpu, p_cpu = gradcam_all_terms(bundle, extractor(loaded, "cpu", "fp32"), image)
    maps_gpu, p_gpu = gradcam_all_terms(bundle, extractor(loaded, "cuda", precision), image)
    assert maps_gpu.shape == maps_cpu.shape == (2, *image.shape[:2])
    assert np.abs(p_gpu - p_cpu).max() <= 0.02
    assert np.abs(maps_gpu - maps_cpu).max() <= 0.05


def test_bundle_predicts_the_same_on_cuda_and_cpu(loaded, bundle, image_files):
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_predict

    p_cpu = drive(iter_predict(bundle, image_files, device="cpu", loaded=loaded))
    p_gpu = drive(iter_predict(bundle, image_files, device="cuda", loaded=loaded))
    assert p_gpu.shape == p_cpu.shape == (len(image_files), 2)
    assert np.abs(p_gpu - p_cpu).max() <= 0.02
    # the CPU trunk the bundle's extractor shares stays on the CPU
    assert next(loaded.module.parameters()).device.type == "cpu"


def test_cli_device_auto_trains_and_predicts_on_cuda_like_the_cpu(tiny_dataset, tmp_path):
    """`ish-annotator train/predict --device auto` on a GPU machine: the same model as the CPU."""
    import csv

    from napari_ish_annotator.cli import main

    fast = ["--weights", "random", "--input-size", str(S), "--quiet", "--no-cache"]
    model = tmp_path / "model"
    assert main(["train", str(tiny_dataset), "--out", str(model), "--ensemble", "3",
                 "--device", "auto", *fast]) == 0
    images = tiny_dataset.parent / "images"
    tables = {}
    for device in ("auto", "cpu"):
        out = tmp_path / f"pred-{device}.csv"
        assert main(["predict", str(model), str(images), "--out", str(out), "--device", device,
                     "--quiet", "--no-cache"]) == 0
        with open(out, newline="") as fh:
            rows = list(csv.reader(fh))
        tables[device] = np.array([[float(v) for v in r[1:-1]] for r in rows[1:]])  # not calls
    assert tables["auto"].shape == tables["cpu"].shape and len(tables["cpu"]) == 24
    assert np.abs(tables["auto"] - tables["cpu"]).max() <= 0.02


def test_batch_augmentation_on_cuda_stays_on_the_device():
    """Issue 28: the fine-tuning augmentation of a whole batch runs on the GPU."""
    from napari_ish_annotator.core.finetune.data import augment_batch

    x = torch.randint(40, 200, (16, 3, S, S), dtype=torch.uint8, device="cuda")
    same = augment_batch(x, 0.0, 0.0, [230, 220, 210], jitter=0.0, shift=0.0)
    assert same.is_cuda and torch.equal(same, x)
    moved = augment_batch(x, 8.0, 0.08, [230, 220, 210])
    assert moved.is_cuda and moved.dtype == torch.uint8 and not torch.equal(moved, x)


def test_uint8_batches_normalised_on_cuda_equal_the_cpu_input(loaded, image_files):
    """Issue 28: decoding workers hand over uint8; the GPU normalises them identically."""
    fx = extractor(loaded, "cuda", "fp32", decode_workers=0)
    assert fx.normalise_on_device
    host = extractor(loaded, "cuda", "fp32", decode_workers=0)
    host.normalise_on_device = False
    np.testing.assert_allclose(fx.extract(image_files), host.extract(image_files), rtol=1e-5,
                               atol=1e-5)
