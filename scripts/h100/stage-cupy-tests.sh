#!/usr/bin/env bash
# Stages, into .stage/cupy-tests/ (carried to the GPU machine, which has no
# network), the subset of CuPy's own test suite that scripts/h100/cupy-tests.sh
# runs natively and on the guest driver (issue 7), for the CuPy releases the
# GPU machine may have (its installed major version picks one), and pytest's
# wheels in case the machine lacks it. Needs the network (pip) and a CuPy
# checkout: CUPY_REPO (a git directory with the release tags).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=${CUPY_REPO:?CUPY_REPO: a git directory of github.com/cupy/cupy with its release tags}
dest=.stage/cupy-tests
rm -rf "$dest" && mkdir -p "$dest/wheels"
# Array creation and shapes, elementwise arithmetic (kernels compiled by
# NVRTC at run time), reductions, sorting (CUB/Thrust) and products (cuBLAS).
FILES=(
    tests/conftest.py
    tests/cupy_tests/__init__.py
    tests/cupy_tests/creation_tests/test_basic.py
    tests/cupy_tests/manipulation_tests/test_shape.py
    tests/cupy_tests/math_tests/test_arithmetic.py
    tests/cupy_tests/math_tests/test_sumprod.py
    tests/cupy_tests/statistics_tests/test_meanvar.py
    tests/cupy_tests/sorting_tests/test_sort.py
    tests/cupy_tests/linalg_tests/test_product.py
)
for tag in ${CUPY_TAGS:-v12.3.0 v13.6.0 v14.2.0}; do
    major=${tag#v}; major=${major%%.*}
    for f in "${FILES[@]}"; do
        if git --git-dir="$repo" cat-file -e "$tag:$f" 2>/dev/null; then
            mkdir -p "$dest/$major/$(dirname "$f")"
            git --git-dir="$repo" show "$tag:$f" > "$dest/$major/$f"
        fi
    done
    echo "$tag" > "$dest/$major/TAG"
done
python3 -m pip download --quiet --no-deps --dest "$dest/wheels" pytest==8.3.5 pluggy==1.5.0 iniconfig==2.1.0 packaging==24.2
du -sh "$dest"
