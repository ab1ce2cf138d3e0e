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
    // A kernel pointer outside every allocation faults like a GPU would: the
    // launch returns, the next synchronization gets the fault.
    let mut bad = params.clone();
    bad[16..24].copy_from_slice(&0x10u64.to_le_bytes());
    let a = g.batch(&[
        (Opcode::LaunchKernel, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &l, &bad)),
        (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
    ]);
    assert_eq!((a.status, a.deferred), (CUDA_ERROR_ILLEGAL_ADDRESS, CUDA_SUCCESS));
    assert_eq!(g.vm.fault(), Some(CUDA_ERROR_ILLEGAL_ADDRESS), "the fault lost the VM's context");

    // What the backend reports to gpuvisord's telemetry: this workload's calls.
    let calls = g.vm.counters().calls();
    assert_eq!(calls.launches, 2, "{calls:?}");
    assert_eq!((calls.copies_htod, calls.bytes_htod), (2, 2 * n * 4), "{calls:?}");
    assert_eq!((calls.copies_dtoh, calls.bytes_dtoh), (1, n * 4), "{calls:?}");
    assert_eq!((calls.copies_dtod, calls.bytes_dtod), (0, 0), "{calls:?}");
    let errors: Vec<(&str, u64)> = calls.errors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(errors, vec![("CUDA_ERROR_ILLEGAL_ADDRESS", 1), ("CUDA_ERROR_NOT_FOUND", 1)]);
    assert_eq!(calls.faults, 1);

    // From now on every call fails with it, of this guest process and of
    // the next, as NVIDIA's driver fails every call of the process.
    assert_eq!(g.alloc(4096), Err(CUDA_ERROR_ILLEGAL_ADDRESS));
    assert_eq!(g.dtoh_inline(pc, 4).status, CUDA_ERROR_ILLEGAL_ADDRESS);
    g.open_client(2);
    assert_eq!(g.alloc(4096), Err(CUDA_ERROR_ILLEGAL_ADDRESS), "a new session");
    assert_eq!(g.vm.counters().calls().faults, 1, "one fault, counted once");
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

// ---- the virtual-memory API and stream-ordered pools -----------------------

/// The allocation granularity of the virtual-memory API (the sim engine's,
/// as the cuda engine's on current GPUs).
const G: u64 = 2 * MIB;

impl Guest {
    /// An asynchronous command followed by a synchronize: the command's
    /// (deferred) result.
    fn then_sync<T: IntoBytes + Immutable + ?Sized>(&mut self, op: Opcode, flags: u16, p: &T) -> CuResult {
        let a = self.batch(&[
            (op, flags, &|w, op, f| w.push(op, f, PRIMARY_CTX, p, &[])),
            (Opcode::CtxSynchronize, 0, &|w, op, f| w.push_empty(op, f, PRIMARY_CTX)),
        ]);
        assert_eq!(a.status, CUDA_SUCCESS, "{op:?}: the synchronize itself");
        a.deferred
    }

    fn reserve(&mut self, size: u64) -> Result<u64, CuResult> {
        let r = MemAddressReserve { size: U64::new(size), alignment: U64::new(0), addr: U64::new(0) };
        let a = self.call(Opcode::MemAddressReserve, 0, &r, &[]);
        if a.status != CUDA_SUCCESS {
            return Err(a.status);
        }
        Ok(MemAllocReply::read_from_prefix(&a.payload).unwrap().0.dptr.get())
    }

    fn create(&mut self, handle: u64, size: u64) -> CuResult {
        self.call(Opcode::MemCreate, 0, &MemCreate { handle: U64::new(handle), size: U64::new(size) }, &[]).status
    }

    fn map(&mut self, va: u64, size: u64, handle: u64) -> CuResult {
        let m = MemMap { va: U64::new(va), size: U64::new(size), offset: U64::new(0), handle: U64::new(handle) };
        self.then_sync(Opcode::MemMap, 0, &m)
    }

    fn set_access(&mut self, va: u64, size: u64, flags: u32) -> CuResult {
        let a = MemSetAccess { va: U64::new(va), size: U64::new(size), flags: U32::new(flags), _pad: U32::new(0) };
        self.then_sync(Opcode::MemSetAccess, 0, &a)
    }

    fn unmap(&mut self, va: u64, size: u64) -> CuResult {
        self.then_sync(Opcode::MemUnmap, 0, &VaRange { va: U64::new(va), size: U64::new(size) })
    }

