//! Wire structs of protocol version 1.
//!
//! A *batch* is what one virtio-gpu `SUBMIT_3D` carries: a [`BatchHeader`]
//! followed by `num_cmds` commands, each a [`CmdHeader`], a fixed-size payload
//! struct and, for some opcodes, trailing bytes (inline data, a module image, a
//! symbol name, kernel parameters). Commands are padded to 8 bytes.
//!
//! Replies go to the guest's *control buffer*, a guest-memory resource named
//! in [`Hello`]: a [`ReplyHeader`] at offset 0 and the reply payload at
//! [`REPLY_PAYLOAD_OFFSET`]. `completed_seq` is written last, so a guest that
//! sees it reach its batch's sequence number can read the rest.

use zerocopy::little_endian::{F32, I32, U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// virtio-gpu capset id under which the backend advertises gpuvisor. Small
/// (the Linux driver keeps capset ids in a 64-bit mask) and unused by the
/// capsets the virtio spec defines (1 to 8).
pub const CAPSET_ID: u32 = 29;
/// Version of the capset blob ([`Capset`]).
pub const CAPSET_VERSION: u32 = 1;
/// `Capset::magic`: "GVSR".
pub const CAPSET_MAGIC: u32 = u32::from_le_bytes(*b"GVSR");
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// `BatchHeader::magic`: "GVB1".
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"GVB1");
/// Largest batch the backend accepts.
pub const MAX_BATCH_BYTES: u32 = 32 << 20;
/// Largest inline payload (memcpy data) the guest puts in one command.
pub const MAX_INLINE_BYTES: u32 = 64 << 10;
/// Longest symbol name the backend accepts.
pub const MAX_NAME_BYTES: u32 = 4096;
/// Longest kernel parameter buffer (CUDA's own limit is 32 KiB since 12.1).
pub const MAX_PARAM_BYTES: u32 = 32 << 10;
/// Offset of the reply payload inside the control buffer.
pub const REPLY_PAYLOAD_OFFSET: u64 = 64;
/// Number of `CUdevice_attribute` values carried in [`HelloReply`].
pub const NUM_DEVICE_ATTRS: usize = 160;
/// Number of `CUfunction_attribute` values carried in [`FunctionReply`].
pub const NUM_FUNC_ATTRS: usize = 16;
/// The guest context id that stands for the device's primary context.
pub const PRIMARY_CTX: u64 = 1;

/// What the device advertises in its capset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Capset {
    pub magic: U32,
    pub protocol_min: U16,
    pub protocol_max: U16,
    pub max_batch_bytes: U32,
    pub max_inline_bytes: U32,
    /// 0 = sim, 1 = cuda.
    pub engine: U32,
    /// `CAPSET_F_*` bits (0 from a backend that predates them).
    pub flags: U32,
}

