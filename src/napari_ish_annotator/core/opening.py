"""What "opening" images means, without a GUI: listing inputs and cheap header checks.

:func:`list_inputs` is the one rule for which images some files, folders and manifest CSVs
name (the CLI's ``collect_inputs``/``scan_inputs`` use it too). The annotation session (and
anything else that opens user folders: notebooks, scripts) also learns here which files are
unreadable from their headers only, so thousands of images are checked in seconds.
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


#: non-image files that may sit among images without a warning: manifests, notes, label stores
SIDECAR_SUFFIXES = frozenset({".csv", ".txt", ".md", ".json", ".sqlite", ".db"})


def _is_sidecar(path: Path) -> bool:
    return path.suffix.lower() in SIDECAR_SUFFIXES or ".sqlite" in path.name.lower()


@dataclass(frozen=True)
class InputListing:
    """The image files some inputs name, in order and without duplicates, with what was
    skipped. ``samples[i]`` is the manifest row of ``paths[i]`` (None when not from one)."""

    paths: tuple[Path, ...]
    samples: tuple[Any, ...]  # core.manifest.Sample | None
    manifests: tuple[Any, ...]  # core.manifest.Dataset of every manifest read with terms
    problems: tuple[Any, ...]  # core.images.InputProblem
    items: tuple[Path, ...]  # the inputs, dataset folders replaced by their manifest.csv


def list_inputs(inputs: Sequence[str | Path], *, dataset_folders: bool = False,
                strict: bool = False) -> InputListing:
    """The one rule for which image files inputs name (the CLI and the napari session).

    Folders give their supported images (sorted, not recursive, hidden files skipped; other
    files are noted as skipped unless they are manifests, notes or label stores, and ignored
    when ``strict``); ``*.csv`` files are
    manifests (their rows' images, with gene/stage/terms when the manifest has terms); any
    other path is taken as an image file and checked by the caller (strict: here). With
    ``dataset_folders`` a folder holding ``manifest.csv`` opens that manifest. ``strict``
    raises :class:`InputError` at the first problem instead of listing it. Nothing is decoded.
    """
    from .images import (
        _SUPPORTED_TEXT,
        SUPPORTED_SUFFIXES,
        InputProblem,
        _check_file,
        _is_hidden,
        list_images,
    )

    problems: list[InputProblem] = []

    def problem(path: Path, message: str) -> None:
        if strict:
            raise InputError(message, path=path)
        problems.append(InputProblem(path, message))

    items = [Path(p) for p in inputs]
    if dataset_folders:
        items = [i / "manifest.csv" if i.is_dir() and (i / "manifest.csv").is_file() else i
                 for i in items]
    found: list[tuple[Path, Any]] = []
    manifests: list[Any] = []
    for item in items:
        if item.is_dir():
            listed = list_images(item)
            for p in sorted(item.iterdir(), key=lambda q: q.name) if not strict else ():
                if p.is_file() and not _is_hidden(p) and not _is_sidecar(p) \
                        and p.suffix.lower() not in SUPPORTED_SUFFIXES:  # noted, not fatal
                    problems.append(InputProblem(p, "skipped: not a supported image type "
                                    f"({p.suffix or 'no suffix'}; use {_SUPPORTED_TEXT})"))
            if not listed:
                nested = any(p.is_dir() and not _is_hidden(p) for p in item.iterdir())
                problem(item, f"folder contains no {_SUPPORTED_TEXT} images" + (
                    "; subfolders are not searched - pass them too (e.g. folder/*/) or list "
                    "the images in a manifest CSV" if nested else ""))
            found += [(p, None) for p in listed]
        elif item.suffix.lower() == ".csv":
            try:
                rows, dataset = _manifest_rows(item, check_files=strict)
            except InputError as exc:
                if strict:
                    raise
                problems.append(InputProblem.from_error(item, exc))
                continue
            found += rows
            if dataset is not None:
                manifests.append(dataset)
        else:
            if strict:
                _check_file(item)
            found.append((item, None))
    seen: set[str] = set()
    paths: list[Path] = []
    samples: list[Any] = []
    for path, sample in found:
        key = str(path.resolve()) if path.exists() else str(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)
            samples.append(sample)
    return InputListing(tuple(paths), tuple(samples), tuple(manifests), tuple(problems),
                        tuple(items))


def _manifest_rows(path: Path, check_files: bool) -> tuple[list[tuple[Path, Any]], Any]:
    """A manifest's images with their rows; one that names no term lists its images only."""
    from .manifest import lists_terms, read_manifest, read_manifest_images

    if not lists_terms(path):
        return [(p, None) for p in read_manifest_images(path, check_files=check_files)], None
    dataset = read_manifest(path, require_positives=False, check_files=check_files)
    return [(Path(s.image), s) for s in dataset.samples], dataset


def scan_inputs(inputs: Sequence[str | Path]) -> ScannedInputs:
    """List image files, folders (a dataset folder opens its manifest.csv) and manifest CSVs
    for the session: :func:`list_inputs` plus each image's gene, stage and manifest terms."""
    if not list(inputs):
        raise InputError("nothing to open; choose image files, a folder or a manifest CSV")
    for item in map(Path, inputs):  # a typed or stale path: say so, rather than "no images"
        if not item.exists():
            raise InputError("no such file or folder; check the path", path=item)
    listing = list_inputs(inputs, dataset_folders=True)
    vocab: list[str] = []
    for ds in listing.manifests:
        vocab += [t for t in ds.vocabulary if t not in vocab]
    samples = listing.samples
    return ScannedInputs(
        listing.paths,
        tuple(None if s is None else s.gene for s in samples),
        tuple(None if s is None else s.stage for s in samples),
        tuple(None if s is None else tuple(s.terms) for s in samples),
        tuple(vocab), listing.manifests[0] if listing.manifests else None,
        tuple(str(p) for p in listing.problems), listing.items[0])


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
