#!/usr/bin/env bash
# Stages everything the GPU machine needs into .stage/ (git-ignored, carried by
# the device tool): a relocatable QEMU bundle with the guest image and the
# gpuvisor binaries, the guest test programs, and the revision being measured;
# with CUPY_REPO (a git directory of CuPy with its tags), also the subset of
# CuPy's tests that cupy-tests.sh runs (scripts/h100/stage-cupy-tests.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# A fresh machine needs QEMU 10, the kernel and busybox for the bundle.
sudo_if_needed scripts/install-prereqs.sh
PROFILE=release scripts/build.sh
rm -rf .stage && mkdir -p .stage
scripts/stage-bundle.sh --out .stage/bundle --guest build/guest \
    --bin target/release/gpuvisor-backend --bin target/release/gpuvisor-vm --bin target/release/gpuvisor-probe \
    --bin target/release/gpuvisord --bin target/release/gpuvisorctl
rm -rf .stage/bundle
mkdir -p .stage/guest-tests .stage/lib
cp build/guest-tests/gv_* build/guest-tests/run-all.sh .stage/guest-tests/
rm -f .stage/guest-tests/*.o .stage/guest-tests/*.h
cp target/release/libcuda.so .stage/lib/libcuda.so.1
if [ -n "${CUPY_REPO:-}" ]; then scripts/h100/stage-cupy-tests.sh; fi
git rev-parse HEAD > .stage/REVISION
git status --porcelain | grep -q . && echo "+uncommitted" >> .stage/REVISION || true
du -sh .stage
