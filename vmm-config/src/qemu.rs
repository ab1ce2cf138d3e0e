//! The QEMU command line for a validated VM: q35, guest RAM in a shared memfd (which
//! vhost-user needs so the backend can map it), the vhost-user-gpu device, optional 9p
//! shares (`share_dir` and the read-only host tree of `host_paths`).

use std::ffi::OsString;
use std::path::Path;

use crate::accel::Accel;
use crate::spec::{host_path_tag, VmConfig, SHARE_TAG};

/// Arguments for `qemu-system-x86_64` (without the program itself). The serial
/// console goes to QEMU's stdout.
pub fn qemu_args(vm: &VmConfig, accel: Accel, socket: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    fn push_to(a: &mut Vec<OsString>, items: &[&str]) {
        a.extend(items.iter().map(OsString::from));
    }

    // -nodefaults drops the default VGA, NIC, floppy and CD-ROM; -no-user-config
    // keeps /etc/qemu out of the picture.
    push_to(&mut a, &["-nodefaults", "-no-user-config", "-name", &format!("{},debug-threads=on", vm.name)]);
    // vhost-user hands guest RAM to the backend as file descriptors, so RAM must be
    // a shareable memfd; `memory-backend=` is the q35 spelling of -numa node,memdev.
    push_to(&mut a, &["-machine", "q35,memory-backend=mem"]);
    push_to(&mut a, &["-object", &format!("memory-backend-memfd,id=mem,size={}M,share=on", vm.memory_mib)]);
    push_to(&mut a, &["-m", &format!("{}M", vm.memory_mib), "-smp", &vm.vcpus.to_string()]);
    match accel {
        Accel::Kvm => push_to(&mut a, &["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push_to(&mut a, &["-accel", "tcg,thread=multi", "-cpu", "max"]),
    }
    push_to(&mut a, &["-chardev", &format!("socket,id=vgpu,path={}", opt_path(socket))]);
    push_to(&mut a, &["-device", "vhost-user-gpu-pci,chardev=vgpu"]);
    if let Some(dir) = &vm.share_dir {
        push_to(&mut a, &["-fsdev", &format!("local,id=fs0,path={},security_model=none,readonly=on", opt_path(dir))]);
        push_to(&mut a, &["-device", &format!("virtio-9p-pci,fsdev=fs0,mount_tag={SHARE_TAG}")]);
    }
    for (i, dir) in vm.host_paths.iter().enumerate() {
        // readonly=on makes QEMU refuse every write (EROFS) whatever the guest
        // mounts; multidevs=remap keeps inode numbers unique when the directory
        // spans several host file systems, which the guest's cache relies on.
        let tag = host_path_tag(i);
        push_to(
            &mut a,
            &[
                "-fsdev",
                &format!("local,id={tag},path={},security_model=none,readonly=on,multidevs=remap", opt_path(dir)),
            ],
        );
        push_to(&mut a, &["-device", &format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}")]);
    }
    a.push("-kernel".into());
    a.push(vm.kernel.clone().into_os_string());
    a.push("-initrd".into());
    a.push(vm.initramfs.clone().into_os_string());
    push_to(&mut a, &["-append", &vm.cmdline]);
    push_to(&mut a, CONSOLE_ARGS);
    a
}

/// The guest's serial console on stdio, no display, no monitor, and an exit
/// instead of a reboot. -display none rather than -nographic: -nographic would
/// multiplex the monitor onto stdio, and Ctrl-A sequences would reach QEMU
/// instead of the guest.
pub const CONSOLE_ARGS: &[&str] = &["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"];

/// A path inside a QEMU `key=value,...` option, where a literal comma is doubled.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Quotes a command line for display (copy-pasteable into a POSIX shell).
pub fn shell_quote(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|s| {
            let s = s.to_string_lossy();
            if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c)) {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AccelChoice, BackendCommand};
    use std::path::PathBuf;

    fn vm(share: Option<&str>) -> VmConfig {
        vm_with(share, &[])
    }

    fn vm_with(share: Option<&str>, host_paths: &[&str]) -> VmConfig {
        VmConfig {
            name: "t".into(),
            memory_mib: 512,
            vcpus: 3,
            kernel: "/k".into(),
            initramfs: "/i".into(),
            cmdline: "console=ttyS0 quiet".into(),
            share_dir: share.map(PathBuf::from),
            host_paths: host_paths.iter().map(PathBuf::from).collect(),
            accel: AccelChoice::Auto,
            backend: BackendCommand { program: "/b".into(), args: vec![] },
            backend_start_timeout_s: 10,
            timeout_s: 0,
            interactive: false,
            qemu: "/q".into(),
            ..Default::default()
        }
    }

    fn joined(v: &VmConfig, accel: Accel) -> String {
        shell_quote(Path::new("qemu"), &qemu_args(v, accel, Path::new("/run/vgpu.sock")))
    }

    #[test]
    fn ram_is_a_shared_memfd_of_the_vm_size() {
        let s = joined(&vm(None), Accel::Tcg);
        assert!(s.contains("-object memory-backend-memfd,id=mem,size=512M,share=on"), "{s}");
        assert!(s.contains("-machine q35,memory-backend=mem"), "{s}");
        assert!(s.contains("-m 512M -smp 3"), "{s}");
    }

    #[test]
    fn vgpu_device_uses_the_backend_socket() {
        let s = joined(&vm(None), Accel::Tcg);
        assert!(
            s.contains("-chardev socket,id=vgpu,path=/run/vgpu.sock -device vhost-user-gpu-pci,chardev=vgpu"),
            "{s}"
        );
        assert!(s.contains("-nodefaults"), "{s}");
        assert!(s.contains("-append 'console=ttyS0 quiet'"), "{s}");
    }

    #[test]
    fn accel_picks_cpu_model() {
        assert!(joined(&vm(None), Accel::Tcg).contains("-accel tcg,thread=multi -cpu max"));
        assert!(joined(&vm(None), Accel::Kvm).contains("-accel kvm -cpu host"));
    }

    #[test]
    fn share_dir_adds_readonly_9p() {
        assert!(!joined(&vm(None), Accel::Tcg).contains("9p"));
        let s = joined(&vm(Some("/srv/share")), Accel::Tcg);
        assert!(s.contains("-fsdev local,id=fs0,path=/srv/share,security_model=none,readonly=on"), "{s}");
        assert!(s.contains("-device virtio-9p-pci,fsdev=fs0,mount_tag=hostshare"), "{s}");
        let s = joined(&vm(Some("/a,b")), Accel::Tcg);
        assert!(s.contains("path=/a,,b,security_model"), "{s}");
    }

    #[test]
    fn host_paths_are_readonly_9p_devices_in_order() {
        let s = joined(&vm_with(Some("/srv/share"), &["/usr", "/opt/venv"]), Accel::Tcg);
        assert!(
            s.contains(
                "-fsdev local,id=hostfs0,path=/usr,security_model=none,readonly=on,multidevs=remap \
                 -device virtio-9p-pci,fsdev=hostfs0,mount_tag=hostfs0"
            ),
            "{s}"
        );
        assert!(s.contains("-fsdev local,id=hostfs1,path=/opt/venv,"), "{s}");
        assert!(s.contains("mount_tag=hostshare"), "{s}");
    }
}