    fn release(&mut self, handle: u64) -> CuResult {
        self.then_sync(Opcode::MemRelease, 0, &Id { id: U64::new(handle) })
    }

    fn pool_create(&mut self, id: u64) -> Result<(u64, u64), CuResult> {
        let a = self.call(Opcode::MemPoolCreate, 0, &Id { id: U64::new(id) }, &[]);
        if a.status != CUDA_SUCCESS {
            return Err(a.status);
        }
        let r = MemPoolCreateReply::read_from_prefix(&a.payload).unwrap().0;
        Ok((r.base.get(), r.len.get()))
    }

    /// A pool allocation that may need new memory: the guest waits for the
    /// segments that now back it.
    fn pool_grow(&mut self, pool: u64, dptr: u64, size: u64, stream: u64) -> Result<Vec<(u64, u64)>, CuResult> {
        let m = MemAllocAsync {
            pool_id: U64::new(pool),
            dptr: U64::new(dptr),
            size: U64::new(size),
            stream: U64::new(stream),
        };
        let a = self.call(Opcode::MemAllocAsync, 0, &m, &[]);
        if a.status != CUDA_SUCCESS {
            return Err(a.status);
        }
        Ok(a.payload
            .chunks_exact(16)
            .map(|c| (u64::from_le_bytes(c[..8].try_into().unwrap()), u64::from_le_bytes(c[8..].try_into().unwrap())))
            .collect())
    }

    /// A pool allocation in memory already backed: no reply.
    fn pool_alloc(&mut self, pool: u64, dptr: u64, size: u64, stream: u64) -> CuResult {
        let m = MemAllocAsync {
            pool_id: U64::new(pool),
            dptr: U64::new(dptr),
            size: U64::new(size),
            stream: U64::new(stream),
        };
        self.then_sync(Opcode::MemAllocAsync, CMD_FLAG_ASYNC, &m)
    }

    fn pool_free(&mut self, dptr: u64, stream: u64) -> CuResult {
        self.then_sync(Opcode::MemFreeAsync, 0, &MemFreeAsync { dptr: U64::new(dptr), stream: U64::new(stream) })
    }

    fn pool_release(&mut self, pool: u64, va: u64) -> CuResult {
        self.then_sync(Opcode::MemPoolRelease, 0, &MemPoolRelease { pool_id: U64::new(pool), va: U64::new(va) })
    }

    fn free_mem(&mut self) -> u64 {
        let info = self.call(Opcode::MemGetInfo, 0, &[0u8; 0], &[]);
        MemGetInfoReply::read_from_prefix(&info.payload).unwrap().0.free.get()
    }

    /// Loads the guest tests' PTX as module 0x10 and looks up `name` as
    /// function `func`: its parameter offsets.
    fn function(&mut self, func: u64, name: &[u8]) -> Vec<u32> {
        let mut ptx = include_bytes!("../../guest-tests/kernels.ptx").to_vec();
        ptx.push(0);
        let load = ModuleLoad { module_id: U64::new(0x10), image_len: U64::new(ptx.len() as u64) };
        let loaded = self.call(Opcode::ModuleLoad, 0, &load, &ptx).status;
        assert!(matches!(loaded, CUDA_SUCCESS | CUDA_ERROR_INVALID_VALUE), "module load: {loaded}");
        let gf = ModuleGetFunction {
            module_id: U64::new(0x10),
            func_id: U64::new(func),
            name_len: U32::new(name.len() as u32),
            _pad: U32::new(0),
        };
        let a = self.call(Opcode::ModuleGetFunction, 0, &gf, name);
        assert_eq!(a.status, CUDA_SUCCESS);
        let n = FunctionReply::read_from_prefix(&a.payload).unwrap().0.num_params.get() as usize;
        let layouts = &a.payload[core::mem::size_of::<FunctionReply>()..];
        (0..n).map(|i| ParamLayout::read_from_prefix(&layouts[i * 8..]).unwrap().0.offset.get()).collect()
    }

    fn launch(&mut self, func: u64, stream: u64, params: &[u8]) -> Answer {
        let l = LaunchKernel {
            func_id: U64::new(func),
            stream: U64::new(stream),
            grid: [U32::new(1); 3],
            block: [U32::new(1); 3],
            shared_mem: U32::new(0),
            params_len: U32::new(params.len() as u32),
        };
        self.batch(&[(Opcode::LaunchKernel, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &l, params))])
    }
}

