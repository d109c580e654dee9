"""The one CSV writer for every output, safe to open in a spreadsheet.

Predictions, suggestions, label/consensus exports and manifests carry names other people
chose (image files, terms, genes, stages). A cell that starts with ``=``, ``+``, ``-``, ``@``,
tab or carriage return is a formula to Excel, LibreOffice and Google Sheets ("CSV
injection"), so, as OWASP recommends, such a cell is written with a single quote in front
(``=cmd.png`` -> ``'=cmd.png``); a spreadsheet shows the text and runs nothing.

Terms, genes and files are joined with ``;``, and Excel in ``;``-separator locales (German,
French, Italian, Spanish, Dutch) splits an unquoted cell there and evaluates each piece, so
every ``;``-separated piece is neutralised on its own (``g;=2+3`` -> ``g;'=2+3``).

Plain numbers (``-0.5``, ``+3``, ``-1e-3``) are left alone: a spreadsheet reads them as
numbers, never as formulas, and numeric columns stay numeric. A cell that already starts
with quotes followed by a formula character (``'=x``) gets one more quote, so the project's
reader (:func:`restore`, used by :mod:`.manifest`) strips exactly one quote and every
value reads back as itself.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .files import write_text_atomic

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_QUOTED_FORMULA = re.compile(r"'+[=+\-@\t\r]", re.DOTALL)


def neutralise(cell: object) -> str:
    """``cell`` as text a spreadsheet will not evaluate (see the module docstring), each
    ``;``-separated piece on its own (``g;=2+3`` -> ``g;'=2+3``)."""
    text = "" if cell is None else str(cell)
    if ";" not in text:
        return _neutralise_piece(text)
    return ";".join(_neutralise_piece(piece) for piece in text.split(";"))


def _neutralise_piece(text: str) -> str:
    if not text:
        return text
    if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    if _QUOTED_FORMULA.match(text):  # keeps the quote that restore() strips unambiguous
        return "'" + text
    return text


def restore(cell: str) -> str:
    """The value :func:`neutralise` was given: in each ``;``-separated piece, one leading
    quote before a formula character (after any further quotes) is removed; every other
    piece is returned unchanged."""
    if ";" not in cell:
        return cell[1:] if _QUOTED_FORMULA.match(cell) else cell
    return ";".join(p[1:] if _QUOTED_FORMULA.match(p) else p for p in cell.split(";"))


def csv_text(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A header and rows as CSV text (``\\n`` line ends), every cell neutralised."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([neutralise(c) for c in header])
    for row in rows:
        writer.writerow([neutralise(c) for c in row])
    return buffer.getvalue()


def write_csv(path: str | Path, header: Sequence[object],
              rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV output atomically (:func:`.files.write_text_atomic`), every cell neutralised."""
    write_text_atomic(path, csv_text(header, rows))
