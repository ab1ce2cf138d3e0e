#!/usr/bin/env bash
# Property-based testing of gpuvisord's admin API against its own OpenAPI
# document with schemathesis: a real gpuvisord and a sim-engine backend on
# loopback, every operation with generated valid and invalid requests. Fails
# on any 5xx, any answer that does not match the document, any valid request
# refused or invalid one accepted.
#
#   scripts/api-fuzz.sh [PROFILE]     (default debug; run after scripts/build.sh)
#
# The binaries are taken from $CARGO_TARGET_DIR when it is set, else target/.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/${1:-debug}
python3 -m pip install -q --disable-pip-version-check 'schemathesis==4.32.5' 2>&1 | grep -v 'as the .root. user' || true
work=$(mktemp -d /tmp/gpuvisor-api-fuzz.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/gpuvisord" --backend-socket "$work/d.sock" --listen "127.0.0.1:$port" --state-dir "$work/state" \
    > "$work/gpuvisord.log" 2>&1 &
for _ in $(seq 100); do [ -S "$work/d.sock" ] && break; sleep 0.1; done
"$bin/gpuvisor-backend" --engine sim --socket-path "$work/vm.sock" --vm-name fuzzed --daemon "$work/d.sock" \
    > "$work/backend.log" 2>&1 &
sleep 1
token=$(cat "$work/state/admin.token")
# GET /v1/history answers 400 to what its document cannot say: `from` after
# `to`, or a step that would give more than 11000 points per series.
cat > "$work/schemathesis.toml" <<'TOML'
[[operations]]
include-path = "/v1/history"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "503"]
TOML
# From the scratch directory: schemathesis leaves a .schemathesis cache where it runs.
(cd "$work" && python3 -m schemathesis.cli --config-file "$work/schemathesis.toml" run \
    "http://127.0.0.1:$port/openapi.json" \
    -H "Authorization: Bearer $token" --max-examples "${API_FUZZ_EXAMPLES:-100}" --seed 1 2>&1 | tail -n 12)
