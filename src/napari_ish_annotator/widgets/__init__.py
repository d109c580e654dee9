"""napari dock widgets: thin views over :mod:`napari_ish_annotator.core`.

Importing this package keeps torchvision from loading ``triton`` later in the process:
triton's bundled LLVM clashes with the LLVM inside Mesa's OpenGL driver that napari's
canvas has already loaded, and the process segfaults (seen with Xvfb/llvmpipe). The
plugin never uses ``torch.compile``, so CPU/GPU inference is unaffected. Set
``ISH_ANNOTATOR_ALLOW_TRITON=1`` to opt out.
"""

import os as _os
import sys as _sys

if "triton" not in _sys.modules and _os.environ.get("ISH_ANNOTATOR_ALLOW_TRITON") != "1":
    _sys.modules["triton"] = None  # makes `import triton` raise ImportError
