#!/usr/bin/env bash
# Fetches the CUDA runtime (libcudart) that guest-tests/gv_cudart is built
# against, and cuBLAS for gv_cublas: NVIDIA's PyPI wheels at pinned
# versions, checked by SHA-256, unpacked under build/cudart/ (12 = 12.8.90,
# shared only; 13 = 13.0.96, shared and static; cublas13 = cuBLAS 13.1.2).
# Runs again for free once they are there.
#
#   scripts/fetch-cudart.sh [DIR]     DIR defaults to build/cudart
#
# The wheels are x86-64 only here; elsewhere it says so and exits 0, and the
# cudart tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/cudart}

if [ "$(uname -m)" != x86_64 ]; then
    echo "fetch-cudart: the pinned wheels are for x86_64, not $(uname -m); skipping"
    exit 0
fi

# name==version, the wheel's SHA-256, where it unpacks to, and a library
# whose folder becomes that place's lib/.
wheels=(
    "nvidia-cuda-runtime-cu12==12.8.90 adade8dcbd0edf427b7204d480d6066d33902cab2a4707dcfc48a2d0fd44ab90 12 libcudart.so.12"
    "nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548 13 libcudart.so.13"
    "nvidia-cublas==13.1.2.11 e1ad7b57879088bc79e31cc172891a64332f76ae733084d4aaaaa65499b9b3de cublas13 libcublas.so.13"
)

mkdir -p "$dir/wheels"
for w in "${wheels[@]}"; do
    read -r req sha major marker <<<"$w"
    stamp="$dir/$major/.sha256"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ]; then
        continue
    fi
    echo "fetch-cudart: $req"
    reqfile=$(mktemp)
    echo "$req --hash=sha256:$sha" >"$reqfile"
    # --require-hashes makes pip refuse a wheel whose hash differs.
    python3 -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
        --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 \
        -d "$dir/wheels" -r "$reqfile" 2>&1 |
        grep -v 'as the .root. user' || true
    rm -f "$reqfile"
    whl=$(ls "$dir"/wheels/"$(echo "${req%%==*}" | tr - _)"-"${req##*==}"-*.whl 2>/dev/null | head -n1)
    [ -n "$whl" ] || { echo "fetch-cudart: pip did not download $req" >&2; exit 1; }
    echo "$sha  $whl" | sha256sum -c --quiet - || { echo "fetch-cudart: $whl has the wrong SHA-256" >&2; exit 1; }
    rm -rf "$dir/$major"
    python3 -m zipfile -e "$whl" "$dir/$major.unpack"
    # 12's wheel keeps it under nvidia/cuda_runtime, 13's under nvidia/cu13.
    src=$(dirname "$(find "$dir/$major.unpack" -name "$marker" | head -n1)")
    mkdir -p "$dir/$major"
    mv "$src" "$dir/$major/lib"
    if [ -d "$(dirname "$src")/include" ]; then mv "$(dirname "$src")/include" "$dir/$major/include"; fi
    rm -rf "$dir/$major.unpack"
    echo "$sha" >"$stamp"
done
echo "fetch-cudart: $dir/12 (libcudart.so.12), $dir/13 (libcudart.so.13, libcudart_static.a), $dir/cublas13"
