//! Device handles: `nvmlDevice_t` values that name a GPU or one of its MIG
//! instances by index, so a handle is checked by decoding it, never by
//! dereferencing whatever the caller passed.

use nvml_wrapper_sys::bindings::{nvmlDevice_st, nvmlDevice_t};

/// Bits 24..32 of every handle; null and stray pointers rarely carry it.
const TAG: usize = 0x51 << 24;
const TAG_MASK: usize = !0x00ff_ffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceId {
    Gpu(usize),
    Mig { gpu: usize, instance: usize },
}

impl DeviceId {
    /// Bits 8..24 hold the GPU index, bits 0..8 the MIG instance + 1 (0: the GPU itself).
    pub fn to_handle(self) -> nvmlDevice_t {
        let (gpu, slot) = match self {
            DeviceId::Gpu(gpu) => (gpu, 0),
            DeviceId::Mig { gpu, instance } => (gpu, instance + 1),
        };
        debug_assert!(gpu <= 0xffff && slot <= 0xff, "config limits keep indices small");
        std::ptr::without_provenance_mut::<nvmlDevice_st>(TAG | (gpu & 0xffff) << 8 | (slot & 0xff))
    }

    /// `None` for anything [`DeviceId::to_handle`] cannot have made; the
    /// caller still checks the indices against the host.
    pub fn from_handle(handle: nvmlDevice_t) -> Option<Self> {
        let addr = handle.addr();
        if addr & TAG_MASK != TAG {
            return None;
        }
        let gpu = (addr >> 8) & 0xffff;
        match addr & 0xff {
            0 => Some(DeviceId::Gpu(gpu)),
            slot => Some(DeviceId::Mig { gpu, instance: slot - 1 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_strangers_are_rejected() {
        for id in [
            DeviceId::Gpu(0),
            DeviceId::Gpu(63),
            DeviceId::Mig { gpu: 0, instance: 0 },
            DeviceId::Mig { gpu: 5, instance: 6 },
        ] {
            assert_eq!(DeviceId::from_handle(id.to_handle()), Some(id));
        }
        let mut local = 0u8;
        let stray = std::ptr::from_mut(&mut local).cast::<nvmlDevice_st>();
        assert_eq!(DeviceId::from_handle(std::ptr::null_mut()), None);
        assert_eq!(DeviceId::from_handle(stray), None);
    }
}
