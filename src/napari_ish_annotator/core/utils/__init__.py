"""Small shared pieces every other package uses, none of them heavy.

* :mod:`.errors` - :class:`InputError`, the one user-facing error (one line: which file, what
  is wrong, what to do; exit 2 on the CLI);
* :mod:`.progress` - progress records, cancel tokens, :func:`drive` (long work is a generator),
  :func:`throttled` (how often a GUI hears of it);
* :mod:`.files` - atomic writes (was ``io.py``), output-path checks, scratch memmaps;
* :mod:`.csvio` - the CSV writer that neutralises spreadsheet formulas;
* :mod:`.extras` - optional extras: install hints, version checks;
* :mod:`.hashing` - :func:`content_hash`, the one (cached) sha256 of a file's bytes;
* :mod:`.lazy` - :func:`attach`, the one lazy pattern every package face uses;
* :mod:`.arrays` - bounded reading of model files from elsewhere (JSON, ``.npy``/``.npz``
  headers before data, torch zips: stored records, a memory budget, no pickle).

The names below are reached lazily (:func:`..utils.lazy.attach`): importing one module of
this package imports none of its siblings.
"""

from __future__ import annotations

from .lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "errors": ["InputError"],
    "progress": ["CancelToken", "Cancelled", "Progress", "ProgressCallback", "ProgressGen", "TqdmCallback", "drive", "sub_progress", "throttled"],
    "files": ["atomic_path", "check_output_path", "release_pages", "scratch_memmap", "write_json_atomic", "write_npy_atomic", "write_png_atomic", "write_text_atomic"],
    "csvio": ["csv_text", "neutralise", "write_csv"],
    "extras": ["check_compatible", "install_hint", "require_extra"],
    "hashing": ["FILE_HASHES", "HashCache", "content_hash"],
    "lazy": ["attach"],
    "arrays": ["NpzReader", "load_json", "model_budget", "open_regular", "torch_load"],
})
