#!/usr/bin/env bash
# Installs what building, the demo and the tests need on a Debian bookworm host:
# QEMU 10 from bookworm-backports (QEMU 7.2 refuses vhost-user-gpu-pci without KVM),
# the Debian kernel package (the guest kernel and its virtio-gpu module), busybox
# (the guest's userland), the C toolchain for the guest test programs, pip (which
# fetches the CUDA runtime wheels and schemathesis), Prometheus
# (daemon/tests/prometheus.rs runs its own /usr/bin/prometheus; the packaged service is not used)
# and tmux (daemon/tests/top.rs drives `gpuvisorctl top` in a tmux terminal).
# Safe to run again: it skips what is already there.
set -euo pipefail

need_root() { if [ "$(id -u)" -ne 0 ]; then echo "install-prereqs: run as root (or via sudo)" >&2; exit 1; fi; }

have_qemu10() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    local v
    v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1)
    [ -n "$v" ] && [ "$v" -ge 10 ]
}

kernel_present() { ls /boot/vmlinuz-* >/dev/null 2>&1 && ls -d /lib/modules/*/kernel/drivers/gpu/drm/virtio >/dev/null 2>&1; }

missing=()
have_qemu10 || missing+=(qemu)
kernel_present || missing+=(kernel)
command -v busybox >/dev/null 2>&1 || [ -x /bin/busybox ] || missing+=(busybox)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v xz >/dev/null 2>&1 || missing+=(xz)
python3 -m pip --version >/dev/null 2>&1 || missing+=(pip)
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-prereqs: everything present"
    exit 0
fi
need_root
echo "install-prereqs: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/gpuvisor-backports.list
fi
apt-get update -q
pkgs=(busybox-static cpio xz-utils gcc libc6-dev kmod tmux)
kernel_present || pkgs+=(linux-image-amd64)
[ -x /usr/bin/prometheus ] || pkgs+=(prometheus)
python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
apt-get install -y -q --no-install-recommends "${pkgs[@]}"
if ! have_qemu10; then
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-system-gui
fi
have_qemu10 || { echo "install-prereqs: QEMU 10 did not install" >&2; exit 1; }
echo "install-prereqs: done ($(qemu-system-x86_64 --version | head -n1))"