/// `Capset::flags`: the backend adds one to the u64 at [`HEARTBEAT_OFFSET`]
/// of every session's control buffer at least every
/// [`HEARTBEAT_PERIOD_MS`], from a thread of its own, whatever its queue
/// is doing. A guest waiting for a reply whose heartbeat stops for a few
/// seconds knows the backend is frozen (stopped, or hung outside the GPU)
/// rather than busy with a long kernel.
pub const CAPSET_F_HEARTBEAT: u32 = 1 << 0;
/// Where the heartbeat word lies in the control buffer: after the
/// [`ReplyHeader`], before the payload.
pub const HEARTBEAT_OFFSET: u64 = 48;
/// The longest time between two beats of a backend that runs.
pub const HEARTBEAT_PERIOD_MS: u64 = 500;
/// `Capset::flags`: the backend runs [`Opcode::LaunchKernelEx`] and graph
/// kernel nodes of kind [`GRAPH_NODE_KERNEL_EX`] (thread block clusters and
/// cooperative launches). A guest does not send them to a backend without
/// it, which would fail the whole batch on the unknown opcode.
pub const CAPSET_F_LAUNCH_EX: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct BatchHeader {
    pub magic: U32,
    pub version: U16,
    pub flags: U16,
    /// Strictly increasing per client, starting at 1.
    pub seq: U64,
    pub num_cmds: U32,
    /// Bytes of the whole batch, header included.
    pub total_len: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CmdHeader {
    pub opcode: U16,
    pub flags: U16,
    /// Bytes of this command: header, payload, trailing bytes and padding.
    pub len: U32,
    /// The guest context the command runs in.
    pub ctx: U64,
}

/// `CmdHeader::flags`: the operation is asynchronous with respect to the host
/// (`cu*Async`); without it copies and memsets have the synchronous API's
/// semantics.
pub const CMD_FLAG_ASYNC: u16 = 1 << 0;
/// `CmdHeader::flags`: the guest memory a copy reads or writes is a staging
/// buffer the guest reuses once the batch completes, so the backend must finish
/// with it before completing the batch.
pub const CMD_FLAG_STAGING: u16 = 1 << 1;

/// Opcodes. The comment says whether the guest waits for a reply.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// sync: opens the session, names the control buffer.
    Hello = 1,
    /// sync
    CtxCreate = 2,
    /// async
    CtxDestroy = 3,
    /// sync
    CtxSynchronize = 4,
    /// sync
    MemGetInfo = 5,
    /// sync
    MemAlloc = 6,
    /// async
    MemFree = 7,
    /// async (inline or guest-memory source)
    MemcpyHtoD = 8,
    /// sync, or async into guest memory
    MemcpyDtoH = 9,
    /// async
    MemcpyDtoD = 10,
    /// async
    Memset = 11,
    /// sync
    ModuleLoad = 12,
    /// async
    ModuleUnload = 13,
    /// sync
    ModuleGetFunction = 14,
    /// sync
    ModuleGetGlobal = 15,
    /// async
    FuncSetAttribute = 16,
    /// async
    LaunchKernel = 17,
    /// async
    StreamCreate = 18,
    /// async
    StreamDestroy = 19,
    /// sync
    StreamSynchronize = 20,
    /// sync
    StreamQuery = 21,
    /// async
    StreamWaitEvent = 22,
    /// async
    EventCreate = 23,
    /// async
    EventDestroy = 24,
    /// async
    EventRecord = 25,
    /// sync
    EventQuery = 26,
    /// sync
    EventSynchronize = 27,
    /// sync
    EventElapsedTime = 28,
    /// async: a launch with a cluster dimension or as a cooperative launch
    /// ([`LaunchKernelEx`]; [`CAPSET_F_LAUNCH_EX`]). Plain launches keep
    /// using [`Opcode::LaunchKernel`].
    LaunchKernelEx = 29,

    // Stream-ordered allocation and the virtual-memory API (40..=59).
    /// sync: the allocation granularity of the virtual-memory API.
    MemGetGranularity = 40,
    /// sync: reserves device virtual addresses.
    MemAddressReserve = 41,
    /// async
    MemAddressFree = 42,
    /// sync: physical memory under a guest-chosen handle (charged here).
    MemCreate = 43,
    /// async
    MemRelease = 44,
    /// async
    MemMap = 45,
    /// async
    MemUnmap = 46,
    /// async
    MemSetAccess = 47,
    /// sync: a pool under a guest-chosen id; replies with its address window.
    MemPoolCreate = 48,
    /// async
    MemPoolDestroy = 49,
    /// async when the range is already backed ([`CMD_FLAG_ASYNC`]); sync,
    /// backing it with new memory, otherwise.
    MemAllocAsync = 50,
    /// async
    MemFreeAsync = 51,
    /// async: gives one backing segment of a pool back.
    MemPoolRelease = 52,

    // Graphs and occupancy (60..=79).
    /// sync: a whole graph, checked and instantiated once ([`GraphInstantiate`]).
    GraphInstantiate = 60,
    /// async
    GraphExecDestroy = 61,
    /// async: one launch of an instantiated graph ([`GraphLaunch`]).
    GraphLaunch = 62,
    /// async: new parameters for one node of an instantiated graph.
    GraphExecUpdateNode = 63,
    /// sync: occupancy answers for a function ([`Occupancy`]).
    Occupancy = 64,
}

