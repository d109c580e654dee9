"""The one CSV writer for every output, safe to open in a spreadsheet.

Predictions, suggestions, label/consensus exports and manifests carry names other people
chose (image files, terms, genes, stages). A cell that starts with ``=``, ``+``, ``-``, ``@``,
tab or carriage return is a formula to Excel, LibreOffice and Google Sheets ("CSV
injection"), so, as OWASP recommends, such a cell is written with a single quote in front
(``=cmd.png`` -> ``'=cmd.png``); a spreadsheet shows the text and runs nothing.

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
    """``cell`` as text a spreadsheet will not evaluate (see the module docstring)."""
    text = "" if cell is None else str(cell)
    if not text:
        return text
    if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    if _QUOTED_FORMULA.match(text):  # keeps the quote that restore() strips unambiguous
        return "'" + text
    return text


def restore(cell: str) -> str:
    """The value :func:`neutralise` was given: one leading quote before a formula character
    (after any further quotes) is removed; every other cell is returned unchanged."""
    return cell[1:] if _QUOTED_FORMULA.match(cell) else cell


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
    """Write a CSV output atomically (:func:`.io.write_text_atomic`), every cell neutralised."""
    write_text_atomic(path, csv_text(header, rows))
