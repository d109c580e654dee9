"""The small trained model the CLI tests share (tests/test_cli*.py): synthetic data, random
weights, CPU; module-scoped fixtures, so each test module trains once."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_ish_annotator.cli import main
from napari_ish_annotator.core.synthetic.embryos import generate_dataset

FAST = ["--weights", "random", "--input-size", "96", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    generate_dataset(root / "data", n_images=30, stage="13-16", seed=3, size=(96, 192),
                     min_positives=4)
    return root


@pytest.fixture(scope="module")
def trained(cli_data) -> Path:
    model = cli_data / "model"
    code = main(["train", str(cli_data / "data" / "manifest.csv"), "--out", str(model),
                 "--ensemble", "5", "--cache", str(cli_data / "cache"), *FAST])
    assert code == 0
    return model