impl Opcode {
    pub fn from_u16(v: u16) -> Option<Opcode> {
        use Opcode::*;
        Some(match v {
            1 => Hello,
            2 => CtxCreate,
            3 => CtxDestroy,
            4 => CtxSynchronize,
            5 => MemGetInfo,
            6 => MemAlloc,
            7 => MemFree,
            8 => MemcpyHtoD,
            9 => MemcpyDtoH,
            10 => MemcpyDtoD,
            11 => Memset,
            12 => ModuleLoad,
            13 => ModuleUnload,
            14 => ModuleGetFunction,
            15 => ModuleGetGlobal,
            16 => FuncSetAttribute,
            17 => LaunchKernel,
            18 => StreamCreate,
            19 => StreamDestroy,
            20 => StreamSynchronize,
            21 => StreamQuery,
            22 => StreamWaitEvent,
            23 => EventCreate,
            24 => EventDestroy,
            25 => EventRecord,
            26 => EventQuery,
            27 => EventSynchronize,
            28 => EventElapsedTime,
            29 => LaunchKernelEx,
            40 => MemGetGranularity,
            41 => MemAddressReserve,
            42 => MemAddressFree,
            43 => MemCreate,
            44 => MemRelease,
            45 => MemMap,
            46 => MemUnmap,
            47 => MemSetAccess,
            48 => MemPoolCreate,
            49 => MemPoolDestroy,
            50 => MemAllocAsync,
            51 => MemFreeAsync,
            52 => MemPoolRelease,
            60 => GraphInstantiate,
            61 => GraphExecDestroy,
            62 => GraphLaunch,
            63 => GraphExecUpdateNode,
            64 => Occupancy,
            _ => return None,
        })
    }
}

/// Stream ids with the meaning CUDA gives the same `CUstream` values.
pub const STREAM_NULL: u64 = 0;
pub const STREAM_LEGACY: u64 = 1;
pub const STREAM_PER_THREAD: u64 = 2;

/// Where host-side bytes of a copy live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct HostRef {
    /// [`HOST_INLINE`] or [`HOST_RESOURCE`].
    pub kind: U32,
    /// virtio-gpu resource id, for [`HOST_RESOURCE`].
    pub resource: U32,
    /// Byte offset into the resource.
    pub offset: U64,
}
/// HtoD: the bytes follow the command. DtoH: the bytes go to the reply payload.
pub const HOST_INLINE: u32 = 0;
/// The bytes are in a guest-memory resource attached to the context.
pub const HOST_RESOURCE: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Hello {
    /// Resource that holds the reply header and payload.
    pub control_resource: U32,
    pub protocol_version: U16,
    pub _pad: U16,
    /// Guest process id, for logs only.
    pub pid: U32,
    pub _pad2: U32,
}

