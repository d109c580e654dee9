"""What "opening" images means, without a GUI: listing inputs and cheap header checks.

The annotation session (and anything else that opens user folders: notebooks, scripts) lists
image files, folders and manifest CSVs here and learns which files are unreadable from their
headers only, so thousands of images are checked in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .progress import Progress, ProgressGen

#: images checked per progress step while opening
CHECK_CHUNK = 100
_NOT_IMAGES = {".csv", ".txt", ".json"}


def check_image_header(path: Path) -> str | None:
    """Why ``path`` is not a readable image (None if it is), reading only its header."""
    try:
        if not path.is_file():
            return "file not found"
        if path.stat().st_size == 0:
            return "file is empty"
        if path.suffix.lower() in {".tif", ".tiff"}:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if not tif.pages:
                    return "TIFF has no pages"
            return None
        from PIL import Image

        with Image.open(path) as im:
            im.size  # noqa: B018 - forces header parse
        return None
    except Exception as exc:  # any decoder error means: skip and report
        return f"cannot be read as an image ({type(exc).__name__}: {exc})"


@dataclass(frozen=True)
class ScannedInputs:
    """Every image named by the inputs (not yet checked), with manifest metadata if any."""

    paths: tuple[Path, ...]
    genes: tuple[str | None, ...]
    stages: tuple[str | None, ...]
    manifest_terms: tuple[tuple[str, ...] | None, ...]
    vocabulary: tuple[str, ...]
    dataset: Any  # the first manifest's core.manifest.Dataset, or None
    skipped: tuple[str, ...]
    source: Path

    def subset(self, keep: Sequence[int], skipped: Sequence[str] = ()) -> ScannedInputs:
        pick = lambda seq: tuple(seq[i] for i in keep)  # noqa: E731
        return ScannedInputs(pick(self.paths), pick(self.genes), pick(self.stages),
                             pick(self.manifest_terms), self.vocabulary, self.dataset,
                             (*self.skipped, *skipped), self.source)


def scan_inputs(inputs: Sequence[str | Path]) -> ScannedInputs:
    """List image files, folders (a dataset folder opens its manifest.csv) and manifest CSVs."""
    from .images import SUPPORTED_SUFFIXES, list_images
    from .manifest import read_manifest

    items = [Path(p) for p in inputs]
    if not items:
        raise InputError("nothing to open; choose image files, a folder or a manifest CSV")
    items = [i / "manifest.csv" if i.is_dir() and (i / "manifest.csv").is_file() else i
             for i in items]
    paths: list[Path] = []
    genes: list[str | None] = []
    stages: list[str | None] = []
    mterms: list[tuple[str, ...] | None] = []
    vocab: list[str] = []
    skipped: list[str] = []
    dataset = None
    for item in items:
        if item.suffix.lower() == ".csv":
            ds = read_manifest(item, require_positives=False, check_files=False)
            dataset = ds if dataset is None else dataset
            for sample in ds.samples:
                paths.append(Path(sample.image))
                genes.append(sample.gene)
                stages.append(sample.stage)
                mterms.append(tuple(sample.terms))
            vocab += [t for t in ds.vocabulary if t not in vocab]
            continue
        if item.is_dir():
            listed = list_images(item)
            skipped += [f"{p}: not a supported image type ({p.suffix or 'no suffix'})"
                        for p in sorted(item.iterdir())
                        if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() not in SUPPORTED_SUFFIXES
                        and p.suffix.lower() not in _NOT_IMAGES and "sqlite" not in p.name]
        elif item.is_file():
            if item.suffix.lower() not in SUPPORTED_SUFFIXES:
                skipped.append(f"{item}: not a supported image type")
                continue
            listed = [item]
        else:
            raise InputError("no such file or folder; check the path", path=item)
        paths += listed
        genes += [None] * len(listed)
        stages += [None] * len(listed)
        mterms += [None] * len(listed)
    return ScannedInputs(tuple(paths), tuple(genes), tuple(stages), tuple(mterms),
                         tuple(vocab), dataset, tuple(skipped), items[0])


def iter_check_images(scanned: ScannedInputs) -> ProgressGen[ScannedInputs]:
    """Drop (and list as skipped) every file whose header cannot be read."""
    keep: list[int] = []
    bad: list[str] = []
    n = len(scanned.paths)
    for i, p in enumerate(scanned.paths):
        if i % CHECK_CHUNK == 0:
            yield Progress(i, n, f"checking images ({i}/{n})")
        why = check_image_header(p)
        if why is None:
            keep.append(i)
        else:
            bad.append(f"{p}: {why}")
    if not keep:
        found = (*scanned.skipped, *bad)
        detail = f" ({found[0]})" if found else ""
        raise InputError(f"no readable images found{detail}; choose a folder with "
                         "PNG/JPEG/TIFF/BMP images or a manifest CSV", path=scanned.source)
    return scanned.subset(keep, bad)
