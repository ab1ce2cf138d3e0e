#!/usr/bin/env bash
# Installs what the tests need and runs every test: unit tests, the request-
# path tests, the vhost-user direct transport tests, programs built against
# the CUDA runtime (cudart 12 and 13, shared and static), the VM tests (real QEMU,
# real guest kernel, sim engine), schemathesis against the admin API and
# bounded fuzzing runs of the decoder and the backend's guest-facing paths.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
sudo_if_needed scripts/install-prereqs.sh
PROFILE=debug scripts/build.sh
echo "test: cargo test (unit, request path, direct transport, VMs)"
# The direct transport's tests start this backend (and QEMU's reference one).
export GPUVISOR_BACKEND_BIN="$(realpath -m "${CARGO_TARGET_DIR:-target}")/debug/gpuvisor-backend"
# The cudart tests need the runtime build.sh fetched; where the pinned wheels
# exist (x86-64), a missing runtime is a failure rather than a skip.
if [ "$(uname -m)" = x86_64 ]; then export GPUVISOR_REQUIRE_CUDART=1; fi
cargo test --workspace -- --test-threads=1
echo "test: the admin API against its OpenAPI document (schemathesis)"
scripts/api-fuzz.sh debug
if [ "${GPUVISOR_SKIP_FUZZ:-0}" = 1 ]; then
    echo "test: fuzzing skipped (GPUVISOR_SKIP_FUZZ=1)"
else
    # cargo-fuzz builds with sanitizer flags that need nightly; where rustup
    # has no nightly, the stable toolchain takes them with RUSTC_BOOTSTRAP=1
    # (its sanitizer runtimes ship with it).
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then fuzz=(cargo +nightly fuzz); else fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz); fi
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
    fuzz_for() {  # crate target seconds
        echo "test: fuzzing $1/$2 for $3 s"
        (cd "$1" && "${fuzz[@]}" run "$2" -- -max_total_time="$3" -rss_limit_mb=2048 2>&1 | tail -n 3)
    }
    fuzz_for protocol decode "${FUZZ_SECONDS:-60}"
    for t in requests virtio_gpu alloc_table; do fuzz_for backend "$t" "${FUZZ_BACKEND_SECONDS:-40}"; done
fi
echo "test: all passed"