/// A payload that is one id (context, module, stream, event, device pointer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Id {
    pub id: U64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CtxCreate {
    pub ctx_id: U64,
    pub flags: U32,
    pub _pad: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemAlloc {
    pub size: U64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemcpyHtoD {
    pub dst: U64,
    pub len: U64,
    pub stream: U64,
    pub src: HostRef,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemcpyDtoH {
    pub src: U64,
    pub len: U64,
    pub stream: U64,
    pub dst: HostRef,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemcpyDtoD {
    pub dst: U64,
    pub src: U64,
    pub len: U64,
    pub stream: U64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Memset {
    pub dst: U64,
    /// Number of elements.
    pub count: U64,
    pub stream: U64,
    pub value: U32,
    /// 1, 2 or 4.
    pub elem_size: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ModuleLoad {
    pub module_id: U64,
    pub image_len: U64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ModuleGetFunction {
    pub module_id: U64,
    pub func_id: U64,
    pub name_len: U32,
    pub _pad: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ModuleGetGlobal {
    pub module_id: U64,
    pub name_len: U32,
    pub _pad: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct FuncSetAttribute {
    pub func_id: U64,
    pub attr: U32,
    pub value: I32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct LaunchKernel {
    pub func_id: U64,
    pub stream: U64,
    pub grid: [U32; 3],
    pub block: [U32; 3],
    pub shared_mem: U32,
    /// Bytes of packed parameters that follow.
    pub params_len: U32,
}

/// What a launch asks beyond a plain one: a thread block cluster
/// (`CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION`) and `LAUNCH_F_*` flags. Every
/// cluster dimension is at least 1; 1x1x1 with no flags is a plain launch.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct LaunchExtra {
    pub cluster: [U32; 3],
    pub flags: U32,
}
/// `LaunchExtra::flags`: a cooperative launch (`CU_LAUNCH_ATTRIBUTE_COOPERATIVE`):
/// all blocks are resident at once, so grid-wide synchronisation works.
pub const LAUNCH_F_COOPERATIVE: u32 = 1 << 0;
/// The `LAUNCH_F_*` bits a backend knows.
pub const LAUNCH_F_ALL: u32 = LAUNCH_F_COOPERATIVE;
/// Most blocks one cluster may hold on any GPU (Hopper's non-portable
/// limit; the portable one is 8). The device checks its own limit.
pub const MAX_CLUSTER_BLOCKS: u64 = 16;

impl LaunchExtra {
    /// A plain launch: one block per cluster, no flags.
    pub const PLAIN: LaunchExtra = LaunchExtra { cluster: [U32::new(1), U32::new(1), U32::new(1)], flags: U32::new(0) };

    pub fn new(cluster: [u32; 3], flags: u32) -> Self {
        LaunchExtra { cluster: cluster.map(U32::new), flags: U32::new(flags) }
    }

    pub fn is_plain(&self) -> bool {
        *self == Self::PLAIN
    }

    pub fn cluster(&self) -> [u32; 3] {
        self.cluster.map(|d| d.get())
    }

    /// Blocks in one cluster (saturating).
    pub fn cluster_blocks(&self) -> u64 {
        self.cluster.iter().fold(1u64, |n, d| n.saturating_mul(d.get() as u64))
    }

    pub fn cooperative(&self) -> bool {
        self.flags.get() & LAUNCH_F_COOPERATIVE != 0
    }

    /// What the decoder checks: no zero dimension, no cluster past
    /// [`MAX_CLUSTER_BLOCKS`], no unknown flag.
    pub fn check(&self) -> Result<(), &'static str> {
        let c = self.cluster();
        if c.contains(&0) {
            return Err("a cluster dimension is zero");
        }
        if self.cluster_blocks() > MAX_CLUSTER_BLOCKS {
            return Err("the cluster holds more blocks than any GPU allows");
        }
        if self.flags.get() & !LAUNCH_F_ALL != 0 {
            return Err("unknown launch flags");
        }
        Ok(())
    }
}

impl Default for LaunchExtra {
    fn default() -> Self {
        Self::PLAIN
    }
}

/// [`Opcode::LaunchKernelEx`]: a [`LaunchKernel`] with its [`LaunchExtra`];
/// `launch.params_len` bytes of packed parameters follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct LaunchKernelEx {
    pub launch: LaunchKernel,
    pub extra: LaunchExtra,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct StreamCreate {
    pub stream_id: U64,
    pub flags: U32,
    pub priority: I32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct StreamWaitEvent {
    pub stream_id: U64,
    pub event_id: U64,
    pub flags: U32,
    pub _pad: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct EventCreate {
    pub event_id: U64,
    pub flags: U32,
    pub _pad: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct EventRecord {
    pub event_id: U64,
    pub stream_id: U64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct EventElapsedTime {
    pub start: U64,
    pub end: U64,
}

// ---- stream-ordered allocation and the virtual-memory API ----------------

/// The id of the device's default memory pool, which the backend creates on
/// first use; the guest picks every other pool's id.
pub const DEFAULT_MEM_POOL: u64 = 1;

/// [`Opcode::MemAddressReserve`]: `size` bytes at a multiple of `alignment`
/// (0: the granularity), near `addr` if it is not 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemAddressReserve {
    pub size: U64,
    pub alignment: U64,
    pub addr: U64,
}

/// An address range: [`Opcode::MemAddressFree`], [`Opcode::MemUnmap`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct VaRange {
    pub va: U64,
    pub size: U64,
}

/// [`Opcode::MemCreate`]: `size` bytes of device memory, named `handle`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemCreate {
    pub handle: U64,
    pub size: U64,
}

/// [`Opcode::MemMap`]: `size` bytes of `handle`, from `offset`, at `va`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemMap {
    pub va: U64,
    pub size: U64,
    pub offset: U64,
    pub handle: U64,
}

/// `CUmemAccess_flags`: no access, read, read and write.
pub const MEM_ACCESS_NONE: u32 = 0;
pub const MEM_ACCESS_READ: u32 = 1;
pub const MEM_ACCESS_READWRITE: u32 = 3;

/// [`Opcode::MemSetAccess`]: the device's access to mapped `[va, va + size)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemSetAccess {
    pub va: U64,
    pub size: U64,
    /// One of the `MEM_ACCESS_*` values.
    pub flags: U32,
    pub _pad: U32,
}

/// [`Opcode::MemAllocAsync`]: `size` bytes at `dptr`, an address the guest
/// chose inside the pool's window, ordered on `stream`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemAllocAsync {
    pub pool_id: U64,
    pub dptr: U64,
    pub size: U64,
    pub stream: U64,
}

/// [`Opcode::MemFreeAsync`]: the pool allocation at `dptr`, ordered on `stream`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemFreeAsync {
    pub dptr: U64,
    pub stream: U64,
}

/// [`Opcode::MemPoolRelease`]: the backing segment that starts at `va`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemPoolRelease {
    pub pool_id: U64,
    pub va: U64,
}

// ---- graphs and occupancy --------------------------------------------------

/// Most nodes one instantiated graph may have.
pub const MAX_GRAPH_NODES: u32 = 1 << 16;
/// Most dependency edges one instantiated graph may have.
pub const MAX_GRAPH_EDGES: u32 = 1 << 20;
/// Most questions one [`Occupancy`] command may ask.
pub const MAX_OCCUPANCY_ITEMS: u32 = 1024;

/// [`Opcode::GraphInstantiate`]: a graph the guest built (by stream capture
/// or node by node), sent once. `body_len` trailing bytes follow: `num_nodes`
/// node records, each a [`GraphNodeHeader`], its kind's struct and, for a
/// kernel, the packed parameters, padded to 8; then `num_edges`
/// [`GraphEdge`]s. Nodes are named by their index in that list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GraphInstantiate {
    pub exec_id: U64,
    /// `CUgraphInstantiate_flags`, for the record; the backend runs every
    /// graph the same way.
    pub flags: U64,
    pub num_nodes: U32,
    pub num_edges: U32,
    pub body_len: U64,
}

/// One node record of a graph body. `len` covers the header, the kind's
/// struct, trailing bytes and padding (a multiple of 8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GraphNodeHeader {
    /// A `GRAPH_NODE_*` kind (`CUgraphNodeType`'s numbers).
    pub kind: U32,
    pub len: U32,
}
pub const GRAPH_NODE_KERNEL: u32 = 0;
pub const GRAPH_NODE_MEMCPY: u32 = 1;
pub const GRAPH_NODE_MEMSET: u32 = 2;
pub const GRAPH_NODE_EMPTY: u32 = 5;
pub const GRAPH_NODE_WAIT_EVENT: u32 = 6;
pub const GRAPH_NODE_EVENT_RECORD: u32 = 7;
/// A kernel node with a [`LaunchExtra`] ([`CAPSET_F_LAUNCH_EX`]): its
/// [`GraphKernelNode`] is followed by the [`LaunchExtra`], then the
/// parameters. Kernel nodes without one keep [`GRAPH_NODE_KERNEL`]. Not a
/// `CUgraphNodeType`: the guest reports both as kernel nodes.
pub const GRAPH_NODE_KERNEL_EX: u32 = 0x100;

/// A kernel node: a launch without a stream; `params_len` bytes of packed
/// parameters follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GraphKernelNode {
    pub func_id: U64,
    pub grid: [U32; 3],
    pub block: [U32; 3],
    pub shared_mem: U32,
    pub params_len: U32,
}

/// A one-dimensional copy node. Host memory is a guest-memory resource the
/// backend reaches at every launch ([`HOST_RESOURCE`]); inline bytes cannot
/// be replayed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GraphMemcpyNode {
    /// A `GRAPH_COPY_*` direction.
    pub dir: U32,
    pub _pad: U32,
    /// Device destination (DtoD, HtoD).
    pub dst: U64,
    /// Device source (DtoD, DtoH).
    pub src: U64,
    pub len: U64,
    /// The host side (HtoD source, DtoH destination).
    pub host: HostRef,
}
pub const GRAPH_COPY_DTOD: u32 = 0;
pub const GRAPH_COPY_HTOD: u32 = 1;
pub const GRAPH_COPY_DTOH: u32 = 2;

