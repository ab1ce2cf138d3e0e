#!/usr/bin/env bash
# Installs the built binaries and the vhost-user descriptor libvirt uses to
# find gpuvisor-backend. PREFIX defaults to /usr/local.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
bin=target/release
for f in gpuvisor-backend gpuvisor-vm libcuda.so; do
    [ -e "$bin/$f" ] || { echo "install: $bin/$f missing; run scripts/build.sh first" >&2; exit 1; }
done
install -D -m 0755 "$bin/gpuvisor-backend" "$prefix/libexec/gpuvisor-backend"
install -D -m 0755 "$bin/gpuvisor-vm" "$prefix/bin/gpuvisor-vm"
ln -sf "$prefix/libexec/gpuvisor-backend" "$prefix/bin/gpuvisor-backend"
install -D -m 0644 "$bin/libcuda.so" "$prefix/share/gpuvisor/guest/libcuda.so.1"
descriptor=/usr/share/qemu/vhost-user/50-gpuvisor.json
sed "s#/usr/local/libexec#$prefix/libexec#" backend/vhost-user/50-gpuvisor.json | install -D -m 0644 /dev/stdin "$descriptor"
echo "install: gpuvisor-backend, gpuvisor-vm, the guest driver and $descriptor installed under $prefix"
