"""The dataset manifest CSV (see ``CONTRACTS.md``): reading, validating, writing.

Columns: ``image`` (path relative to the CSV's folder, or absolute), ``terms`` (positive
terms, ``;``-separated, may be empty), optional ``stage`` and ``gene``; any other column
is ignored. The vocabulary is the one given by the caller, else every term in order of
first appearance; a vocabulary term a row does not list is a negative for that image.

Row numbers in error messages are *line numbers of the file* (the header is line 1), so
they match what a text editor or spreadsheet shows.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..learn.splits import group_ids
from ..utils.csvio import restore, write_csv
from ..utils.errors import InputError
from .images import SUPPORTED_TEXT, has_image_suffix

REQUIRED_COLUMNS = ("image", "terms")
OPTIONAL_COLUMNS = ("stage", "gene")


@dataclass(frozen=True)
class Sample:
    """One image and its positive terms (as listed in the manifest)."""

    image: Path
    terms: tuple[str, ...]
    stage: str | None = None
    gene: str | None = None


@dataclass
class Dataset:
    """Samples plus the vocabulary that defines the label matrix columns."""

    samples: list[Sample]
    vocabulary: list[str]
    source: Path | None = None

    @property
    def paths(self) -> list[Path]:
        return [s.image for s in self.samples]

    @property
    def genes(self) -> list[str | None]:
        return [s.gene for s in self.samples]

    @property
    def stages(self) -> list[str | None]:
        return [s.stage for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> np.ndarray:
        """``(n_images, n_terms)`` uint8 0/1 matrix in vocabulary order."""
        index = {t: j for j, t in enumerate(self.vocabulary)}
        Y = np.zeros((len(self.samples), len(self.vocabulary)), dtype=np.uint8)
        for i, s in enumerate(self.samples):
            for t in s.terms:
                j = index.get(t)
                if j is not None:
                    Y[i, j] = 1
        return Y

    def groups(self) -> np.ndarray:
        """Group id per image for grouped splits (:func:`.evaluation.group_ids`: by gene,
        else gene and stage, else the image itself), so no gene is both trained and tested."""
        return group_ids(self.genes, self.stages)

    def fingerprint(self) -> str:
        """The training-set fingerprint (:func:`training_fingerprint`) of these labels."""
        return training_fingerprint(self.paths, self.labels(), self.vocabulary)


def training_fingerprint(images: Sequence[str | Path], Y: np.ndarray,
                         vocabulary: Sequence[str]) -> str:
    """SHA-256 over the vocabulary and (image file name, label row) pairs.

    The one fingerprint of a training set: model bundles, fine-tuning checkpoints (resume
    check, ``evaluate --compare``) and the session all record it. File names rather than
    paths, so it does not depend on where the data folder lives; label rows as int8 with
    1 / 0 / -1 unknown, so a manifest and the annotation store agree on the same labels.
    """
    Y = np.asarray(Y)
    if Y.shape != (len(images), len(vocabulary)):
        raise ValueError(f"labels have shape {Y.shape}, expected ({len(images)}, "
                         f"{len(vocabulary)})")
    h = hashlib.sha256()
    h.update("\x1f".join(str(t) for t in vocabulary).encode("utf-8"))
    for path, row in zip(images, Y.astype(np.int8), strict=True):
        h.update(b"\x1e" + Path(path).name.encode("utf-8") + b"\x1f" + row.tobytes())
    return h.hexdigest()


def _relative(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return Path(os.path.relpath(Path(path).absolute(), Path(base).absolute())).as_posix()
        except ValueError:  # different drives on Windows
            pass
    return Path(path).as_posix()


# ---------------------------------------------------------------------------------- helpers

_STAGE_ALIASES = {"13-17": "13-16", "1-3": "1-3"}


def normalise_stage(text: str | None) -> str | None:
    """Canonical stage-range text: ``"13-17"`` -> ``"13-16"``, ``"11_12"`` -> ``"11-12"``.

    Accepts ``stage 9-10``, ``9 - 10``, ``9to10``, en dashes; empty -> ``None``. Text that
    is not a range of numbers is returned stripped, unchanged (users may have own schemes).
    """
    if text is None:
        return None
    s = str(text).strip()
    if not s:
        return None
    m = re.fullmatch(r"(?i)(?:stages?\s*)?(\d{1,2})\s*(?:-|_|–|—|to|\.\.)\s*(\d{1,2})", s)
    if m:
        s = f"{int(m.group(1))}-{int(m.group(2))}"
        return _STAGE_ALIASES.get(s, s)
    return s


def _split_terms(cell: str | None) -> tuple[str, ...]:
    """``"a; b;;a"`` -> ``("a", "b")``: trimmed, empty entries dropped, duplicates removed."""
    if not cell:
        return ()
    seen: dict[str, None] = {}
    for part in cell.split(";"):
        t = " ".join(part.split())
        if t:
            seen.setdefault(t, None)
    return tuple(seen)


def parse_vocabulary(spec: str | Path | Sequence[str]) -> list[str]:
    """A vocabulary from ``"a;b"``, ``"a,b"``, a text file (one term per line), or a list.

    Terms are trimmed and de-duplicated (first occurrence wins); ``#`` lines in files are
    comments. An empty result raises :class:`InputError`.
    """
    source: Path | None = None
    if isinstance(spec, Path) or (isinstance(spec, str) and _looks_like_file(spec)):
        source = Path(spec)
        if not source.is_file():
            raise InputError("vocabulary file not found; give an existing text file with one "
                             "term per line, or the terms themselves as 'a;b;c'", path=source)
        text = _read_text(source)
        items = [ln for ln in text.splitlines() if not ln.strip().startswith("#")]
        if len(items) == 1 and (";" in items[0] or "," in items[0]):
            items = re.split(r"[;,]", items[0])
    elif isinstance(spec, str):
        items = spec.split(";") if ";" in spec else spec.split(",")
    else:
        items = [str(t) for t in spec]
    seen: dict[str, None] = {}
    for t in items:
        t = " ".join(str(t).split())
        if t:
            seen.setdefault(t, None)
    if not seen:
        raise InputError("the vocabulary is empty; give at least one term", path=source)
    return list(seen)


def _looks_like_file(spec: str) -> bool:
    if ";" in spec or "," in spec:
        return False
    # not "contains a slash": terms such as "embryonic/larval muscle system" have one
    return Path(spec).suffix.lower() in (".txt", ".csv", ".tsv", ".list", ".vocab") \
        or Path(spec).is_file()


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 text (first bad byte on line {line}); save the file "
                         "as UTF-8 (e.g. 'CSV UTF-8' in Excel)", path=path, row=None) from exc


def _delimiter(first_line: str) -> str:
    """``,``; else tab, or Excel's ``;`` CSV in locales with a decimal comma."""
    if "," in first_line:
        return ","
    return "\t" if "\t" in first_line else ";" if ";" in first_line else ","


