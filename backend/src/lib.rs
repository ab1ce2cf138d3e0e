//! gpuvisor-backend: one process per VM that presents a virtio-gpu device
//! over vhost-user, decodes the guest's CUDA command stream, and runs it on
//! an engine (the host GPU through cudarc, or the CPU simulator).
//!
//! Data path, top to bottom: `device.rs` (virtqueues) → `virtio_gpu.rs`
//! (virtio-gpu commands, SUBMIT_3D) → `vm.rs` (decode, per-VM handle tables,
//! quota, replies) → `engine/` (cuda | sim).

pub mod device;
pub mod engine;
pub mod error;
pub mod grants;
pub mod graph;
pub mod guest_mem;
pub mod handles;
pub mod heartbeat;
pub mod journal;
pub mod relay;
pub mod resources;
pub mod sandbox;
pub mod supervisor;
pub mod virtio_gpu;
pub mod vm;
pub mod watchdog;

/// Sticky CUDA errors (`protocol::cuda::is_sticky`) and the exit status a
/// backend ends with when one made its GPU context unusable: the process can
/// never get a working context again, so it ends, and whoever restarts it
/// (the supervisor) learns from the status which error the VM's guests get.
const FAULT_EXIT_CODES: [(u32, i32); 11] = [
    (700, 80),
    (719, 81),
    (702, 82),
    (715, 83),
    (716, 84),
    (717, 85),
    (718, 86),
    (214, 87),
    (999, 88),
    (710, 89),
    (714, 90),
];

/// The exit status for sticky error `cu`; an error outside the table (not
/// sticky) is reported as the unknown error's, 88.
pub fn fault_exit_code(cu: u32) -> i32 {
    FAULT_EXIT_CODES.iter().find(|(c, _)| *c == cu).map_or(88, |(_, code)| *code)
}

/// The sticky error a backend that ended with status `code` reported, or
/// `None` for a status that is not a fault's.
pub fn fault_from_exit_code(code: i32) -> Option<u32> {
    FAULT_EXIT_CODES.iter().find(|(_, c)| *c == code).map(|(cu, _)| *cu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sticky_error_has_its_own_exit_status_and_back() {
        let table = [
            (700, 80),
            (719, 81),
            (702, 82),
            (715, 83),
            (716, 84),
            (717, 85),
            (718, 86),
            (214, 87),
            (999, 88),
            (710, 89),
            (714, 90),
        ];
        for (cu, code) in table {
            assert!(protocol::cuda::is_sticky(cu), "{cu} is sticky");
            assert_eq!(fault_exit_code(cu), code, "{cu}");
            assert_eq!(fault_from_exit_code(code), Some(cu), "{code}");
        }
        for code in [0, 1, 79, 91, 101, -1] {
            assert_eq!(fault_from_exit_code(code), None, "{code} is no fault's status");
        }
    }
}