/// A memset node: `height` rows of `width` elements, `pitch` bytes apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GraphMemsetNode {
    pub dst: U64,
    pub pitch: U64,
    pub width: U64,
    pub height: U64,
    pub value: U32,
    /// 1, 2 or 4.
    pub elem_size: U32,
}

/// An event record or event wait node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GraphEventNode {
    pub event_id: U64,
}

/// `to` runs after `from` (node indices).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GraphEdge {
    pub from: U32,
    pub to: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GraphLaunch {
    pub exec_id: U64,
    pub stream: U64,
}

/// [`Opcode::GraphExecUpdateNode`]: node `index` of an instantiated graph
/// takes the parameters of the one node record that follows (same kind).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GraphExecUpdateNode {
    pub exec_id: U64,
    pub index: U32,
    pub _pad: U32,
}

/// [`Opcode::Occupancy`]: `count` [`OccupancyItem`]s follow; the reply is
/// one little-endian u64 per item.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Occupancy {
    pub func_id: U64,
    /// An `OCCUPANCY_*` question.
    pub kind: U32,
    /// `CUoccupancy_flags`.
    pub flags: U32,
    pub count: U32,
    pub _pad: U32,
}
/// Blocks of `block` threads with `shared_mem` dynamic shared memory that
/// fit on one multiprocessor.
pub const OCCUPANCY_ACTIVE_BLOCKS: u32 = 0;
/// Dynamic shared memory a block of `block` threads may use when
/// `num_blocks` of them share a multiprocessor.
pub const OCCUPANCY_AVAILABLE_SMEM: u32 = 1;
/// Largest cluster size a launch of this configuration could use.
pub const OCCUPANCY_CLUSTER_SIZE: u32 = 2;
/// Clusters of `cluster` blocks that can be co-resident on the device.
pub const OCCUPANCY_ACTIVE_CLUSTERS: u32 = 3;