def _header(line: str) -> list[str]:
    return [h.strip() for h in next(csv.reader([line], delimiter=_delimiter(line)), [])]


def _open_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line_number, row)`` pairs of a CSV; blank rows are skipped."""
    if not path.exists():
        raise InputError("manifest file not found; check the path", path=path)
    if path.is_dir():
        raise InputError("is a folder; give the manifest CSV file", path=path)
    text = _read_text(path)
    if not text.strip():
        raise InputError("manifest is empty; it needs a header row 'image,terms' and one row "
                         "per image", path=path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text.splitlines()[0]))
    try:
        # restore(): the quote csvio.neutralise put before a formula-like cell comes off
        header = [restore(h).strip() for h in next(reader)]
        rows: list[tuple[int, dict[str, str]]] = []
        for raw in reader:
            line = reader.line_num
            if not any(c.strip() for c in raw):
                continue
            if len(raw) > len(header):
                extra = [c for c in raw[len(header):] if c.strip()]
                if extra:
                    raise InputError(f"row has {len(raw)} fields but the header has "
                                     f"{len(header)}; quote fields that contain commas",
                                     path=path, row=line)
            rows.append((line, {h: (restore(raw[k]) if k < len(raw) else "") for k, h in
                                enumerate(header)}))
    except csv.Error as exc:
        raise InputError(f"malformed CSV ({exc}); fix the quoting", path=path,
                         row=reader.line_num) from exc
    return header, rows


def _require_columns(path: Path, header: list[str], required: Sequence[str]) -> None:
    for col in required:
        if col in header:
            continue
        lowered = {h.lower(): h for h in header}
        close = difflib.get_close_matches(col, list(lowered), n=2, cutoff=0.6)
        hint = (f"; did you mean {' or '.join(repr(lowered[c]) for c in close)}? Rename it to "
                f"{col!r}") if close else ""
        raise InputError(f"missing required column {col!r} (header has: "
                         f"{', '.join(repr(h) for h in header) or 'nothing'}){hint}. The manifest "
                         "needs columns 'image' and 'terms'", path=path)


def _resolve_image(path: Path, cell: str) -> Path:
    text = cell.strip()
    if "\\" in text and os.sep == "/" and not (path.parent / text).exists():
        text = text.replace("\\", "/")  # a manifest written on Windows: images\e1.bmp
    p = Path(text)
    return p if p.is_absolute() else path.parent / p


def _check_image(csv_path: Path, line: int, image: Path, cell: str) -> None:
    if not image.is_file():
        raise InputError(f"image file {cell!r} not found (looked for {image}); fix the path - "
                         "relative paths are resolved from the manifest's folder",
                         path=csv_path, row=line)
    if not has_image_suffix(image):
        raise InputError(f"image {cell!r} has unsupported type {image.suffix!r}; use "
                         f"{SUPPORTED_TEXT}", path=csv_path, row=line)


def _image_rows(path: Path, required: Sequence[str], check_files: bool
                ) -> list[tuple[int, dict[str, str], Path]]:
    """``(line, row, resolved image)`` for every row, after the checks all readers share."""
    header, rows = _open_table(path)
    _require_columns(path, header, required)
    if not rows:
        raise InputError("manifest has a header but no rows; add one row per image", path=path)
    out = []
    for line, row in rows:
        cell = row["image"].strip()
        if not cell:
            raise InputError("empty 'image' cell; give the image path", path=path, row=line)
        image = _resolve_image(path, cell)
        if check_files:
            _check_image(path, line, image, cell)
        out.append((line, row, image))
    return out


# ------------------------------------------------------------------------------ public API

def read_manifest_images(path: str | Path, check_files: bool = True) -> list[Path]:
    """Only the image paths of a manifest (just an ``image`` column is needed).

    Used for prediction inputs, where rows may carry no terms at all.
    """
    return [image for _, _, image in _image_rows(Path(path), ("image",), check_files)]


def is_manifest(path: str | Path) -> bool:
    """Whether ``path`` is a CSV whose header has an ``image`` column: what File > Open
    claims as a manifest. Reads the first line only; any unreadable file is not one."""
    path = Path(path)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            first = fh.readline()
    except OSError:
        return False
    return "image" in {h.lower() for h in _header(first.rstrip("\r\n"))}


def lists_terms(path: str | Path) -> bool:
    """Whether a manifest names any term (prediction inputs may have images only)."""
    header, rows = _open_table(Path(path))
    return "terms" in header and any((row.get("terms") or "").strip() for _, row in rows)


def read_manifest_genes(path: str | Path, check_files: bool = True) -> dict[Path, str | None]:
    """Gene of every image of a manifest (None without a ``gene`` column or cell)."""
    return {image: (row.get("gene") or "").strip() or None
            for _, row, image in _image_rows(Path(path), ("image",), check_files)}


def read_manifest(path: str | Path, vocabulary: str | Path | Sequence[str] | None = None,
                  require_positives: bool = True, check_files: bool = True) -> Dataset:
    """Read and validate a manifest CSV into a :class:`Dataset` (see module docstring).

    ``require_positives`` (for training/evaluation) demands at least one positive image per
    vocabulary term, since a classifier cannot be fit without one. ``check_files`` verifies
    every image exists and has a supported type (it does not decode them).
    """
    path = Path(path)
    samples: list[Sample] = []
    for _line, row, image in _image_rows(path, REQUIRED_COLUMNS, check_files):
        gene = (row.get("gene") or "").strip() or None
        samples.append(Sample(image=image, terms=_split_terms(row["terms"]),
                              stage=normalise_stage(row.get("stage")), gene=gene))
    if vocabulary is not None:
        vocab = parse_vocabulary(vocabulary)
    else:
        seen: dict[str, None] = {}
        for s in samples:
            for t in s.terms:
                seen.setdefault(t, None)
        vocab = list(seen)
        if not vocab:
            raise InputError("no terms: the 'terms' column is empty in every row; list the "
                             "positive terms per image (';'-separated) or give a vocabulary",
                             path=path)
    dataset = Dataset(samples=samples, vocabulary=vocab, source=path)
    if require_positives:
        counts = dataset.labels().sum(axis=0)
        missing = [t for t, c in zip(vocab, counts, strict=True) if c == 0]
        if missing:
            raise InputError(f"{len(missing)} vocabulary term(s) have no positive image: "
                             f"{', '.join(repr(t) for t in missing)}; label at least one image "
                             "with each term, or drop those terms from the vocabulary",
                             path=path)
    return dataset


def write_manifest(path: str | Path, samples: Sequence[Sample],
                   extra_columns: dict[str, Sequence[object]] | None = None) -> None:
    """Write a manifest atomically (:func:`.csvio.write_csv`: formula-like cells neutralised);
    image paths relative to the CSV's folder when possible.

    ``stage``/``gene`` columns are written when any sample has them; ``extra_columns``
    maps a column name to one value per sample (e.g. ``split``).
    """
    path = Path(path)
    extra = dict(extra_columns or {})
    for name, values in extra.items():
        if len(values) != len(samples):
            raise ValueError(f"extra column {name!r} has {len(values)} values for "
                             f"{len(samples)} samples")
    header = list(REQUIRED_COLUMNS)
    if any(s.stage for s in samples):
        header.append("stage")
    if any(s.gene for s in samples):
        header.append("gene")
    header += [k for k in extra if k not in header]
    rows = []
    for i, s in enumerate(samples):
        values = {"image": _relative(s.image, path.parent), "terms": ";".join(s.terms),
                  "stage": s.stage or "", "gene": s.gene or ""}
        for name, col in extra.items():
            values[name] = "" if col[i] is None else str(col[i])
        rows.append([values[h] for h in header])
    write_csv(path, header, rows)
