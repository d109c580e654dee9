"""Which images some inputs name, and which of them can be used: the one listing for the CLI
and the napari session.

:func:`list_inputs` is the rule for which image files some files, folders and manifest CSVs
name (nothing is read but folder listings and manifests); :func:`list_images` is which
files directly inside one folder are images. :func:`scan_inputs` adds the check
of every listed image, skipping and reporting bad ones: ``check="header"`` (the session, so
thousands of images are checked in seconds; the pixel budget included), ``"decode"`` (``predict
--skip-bad``: a truncated file is only found by decoding it), ``"path"`` (names and types
only). :func:`collect_inputs` is the strict listing: the first problem raises.

Layers: ``images`` (one file) <- ``manifest`` (one CSV) <- ``inputs`` (many inputs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..utils.errors import InputError
from ..utils.progress import Progress, ProgressGen, drive
from .images import (
    SUPPORTED_TEXT,
    check_image,
    check_image_path,
    has_image_suffix,
    read_rgb,
)
from .manifest import Dataset, Sample, lists_terms, read_manifest, read_manifest_images

#: images checked per progress step
CHECK_CHUNK = 100

Check = Literal["path", "header", "decode"]
CHECKS: tuple[str, ...] = ("path", "header", "decode")

#: non-image files that may sit among images without a warning: manifests, notes, label stores
SIDECAR_SUFFIXES = frozenset({".csv", ".txt", ".md", ".json", ".sqlite", ".db"})


def is_hidden(path: Path) -> bool:
    """Hidden files are never images to open."""
    return path.name.startswith(".")  # also skips macOS "._name.png" resource forks


def iter_images(folder: str | Path) -> Iterator[Path]:
    """Supported images directly inside ``folder`` (not recursive), in directory order: the
    one rule of what a folder holds; callers that need only "any?" or "how many, up to N?"
    stop early instead of listing (and stat-ing) thousands of files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder not found; check the path", path=folder)
    # the name tests first: only candidates cost a stat
    return (p for p in folder.iterdir()
            if has_image_suffix(p) and not is_hidden(p) and p.is_file())


def list_images(folder: str | Path) -> list[Path]:
    """Supported images directly inside ``folder`` (not recursive), sorted by name."""
    return sorted(iter_images(folder), key=lambda p: p.name)


@dataclass(frozen=True)
class InputProblem:
    """A file that was skipped while listing or checking inputs, and why (shown to the user).

    ``ignorable``: a non-image file inside a folder, noted (the session lists it) but not
    worth a warning in a batch job."""

    path: Path
    message: str
    ignorable: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    @classmethod
    def from_error(cls, path: Path, exc: InputError) -> InputProblem:
        """The problem an :class:`InputError` about ``path`` describes (without the path
        prefix the error's text already starts with)."""
        msg, prefix = str(exc), f"{path}: "
        return cls(path, msg[len(prefix):] if msg.startswith(prefix) else msg)


def _is_sidecar(path: Path) -> bool:
    return path.suffix.lower() in SIDECAR_SUFFIXES or ".sqlite" in path.name.lower()


@dataclass(frozen=True)
class InputListing:
    """The image files some inputs name, in order and without duplicates, with what was
    skipped. ``samples[i]`` is the manifest row of ``paths[i]`` (None when not from one)."""

    paths: tuple[Path, ...]
    samples: tuple[Sample | None, ...]
    manifests: tuple[Dataset, ...]  # every manifest read with terms
    problems: tuple[InputProblem, ...]
    items: tuple[Path, ...]  # the inputs, dataset folders replaced by their manifest.csv


