//! The request path below the virtqueues: batches decoded, validated and run
//! by `Vm` on the sim engine, with replies read back from guest memory the
//! way the guest driver reads them. Each test feeds the kind of bad input an
//! untrusted guest can send and checks the CUDA error that comes back and
//! that the backend keeps serving.

use gpuvisor_backend::engine::sim::SimEngine;
use gpuvisor_backend::guest_mem::{Extent, GuestMemory};
use gpuvisor_backend::resources::Resource;
use gpuvisor_backend::vm::Vm;
use protocol::cuda::*;
use protocol::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const MIB: u64 = 1 << 20;
const CONTROL: u32 = 100;
const BUF: u32 = 101;
const CONTROL_GPA: u64 = 0x10_0000;
const BUF_GPA: u64 = 0x20_0000;

struct Guest {
    vm: Vm,
    mem: GuestMemory,
    seq: u64,
    ctx_id: u32,
}

struct Answer {
    status: CuResult,
    deferred: CuResult,
    payload: Vec<u8>,
}

/// Writes one command of a batch.
type PushCommand<'a> = dyn Fn(&mut BatchWriter, Opcode, u16) + 'a;

impl Guest {
    fn new(quota: u64) -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap();
        let mut vm = Vm::new("test", Box::new(SimEngine::new(256 * MIB)), quota);
        // Two resources, as the guest kernel would create them: a control
        // buffer split over two extents, and a 1 MiB data buffer.
        let control = Resource {
            width: 2 * MIB as u32,
            height: 1,
            size: 2 * MIB,
            backing: vec![
                Extent { addr: GuestAddress(CONTROL_GPA), len: MIB as usize },
                Extent { addr: GuestAddress(CONTROL_GPA + 4 * MIB), len: MIB as usize },
            ],
            ..Default::default()
        };
        vm.resources.create(CONTROL, control).unwrap();
        let buf = Resource {
            width: MIB as u32,
            height: 1,
            size: MIB,
            backing: vec![Extent { addr: GuestAddress(BUF_GPA), len: MIB as usize }],
            ..Default::default()
        };
        vm.resources.create(BUF, buf).unwrap();
        let mut g = Guest { vm, mem, seq: 0, ctx_id: 1 };
        g.open_client(1);
        g
    }

    fn open_client(&mut self, ctx_id: u32) {
        self.ctx_id = ctx_id;
        self.vm.create_client(ctx_id).unwrap();
        for r in [CONTROL, BUF] {
            self.vm.resources.get_mut(r).unwrap().attached.insert(ctx_id);
        }
        self.seq = 0;
        let hello = Hello {
            control_resource: U32::new(CONTROL),
            protocol_version: U16::new(PROTOCOL_VERSION),
            pid: U32::new(42),
            ..Default::default()
        };
        let a = self.call(Opcode::Hello, 0, &hello, &[]);
        assert_eq!(a.status, CUDA_SUCCESS);
        let reply = HelloReply::read_from_prefix(&a.payload).unwrap().0;
        assert_eq!(reply.device_count.get(), 1);
    }

    fn raw(&mut self, bytes: &[u8]) -> Answer {
        self.vm.submit(&self.mem, self.ctx_id, bytes).expect("a reply is always written");
        let hdr: ReplyHeader = {
            let mut b = [0u8; core::mem::size_of::<ReplyHeader>()];
            self.mem.read_slice(&mut b, GuestAddress(CONTROL_GPA)).unwrap();
            ReplyHeader::read_from_bytes(&b).unwrap()
        };
        let mut payload = vec![0u8; hdr.payload_len.get() as usize];
        self.mem.read_slice(&mut payload, GuestAddress(CONTROL_GPA + REPLY_PAYLOAD_OFFSET)).unwrap();
        assert_eq!(hdr.completed_seq.get(), hdr.reply_seq.get());
        // A rejected batch still takes a sequence number, as the guest driver's
        // raw submissions do.
        self.seq = hdr.reply_seq.get();
        Answer { status: hdr.status.get(), deferred: hdr.deferred.get(), payload }
    }

    fn batch(&mut self, cmds: &[(Opcode, u16, &PushCommand<'_>)]) -> Answer {
        self.seq += 1;
        let mut w = BatchWriter::new();
        w.begin(self.seq);
        for (op, flags, f) in cmds {
            f(&mut w, *op, *flags);
        }
        let bytes = w.finish().to_vec();
        self.raw(&bytes)
    }

    fn call<T: IntoBytes + Immutable + ?Sized>(&mut self, op: Opcode, flags: u16, p: &T, trailing: &[u8]) -> Answer {
        self.seq += 1;
        let mut w = BatchWriter::new();
        w.begin(self.seq);
        w.push(op, flags, PRIMARY_CTX, p, trailing);
        let bytes = w.finish().to_vec();
        self.raw(&bytes)
    }

    fn alloc(&mut self, size: u64) -> Result<u64, CuResult> {
        let a = self.call(Opcode::MemAlloc, 0, &MemAlloc { size: U64::new(size) }, &[]);
        if a.status != CUDA_SUCCESS {
            return Err(a.status);
        }
        Ok(MemAllocReply::read_from_prefix(&a.payload).unwrap().0.dptr.get())
    }

    fn htod_inline(&mut self, dst: u64, data: &[u8]) -> Answer {
        let m = MemcpyHtoD {
            dst: U64::new(dst),
            len: U64::new(data.len() as u64),
            stream: U64::new(0),
            src: HostRef { kind: U32::new(HOST_INLINE), ..Default::default() },
        };
        // Async command, then a synchronizing one to collect its error.
        self.batch(&[
            (Opcode::MemcpyHtoD, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &m, data)),
            (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
        ])
    }

    fn dtoh_inline(&mut self, src: u64, len: u64) -> Answer {
        let m = MemcpyDtoH {
            src: U64::new(src),
            len: U64::new(len),
            stream: U64::new(0),
            dst: HostRef { kind: U32::new(HOST_INLINE), ..Default::default() },
        };
        self.call(Opcode::MemcpyDtoH, 0, &m, &[])
    }

    fn still_serves(&mut self) {
        let p = self.alloc(4096).expect("allocation after an error");
        assert_eq!(self.htod_inline(p, b"still here").deferred, CUDA_SUCCESS);
        let a = self.dtoh_inline(p, 10);
        assert_eq!(a.status, CUDA_SUCCESS);
        assert_eq!(&a.payload, b"still here");
        let f = self.batch(&[
            (Opcode::MemFree, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &Id { id: U64::new(p) }, &[])),
            (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
        ]);
        assert_eq!(f.deferred, CUDA_SUCCESS);
    }
}

#[test]
fn garbage_batches_get_invalid_value_and_the_backend_keeps_serving() {
    let mut g = Guest::new(64 * MIB);
    for garbage in [&[0xffu8; 64][..], &[][..], b"GVB1 but not really a batch", &[0u8; 4096][..]] {
        let a = g.raw(garbage);
        assert_eq!(a.status, CUDA_ERROR_INVALID_VALUE);
        g.still_serves();
    }
    // A batch out of sequence.
    let mut w = BatchWriter::new();
    w.begin(g.seq + 5);
    w.push_empty(Opcode::CtxSynchronize, 0, PRIMARY_CTX);
    let bytes = w.finish().to_vec();
    assert_eq!(g.raw(&bytes).status, CUDA_ERROR_INVALID_VALUE);
    g.still_serves();
    // A valid header followed by an unknown opcode.
    let mut w = BatchWriter::new();
    w.begin(g.seq + 1);
    w.push(Opcode::MemAlloc, 0, PRIMARY_CTX, &MemAlloc { size: U64::new(8) }, &[]);
    let mut bytes = w.finish().to_vec();
    bytes[24..26].copy_from_slice(&777u16.to_le_bytes());
    assert_eq!(g.raw(&bytes).status, CUDA_ERROR_INVALID_VALUE);
    g.still_serves();
}

#[test]
fn lengths_past_the_end_of_a_buffer_are_rejected() {
    let mut g = Guest::new(64 * MIB);
    let p = g.alloc(4096).unwrap();
    // Past the end of the guest resource.
    let m = MemcpyHtoD {
        dst: U64::new(p),
        len: U64::new(4096),
        stream: U64::new(0),
        src: HostRef { kind: U32::new(HOST_RESOURCE), resource: U32::new(BUF), offset: U64::new(MIB - 100) },
    };
    let a = g.batch(&[
        (Opcode::MemcpyHtoD, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &m, &[])),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!(a.deferred, CUDA_ERROR_INVALID_VALUE);
    // Past the end of the device allocation.
    assert_eq!(g.dtoh_inline(p, 4097).status, CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.htod_inline(p + 4000, &[1u8; 200]).deferred, CUDA_ERROR_INVALID_VALUE);
    // An offset so large it wraps.
    let m2 = MemcpyDtoH {
        src: U64::new(p),
        len: U64::new(16),
        stream: U64::new(0),
        dst: HostRef { kind: U32::new(HOST_RESOURCE), resource: U32::new(BUF), offset: U64::new(u64::MAX - 8) },
    };
    assert_eq!(g.call(Opcode::MemcpyDtoH, 0, &m2, &[]).status, CUDA_ERROR_INVALID_VALUE);
    // A reply larger than the control buffer.
    assert_eq!(g.dtoh_inline(p, 64 * MIB).status, CUDA_ERROR_INVALID_VALUE);
    g.still_serves();
}

#[test]
fn unknown_and_freed_handles_are_invalid_handle() {
    let mut g = Guest::new(64 * MIB);
    assert_eq!(
        g.call(Opcode::StreamSynchronize, 0, &Id { id: U64::new(0x5555) }, &[]).status,
        CUDA_ERROR_INVALID_HANDLE
    );
    let s =
        StreamCreate { stream_id: U64::new(0x100), flags: U32::new(0), priority: zerocopy::little_endian::I32::new(0) };
    let a = g.batch(&[
        (Opcode::StreamCreate, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &s, &[])),
        (Opcode::StreamSynchronize, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &Id { id: U64::new(0x100) }, &[])),
    ]);
    assert_eq!((a.status, a.deferred), (CUDA_SUCCESS, CUDA_SUCCESS));
    let a = g.batch(&[
        (Opcode::StreamDestroy, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &Id { id: U64::new(0x100) }, &[])),
        (Opcode::StreamSynchronize, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &Id { id: U64::new(0x100) }, &[])),
    ]);
    assert_eq!(a.status, CUDA_ERROR_INVALID_HANDLE, "a destroyed stream is gone");
    // Unknown event, module and function.
    assert_eq!(g.call(Opcode::EventQuery, 0, &Id { id: U64::new(7) }, &[]).status, CUDA_ERROR_INVALID_HANDLE);
    let gf =
        ModuleGetFunction { module_id: U64::new(9), func_id: U64::new(10), name_len: U32::new(1), _pad: U32::new(0) };
    assert_eq!(g.call(Opcode::ModuleGetFunction, 0, &gf, b"k").status, CUDA_ERROR_INVALID_HANDLE);
    let l = LaunchKernel {
        func_id: U64::new(12345),
        grid: [U32::new(1); 3],
        block: [U32::new(1); 3],
        ..Default::default()
    };
    let a = g.batch(&[
        (Opcode::LaunchKernel, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &l, &[])),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!(a.deferred, CUDA_ERROR_INVALID_HANDLE);
    // An unknown guest context.
    g.seq += 1;
    let mut w = BatchWriter::new();
    w.begin(g.seq);
    w.push(Opcode::MemAlloc, 0, 0xdead, &MemAlloc { size: U64::new(64) }, &[]);
    let bytes = w.finish().to_vec();
    assert_eq!(g.raw(&bytes).status, CUDA_ERROR_INVALID_CONTEXT);
    // A freed allocation.
    let p = g.alloc(4096).unwrap();
    let free = Id { id: U64::new(p) };
    let a = g.batch(&[
        (Opcode::MemFree, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &free, &[])),
        (Opcode::MemFree, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &free, &[])),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!(a.deferred, CUDA_ERROR_INVALID_VALUE, "double free");
    assert_eq!(g.dtoh_inline(p, 4).status, CUDA_ERROR_INVALID_VALUE, "use after free");
    g.still_serves();
}

