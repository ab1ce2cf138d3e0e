#!/usr/bin/env bash
# Runs on the GPU machine (stage with scripts/h100/stage.sh and
# scripts/h100/stage-cupy-tests.sh): a subset of CuPy's own test suite,
# natively and on the guest driver (vhost-user direct transport to a
# cuda-engine backend), one test file at a time; writes cupy-tests.json with
# the counts of each and the tests that pass natively but not in the guest.
# The tests come from the CuPy release whose major version is installed.
#
#   scripts/h100/cupy-tests.sh [OUTDIR]     (default $OUT, else ./h100-out)
# Knobs (env): PY (python3), FILES (the staged subset), NATIVE_TIMEOUT (360 s
# a file), GUEST_TIMEOUT (480 s a file), QUOTA_MIB (32768 each backend),
# PYTEST_K (a pytest -k expression: only the tests it selects).
# Every file runs natively and in the guest at the same time.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-$PWD/h100-out}}
mkdir -p "$out"
. scripts/h100/lib.sh
h100_setup /tmp/gpuvisor-cupy
PY=${PY:-python3}
NATIVE_TIMEOUT=${NATIVE_TIMEOUT:-360}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-480}
QUOTA_MIB=${QUOTA_MIB:-32768}
FILES=${FILES:-"creation_tests/test_basic.py manipulation_tests/test_shape.py math_tests/test_sumprod.py statistics_tests/test_meanvar.py sorting_tests/test_sort.py linalg_tests/test_product.py"}
major=$("$PY" -c 'import cupy; print(cupy.__version__.split(".")[0])' 2>"$R/cupy-import.err")
log "CuPy $("$PY" -c 'import cupy; print(cupy.__version__)' 2>/dev/null) installed"
suite=$stage/cupy-tests/$major
if [ -z "$major" ] || [ ! -d "$suite" ]; then
    log "no staged tests for CuPy major '$major'"; echo '{"error": "no staged tests for the installed CuPy"}' > "$out/cupy-tests.json"; exit 1
fi
if ! "$PY" -c 'import pytest' 2>/dev/null; then
    "$PY" -m pip install --quiet --no-index --find-links "$stage/cupy-tests/wheels" --target "$work/pylib" pytest \
        > "$R/pip.log" 2>&1 || log "installing pytest failed"
    export PYTHONPATH="$work/pylib${PYTHONPATH:+:$PYTHONPATH}"
fi
mkdir -p "$work/drv" && ln -sf "$OURS" "$work/drv/libcuda.so.1"
cp -r "$suite" "$work/suite"

# Every file natively and in the guest at once (one backend per file): the
# counts are what is compared, not times, and one after another the subset
# outlasts a device call (math_tests/test_sumprod.py alone took 90 s
# natively and 181 s in the guest on the H200).
run_native() {  # file name
    (cd "$work/suite/tests" && timeout "$NATIVE_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"} \
        --junitxml "$R/native-$2.xml" "cupy_tests/$1" > "$R/native-$2.out" 2>&1)
    echo "exit $?" >> "$R/native-$2.out"
}
run_guest() {  # file name backend
    (cd "$work/suite/tests" && LD_LIBRARY_PATH="$work/drv${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        GPUVISOR_TRANSPORT="direct:$work/$3.sock" GPUVISOR_DIRECT_MEM_MIB=${DIRECT_MEM_MIB:-1024} \
        GPUVISOR_UNSUPPORTED_REPORT="$R/unsupported-$2.json" \
        timeout "$GUEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"} \
        --junitxml "$R/guest-$2.xml" "cupy_tests/$1" > "$R/guest-$2.out" 2>&1)
    echo "exit $?" >> "$R/guest-$2.out"
}
n=0
runs=()
for f in $FILES; do
    name=$(basename "$f" .py)
    [ -f "$work/suite/tests/cupy_tests/$f" ] || { log "$f is not staged"; continue; }
    n=$((n + 1))
    run_native "$f" "$name" &
    runs+=($!)
    h100_start_backend "c$n" --quota-mib "$QUOTA_MIB" || continue
    run_guest "$f" "$name" "c$n" &
    runs+=($!)
    log "started $f natively and in the guest"
done
for p in "${runs[@]}"; do wait "$p"; done
log "all files done"
stop_backends

cp "$R"/*.out "$R"/*.json "$out/" 2>/dev/null
tar -czf "$out/cupy-tests-junit.tgz" -C "$R" $(cd "$R" && ls *.xml 2>/dev/null) 2>/dev/null
"$PY" - "$R" "$(cat "$stage/REVISION" 2>/dev/null)" "$(cat "$suite/TAG")" "$FILES" "${PYTEST_K:-}" "$QUOTA_MIB" \
    > "$out/cupy-tests.json" <<'EOF'
import datetime, glob, json, os, socket, sys
import xml.etree.ElementTree as ET
res, rev, tag, files, only, quota_mib = sys.argv[1:7]

def outcomes(path):
    """{test id: passed|failed|error|skipped} from a JUnit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    out = {}
    for tc in root.iter("testcase"):
        tid = f"{tc.get('classname')}::{tc.get('name')}"
        kinds = [c.tag for c in tc]
        out[tid] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                    else "skipped" if "skipped" in kinds else "passed")
    return out

per_file, lost = {}, []
for f in files.split():
    name = os.path.basename(f)[:-3]
    n, g = outcomes(f"{res}/native-{name}.xml"), outcomes(f"{res}/guest-{name}.xml")
    count = lambda o: None if o is None else {k: sum(1 for v in o.values() if v == k) for k in ("passed", "failed", "error", "skipped")}
    only_native = sorted(t for t, v in (n or {}).items() if v == "passed" and (g or {}).get(t) != "passed")
    per_file[f] = {"native": count(n), "guest": count(g), "passed_natively_not_in_guest": len(only_native) if g is not None else None}
    lost += only_native[:50]
tot = lambda side, k: sum((v[side] or {}).get(k, 0) for v in per_file.values())
out = {
    "issue": 7, "command": "scripts/h100/cupy-tests.sh", "revision": rev, "cupy_tests_tag": tag,
    "machine": {"host": socket.gethostname(), "gpu": open(f"{res}/gpu.txt").read().strip()},
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "pytest_k": only or None, "guest_quota_mib": int(quota_mib),
    "files": per_file,
    "native_passed": tot("native", "passed"), "guest_passed": tot("guest", "passed"),
    "native_failed": tot("native", "failed") + tot("native", "error"),
    "guest_failed": tot("guest", "failed") + tot("guest", "error"),
    "passed_natively_not_in_guest": lost,
}
out["same_as_native"] = all(v["guest"] is not None and v["passed_natively_not_in_guest"] == 0 for v in per_file.values())
json.dump(out, sys.stdout, indent=1)
print()
EOF
cat "$out/cupy-tests.json"