#[test]
fn mapped_virtual_memory_is_device_memory_for_copies_and_kernels_of_its_client_only() {
    let mut g = Guest::new(64 * MIB);
    let a = g.call(Opcode::MemGetGranularity, 0, &[0u8; 0], &[]);
    assert_eq!(MemGranularityReply::read_from_prefix(&a.payload).unwrap().0.granularity.get(), G);
    let va = g.reserve(2 * G).unwrap();
    assert_eq!(va % G, 0);
    assert_eq!((g.create(0x51, G), g.create(0x52, G)), (CUDA_SUCCESS, CUDA_SUCCESS));
    assert_eq!(g.vm.usage().used, 2 * G, "physical memory is charged when it is created");
    assert_eq!(g.free_mem(), 64 * MIB - 2 * G);
    assert_eq!((g.map(va, G, 0x51), g.map(va + G, G, 0x52)), (CUDA_SUCCESS, CUDA_SUCCESS));
    // Mapped, but the device has no access yet: as natively, not usable.
    assert_eq!(g.htod_inline(va, b"x").deferred, CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.set_access(va, 2 * G, MEM_ACCESS_READWRITE), CUDA_SUCCESS);

    // A copy across the two mappings, which lie on different allocations.
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(g.htod_inline(va + G - 4096, &data).deferred, CUDA_SUCCESS);
    assert_eq!(g.dtoh_inline(va + G - 4096, 8192).payload, data);
    // A kernel across them too.
    let offs = g.function(0x11, b"gv_fill_u32");
    let mut params = vec![0u8; 24];
    params[offs[0] as usize..][..8].copy_from_slice(&(va + G - 64).to_le_bytes());
    params[offs[1] as usize..][..4].copy_from_slice(&0xabcd_0123u32.to_le_bytes());
    params[offs[2] as usize..][..8].copy_from_slice(&32u64.to_le_bytes());
    g.launch(0x11, 0, &params);
    let out = g.dtoh_inline(va + G - 64, 128).payload;
    assert!(out.chunks_exact(4).all(|w| w == 0xabcd_0123u32.to_le_bytes()), "{out:?}");
    // Past the mappings is not device memory.
    assert_eq!(g.dtoh_inline(va + 2 * G - 4, 8).status, CUDA_ERROR_INVALID_VALUE);

    // Unmapped and released, it returns to the quota.
    assert_eq!(g.unmap(va, 2 * G), CUDA_SUCCESS);
    assert_eq!(g.dtoh_inline(va, 4).status, CUDA_ERROR_INVALID_VALUE, "unmapped");
    assert_eq!((g.release(0x51), g.release(0x52)), (CUDA_SUCCESS, CUDA_SUCCESS));
    assert_eq!(g.vm.usage().used, 0);

    // Another guest process cannot name this one's mappings.
    assert_eq!(g.create(0x53, G), CUDA_SUCCESS);
    assert_eq!(g.map(va, G, 0x53), CUDA_SUCCESS);
    assert_eq!(g.set_access(va, G, MEM_ACCESS_READWRITE), CUDA_SUCCESS);
    assert_eq!(g.dtoh_inline(va, 4).status, CUDA_SUCCESS);
    g.open_client(2);
    assert_eq!(g.dtoh_inline(va, 4).status, CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.unmap(va, G), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.release(0x53), CUDA_ERROR_INVALID_HANDLE);
    g.still_serves();
}

