#!/bin/sh
# Runs every gpuvisor guest test program except gv_bench and sums their
# CHECK lines.  POSIX sh / busybox sh.
#
#   run-all.sh [program ...]     default: all of them
#
# Programs are looked up next to this script (GV_TEST_DIR overrides).
# A program that exits non-zero without printing a failed check (a crash,
# a missing library) counts as one failed check of its own.
# Last line: GUEST-CHECKS <passed>/<total>; exit 0 only if all passed.

dir=${GV_TEST_DIR:-$(dirname "$0")}
progs="$*"
[ -n "$progs" ] || progs="gv_devinfo gv_vector_add gv_memcpy gv_streams gv_events gv_errors gv_graphs"

tmp=${TMPDIR:-/tmp}/gv-run-all.$$
trap 'rm -f "$tmp" "$tmp.rc"' EXIT INT TERM

passed=0
total=0
for p in $progs; do
    echo "=== $p"
    rm -f "$tmp.rc"
    { "$dir/$p" 2>&1; echo $? > "$tmp.rc"; } | tee "$tmp"
    rc=$(cat "$tmp.rc" 2>/dev/null)
    [ -n "$rc" ] || rc=255
    np=$(grep -c '^CHECK [^ ]*: PASS' "$tmp")
    nf=$(grep -c '^CHECK [^ ]*: FAIL' "$tmp")
    if [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
        echo "CHECK ${p#gv_}.exit: FAIL exit status $rc without a failed check"
        nf=1
    fi
    passed=$((passed + np))
    total=$((total + np + nf))
done

echo "GUEST-CHECKS $passed/$total"
[ "$passed" -eq "$total" ] && [ "$total" -gt 0 ]
