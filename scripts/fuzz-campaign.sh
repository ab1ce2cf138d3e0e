#!/usr/bin/env bash
# A longer fuzzing run than the test command's, whose figures are kept:
# every cargo-fuzz target of the project for SECONDS each (default 600),
# one after another, then bench/results/fuzz/campaign.json with each
# target's executions, executions per second, coverage (edges and
# features), corpus size and the crashes found (their inputs stay under
# <crate>/fuzz/artifacts/). Uses nightly where rustup has it, else the
# stable toolchain with RUSTC_BOOTSTRAP=1 (its sanitizer runtimes ship with
# it), as scripts/test.sh does.
#
#   scripts/fuzz-campaign.sh [SECONDS] [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
out=${2:-bench/results/fuzz/campaign.json}
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then fuzz=(cargo +nightly fuzz); else fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz); fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
logs=$(mktemp -d)
targets=("protocol decode" "backend requests" "backend virtio_gpu" "backend alloc_table")
for t in "${targets[@]}"; do
    read -r dir name <<< "$t"
    echo "fuzz-campaign: $dir/$name for ${secs}s"
    mkdir -p "$dir/fuzz/artifacts/$name"
    before=$(find "$dir/fuzz/artifacts/$name" -type f | wc -l)
    # A crash ends the run early with a non-zero status; it is counted below.
    (cd "$dir" && "${fuzz[@]}" run "$name" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1) \
        > "$logs/$name.log" 2>&1 || true
    after=$(find "$dir/fuzz/artifacts/$name" -type f | wc -l)
    echo "$dir $name $((after - before))" >> "$logs/index"
done
mkdir -p "$(dirname "$out")"
python3 - "$logs" "$secs" "$(git rev-parse HEAD)" > "$out" <<'PY'
import datetime, json, re, sys
logs, secs, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
targets = []
for line in open(f"{logs}/index"):
    d, name, crashes = line.split()
    text = open(f"{logs}/{name}.log", errors="replace").read()
    stat = lambda k: int(m.group(1)) if (m := re.search(rf"stat::{k}:\s+(\d+)", text)) else None
    last = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/", text)
    targets.append({
        "crate": d, "target": name, "seconds": secs,
        "executions": stat("number_of_executed_units"),
        "executions_per_second": stat("average_exec_per_sec"),
        "coverage_edges": int(last[-1][0]) if last else None,
        "features": int(last[-1][1]) if last else None,
        "corpus_entries": int(last[-1][2]) if last else None,
        "peak_rss_mb": stat("peak_rss_mb"),
        "crashes_found": int(crashes),
        "panicked": "panicked at" in text,
    })
json.dump({"command": "scripts/fuzz-campaign.sh", "revision": rev,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "targets": targets}, sys.stdout, indent=1)
print()
PY
cat "$out"
