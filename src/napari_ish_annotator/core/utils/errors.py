"""One exception type for problems the user can fix.

The CLI turns :class:`InputError` into a one-line message on stderr and exit status 2; the
widgets show it in a notification. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input: names the file (and row) at fault, what is wrong, and what to do."""

    def __init__(self, message: str, path: str | Path | None = None, row: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(f"{where}{message}")
        self.message = message
        self.path = Path(path) if path is not None else None
        self.row = row

    def __reduce__(self):  # path and row survive the trip back from a dask worker
        return (type(self), (self.message, self.path, self.row))