def list_inputs(inputs: Sequence[str | Path], *, dataset_folders: bool = False,
                strict: bool = False) -> InputListing:
    """The one rule for which image files inputs name (the CLI and the napari session).

    Folders give their supported images (sorted, not recursive, hidden files skipped; other
    files are noted as skipped unless they are manifests, notes or label stores, and ignored
    when ``strict``); ``*.csv`` files are manifests (their rows' images, with gene/stage/terms
    when the manifest has terms); any other path is taken as an image file and checked by
    the caller (strict: here). With ``dataset_folders`` a folder holding ``manifest.csv``
    opens that manifest. ``strict`` raises :class:`InputError` at the first problem instead
    of listing it. Nothing is decoded.
    """
    problems: list[InputProblem] = []

    def problem(path: Path, message: str) -> None:
        if strict:
            raise InputError(message, path=path)
        problems.append(InputProblem(path, message))

    items = [Path(p) for p in inputs]
    if dataset_folders:
        items = [i / "manifest.csv" if i.is_dir() and (i / "manifest.csv").is_file() else i
                 for i in items]
    found: list[tuple[Path, Sample | None]] = []
    manifests: list[Dataset] = []
    for item in items:
        if item.is_dir():
            listed = list_images(item)
            for p in _not_regular_images(item):  # a FIFO, device... named .png: never opened
                try:
                    check_image_path(p)
                except InputError as exc:
                    if strict:
                        raise
                    problems.append(InputProblem.from_error(p, exc))
            for p in sorted(item.iterdir(), key=lambda q: q.name) if not strict else ():
                if p.is_file() and not is_hidden(p) and not _is_sidecar(p) \
                        and not has_image_suffix(p):  # noted, not fatal
                    problems.append(InputProblem(p, "skipped: not a supported image type "
                                    f"({p.suffix or 'no suffix'}; use {SUPPORTED_TEXT})",
                                    ignorable=True))
            if not listed:
                nested = any(p.is_dir() and not is_hidden(p) for p in item.iterdir())
                problem(item, f"folder contains no {SUPPORTED_TEXT} images" + (
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
                check_image_path(item)
            found.append((item, None))
    seen: set[str] = set()
    paths: list[Path] = []
    samples: list[Sample | None] = []
    for path, sample in found:
        key = str(path.resolve()) if path.exists() else str(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)
            samples.append(sample)
    return InputListing(tuple(paths), tuple(samples), tuple(manifests), tuple(problems),
                        tuple(items))


def _not_regular_images(folder: Path) -> list[Path]:
    """Entries of ``folder`` named like images that are not regular files (named pipes,
    devices, sockets, folders, broken links): listed as problems, never opened."""
    return sorted((p for p in folder.iterdir()
                   if has_image_suffix(p) and not is_hidden(p)
                   and not p.is_file()), key=lambda p: p.name)


def _manifest_rows(path: Path, check_files: bool
                   ) -> tuple[list[tuple[Path, Sample | None]], Dataset | None]:
    """A manifest's images with their rows; one that names no term lists its images only."""
    if not lists_terms(path):
        return [(p, None) for p in read_manifest_images(path, check_files=check_files)], None
    dataset = read_manifest(path, require_positives=False, check_files=check_files)
    return [(Path(s.image), s) for s in dataset.samples], dataset


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand image files, folders and manifests (``*.csv``) into image paths (strict).

    :func:`list_inputs` with ``strict``: any missing path, unsupported file, image-less
    folder or bad manifest raises :class:`InputError`. Images are not read here.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no inputs given; pass image files, folders or manifest CSVs")
    return list(list_inputs(inputs, strict=True).paths)


@dataclass(frozen=True)
class ScannedInputs:
    """The usable images some inputs name, with manifest metadata, and what was skipped."""

    paths: tuple[Path, ...]
    genes: tuple[str | None, ...]
    stages: tuple[str | None, ...]
    manifest_terms: tuple[tuple[str, ...] | None, ...]
    vocabulary: tuple[str, ...]  # every manifest's terms, in order of first appearance
    dataset: Dataset | None  # the first manifest with terms
    problems: tuple[InputProblem, ...]
    source: Path  # the first input (a dataset folder: its manifest.csv)

    @property
    def skipped(self) -> tuple[str, ...]:
        """Every problem as ``"path: why"`` (the session lists them all)."""
        return tuple(str(p) for p in self.problems)


def iter_scan_inputs(inputs: Sequence[str | Path], *, check: Check = "header",
                     dataset_folders: bool = False, missing_inputs: bool = True
                     ) -> ProgressGen[ScannedInputs]:
    """:func:`list_inputs`, then every image checked (``check``: see the module docstring);
    bad files are skipped and listed in ``problems``, one progress step per
    :data:`CHECK_CHUNK` images.

    ``missing_inputs=False`` raises for a named input that does not exist (the session: a
    typed or stale path) instead of listing it. Raises :class:`InputError` when nothing is
    left to use.
    """
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not list(inputs):
        raise InputError("nothing to open; give image files, a folder or a manifest CSV")
    if not missing_inputs:
        for item in map(Path, inputs):  # a typed or stale path: say so, not "no images"
            if not item.exists():
                raise InputError("no such file or folder; check the path", path=item)
    yield Progress(0, 0, "listing images")
    listing = list_inputs(inputs, dataset_folders=dataset_folders)
    problems = list(listing.problems)
    keep: list[int] = []
    n = len(listing.paths)
    for i, path in enumerate(listing.paths):
        if i % CHECK_CHUNK == 0:
            yield Progress(i, n, f"checking images ({i}/{n})")
        try:
            if check == "decode":
                read_rgb(path)
            elif check == "header":
                check_image(path)
            else:
                check_image_path(path)
        except InputError as exc:
            problems.append(InputProblem.from_error(path, exc))
            continue
        keep.append(i)
    if not keep:
        first = next((p for p in problems if not p.ignorable), problems[0] if problems else None)
        raise InputError(f"no readable images found{f' ({first})' if first else ''}; give "
                         f"{SUPPORTED_TEXT} images, folders of them or a manifest CSV",
                         path=listing.items[0])
    yield Progress(n, n, f"checked {n} images")
    samples = [listing.samples[i] for i in keep]
    vocab: list[str] = []
    for ds in listing.manifests:
        vocab += [t for t in ds.vocabulary if t not in vocab]
    return ScannedInputs(
        tuple(listing.paths[i] for i in keep),
        tuple(None if s is None else s.gene for s in samples),
        tuple(None if s is None else s.stage for s in samples),
        tuple(None if s is None else tuple(s.terms) for s in samples),
        tuple(vocab), listing.manifests[0] if listing.manifests else None,
        tuple(problems), listing.items[0])


def scan_inputs(inputs: Sequence[str | Path], *, check: Check = "header",
                dataset_folders: bool = False, missing_inputs: bool = True) -> ScannedInputs:
    """Blocking form of :func:`iter_scan_inputs`."""
    return drive(iter_scan_inputs(inputs, check=check, dataset_folders=dataset_folders,
                                  missing_inputs=missing_inputs))