#[test]
fn device_pointers_of_other_allocations_or_clients_are_rejected() {
    let mut g = Guest::new(64 * MIB);
    let a = g.alloc(4096).unwrap();
    let b = g.alloc(4096).unwrap();
    let d = MemcpyDtoD { dst: U64::new(b), src: U64::new(a + 4000), len: U64::new(200), stream: U64::new(0) };
    let r = g.batch(&[
        (Opcode::MemcpyDtoD, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &d, &[])),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!(r.deferred, CUDA_ERROR_INVALID_VALUE);
    let ms = Memset {
        dst: U64::new(a + 1),
        count: U64::new(1024),
        stream: U64::new(0),
        value: U32::new(0),
        elem_size: U32::new(4),
    };
    let r = g.batch(&[
        (Opcode::Memset, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &ms, &[])),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!(r.deferred, CUDA_ERROR_INVALID_VALUE, "memset past the end");
    // A second guest process may not touch the first one's memory.
    assert_eq!(g.htod_inline(a, b"mine").deferred, CUDA_SUCCESS);
    g.open_client(2);
    assert_eq!(g.dtoh_inline(a, 4).status, CUDA_ERROR_INVALID_VALUE);
    g.still_serves();
}

#[test]
fn allocations_past_the_quota_are_out_of_memory() {
    let mut g = Guest::new(8 * MIB);
    let p = g.alloc(6 * MIB).unwrap();
    assert_eq!(g.alloc(3 * MIB), Err(CUDA_ERROR_OUT_OF_MEMORY));
    assert_eq!(g.alloc(u64::MAX), Err(CUDA_ERROR_OUT_OF_MEMORY));
    let info = g.call(Opcode::MemGetInfo, 0, &[0u8; 0], &[]);
    let r = MemGetInfoReply::read_from_prefix(&info.payload).unwrap().0;
    assert_eq!(r.total.get(), 8 * MIB, "the guest sees its quota, not the device");
    assert_eq!(r.free.get(), 8 * MIB - 6 * MIB);
    let free = Id { id: U64::new(p) };
    g.batch(&[(Opcode::MemFree, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &free, &[]))]);
    g.alloc(7 * MIB).expect("freed memory returns to the quota");
}

#[test]
fn a_client_that_goes_away_leaves_nothing_behind() {
    let mut g = Guest::new(64 * MIB);
    for _ in 0..5 {
        g.alloc(MIB).unwrap();
    }
    let s = StreamCreate { stream_id: U64::new(0x200), ..Default::default() };
    g.batch(&[(Opcode::StreamCreate, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &s, &[]))]);
    assert_eq!(g.vm.usage().used, 5 * MIB);
    // The guest process is killed mid-stream: its DRM file closes and the
    // kernel destroys its context.
    g.vm.destroy_client(1);
    let u = g.vm.usage();
    assert_eq!((u.used, u.allocations, u.clients), (0, 0, 0));
    // The next process gets the whole quota.
    g.open_client(3);
    g.alloc(60 * MIB).unwrap();
    g.still_serves();
}