#[test]
fn malformed_virtual_memory_requests_get_cuda_errors_and_the_backend_keeps_serving() {
    let mut g = Guest::new(64 * MIB);
    let va = g.reserve(4 * G).unwrap();
    assert_eq!(g.reserve(G + 4096), Err(CUDA_ERROR_INVALID_VALUE), "not a multiple of the granularity");
    assert_eq!(g.reserve(0), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(g.reserve(1 << 50), Err(CUDA_ERROR_OUT_OF_MEMORY), "more addresses than a client may hold");
    assert_eq!(g.create(0x61, G + 4096), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.create(0x61, 1 << 40), CUDA_ERROR_OUT_OF_MEMORY, "past the quota");
    assert_eq!(g.create(0x61, u64::MAX - (u64::MAX % G)), CUDA_ERROR_OUT_OF_MEMORY);
    assert_eq!(g.create(0, G), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.create(0x61, G), CUDA_SUCCESS);
    assert_eq!(g.create(0x61, G), CUDA_ERROR_INVALID_VALUE, "handle already in use");
    assert_eq!(g.vm.usage().used, G, "failed creates charge nothing");

    assert_eq!(g.map(va, G, 0x99), CUDA_ERROR_INVALID_HANDLE, "unknown handle");
    assert_eq!(g.map(va + 4096, G, 0x61), CUDA_ERROR_INVALID_VALUE, "unaligned");
    assert_eq!(g.map(va + 4 * G, G, 0x61), CUDA_ERROR_INVALID_VALUE, "outside the reservation");
    assert_eq!(g.map(va + 3 * G, 2 * G, 0x61), CUDA_ERROR_INVALID_VALUE, "past the reservation's end");
    assert_eq!(g.map(u64::MAX - G + 1, G, 0x61), CUDA_ERROR_INVALID_VALUE, "wrapping");
    let m = MemMap { va: U64::new(va), size: U64::new(G), offset: U64::new(G), handle: U64::new(0x61) };
    assert_eq!(g.then_sync(Opcode::MemMap, 0, &m), CUDA_ERROR_INVALID_VALUE, "offset");
    assert_eq!(g.create(0x62, 2 * G), CUDA_SUCCESS);
    assert_eq!(g.map(va, 4 * G, 0x62), CUDA_ERROR_INVALID_VALUE, "larger than its allocation");
    assert_eq!(g.map(va, G, 0x61), CUDA_SUCCESS);
    assert_eq!(g.map(va, G, 0x62), CUDA_ERROR_INVALID_VALUE, "overlapping");
    assert_eq!(g.map(va + G - G, 2 * G, 0x62), CUDA_ERROR_INVALID_VALUE, "overlapping");

    assert_eq!(g.unmap(va, G / 2), CUDA_ERROR_INVALID_VALUE, "part of a mapping");
    assert_eq!(g.unmap(va + G, G), CUDA_ERROR_INVALID_VALUE, "nothing mapped there");
    assert_eq!(g.set_access(va, 2 * G, MEM_ACCESS_READWRITE), CUDA_ERROR_INVALID_VALUE, "not all mapped");
    // Access flags the API does not define never reach the backend's tables.
    let bad = MemSetAccess { va: U64::new(va), size: U64::new(G), flags: U32::new(2), _pad: U32::new(0) };
    let a = g.batch(&[(Opcode::MemSetAccess, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &bad, &[]))]);
    assert_eq!(a.status, CUDA_ERROR_INVALID_VALUE);
    // Payloads shorter than their struct.
    for op in [Opcode::MemMap, Opcode::MemAllocAsync, Opcode::MemAddressReserve, Opcode::MemPoolRelease] {
        let a = g.batch(&[(op, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &[7u8; 8], &[]))]);
        assert_eq!(a.status, CUDA_ERROR_INVALID_VALUE, "{op:?}");
    }
    assert_eq!(g.set_access(va, G, MEM_ACCESS_READ), CUDA_SUCCESS);
    assert_eq!(g.dtoh_inline(va + G - 2, 4).status, CUDA_ERROR_INVALID_VALUE, "runs into unmapped addresses");

    let free = |size| VaRange { va: U64::new(va), size: U64::new(size) };
    assert_eq!(g.then_sync(Opcode::MemAddressFree, 0, &free(4 * G)), CUDA_ERROR_INVALID_VALUE, "still mapped");
    assert_eq!(g.then_sync(Opcode::MemAddressFree, 0, &free(G)), CUDA_ERROR_INVALID_VALUE, "not the whole reservation");
    assert_eq!(g.release(0x61), CUDA_SUCCESS);
    assert_eq!(g.release(0x61), CUDA_ERROR_INVALID_HANDLE, "released twice");
    assert_eq!(g.map(va + G, G, 0x61), CUDA_ERROR_INVALID_HANDLE, "a released handle");
    assert_eq!(g.vm.usage().used, 3 * G, "released but still mapped: still held");
    assert_eq!(g.unmap(va, G), CUDA_SUCCESS);
    assert_eq!(g.vm.usage().used, 2 * G, "its last mapping gone, the memory is given back");
    assert_eq!(g.then_sync(Opcode::MemAddressFree, 0, &free(4 * G)), CUDA_SUCCESS);
    g.still_serves();
}

