#!/usr/bin/env bash
# The demo: installs what is missing, builds gpuvisor, boots a QEMU VM whose
# vGPU is served by gpuvisor-backend, runs the CUDA guest checks inside it and
# prints what each did; then starts three VMs from one fleet file under
# gpuvisord with weights 1:1:2 and prints the GPU time share each got.
#
#   scripts/demo.sh [--engine auto|cuda|sim] [--quota-mib N] [--accel auto|kvm|tcg]
#
# auto (the default) uses the host's NVIDIA GPU through the cuda engine if the
# driver and a GPU are present, else the CPU simulator (sim).
set -euo pipefail
cd "$(dirname "$0")/.."
engine=auto; quota=1024; accel=auto
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) engine=$2; shift 2 ;;
        --quota-mib) quota=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
sudo_if_needed scripts/install-prereqs.sh
PROFILE=release scripts/build.sh
bin=target/release
read -r picked device < <($bin/gpuvisor-backend --print-engine --engine "$engine")
echo "demo: engine $picked ($device), VM quota $quota MiB"
log=build/demo-console.log
set +e
$bin/gpuvisor-vm run --name demo --kernel build/guest/vmlinuz --initramfs build/guest/initramfs.cpio.gz \
    --engine "$picked" --quota-mib "$quota" --accel "$accel" --timeout-s 900 \
    --run "env GV_EXPECT_QUOTA_MIB=$quota /opt/gpuvisor/tests/run-all.sh" | tee "$log"
rc=${PIPESTATUS[0]}
set -e
line=$(grep -a '^GUEST-CHECKS ' "$log" | tail -n1 | tr -d '\r')
counts=${line#GUEST-CHECKS }
if [ -z "$line" ]; then
    echo "demo: the guest printed no check summary (gpuvisor-vm exit $rc); see $log" >&2
    exit 1
fi

# Part two: three VMs from one fleet file under a gpuvisord of their own,
# weights 1, 1 and 2, each keeping its vGPU saturated (sim engine).
echo "demo: three VMs under gpuvisord, weights 1:1:2 (vmm-config/examples/fleet-demo.toml)"
fleet_log=build/demo-fleet.log
set +e
$bin/gpuvisor-vm fleet --spec vmm-config/examples/fleet-demo.toml | tee "$fleet_log"
frc=${PIPESTATUS[0]}
set -e
shares=$(python3 - "$fleet_log" <<'EOF'
import json, sys
k = {}
for line in open(sys.argv[1], errors="replace"):
    line = line.replace("\r", "").strip()
    if line.startswith("[") and "] GVLOAD " in line:
        name, rest = line[1:].split("] GVLOAD ", 1)
        k[name] = json.loads(rest).get("kernels", 0)
total = sum(k.values())
print(" ".join(f"{n} {100 * v / total:.1f}%" for n, v in sorted(k.items())) if total else "")
EOF
)
if [ "$frc" -ne 0 ] || [ -z "$shares" ]; then
    echo "demo: the fleet failed (exit $frc); see $fleet_log" >&2
    exit 1
fi
echo "demo: GPU time shares of the fleet (weights 1:1:2): $shares"
echo "demo: ${counts} guest checks passed on $picked ($device)"
[ "$rc" -eq 0 ]
