"""``python -m napari_ish_annotator.cli`` (the tests run the CLI this way in subprocesses)."""

import sys

from . import main

sys.exit(main())