#[test]
fn batches_from_unknown_contexts_or_without_a_session_fail_cleanly() {
    let mut g = Guest::new(64 * MIB);
    let mut w = BatchWriter::new();
    w.begin(1);
    w.push_empty(Opcode::CtxSynchronize, 0, PRIMARY_CTX);
    let bytes = w.finish().to_vec();
    assert!(g.vm.submit(&g.mem, 77, &bytes).is_err(), "no such virtio-gpu context");
    g.vm.create_client(5).unwrap();
    assert!(g.vm.submit(&g.mem, 5, &bytes).is_err(), "no Hello yet: nowhere to reply");
    // Hello naming a resource the context may not use.
    let mut w = BatchWriter::new();
    w.begin(1);
    let hello = Hello {
        control_resource: U32::new(CONTROL),
        protocol_version: U16::new(PROTOCOL_VERSION),
        ..Default::default()
    };
    w.push(Opcode::Hello, 0, 0, &hello, &[]);
    let bytes = w.finish().to_vec();
    assert!(g.vm.submit(&g.mem, 5, &bytes).is_err());
    g.still_serves();
}

#[test]
fn the_guest_tests_ptx_runs_on_the_sim_engine() {
    let mut g = Guest::new(64 * MIB);
    let mut ptx = include_bytes!("../../guest-tests/kernels.ptx").to_vec();
    ptx.push(0);
    let load = ModuleLoad { module_id: U64::new(0x10), image_len: U64::new(ptx.len() as u64) };
    assert_eq!(g.call(Opcode::ModuleLoad, 0, &load, &ptx).status, CUDA_SUCCESS);
    let name = b"gv_vector_add_f32";
    let gf = ModuleGetFunction {
        module_id: U64::new(0x10),
        func_id: U64::new(0x11),
        name_len: U32::new(name.len() as u32),
        _pad: U32::new(0),
    };
    let a = g.call(Opcode::ModuleGetFunction, 0, &gf, name);
    assert_eq!(a.status, CUDA_SUCCESS);
    let head = FunctionReply::read_from_prefix(&a.payload).unwrap().0;
    assert_eq!(head.num_params.get(), 4);
    let missing = ModuleGetFunction { func_id: U64::new(0x12), name_len: U32::new(4), ..gf };
    assert_eq!(g.call(Opcode::ModuleGetFunction, 0, &missing, b"nope").status, CUDA_ERROR_NOT_FOUND);

    let n = 1000u64;
    let (pa, pb, pc) = (g.alloc(n * 4).unwrap(), g.alloc(n * 4).unwrap(), g.alloc(n * 4).unwrap());
    let va: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let vb: Vec<u8> = (0..n).flat_map(|i| (2.0 * i as f32 + 1.0).to_le_bytes()).collect();
    g.htod_inline(pa, &va);
    g.htod_inline(pb, &vb);
    let mut params = Vec::new();
    for v in [pa, pb, pc, n] {
        params.extend_from_slice(&v.to_le_bytes());
    }
    let l = LaunchKernel {
        func_id: U64::new(0x11),
        stream: U64::new(0),
        grid: [U32::new(4), U32::new(1), U32::new(1)],
        block: [U32::new(256), U32::new(1), U32::new(1)],
        shared_mem: U32::new(0),
        params_len: U32::new(params.len() as u32),
    };
    let a = g.batch(&[
        (Opcode::LaunchKernel, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &l, &params)),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!((a.status, a.deferred), (CUDA_SUCCESS, CUDA_SUCCESS));
    let out = g.dtoh_inline(pc, n * 4).payload;
    for i in 0..n as usize {
        let v = f32::from_le_bytes(out[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(v, 3.0 * i as f32 + 1.0, "element {i}");
    }
    // A kernel pointer outside every allocation faults like a GPU would.
    let mut bad = params.clone();
    bad[16..24].copy_from_slice(&0x10u64.to_le_bytes());
    let a = g.batch(&[
        (Opcode::LaunchKernel, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &l, &bad)),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!(a.deferred, CUDA_ERROR_ILLEGAL_ADDRESS);

    // What the backend reports to gpuvisord's telemetry: this workload's calls.
    let calls = g.vm.counters().calls();
    assert_eq!(calls.launches, 1, "the faulting launch never ran: {calls:?}");
    assert_eq!((calls.copies_htod, calls.bytes_htod), (2, 2 * n * 4), "{calls:?}");
    assert_eq!((calls.copies_dtoh, calls.bytes_dtoh), (1, n * 4), "{calls:?}");
    assert_eq!((calls.copies_dtod, calls.bytes_dtod), (0, 0), "{calls:?}");
    let errors: Vec<(&str, u64)> = calls.errors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(errors, vec![("CUDA_ERROR_ILLEGAL_ADDRESS", 1), ("CUDA_ERROR_NOT_FOUND", 1)]);
    assert_eq!(calls.faults, 1);
}

/// Every request that names an object, given an id the client never created,
/// gets the CUDA error the driver API documents, and nothing else changes.
#[test]
fn every_request_rejects_ids_it_does_not_know() {
    let mut g = Guest::new(64 * MIB);
    let unknown = U64::new(0xbad0_0000);
    let id = Id { id: unknown };
    let async_cases: Vec<(Opcode, Vec<u8>, CuResult)> = vec![
        (Opcode::CtxDestroy, id.as_bytes().to_vec(), CUDA_ERROR_INVALID_CONTEXT),
        (Opcode::MemFree, id.as_bytes().to_vec(), CUDA_ERROR_INVALID_VALUE),
        (Opcode::ModuleUnload, id.as_bytes().to_vec(), CUDA_ERROR_INVALID_HANDLE),
        (Opcode::StreamDestroy, id.as_bytes().to_vec(), CUDA_ERROR_INVALID_HANDLE),
        (Opcode::EventDestroy, id.as_bytes().to_vec(), CUDA_ERROR_INVALID_HANDLE),
        (
            Opcode::FuncSetAttribute,
            FuncSetAttribute { func_id: unknown, ..Default::default() }.as_bytes().to_vec(),
            CUDA_ERROR_INVALID_HANDLE,
        ),
        (
            Opcode::EventRecord,
            EventRecord { event_id: unknown, stream_id: U64::new(0) }.as_bytes().to_vec(),
            CUDA_ERROR_INVALID_HANDLE,
        ),
        (
            Opcode::EventRecord,
            EventRecord { event_id: unknown, stream_id: unknown }.as_bytes().to_vec(),
            CUDA_ERROR_INVALID_HANDLE,
        ),
        (
            Opcode::StreamWaitEvent,
            StreamWaitEvent { stream_id: U64::new(0), event_id: unknown, ..Default::default() }.as_bytes().to_vec(),
            CUDA_ERROR_INVALID_HANDLE,
        ),
        (
            Opcode::StreamWaitEvent,
            StreamWaitEvent { stream_id: unknown, event_id: unknown, ..Default::default() }.as_bytes().to_vec(),
            CUDA_ERROR_INVALID_HANDLE,
        ),
        (
            Opcode::MemcpyDtoD,
            MemcpyDtoD { dst: unknown, src: unknown, len: U64::new(4), stream: U64::new(0) }.as_bytes().to_vec(),
            CUDA_ERROR_INVALID_VALUE,
        ),
        (
            Opcode::Memset,
            Memset { dst: unknown, count: U64::new(1), elem_size: U32::new(4), ..Default::default() }
                .as_bytes()
                .to_vec(),
            CUDA_ERROR_INVALID_VALUE,
        ),
    ];
    for (op, payload, want) in async_cases {
        let a = g.batch(&[
            (op, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, payload.as_slice(), &[])),
            (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
        ]);
        assert_eq!(a.deferred, want, "{op:?}");
        assert_eq!(a.status, CUDA_SUCCESS, "{op:?}: the synchronizing call itself is fine");
    }
    let sync_cases: Vec<(Opcode, Vec<u8>, Vec<u8>, CuResult)> = vec![
        (Opcode::StreamSynchronize, id.as_bytes().to_vec(), vec![], CUDA_ERROR_INVALID_HANDLE),
        (Opcode::StreamQuery, id.as_bytes().to_vec(), vec![], CUDA_ERROR_INVALID_HANDLE),
        (Opcode::EventQuery, id.as_bytes().to_vec(), vec![], CUDA_ERROR_INVALID_HANDLE),
        (Opcode::EventSynchronize, id.as_bytes().to_vec(), vec![], CUDA_ERROR_INVALID_HANDLE),
        (
            Opcode::EventElapsedTime,
            EventElapsedTime { start: unknown, end: unknown }.as_bytes().to_vec(),
            vec![],
            CUDA_ERROR_INVALID_HANDLE,
        ),
        (
            Opcode::ModuleGetGlobal,
            ModuleGetGlobal { module_id: unknown, name_len: U32::new(1), _pad: U32::new(0) }.as_bytes().to_vec(),
            b"g".to_vec(),
            CUDA_ERROR_INVALID_HANDLE,
        ),
        (
            Opcode::MemcpyDtoH,
            MemcpyDtoH { src: unknown, len: U64::new(4), stream: U64::new(0), dst: HostRef::default() }
                .as_bytes()
                .to_vec(),
            vec![],
            CUDA_ERROR_INVALID_VALUE,
        ),
    ];
    for (op, payload, trailing, want) in sync_cases {
        let a = g.call(op, 0, payload.as_slice(), &trailing);
        assert_eq!(a.status, want, "{op:?}");
    }
    // Ids already in use and images that are not images.
    let cc = CtxCreate { ctx_id: U64::new(PRIMARY_CTX), ..Default::default() };
    g.alloc(64).unwrap(); // makes the primary context exist
    assert_eq!(g.call(Opcode::CtxCreate, 0, &cc, &[]).status, CUDA_ERROR_INVALID_VALUE);
    let garbage = [0x5au8; 256];
    let load = ModuleLoad { module_id: U64::new(0x77), image_len: U64::new(garbage.len() as u64) };
    assert_eq!(g.call(Opcode::ModuleLoad, 0, &load, &garbage).status, CUDA_ERROR_INVALID_IMAGE);
    let s = StreamCreate { stream_id: U64::new(STREAM_LEGACY), ..Default::default() };
    let a = g.batch(&[
        (Opcode::StreamCreate, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &s, &[])),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!(a.deferred, CUDA_ERROR_INVALID_VALUE, "reserved stream ids cannot be created");
    g.still_serves();
}

#[test]
fn memory_a_client_frees_or_leaves_behind_is_scrubbed_before_anyone_gets_it() {
    let mut g = Guest::new(64 * MIB);
    let secret = [0xA5u8; 4096];
    let p = g.alloc(4096).unwrap();
    assert_eq!(g.htod_inline(p, &secret).deferred, CUDA_SUCCESS);
    let f = g.batch(&[
        (Opcode::MemFree, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &Id { id: U64::new(p) }, &[])),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!(f.deferred, CUDA_SUCCESS);
    // The simulated device hands freed memory out again as it was, as a GPU
    // allocator does: only the backend's scrub stands between the two.
    let q = g.alloc(4096).unwrap();
    let a = g.dtoh_inline(q, 4096);
    assert_eq!(a.status, CUDA_SUCCESS);
    assert!(a.payload.iter().all(|&b| b == 0), "a fresh allocation shows freed data");
    // A guest process that dies holding memory: the next one finds none of it.
    assert_eq!(g.htod_inline(q, &secret).deferred, CUDA_SUCCESS);
    g.vm.destroy_client(1);
    g.open_client(3);
    let r = g.alloc(4096).unwrap();
    let a = g.dtoh_inline(r, 4096);
    assert!(a.payload.iter().all(|&b| b == 0), "a fresh allocation shows a dead process's data");
}
