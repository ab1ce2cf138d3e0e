//! The whole surface a guest reaches: arbitrary guest RAM and a sequence of
//! arbitrary control- and cursor-queue requests to a virtio-gpu device on
//! the sim engine (2D and 3D resources, backing, contexts, SUBMIT_3D with
//! CUDA command batches). No input may panic the backend, hang it, or let
//! it touch memory outside the guest's.
#![no_main]

use gpuvisor_backend::engine::sim::SimEngine;
use gpuvisor_backend::virtio_gpu::GpuDevice;
use gpuvisor_backend::vm::Vm;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: small, so that the fuzzer's addresses land in it often.
const RAM: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // [u16 ram_len][ram bytes] then requests, each [u8 queue][u16 len][bytes].
    let Some((ram_len, mut rest)) = take_u16(data) else { return };
    let ram_len = (ram_len as usize).min(rest.len()).min(RAM);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM");
    mem.write_slice(&rest[..ram_len], GuestAddress(0x1000)).expect("inside RAM");
    rest = &rest[ram_len..];
    let vm = Vm::new("fuzz", Box::new(SimEngine::new(16 << 20)), 8 << 20);
    let mut dev = GpuDevice::new(vm);
    while let Some((&queue, r)) = rest.split_first() {
        let Some((len, r)) = take_u16(r) else { break };
        let len = (len as usize).min(r.len());
        let (req, r) = r.split_at(len);
        rest = r;
        if queue & 1 == 0 {
            let _ = dev.handle_ctrl(&mem, req);
        } else {
            dev.handle_cursor(&mem, req);
        }
    }
    dev.reset();
});

fn take_u16(data: &[u8]) -> Option<(u16, &[u8])> {
    let (a, rest) = data.split_first_chunk::<2>()?;
    Some((u16::from_le_bytes(*a), rest))
}
