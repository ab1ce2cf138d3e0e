//! The CUDA command path behind SUBMIT_3D, past the framing a raw fuzzer
//! must first guess: a VM on the sim engine with a guest's control and data
//! buffers, a session opened with Hello, then batches the harness frames
//! from the input's commands (any opcode, flags, context and payload bytes),
//! with the data buffer's contents taken from the input too. Every request
//! must get an answer; nothing may panic, hang, or leak past the quota.
#![no_main]

use gpuvisor_backend::engine::sim::SimEngine;
use gpuvisor_backend::guest_mem::Extent;
use gpuvisor_backend::resources::Resource;
use gpuvisor_backend::vm::Vm;
use libfuzzer_sys::fuzz_target;
use protocol::{BatchWriter, Hello, Opcode, PRIMARY_CTX, PROTOCOL_VERSION};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::little_endian::{U16, U32};

const MIB: u64 = 1 << 20;
const CONTROL: u32 = 100;
const BUF: u32 = 101;
const CONTROL_GPA: u64 = 0x10_0000;
const BUF_GPA: u64 = 0x30_0000;
const QUOTA: u64 = 8 * MIB;

fn vm_with_session() -> (Vm, GuestMemoryMmap<()>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 * MIB as usize)]).expect("guest RAM");
    let mut vm = Vm::new("fuzz", Box::new(SimEngine::new(64 * MIB)), QUOTA);
    for (id, gpa, size) in [(CONTROL, CONTROL_GPA, 2 * MIB), (BUF, BUF_GPA, MIB)] {
        let r = Resource {
            width: size as u32,
            height: 1,
            size,
            backing: vec![Extent { addr: GuestAddress(gpa), len: size as usize }],
            ..Default::default()
        };
        vm.resources.create(id, r).expect("resource");
        vm.resources.get_mut(id).expect("created").attached.insert(1);
    }
    vm.create_client(1).expect("client");
    let hello = Hello {
        control_resource: U32::new(CONTROL),
        protocol_version: U16::new(PROTOCOL_VERSION),
        pid: U32::new(42),
        ..Default::default()
    };
    let mut w = BatchWriter::new();
    w.begin(1);
    w.push(Opcode::Hello, 0, PRIMARY_CTX, &hello, &[]);
    vm.submit(&mem, 1, w.finish()).expect("hello answered");
    (vm, mem)
}

fuzz_target!(|data: &[u8]| {
    let (mut vm, mem) = vm_with_session();
    // [u16 buf_len][buf bytes], then batches: [u8 count] then per command
    // [u16 opcode][u16 flags][u8 ctx][u16 len][payload].
    let Some((n, mut rest)) = take_u16(data) else { return };
    let n = (n as usize).min(rest.len());
    mem.write_slice(&rest[..n], GuestAddress(BUF_GPA)).expect("inside the buffer");
    rest = &rest[n..];
    let mut seq = 1u64;
    while let Some((&count, r)) = rest.split_first() {
        rest = r;
        seq += 1;
        let mut w = BatchWriter::new();
        w.begin(seq);
        for _ in 0..count % 16 {
            let Some((op, r)) = take_u16(rest) else { break };
            let Some((flags, r)) = take_u16(r) else { break };
            let Some((&ctx, r)) = r.split_first() else { break };
            let Some((len, r)) = take_u16(r) else { break };
            let len = (len as usize).min(r.len());
            let (payload, r) = r.split_at(len);
            rest = r;
            let Some(op) = Opcode::from_u16(op % 80) else { continue };
            // Contexts: the primary one, or a few small ids the guest may create.
            let ctx = if ctx & 0x80 == 0 { PRIMARY_CTX } else { (ctx & 7) as u64 };
            w.push(op, flags, ctx, payload, &[]);
        }
        // Every batch is answered, even a rejected one.
        vm.submit(&mem, 1, w.finish()).expect("a reply is always written");
    }
    vm.destroy_client(1);
});

fn take_u16(data: &[u8]) -> Option<(u16, &[u8])> {
    let (a, rest) = data.split_first_chunk::<2>()?;
    Some((u16::from_le_bytes(*a), rest))
}