#[test]
fn virtual_memory_past_the_quota_is_out_of_memory_and_what_a_client_gives_back_is_zeroed() {
    let mut g = Guest::new(4 * G);
    for h in 1..=4 {
        assert_eq!(g.create(0x70 + h, G), CUDA_SUCCESS);
    }
    assert_eq!(g.create(0x75, G), CUDA_ERROR_OUT_OF_MEMORY);
    assert_eq!(g.free_mem(), 0);
    for h in 2..=4 {
        assert_eq!(g.release(0x70 + h), CUDA_SUCCESS);
    }
    assert_eq!(g.free_mem(), 3 * G);

    // Data written through a mapping, unmapped and released: the simulated
    // device hands the memory out again as it was, so only the backend's
    // scrub keeps it from the next allocation.
    let secret = [0x5au8; 4096];
    let va = g.reserve(4 * G).unwrap();
    assert_eq!(g.map(va, G, 0x71), CUDA_SUCCESS);
    assert_eq!(g.set_access(va, G, MEM_ACCESS_READWRITE), CUDA_SUCCESS);
    assert_eq!(g.htod_inline(va, &secret).deferred, CUDA_SUCCESS);
    assert_eq!((g.unmap(va, G), g.release(0x71)), (CUDA_SUCCESS, CUDA_SUCCESS));
    for h in 0..4u64 {
        assert_eq!(g.create(0x80 + h, G), CUDA_SUCCESS);
        assert_eq!(g.map(va + h * G, G, 0x80 + h), CUDA_SUCCESS);
    }
    assert_eq!(g.set_access(va, 4 * G, MEM_ACCESS_READWRITE), CUDA_SUCCESS);
    for h in 0..4u64 {
        let a = g.dtoh_inline(va + h * G, 4096);
        assert!(a.payload.iter().all(|&b| b == 0), "released memory came back with data");
    }

    // A process that dies holding mapped memory leaves nothing behind.
    assert_eq!(g.htod_inline(va + G, &secret).deferred, CUDA_SUCCESS);
    g.vm.destroy_client(1);
    assert_eq!(g.vm.usage().used, 0);
    g.open_client(3);
    let va = g.reserve(4 * G).unwrap();
    for h in 0..4u64 {
        assert_eq!(g.create(0x90 + h, G), CUDA_SUCCESS, "the whole quota is back");
        assert_eq!(g.map(va + h * G, G, 0x90 + h), CUDA_SUCCESS);
    }
    assert_eq!(g.set_access(va, 4 * G, MEM_ACCESS_READWRITE), CUDA_SUCCESS);
    for h in 0..4u64 {
        let a = g.dtoh_inline(va + h * G, 4096);
        assert!(a.payload.iter().all(|&b| b == 0), "a dead process's memory came back with data");
    }
}

