"""FeatureExtractor: preprocessing, activations, batching, precision, progress and cancel."""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from napari_ish_annotator.core.backbones.weights import load_backbone
from napari_ish_annotator.core.features import decoding, extractor
from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
from napari_ish_annotator.core.features.preprocess import (
    CPU_AUTO_BF16,
    border_colour,
    cpu_has_native_bf16,
    resolve_precision,
)
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.core.utils.progress import Cancelled, CancelToken

S = 64  # small input: the point of these tests is not the 224 px shape


@pytest.fixture(scope="module")
def loaded():
    return load_backbone("vgg16", "random", seed=0)


def make(loaded, cache_dir=None, decode_workers=None, **kw) -> FeatureExtractor:
    cfg = dict(weights="random", input_size=S, device="cpu", precision="fp32", batch_size=3)
    cfg.update(kw)
    return FeatureExtractor(ExtractorConfig(**cfg), cache_dir=cache_dir, loaded=loaded,
                            decode_workers=decode_workers)


def embryos(n: int, seed: int = 0, size=(40, 80)) -> list[np.ndarray]:
    """Pale ellipses with a dark stain blob at a random place, on a light background."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(n):
        img = np.full((h, w, 3), (215, 210, 200), np.uint8)
        body = ((yy - h / 2) / (h * 0.4)) ** 2 + ((xx - w / 2) / (w * 0.45)) ** 2 < 1
        img[body] = (185, 175, 160)
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        stain = body & (((yy - cy) / 5.0) ** 2 + ((xx - cx) / 9.0) ** 2 < 1)
        img[stain] = (70, 50, 120)
        out.append(img)
    return out


def test_preprocess_shape_normalisation_and_whole_image(loaded):
    fx = make(loaded)
    x = fx.preprocess(np.full((30, 90, 3), 128, np.uint8))
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    expected = [(128 / 255 - m) / s for m, s in zip(fx.mean, fx.std, strict=True)]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-3)
    # no centre crop: a stripe at the far left of a wide image survives the resize
    img = np.full((30, 90, 3), 200, np.uint8)
    img[:, :3] = 0
    x = fx.preprocess(img)
    dark = (0 - fx.mean[0]) / fx.std[0]
    assert float(x[0, :, 0].mean()) < dark / 2
    # gray and RGBA arrays are accepted like files would be
    assert fx.preprocess(np.full((20, 20), 128, np.uint8)).shape == (3, S, S)


def test_keep_aspect_pads_with_the_border_colour(loaded):
    img = np.full((32, 64, 3), (210, 200, 190), np.uint8)
    img[12:20, 20:44] = (60, 40, 110)
    assert border_colour(img) == (210, 200, 190)
    plain = make(loaded).preprocess(img)
    padded = make(loaded, keep_aspect=True).preprocess(img)
    bg = torch.tensor([(v / 255 - m) / s for v, m, s in zip((210, 200, 190), loaded.mean,
                                                            loaded.std, strict=True)])
    # padded: the top and bottom quarters are pure background
    top = padded[:, : S // 4 - 1, :].reshape(3, -1)
    assert torch.allclose(top, bg[:, None].expand_as(top), atol=1e-3)
    # the stain keeps its 3:1 aspect when padded and is stretched vertically when not
    def stain_rows(x):
        return int((x[2] - x[0] > 0).any(dim=1).sum())  # blue above red marks the stain
    assert stain_rows(plain) == pytest.approx(2 * stain_rows(padded), abs=2)


def test_activation_shapes_for_each_layer(loaded):
    batch = torch.randn(2, 3, S, S)
    for layer, shape in {"17": (256, 8, 8), "21": (512, 8, 8), "24": (512, 4, 4),
                         "30": (512, 4, 4)}.items():
        fx = make(loaded, layer=layer)
        assert fx.shape == shape and fx.dim == int(np.prod(shape))
        assert tuple(fx.activation(batch).shape) == (2, *shape)
    assert make(loaded).layer == "21"  # default layer


def test_only_the_truncated_network_runs_and_original_is_untouched(loaded):
    fx = make(loaded, layer="17", precision="bf16") if cpu_has_native_bf16() else \
        make(loaded, layer="17")
    def n_params(m):
        return sum(p.numel() for p in m.parameters())

    assert n_params(fx.module) == n_params(loaded.truncated("17")) < n_params(loaded.module)
    fx.extract(embryos(1))
    # the private copy changed dtype / memory format; the shared trunk did not
    assert loaded.module[0].weight.dtype == torch.float32
    assert loaded.module[0].weight.is_contiguous()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_conv_relu_gives_the_same_activations(loaded, precision, channels_last):
    """The CPU trunk runs ReLU as a post-op of the conv (one oneDNN call); same numbers."""
    from napari_ish_annotator.core.backbones.trunk import fuse_conv_relu

    probe = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    if fuse_conv_relu(probe) is probe:  # returned unchanged: the build lacks the op
        pytest.skip("this torch build has no fused oneDNN convolution")
    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    fx = make(loaded, precision=precision)
    fx.channels_last = channels_last
    fused = fx.module
    assert sum(type(m) is torch.nn.ReLU for m in fused) == 0  # every ReLU of relu4_2 fused
    plain = copy.deepcopy(loaded.truncated(fx.layer)).to(fx.dtype)  # .to() is in place
    assert fuse_conv_relu(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh())) \
        is not None  # nothing to fuse: returned as it was
    x = torch.stack([fx.preprocess(im) for im in embryos(2)]).to(fx.dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x).float(), plain(x).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool_replacement_gives_the_same_values(dtype):
    from napari_ish_annotator.core.backbones.trunk import replace_max_pools

    pool = torch.nn.Sequential(torch.nn.MaxPool2d(2, 2))
    fast = replace_max_pools(pool)
    assert type(fast[0]) is not torch.nn.MaxPool2d
    g = torch.Generator().manual_seed(0)
    for shape in [(2, 8, 16, 16), (1, 3, 15, 17)]:  # odd sides: floor, as MaxPool2d
        x = torch.randn(shape, generator=g).to(dtype)
        x[0, 0, 0, 0] = float("nan")
        for xm in (x, x.contiguous(memory_format=torch.channels_last)):
            y = fast(xm)
            torch.testing.assert_close(y, pool(xm), equal_nan=True, rtol=0, atol=0)
            assert y.is_contiguous(memory_format=torch.channels_last) == (xm is not x)
    other = torch.nn.Sequential(torch.nn.MaxPool2d(3, 2, padding=1))
    assert replace_max_pools(other) is other  # ResNet's pool is left alone


def test_compute_batch_keeps_activations_under_the_mmap_threshold(loaded, monkeypatch):
    from napari_ish_annotator.core.backbones.trunk import compute_batch

    assert compute_batch("cuda", 10**9, 8) == 8  # GPUs take the whole batch
    assert compute_batch("cpu", 6_422_528, 8) == 5  # 64x224x224 bf16: 5 images < 32 MB
    assert compute_batch("cpu", 10**9, 8) == 1
    fx = make(loaded, batch_size=16, input_size=224)
    assert fx.compute_batch == 2  # 64x224x224 fp32 = 12.8 MB per image
    imgs = embryos(3)
    whole = make(loaded, batch_size=3).extract(imgs)
    monkeypatch.setattr(extractor, "compute_batch", lambda *_: 1)  # as a large layer gets
    small = make(loaded, batch_size=3)
    assert small.compute_batch == 1
    np.testing.assert_array_equal(small.extract(imgs), whole)  # three network calls, one output


def test_batched_equals_unbatched(loaded):
    imgs = embryos(5)
    one = make(loaded, batch_size=1).extract(imgs)
    many = make(loaded, batch_size=3).extract(imgs)
    assert one.shape == (5, 512 * 8 * 8) and one.dtype == np.float32
    # equal up to one float16 step (features are rounded through float16, the cache's dtype)
    np.testing.assert_allclose(many, one, rtol=2e-3, atol=1e-3 * float(np.abs(one).max()))
    assert not np.allclose(one[0], one[1])  # different images, different features


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_close_to_fp32(loaded):
    imgs = embryos(3)
    f32 = make(loaded).extract(imgs)
    fx16 = make(loaded, precision="bf16")
    assert fx16.channels_last and fx16.module[0].weight.dtype == torch.bfloat16
    b16 = fx16.extract(imgs)
    assert np.linalg.norm(b16 - f32) / np.linalg.norm(f32) < 3e-2


def test_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("bf16", cuda) == "bf16"
    expected = "bf16" if (CPU_AUTO_BF16 and cpu_has_native_bf16()) else "fp32"
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(InputError, match="fp16 is for GPUs"):
        resolve_precision("fp16", cpu)
    with pytest.raises(InputError, match="unknown precision"):
        resolve_precision("int8", cpu)


def test_bad_settings_are_input_errors(loaded):
    with pytest.raises(InputError, match="layer '5'"):
        make(loaded, layer="5")
    with pytest.raises(InputError, match="batch size"):
        make(loaded, batch_size=0)
    with pytest.raises(InputError, match="input size"):
        make(loaded, input_size=8)
    with pytest.raises(InputError, match="loaded backbone is vgg16"):
        make(loaded, backbone="resnet50")


def test_paths_and_arrays_give_the_same_features(loaded, tmp_path):
    imgs = embryos(2)
    paths = []
    for i, im in enumerate(imgs):
        p = tmp_path / f"e{i}.png"
        Image.fromarray(im).save(p)
        paths.append(p)
    fx = make(loaded)
    X = fx.extract(paths)
    np.testing.assert_array_equal(X, fx.extract(imgs))
    # results can go straight into a preallocated (memory-mapped) array
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32,
                                   shape=X.shape)
    assert fx.extract(paths, out=mm) is mm
    mm.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "X.npy"), X)
    with pytest.raises(ValueError, match="out has shape"):
        fx.extract(paths, out=np.empty((3, 5), np.float32))
    with pytest.raises(InputError):
        fx.extract([tmp_path / "missing.png"])


def test_activation_with_grad_shares_the_trunk(loaded):
    fx = make(loaded)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    y = fx.activation(x, grad=True)
    assert y.requires_grad and y.shape == (1, 512, 4, 4)
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    conv = loaded.module[19]
    assert conv.weight.grad is not None  # gradients reach the shared parameters
    loaded.module.zero_grad(set_to_none=True)
    # the inference path gives the same activation (up to float rounding)
    np.testing.assert_allclose(fx.activation(x.detach()).numpy(), y.detach().numpy(),
                               rtol=1e-4, atol=1e-4)


def test_progress_per_batch_and_cancel_at_batch_boundary(loaded, tmp_path):
    imgs = embryos(7)
    steps = []
    make(loaded).extract(imgs, progress=lambda d, t, m: steps.append((d, t)))
    assert steps == [(0, 7), (3, 7), (6, 7), (7, 7)]

    fx = make(loaded, cache_dir=tmp_path)
    calls = []
    fx.module.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    token = CancelToken()

    def on_progress(done, total, message):
        if done >= 3:
            token.cancel()

    with pytest.raises(Cancelled):
        fx.extract(imgs, progress=on_progress, cancel=token)
    assert calls == [3]  # stopped after the first batch, before the second was computed
    assert len(fx.cache) == 3  # the finished batch is kept ...
    assert not list(fx.cache.folder.glob("*.tmp-*"))  # ... and nothing is half-written
    # a rerun computes only what is missing
    calls.clear()
    fx.extract(imgs)
    assert calls == [3, 1]


@pytest.mark.parametrize("cached", [False, True])
def test_on_error_skip_fills_nan_rows_and_reports_them(loaded, tmp_path, cached):
    """A truncated PNG among good ones: "raise" stops naming it, "skip" extracts the rest."""
    paths = []
    for i, img in enumerate(embryos(5)):
        paths.append(tmp_path / f"e{i}.png")
        Image.fromarray(img).save(paths[-1])
    bad = tmp_path / "truncated.png"
    bad.write_bytes(paths[0].read_bytes()[:120])
    missing = tmp_path / "gone.png"
    images = [paths[0], paths[1], bad, paths[2], paths[3], paths[4]]
    cache = tmp_path / "cache" if cached else None
    with pytest.raises(InputError, match="truncated.png"):
        make(loaded, cache).extract(images)
    assert make(loaded).last_failed == []

    fx = make(loaded, cache)
    X = fx.extract(images, on_error="skip")
    reference = make(loaded).extract(paths)
    assert np.isnan(X[2]).all()
    np.testing.assert_array_equal(np.delete(X, 2, axis=0), reference)
    assert [i for i, _ in fx.last_failed] == [2]
    assert "truncated.png" in fx.last_failed[0][1]
    if cached:  # nothing cached for the bad image; a rerun (all hits) still reports it
        assert len(fx.cache) == 5
        out = np.empty((len(images) + 1, fx.dim), np.float16)
        X2 = fx.extract([*images, missing], on_error="skip", out=out)
        assert X2 is out and np.isnan(X2[[2, 6]]).all()
        assert [i for i, _ in fx.last_failed] == [2, 6] and "gone.png" in fx.last_failed[1][1]
        np.testing.assert_array_equal(np.delete(X2, [2, 6], axis=0), reference)
    with pytest.raises(ValueError, match="on_error"):
        fx.extract(images, on_error="ignore")


def test_default_decode_workers(loaded):
    assert decoding.default_decode_workers("cuda", 16) == 8
    assert decoding.default_decode_workers("cuda", 4) == 2
    assert decoding.default_decode_workers("cuda", 2) == 0
    assert decoding.default_decode_workers("cpu", 16) == 0
    assert decoding.default_decode_workers("mps", 16) == 0
    assert make(loaded).decode_workers == 0  # CPU: threads


def _png_files(tmp_path, n: int) -> list:
    paths = []
    for i, img in enumerate(embryos(n, seed=3)):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def test_decoding_in_processes_equals_threads_and_reports_bad_files(loaded, tmp_path):
    """DataLoader workers (the GPU default) give exactly the thread pool's features."""
    import multiprocessing

    paths = _png_files(tmp_path, 7)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(paths[0].read_bytes()[:120])
    reference = make(loaded, decode_workers=0).extract(paths)
    fx = make(loaded, decode_workers=2)
    steps = []
    X = fx.extract(paths, progress=lambda d, t, m: steps.append(d))
    np.testing.assert_array_equal(X, reference)
    assert steps == [0, 3, 6, 7]
    images = [paths[0], paths[1], bad, *paths[2:]]
    with pytest.raises(InputError, match="truncated.png"):
        fx.extract(images)
    X = fx.extract(images, on_error="skip")
    assert np.isnan(X[2]).all() and [i for i, _ in fx.last_failed] == [2]
    threads = make(loaded, decode_workers=0)
    np.testing.assert_array_equal(X, threads.extract(images, on_error="skip"))
    assert fx.last_failed == threads.last_failed
    # closing the extraction after one batch (cancel) ends the workers at once
    gen = fx.iter_extract(paths)
    next(gen)
    next(gen)
    gen.close()
    assert not multiprocessing.active_children()