/// One occupancy question; the fields a kind does not use are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct OccupancyItem {
    pub block: [U32; 3],
    pub grid: [U32; 3],
    pub shared_mem: U32,
    pub num_blocks: U32,
    /// Cluster dimensions (0 = not set).
    pub cluster: [U32; 3],
    /// `CUclusterSchedulingPolicy`.
    pub policy: U32,
}

// ---- replies -------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReplyHeader {
    /// Sequence number of the last batch the backend has finished. Written
    /// last, with release ordering.
    pub completed_seq: U64,
    /// Sequence number of the batch this reply answers.
    pub reply_seq: U64,
    /// Result of the batch's final (synchronous) command.
    pub status: U32,
    /// First error of an asynchronous command since the last reply that
    /// reported one, or 0.
    pub deferred: U32,
    /// Opcode of the command that caused `deferred`.
    pub deferred_opcode: U32,
    pub payload_len: U32,
    /// `REPLY_F_*` bits.
    pub flags: U32,
    pub _reserved: U32,
}

/// `ReplyHeader::flags`: the session this reply answers is gone for good. Its
/// backend process ended (killed, crashed or ended by a fault) and a new one
/// took its place: everything the session held on the GPU went with the old
/// process. `status` is the error the session gets from now on (709,
/// `CUDA_ERROR_CONTEXT_IS_DESTROYED`, after a kill or crash; the fault's own
/// sticky error after a fault), and the guest driver returns it for every
/// later call of the process. A new session (a new process) works.
pub const REPLY_F_SESSION_LOST: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct HelloReply {
    pub protocol_version: U32,
    /// 0 = sim, 1 = cuda.
    pub engine: U32,
    /// `cuDriverGetVersion` of the host, or the version the sim engine claims.
    pub driver_version: U32,
    pub device_count: U32,
    /// The VM's memory quota: what the guest sees as the device's memory.
    pub total_mem: U64,
    pub uuid: [u8; 16],
    /// NUL-padded device name.
    pub name: [u8; 256],
    /// `CUdevice_attribute` values, indexed by attribute number.
    pub attrs: [I32; NUM_DEVICE_ATTRS],
}