#[test]
fn pool_memory_is_backed_on_request_reused_in_stream_order_and_given_back_zeroed() {
    let mut g = Guest::new(64 * MIB);
    let (base, len) = g.pool_create(0x40).unwrap();
    assert!(base % G == 0 && len >= 64 * MIB, "{base:#x}+{len:#x}");
    // Nothing backs the window yet: an allocation that does not wait for
    // its reply is refused, the one that waits gets memory.
    assert_eq!(g.pool_alloc(0x40, base, 4096, 0), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.pool_grow(0x40, base, 4096, 0), Ok(vec![(base, G)]));
    assert_eq!(g.vm.usage().used, G, "the segment is charged, not the allocation");
    assert_eq!(g.pool_alloc(0x40, base + 4096, 4096, 0), CUDA_SUCCESS, "in the same segment");
    assert_eq!(g.htod_inline(base + 4096, b"pooled").deferred, CUDA_SUCCESS);
    assert_eq!(g.dtoh_inline(base + 4096, 6).payload, b"pooled");
    assert_eq!(g.dtoh_inline(base + 8192, 4).status, CUDA_ERROR_INVALID_VALUE, "backed, but not allocated");
    // Growing over what is backed adds only the missing granules.
    assert_eq!(g.pool_grow(0x40, base + G - 4096, 8192, 0), Ok(vec![(base + G, G)]));

    // Reuse on another stream waits for the free: the simulated GPU spins
    // on stream A, frees there, and the reuse on idle stream B must come
    // after it.
    let offs = g.function(0x12, b"gv_spin_us");
    for s in [0x300u64, 0x301] {
        let c = StreamCreate { stream_id: U64::new(s), ..Default::default() };
        assert_eq!(g.then_sync(Opcode::StreamCreate, 0, &c), CUDA_SUCCESS);
    }
    let ev = EventCreate { event_id: U64::new(0x310), flags: U32::new(0), _pad: U32::new(0) };
    assert_eq!(g.then_sync(Opcode::EventCreate, 0, &ev), CUDA_SUCCESS);
    let mut params = vec![0u8; 8];
    params[offs[0] as usize..][..8].copy_from_slice(&50_000u64.to_le_bytes());
    let free = MemFreeAsync { dptr: U64::new(base), stream: U64::new(0x300) };
    let realloc =
        MemAllocAsync { pool_id: U64::new(0x40), dptr: U64::new(base), size: U64::new(4096), stream: U64::new(0x301) };
    let record = EventRecord { event_id: U64::new(0x310), stream_id: U64::new(0x301) };
    let l = LaunchKernel {
        func_id: U64::new(0x12),
        stream: U64::new(0x300),
        grid: [U32::new(1); 3],
        block: [U32::new(1); 3],
        shared_mem: U32::new(0),
        params_len: U32::new(8),
    };
    let a = g.batch(&[
        (Opcode::LaunchKernel, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &l, &params)),
        (Opcode::MemFreeAsync, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &free, &[])),
        (Opcode::MemAllocAsync, CMD_FLAG_ASYNC, &|w, op, f| w.push(op, f, PRIMARY_CTX, &realloc, &[])),
        (Opcode::EventRecord, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &record, &[])),
        (Opcode::EventQuery, 0, &|w, op, f| w.push(op, f, PRIMARY_CTX, &Id { id: U64::new(0x310) }, &[])),
    ]);
    assert_eq!(a.deferred, CUDA_SUCCESS);
    assert_eq!(a.status, CUDA_ERROR_NOT_READY, "the reuse on stream B ran before stream A's free");
    let a = g.call(Opcode::EventSynchronize, 0, &Id { id: U64::new(0x310) }, &[]);
    assert_eq!(a.status, CUDA_SUCCESS);

    // A segment holding an allocation in use cannot go.
    assert_eq!(g.pool_release(0x40, base), CUDA_ERROR_INVALID_VALUE);
    let secret = [0xc3u8; 4096];
    assert_eq!(g.htod_inline(base, &secret).deferred, CUDA_SUCCESS);
    for p in [base, base + 4096, base + G - 4096] {
        assert_eq!(g.pool_free(p, 0), CUDA_SUCCESS);
    }
    assert_eq!(g.dtoh_inline(base, 4).status, CUDA_ERROR_INVALID_VALUE, "freed");
    assert_eq!((g.pool_release(0x40, base), g.pool_release(0x40, base + G)), (CUDA_SUCCESS, CUDA_SUCCESS));
    assert_eq!(g.vm.usage().used, 0, "released segments return to the quota");
    // The next memory the pool gets is zero, whatever the device kept.
    assert_eq!(g.pool_grow(0x40, base, 4096, 0), Ok(vec![(base, G)]));
    assert!(g.dtoh_inline(base, 4096).payload.iter().all(|&b| b == 0), "pool memory came back with data");
    // Destroying the pool gives back what it holds, allocations included.
    assert_eq!(g.then_sync(Opcode::MemPoolDestroy, 0, &Id { id: U64::new(0x40) }), CUDA_SUCCESS);
    assert_eq!(g.vm.usage().used, 0);
    assert_eq!(g.dtoh_inline(base, 4).status, CUDA_ERROR_INVALID_VALUE);
    g.still_serves();
}

