#!/usr/bin/env bash
# Builds everything the demo and the tests use: the Rust workspace, the guest
# test programs, and the guest image (kernel + initramfs with the guest driver
# installed as libcuda.so.1). PROFILE=release|debug (default release); cargo's
# output goes to $CARGO_TARGET_DIR when that is set, else target/.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
target=${CARGO_TARGET_DIR:-target}
flag=""; [ "$profile" = release ] && flag="--release"
echo "build: cargo ($profile)"
cargo build $flag --workspace --bins --lib
echo "build: guest test programs"
make -s -C guest-tests OUT="$PWD/build/guest-tests"
echo "build: the CUDA runtime (pinned wheels) and the programs built against it"
# Offline, the rest still builds; scripts/test.sh then fails the cudart tests.
scripts/fetch-cudart.sh build/cudart || echo "build: warning: no CUDA runtime fetched; gv_cudart not built"
if [ -f build/cudart/13/lib/libcudart_static.a ]; then
    make -s -C guest-tests cudart OUT="$PWD/build/guest-tests" CUDART_DIR="$PWD/build/cudart"
fi
echo "build: guest image"
images/build-guest.sh --driver "$target/$profile/libcuda.so" --tests build/guest-tests \
    --extra "$target/$profile/gpuvisor-probe:/usr/bin/gpuvisor-probe" --out build/guest