@pytest.mark.slow
def test_decoding_in_spawned_processes(loaded, tmp_path, monkeypatch):
    """With other threads running (napari) workers are spawned, not forked."""
    import threading

    import torch.utils.data

    paths = _png_files(tmp_path, 4)
    reference = make(loaded, decode_workers=0, batch_size=2).extract(paths)
    contexts, real = [], torch.utils.data.DataLoader

    def loader(*args, **kwargs):
        contexts.append(kwargs.get("multiprocessing_context"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, name="as napari's worker", daemon=True)
    other.start()
    try:
        X = make(loaded, decode_workers=1, batch_size=2).extract(paths)
    finally:
        stop.set()
        other.join()
    assert contexts == ["spawn"]
    np.testing.assert_array_equal(X, reference)


def shm_free(monkeypatch, free: int) -> None:
    """/dev/shm with ``free`` bytes left (containers often give it 64 MB), as os.statvfs
    tells the decoding code."""
    real = os.statvfs

    def statvfs(path):
        if str(path) != "/dev/shm":
            return real(path)
        return os.statvfs_result((4096, 1, free, free, free, 0, 0, 0, 0, 255))

    monkeypatch.setattr(os, "statvfs", statvfs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/shm is Linux's")
def test_too_little_shared_memory_falls_back_to_threads(loaded, tmp_path, monkeypatch):
    """Worker processes hand batches over in /dev/shm; when it is small they are not used."""
    fx = make(loaded, decode_workers=4)
    batch_bytes = 3 * 3 * S * S * 4
    shm_free(monkeypatch, 8 * batch_bytes)
    assert decoding.process_workers(4, 10, batch_bytes) == 2
    assert decoding.process_workers(4, 2, batch_bytes) == 1
    assert decoding.process_workers(4, 1, batch_bytes) == 0  # one batch: nothing to overlap
    shm_free(monkeypatch, 3 * batch_bytes)
    assert decoding.process_workers(4, 10, batch_bytes) == 0

    def no_processes(*args, **kwargs):
        raise AssertionError("worker processes used without shared memory")

    monkeypatch.setattr(extractor, "decoded_in_processes", no_processes)
    paths = _png_files(tmp_path, 7)
    np.testing.assert_array_equal(fx.extract(paths), make(loaded, decode_workers=0).extract(paths))