#[test]
fn malformed_pool_requests_get_cuda_errors_and_the_backend_keeps_serving() {
    let mut g = Guest::new(64 * MIB);
    let (base, len) = g.pool_create(0x41).unwrap();
    assert_eq!(g.pool_create(0x41), Err(CUDA_ERROR_INVALID_VALUE), "id in use");
    assert_eq!(g.pool_create(0), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(g.pool_grow(0x99, base, 4096, 0), Err(CUDA_ERROR_INVALID_HANDLE), "unknown pool");
    assert_eq!(g.pool_alloc(0x99, base, 4096, 0), CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(g.pool_grow(0x41, base - 4096, 4096, 0), Err(CUDA_ERROR_INVALID_VALUE), "below the window");
    assert_eq!(g.pool_grow(0x41, base + len - 4096, 8192, 0), Err(CUDA_ERROR_INVALID_VALUE), "past the window");
    assert_eq!(g.pool_grow(0x41, base, 0, 0), Err(CUDA_ERROR_INVALID_VALUE), "empty");
    assert_eq!(g.pool_grow(0x41, base, u64::MAX, 0), Err(CUDA_ERROR_INVALID_VALUE), "wrapping");
    assert_eq!(g.pool_grow(0x41, base, 4096, 0x777), Err(CUDA_ERROR_INVALID_HANDLE), "unknown stream");
    assert_eq!(g.pool_grow(0x41, base, 128 * MIB, 0), Err(CUDA_ERROR_OUT_OF_MEMORY), "past the quota");
    assert_eq!(g.vm.usage().used, 0, "a failed allocation holds nothing");
    assert_eq!(g.pool_grow(0x41, base, 4096, 0), Ok(vec![(base, G)]));
    assert_eq!(g.pool_alloc(0x41, base + 2048, 4096, 0), CUDA_ERROR_INVALID_VALUE, "overlaps one in use");
    assert_eq!(g.pool_free(base + 8, 0), CUDA_ERROR_INVALID_VALUE, "not an allocation");
    // cuMemFree is not how pool memory goes back.
    let f = g.then_sync(Opcode::MemFree, 0, &Id { id: U64::new(base) });
    assert_eq!(f, CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.pool_release(0x41, base + 4096), CUDA_ERROR_INVALID_VALUE, "not a segment");
    assert_eq!(g.pool_release(0x99, base), CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(g.pool_free(base, 0), CUDA_SUCCESS);
    assert_eq!(g.pool_free(base, 0), CUDA_ERROR_INVALID_VALUE, "freed twice");
    assert_eq!(g.then_sync(Opcode::MemPoolDestroy, 0, &Id { id: U64::new(0x99) }), CUDA_ERROR_INVALID_HANDLE);
    // A client that goes away gives its pools back.
    assert_eq!(g.pool_grow(0x41, base, 3 * G, 0), Ok(vec![(base + G, 2 * G)]));
    g.vm.destroy_client(1);
    assert_eq!(g.vm.usage().used, 0);
    g.open_client(4);
    g.still_serves();
}

#[test]
fn event_timings_are_coarsened_to_the_configured_resolution() {
    // gv_spin_us for `us` between two events on the default stream; the
    // elapsed time the guest reads, in ms.
    fn timed(g: &mut Guest, offs: &[u32], us: u64) -> f32 {
        let mut params = vec![0u8; 8];
        params[offs[0] as usize..][..8].copy_from_slice(&us.to_le_bytes());
        for id in [0x501u64, 0x502] {
            let ev = EventCreate { event_id: U64::new(id), flags: U32::new(0), _pad: U32::new(0) };
            let _ = g.then_sync(Opcode::EventCreate, 0, &ev);
        }
        let rec = |id: u64| EventRecord { event_id: U64::new(id), stream_id: U64::new(0) };
        assert_eq!(g.then_sync(Opcode::EventRecord, 0, &rec(0x501)), CUDA_SUCCESS);
        assert_eq!(g.launch(0x12, 0, &params).deferred, CUDA_SUCCESS);
        assert_eq!(g.then_sync(Opcode::EventRecord, 0, &rec(0x502)), CUDA_SUCCESS);
        let t = EventElapsedTime { start: U64::new(0x501), end: U64::new(0x502) };
        let a = g.call(Opcode::EventElapsedTime, 0, &t, &[]);
        assert_eq!(a.status, CUDA_SUCCESS);
        ElapsedReply::read_from_prefix(&a.payload).unwrap().0.ms.get()
    }
    let mut g = Guest::new(64 * MIB);
    let offs = g.function(0x12, b"gv_spin_us");
    // Exact by default: a 1.3 ms kernel reads about 1.3 ms.
    let exact = timed(&mut g, &offs, 1300);
    assert!((exact - 1.3).abs() < 0.05, "{exact} ms");
    // At 1 ms resolution the same kernel reads 1 ms.
    g.vm.set_timer_resolution_ns(1_000_000);
    let coarse = timed(&mut g, &offs, 1300);
    assert_eq!(coarse, 1.0, "{coarse} ms");
    g.still_serves();
}