impl Default for HelloReply {
    fn default() -> Self {
        HelloReply::new_zeroed()
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemGetInfoReply {
    pub free: U64,
    pub total: U64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemAllocReply {
    pub dptr: U64,
}

/// Reply to [`Opcode::ModuleGetFunction`]: the function's attributes and its
/// parameter layout, followed by `num_params` [`ParamLayout`] entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct FunctionReply {
    pub num_params: U32,
    /// Where the layout came from: [`PARAMS_FROM_HOST_DRIVER`] or
    /// [`PARAMS_FROM_IMAGE`].
    pub param_source: U32,
    /// `CUfunction_attribute` values, indexed by attribute number.
    pub attrs: [I32; NUM_FUNC_ATTRS],
}
pub const PARAMS_FROM_HOST_DRIVER: u32 = 1;
pub const PARAMS_FROM_IMAGE: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ParamLayout {
    pub offset: U32,
    pub size: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GlobalReply {
    pub dptr: U64,
    pub size: U64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ElapsedReply {
    pub ms: F32,
    pub _pad: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemGranularityReply {
    /// Sizes and addresses of the virtual-memory API are multiples of this.
    pub granularity: U64,
}

/// Reply to [`Opcode::MemPoolCreate`]: the device addresses reserved for the
/// pool, out of which the guest places its allocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemPoolCreateReply {
    pub base: U64,
    pub len: U64,
}

/// One backing segment a synchronous [`Opcode::MemAllocAsync`] added to its
/// pool; the reply is a list of them, in address order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct PoolSegment {
    pub va: U64,
    pub len: U64,
}

/// Size of one command's header plus payload struct.
pub const fn fixed_len<T>() -> usize {
    core::mem::size_of::<CmdHeader>() + core::mem::size_of::<T>()
}

/// Rounds `n` up to the command alignment (8), or `None` on overflow.
pub fn pad8(n: usize) -> Option<usize> {
    n.checked_add(7).map(|v| v & !7)
}
