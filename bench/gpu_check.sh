#!/usr/bin/env bash
# Everything a session with a GPU checks, in one command (fits the device tool's 10-minute limit):
#
#     bash bench/gpu_check.sh        # from the repository root, on the GPU machine
#
# Installs optforge without a network (pip --no-index --no-deps: at run time it needs only NumPy;
# CuPy and torch come with the GPU image), records the device, runs the GPU tests (tests/gpu on real
# CuPy: MXNet conformance dense + row-sparse, every optimizer x kernel variant against NumPy,
# checkpoints, SGLD noise, optforge.torch on CUDA tensors), then bench/gpu_bench.py. Logs and the
# benchmark's JSON go to $OUT (the device tool's return folder) or out/gpu. Exit status: the tests'.
set -uo pipefail
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
SITE=/tmp/optforge-site
rm -rf "$SITE"
if ! $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . >"$OUT/install.log" 2>&1; then
    # no usable setuptools there: lay the package out by hand, as pyproject's package-dir maps it
    echo "pip install failed (see $OUT/install.log); copying the package into $SITE instead"
    rm -rf "$SITE" && mkdir -p "$SITE/optforge"
    cp -r runtime/. "$SITE/optforge/"
    for sub in codegen generated grammar; do cp -r "$sub" "$SITE/optforge/$sub"; done
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
$PY -c "import sys, cupy, numpy, optforge; print('python', sys.version.split()[0], '| cupy', cupy.__version__,
'| numpy', numpy.__version__, '| optforge from', optforge.__file__)" | tee -a "$OUT/device.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/device.txt"

timeout "${TEST_TIMEOUT:-330}" $PY -m pytest -q -rs -p no:cacheprovider -W ignore --durations=5 tests/gpu \
    >"$OUT/gpu_tests.log" 2>&1
status=$?
grep -E "^(FAILED|ERROR|SKIPPED)" "$OUT/gpu_tests.log" | head -40
tail -12 "$OUT/gpu_tests.log"

timeout "${BENCH_TIMEOUT:-200}" $PY bench/gpu_bench.py ${BENCH_ARGS:-} --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log"
echo "tests exit status: $status"
exit $status
