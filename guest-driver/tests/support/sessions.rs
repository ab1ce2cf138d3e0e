//! Guest sessions over the direct transport, driven with the protocol's
//! commands, for the tests that hold several at once (fault isolation,
//! reconnection): each is one guest process's `Client` over a transport of
//! its own, and `Steady` is another VM running checked kernels throughout.
#![allow(dead_code)]

use ::cuda::client::Client;
use ::cuda::transport::direct::{DeviceOptions, DirectDevice, DirectTransport};
use protocol::cuda::*;
use protocol::virtio_gpu::{F_EDID, F_VIRGL};
use protocol::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zerocopy::little_endian::{U32, U64};
use zerocopy::FromBytes;

pub const KERNELS: &str = include_str!("../../../guest-tests/kernels.ptx");
pub const FAULTS: &str = include_str!("../../../guest-tests/fault_kernels.ptx");
/// Words each checked kernel of the steady VM fills.
pub const WORDS: u64 = 1024;

pub fn transport(socket: &str) -> DirectTransport {
    let opts = DeviceOptions {
        mem_bytes: 128 << 20,
        required_features: 1 << F_VIRGL,
        optional_features: 1 << F_EDID,
        spin: Duration::from_micros(50),
        display: None,
    };
    DirectTransport::on_device(DirectDevice::connect(socket, opts).expect("connect")).expect("gpuvisor bring-up")
}

/// One guest process's session, driven with the protocol's commands.
pub struct Session {
    pub c: Client,
}

impl Session {
    pub fn open(t: DirectTransport) -> Session {
        Session { c: Client::with_transport(Box::new(t)).expect("session") }
    }

    pub fn module(&self, ptx: &str) -> u64 {
        let id = self.c.new_id();
        let mut image = ptx.as_bytes().to_vec();
        image.push(0);
        let m = ModuleLoad { module_id: U64::new(id), image_len: U64::new(image.len() as u64) };
        self.c.call(Opcode::ModuleLoad, 0, PRIMARY_CTX, &m, &image).expect("module load");
        id
    }

    pub fn function(&self, module: u64, name: &str) -> u64 {
        let id = self.c.new_id();
        let f = ModuleGetFunction {
            module_id: U64::new(module),
            func_id: U64::new(id),
            name_len: U32::new(name.len() as u32),
            _pad: U32::new(0),
        };
        self.c.call(Opcode::ModuleGetFunction, 0, PRIMARY_CTX, &f, name.as_bytes()).expect("function");
        id
    }

    pub fn alloc(&self, bytes: u64) -> Result<u64, CuResult> {
        let r = self.c.call(Opcode::MemAlloc, 0, PRIMARY_CTX, &MemAlloc { size: U64::new(bytes) }, &[])?;
        Ok(MemAllocReply::read_from_prefix(&r).map_err(|_| CUDA_ERROR_UNKNOWN)?.0.dptr.get())
    }

    /// Launches `func` on the legacy stream, `blocks` blocks of `threads`.
    pub fn launch(&self, func: u64, blocks: u32, threads: u32, params: &[u8]) -> Result<(), CuResult> {
        let l = LaunchKernel {
            func_id: U64::new(func),
            stream: U64::new(STREAM_LEGACY),
            grid: [U32::new(blocks), U32::new(1), U32::new(1)],
            block: [U32::new(threads), U32::new(1), U32::new(1)],
            shared_mem: U32::new(0),
            params_len: U32::new(params.len() as u32),
        };
        self.c.enqueue(Opcode::LaunchKernel, 0, PRIMARY_CTX, &l, params)
    }

    pub fn sync(&self) -> Result<(), CuResult> {
        self.c.sync_call(Opcode::CtxSynchronize, 0, PRIMARY_CTX, &[0u8; 0]).map(|_| ())
    }

    pub fn read(&self, src: u64, len: u64) -> Result<Vec<u8>, CuResult> {
        let m = MemcpyDtoH {
            src: U64::new(src),
            len: U64::new(len),
            stream: U64::new(0),
            dst: HostRef { kind: U32::new(HOST_INLINE), ..Default::default() },
        };
        self.c.sync_call(Opcode::MemcpyDtoH, 0, PRIMARY_CTX, &m)
    }
}

pub fn u64_param(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// gv_fill_u32's parameters: ptr at 0, value at 8, n at 16.
pub fn fill_params(ptr: u64, value: u32, n: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&ptr.to_le_bytes());
    p[8..12].copy_from_slice(&value.to_le_bytes());
    p[16..24].copy_from_slice(&n.to_le_bytes());
    p
}

/// Another VM: checked kernels (fill a buffer, read it back) in a loop on a
/// backend of its own until `stop`; counts kernels and errors (a failed
/// call or a wrong word).
pub struct Steady {
    kernels: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Steady {
    pub fn start(socket: &str) -> Steady {
        let s = Session::open(transport(socket));
        let fill = s.function(s.module(KERNELS), "gv_fill_u32");
        let buf = s.alloc(WORDS * 4).expect("steady buffer");
        let (kernels, errors, stop) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (k, e, st) = (kernels.clone(), errors.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut value = 0u32;
            while !st.load(Ordering::Relaxed) {
                value = value.wrapping_add(0x9e37_79b1);
                let ok = s.launch(fill, (WORDS / 256) as u32, 256, &fill_params(buf, value, WORDS)).is_ok()
                    && s.read(buf, WORDS * 4).is_ok_and(|b| {
                        b.chunks_exact(4).all(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) == value)
                    });
                k.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Steady { kernels, errors, stop, thread }
    }

    /// Stops it: (kernels, errors).
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the steady VM's thread");
        (self.kernels.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed))
    }
}
