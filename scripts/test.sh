#!/usr/bin/env bash
# Installs what the tests need and runs every test: unit tests, the request-
# path tests, the vhost-user direct transport tests, programs built against
# the CUDA runtime (cudart 12 and 13, shared and static), the VM tests (real QEMU,
# real guest kernel, sim engine), schemathesis against the admin API and a
# bounded fuzzing run of the decoder.
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
elif ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "test: fuzzing skipped: cargo-fuzz needs a nightly toolchain and this machine has none"
else
    echo "test: fuzzing the batch decoder and image parsers for ${FUZZ_SECONDS:-60} s"
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
    (cd protocol && cargo +nightly fuzz run decode -- -max_total_time="${FUZZ_SECONDS:-60}" -rss_limit_mb=2048 2>&1 | tail -n 3)
fi
echo "test: all passed"
