//! The validating decoder. It turns untrusted batch bytes into typed
//! [`Command`]s; nothing after it sees raw guest bytes. Every length, count
//! and offset is checked before use, and every failure is a [`DecodeError`].

use crate::graph::{self, GraphBody, GraphNodeDesc};
use crate::wire::*;
use thiserror::Error;
use zerocopy::FromBytes;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("batch of {0} bytes is shorter than its header")]
    ShortBatch(usize),
    #[error("batch magic {0:#x} is not gpuvisor's")]
    BadMagic(u32),
    #[error("protocol version {0} is not supported")]
    UnsupportedVersion(u16),
    #[error("batch header says {claimed} bytes but {actual} arrived")]
    LengthMismatch { claimed: u32, actual: usize },
    #[error("batch of {0} bytes exceeds the limit")]
    BatchTooLarge(usize),
    #[error("command {index} at offset {offset}: header runs past the end of the batch")]
    TruncatedCommand { index: u32, offset: usize },
    #[error("command {index}: length {len} is not a multiple of 8 or runs past the batch")]
    BadCommandLength { index: u32, len: u32 },
    #[error("command {index}: unknown opcode {opcode}")]
    UnknownOpcode { index: u32, opcode: u16 },
    #[error("command {index} ({opcode:?}): {what} of {len} bytes does not fit the command")]
    BadTrailingLength { index: u32, opcode: Opcode, what: &'static str, len: u64 },
    #[error("command {index} ({opcode:?}): {what}")]
    BadField { index: u32, opcode: Opcode, what: &'static str },
    #[error("batch says {claimed} commands but holds {found}")]
    CountMismatch { claimed: u32, found: u32 },
}

/// A command, decoded and with its trailing bytes bounds-checked.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    Hello(Hello),
    CtxCreate(CtxCreate),
    CtxDestroy(Id),
    CtxSynchronize,
    MemGetInfo,
    MemAlloc(MemAlloc),
    MemFree(Id),
    /// The inline bytes are empty unless `src.kind` is [`HOST_INLINE`].
    MemcpyHtoD(MemcpyHtoD, &'a [u8]),
    MemcpyDtoH(MemcpyDtoH),
    MemcpyDtoD(MemcpyDtoD),
    Memset(Memset),
    ModuleLoad(ModuleLoad, &'a [u8]),
    ModuleUnload(Id),
    ModuleGetFunction(ModuleGetFunction, &'a str),
    ModuleGetGlobal(ModuleGetGlobal, &'a str),
    FuncSetAttribute(FuncSetAttribute),
    LaunchKernel(LaunchKernel, &'a [u8]),
    /// Its extra was checked ([`LaunchExtra::check`]).
    LaunchKernelEx(LaunchKernelEx, &'a [u8]),
    StreamCreate(StreamCreate),
    StreamDestroy(Id),
    StreamSynchronize(Id),
    StreamQuery(Id),
    StreamWaitEvent(StreamWaitEvent),
    EventCreate(EventCreate),
    EventDestroy(Id),
    EventRecord(EventRecord),
    EventQuery(Id),
    EventSynchronize(Id),
    EventElapsedTime(EventElapsedTime),
    MemGetGranularity,
    MemAddressReserve(MemAddressReserve),
    MemAddressFree(VaRange),
    MemCreate(MemCreate),
    MemRelease(Id),
    MemMap(MemMap),
    MemUnmap(VaRange),
    MemSetAccess(MemSetAccess),
    MemPoolCreate(Id),
    MemPoolDestroy(Id),
    MemAllocAsync(MemAllocAsync),
    MemFreeAsync(MemFreeAsync),
    MemPoolRelease(MemPoolRelease),
    GraphInstantiate(GraphInstantiate, GraphBody<'a>),
    GraphExecDestroy(Id),
    GraphLaunch(GraphLaunch),
    GraphExecUpdateNode(GraphExecUpdateNode, GraphNodeDesc<'a>),
    Occupancy(Occupancy, &'a [OccupancyItem]),
}

impl Command<'_> {
    pub fn opcode(&self) -> Opcode {
        use Command as C;
        match self {
            C::Hello(_) => Opcode::Hello,
            C::CtxCreate(_) => Opcode::CtxCreate,
            C::CtxDestroy(_) => Opcode::CtxDestroy,
            C::CtxSynchronize => Opcode::CtxSynchronize,
            C::MemGetInfo => Opcode::MemGetInfo,
            C::MemAlloc(_) => Opcode::MemAlloc,
            C::MemFree(_) => Opcode::MemFree,
            C::MemcpyHtoD(..) => Opcode::MemcpyHtoD,
            C::MemcpyDtoH(_) => Opcode::MemcpyDtoH,
            C::MemcpyDtoD(_) => Opcode::MemcpyDtoD,
            C::Memset(_) => Opcode::Memset,
            C::ModuleLoad(..) => Opcode::ModuleLoad,
            C::ModuleUnload(_) => Opcode::ModuleUnload,
            C::ModuleGetFunction(..) => Opcode::ModuleGetFunction,
            C::ModuleGetGlobal(..) => Opcode::ModuleGetGlobal,
            C::FuncSetAttribute(_) => Opcode::FuncSetAttribute,
            C::LaunchKernel(..) => Opcode::LaunchKernel,
            C::LaunchKernelEx(..) => Opcode::LaunchKernelEx,
            C::StreamCreate(_) => Opcode::StreamCreate,
            C::StreamDestroy(_) => Opcode::StreamDestroy,
            C::StreamSynchronize(_) => Opcode::StreamSynchronize,
            C::StreamQuery(_) => Opcode::StreamQuery,
            C::StreamWaitEvent(_) => Opcode::StreamWaitEvent,
            C::EventCreate(_) => Opcode::EventCreate,
            C::EventDestroy(_) => Opcode::EventDestroy,
            C::EventRecord(_) => Opcode::EventRecord,
            C::EventQuery(_) => Opcode::EventQuery,
            C::EventSynchronize(_) => Opcode::EventSynchronize,
            C::EventElapsedTime(_) => Opcode::EventElapsedTime,
            C::MemGetGranularity => Opcode::MemGetGranularity,
            C::MemAddressReserve(_) => Opcode::MemAddressReserve,
            C::MemAddressFree(_) => Opcode::MemAddressFree,
            C::MemCreate(_) => Opcode::MemCreate,
            C::MemRelease(_) => Opcode::MemRelease,
            C::MemMap(_) => Opcode::MemMap,
            C::MemUnmap(_) => Opcode::MemUnmap,
            C::MemSetAccess(_) => Opcode::MemSetAccess,
            C::MemPoolCreate(_) => Opcode::MemPoolCreate,
            C::MemPoolDestroy(_) => Opcode::MemPoolDestroy,
            C::MemAllocAsync(_) => Opcode::MemAllocAsync,
            C::MemFreeAsync(_) => Opcode::MemFreeAsync,
            C::MemPoolRelease(_) => Opcode::MemPoolRelease,
            C::GraphInstantiate(..) => Opcode::GraphInstantiate,
            C::GraphExecDestroy(_) => Opcode::GraphExecDestroy,
            C::GraphLaunch(_) => Opcode::GraphLaunch,
            C::GraphExecUpdateNode(..) => Opcode::GraphExecUpdateNode,
            C::Occupancy(..) => Opcode::Occupancy,
        }
    }
}

/// One decoded command with its header fields.
#[derive(Debug, Clone, Copy)]
pub struct Decoded<'a> {
    pub ctx: u64,
    pub flags: u16,
    pub cmd: Command<'a>,
}

/// A batch whose header has been checked. Its commands are decoded lazily by
/// [`Batch::commands`], so a bad command stops the batch at that command.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub header: BatchHeader,
    body: &'a [u8],
}

/// Checks a batch's header against the bytes that arrived.
pub fn decode_batch(bytes: &[u8]) -> Result<Batch<'_>, DecodeError> {
    let (header, _) = BatchHeader::read_from_prefix(bytes).map_err(|_| DecodeError::ShortBatch(bytes.len()))?;
    if header.magic.get() != BATCH_MAGIC {
        return Err(DecodeError::BadMagic(header.magic.get()));
    }
    if header.version.get() != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(header.version.get()));
    }
    if bytes.len() > MAX_BATCH_BYTES as usize {
        return Err(DecodeError::BatchTooLarge(bytes.len()));
    }
    let claimed = header.total_len.get();
    if claimed as usize != bytes.len() {
        return Err(DecodeError::LengthMismatch { claimed, actual: bytes.len() });
    }
    let body = &bytes[core::mem::size_of::<BatchHeader>()..];
    Ok(Batch { header, body })
}

impl<'a> Batch<'a> {
    pub fn seq(&self) -> u64 {
        self.header.seq.get()
    }

    /// Iterates over the commands. After the first error the iterator ends.
    pub fn commands(&self) -> Commands<'a> {
        Commands { rest: self.body, offset: 0, index: 0, claimed: self.header.num_cmds.get(), failed: false }
    }
}

pub struct Commands<'a> {
    rest: &'a [u8],
    offset: usize,
    index: u32,
    claimed: u32,
    failed: bool,
}

impl<'a> Iterator for Commands<'a> {
    type Item = Result<Decoded<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.rest.is_empty() {
            if self.index != self.claimed {
                self.failed = true;
                return Some(Err(DecodeError::CountMismatch { claimed: self.claimed, found: self.index }));
            }
            return None;
        }
        let r = self.next_command();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

impl<'a> Commands<'a> {
    fn next_command(&mut self) -> Result<Decoded<'a>, DecodeError> {
        let index = self.index;
        if index >= self.claimed {
            return Err(DecodeError::CountMismatch { claimed: self.claimed, found: index.saturating_add(1) });
        }
        let (hdr, _) = CmdHeader::read_from_prefix(self.rest)
            .map_err(|_| DecodeError::TruncatedCommand { index, offset: self.offset })?;
        let len = hdr.len.get();
        let len_usize = len as usize;
        if len_usize < core::mem::size_of::<CmdHeader>() || len % 8 != 0 || len_usize > self.rest.len() {
            return Err(DecodeError::BadCommandLength { index, len });
        }
        let opcode =
            Opcode::from_u16(hdr.opcode.get()).ok_or(DecodeError::UnknownOpcode { index, opcode: hdr.opcode.get() })?;
        let (this, rest) = self.rest.split_at(len_usize);
        let payload = &this[core::mem::size_of::<CmdHeader>()..];
        let cmd = decode_payload(index, opcode, payload)?;
        self.rest = rest;
        self.offset += len_usize;
        self.index += 1;
        Ok(Decoded { ctx: hdr.ctx.get(), flags: hdr.flags.get(), cmd })
    }
}

/// Splits `payload` into the fixed struct `T` and the bytes after it.
fn fixed<T: FromBytes>(index: u32, opcode: Opcode, payload: &[u8]) -> Result<(T, &[u8]), DecodeError> {
    T::read_from_prefix(payload).map_err(|_| DecodeError::BadTrailingLength {
        index,
        opcode,
        what: "fixed payload",
        len: payload.len() as u64,
    })
}

/// Takes `len` trailing bytes, which must fit in `tail` and respect `max`.
fn trailing<'a>(
    index: u32,
    opcode: Opcode,
    what: &'static str,
    tail: &'a [u8],
    len: u64,
    max: u64,
) -> Result<&'a [u8], DecodeError> {
    if len > max || len > tail.len() as u64 {
        return Err(DecodeError::BadTrailingLength { index, opcode, what, len });
    }
    Ok(&tail[..len as usize])
}

fn name(index: u32, opcode: Opcode, tail: &[u8], len: u32) -> Result<&str, DecodeError> {
    let bytes = trailing(index, opcode, "symbol name", tail, len as u64, MAX_NAME_BYTES as u64)?;
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(DecodeError::BadField { index, opcode, what: "symbol name is empty or holds a NUL" });
    }
    core::str::from_utf8(bytes).map_err(|_| DecodeError::BadField { index, opcode, what: "symbol name is not UTF-8" })
}

/// A launch's parameters, after checking its geometry.
fn launch_params<'a>(index: u32, opcode: Opcode, m: &LaunchKernel, tail: &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let params = trailing(index, opcode, "kernel parameters", tail, m.params_len.get() as u64, MAX_PARAM_BYTES as u64)?;
    if m.grid.iter().chain(m.block.iter()).any(|d| d.get() == 0) {
        return Err(DecodeError::BadField { index, opcode, what: "a grid or block dimension is zero" });
    }
    Ok(params)
}

fn decode_payload(index: u32, opcode: Opcode, p: &[u8]) -> Result<Command<'_>, DecodeError> {
    use Command as C;
    macro_rules! simple {
        ($variant:ident, $ty:ty) => {
            C::$variant(fixed::<$ty>(index, opcode, p)?.0)
        };
    }
    let bad = |what| DecodeError::BadField { index, opcode, what };
    Ok(match opcode {
        Opcode::Hello => simple!(Hello, Hello),
        Opcode::CtxCreate => simple!(CtxCreate, CtxCreate),
        Opcode::CtxDestroy => simple!(CtxDestroy, Id),
        Opcode::CtxSynchronize => C::CtxSynchronize,
        Opcode::MemGetInfo => C::MemGetInfo,
        Opcode::MemAlloc => simple!(MemAlloc, MemAlloc),
        Opcode::MemFree => simple!(MemFree, Id),
        Opcode::MemcpyHtoD => {
            let (m, tail) = fixed::<MemcpyHtoD>(index, opcode, p)?;
            let data = match m.src.kind.get() {
                HOST_INLINE => trailing(index, opcode, "inline data", tail, m.len.get(), MAX_INLINE_BYTES as u64)?,
                HOST_RESOURCE => &[][..],
                _ => return Err(bad("unknown source kind")),
            };
            C::MemcpyHtoD(m, data)
        }
        Opcode::MemcpyDtoH => {
            let m = fixed::<MemcpyDtoH>(index, opcode, p)?.0;
            match m.dst.kind.get() {
                HOST_INLINE | HOST_RESOURCE => C::MemcpyDtoH(m),
                _ => return Err(bad("unknown destination kind")),
            }
        }
        Opcode::MemcpyDtoD => simple!(MemcpyDtoD, MemcpyDtoD),
        Opcode::Memset => {
            let m = fixed::<Memset>(index, opcode, p)?.0;
            if !matches!(m.elem_size.get(), 1 | 2 | 4) {
                return Err(bad("memset element size is not 1, 2 or 4"));
            }
            C::Memset(m)
        }
        Opcode::ModuleLoad => {
            let (m, tail) = fixed::<ModuleLoad>(index, opcode, p)?;
            let image = trailing(index, opcode, "module image", tail, m.image_len.get(), MAX_BATCH_BYTES as u64)?;
            if image.is_empty() {
                return Err(bad("module image is empty"));
            }
            C::ModuleLoad(m, image)
        }
        Opcode::ModuleUnload => simple!(ModuleUnload, Id),
        Opcode::ModuleGetFunction => {
            let (m, tail) = fixed::<ModuleGetFunction>(index, opcode, p)?;
            C::ModuleGetFunction(m, name(index, opcode, tail, m.name_len.get())?)
        }
        Opcode::ModuleGetGlobal => {
            let (m, tail) = fixed::<ModuleGetGlobal>(index, opcode, p)?;
            C::ModuleGetGlobal(m, name(index, opcode, tail, m.name_len.get())?)
        }
        Opcode::FuncSetAttribute => simple!(FuncSetAttribute, FuncSetAttribute),
        Opcode::LaunchKernel => {
            let (m, tail) = fixed::<LaunchKernel>(index, opcode, p)?;
            C::LaunchKernel(m, launch_params(index, opcode, &m, tail)?)
        }
        Opcode::LaunchKernelEx => {
            let (m, tail) = fixed::<LaunchKernelEx>(index, opcode, p)?;
            let params = launch_params(index, opcode, &m.launch, tail)?;
            m.extra.check().map_err(bad)?;
            C::LaunchKernelEx(m, params)
        }
        Opcode::StreamCreate => simple!(StreamCreate, StreamCreate),
        Opcode::StreamDestroy => simple!(StreamDestroy, Id),
        Opcode::StreamSynchronize => simple!(StreamSynchronize, Id),
        Opcode::StreamQuery => simple!(StreamQuery, Id),
        Opcode::StreamWaitEvent => simple!(StreamWaitEvent, StreamWaitEvent),
        Opcode::EventCreate => simple!(EventCreate, EventCreate),
        Opcode::EventDestroy => simple!(EventDestroy, Id),
        Opcode::EventRecord => simple!(EventRecord, EventRecord),
        Opcode::EventQuery => simple!(EventQuery, Id),
        Opcode::EventSynchronize => simple!(EventSynchronize, Id),
        Opcode::EventElapsedTime => simple!(EventElapsedTime, EventElapsedTime),
        Opcode::MemGetGranularity => C::MemGetGranularity,
        Opcode::MemAddressReserve => simple!(MemAddressReserve, MemAddressReserve),
        Opcode::MemAddressFree => simple!(MemAddressFree, VaRange),
        Opcode::MemCreate => simple!(MemCreate, MemCreate),
        Opcode::MemRelease => simple!(MemRelease, Id),
        Opcode::MemMap => simple!(MemMap, MemMap),
        Opcode::MemUnmap => simple!(MemUnmap, VaRange),
        Opcode::MemSetAccess => {
            let m = fixed::<MemSetAccess>(index, opcode, p)?.0;
            if !matches!(m.flags.get(), MEM_ACCESS_NONE | MEM_ACCESS_READ | MEM_ACCESS_READWRITE) {
                return Err(bad("access flags are not none, read or read-write"));
            }
            C::MemSetAccess(m)
        }
        Opcode::MemPoolCreate => simple!(MemPoolCreate, Id),
        Opcode::MemPoolDestroy => simple!(MemPoolDestroy, Id),
        Opcode::MemAllocAsync => simple!(MemAllocAsync, MemAllocAsync),
        Opcode::MemFreeAsync => simple!(MemFreeAsync, MemFreeAsync),
        Opcode::MemPoolRelease => simple!(MemPoolRelease, MemPoolRelease),
        Opcode::GraphInstantiate => {
            let (g, tail) = fixed::<GraphInstantiate>(index, opcode, p)?;
            let body = trailing(index, opcode, "graph body", tail, g.body_len.get(), MAX_BATCH_BYTES as u64)?;
            C::GraphInstantiate(g, graph::decode_body(index, &g, body)?)
        }
        Opcode::GraphExecDestroy => simple!(GraphExecDestroy, Id),
        Opcode::GraphLaunch => simple!(GraphLaunch, GraphLaunch),
        Opcode::GraphExecUpdateNode => {
            let (u, tail) = fixed::<GraphExecUpdateNode>(index, opcode, p)?;
            let (node, _) = graph::node_record(tail).map_err(bad)?;
            C::GraphExecUpdateNode(u, node)
        }
        Opcode::Occupancy => {
            let (o, tail) = fixed::<Occupancy>(index, opcode, p)?;
            let count = o.count.get();
            if count == 0 || count > MAX_OCCUPANCY_ITEMS {
                return Err(bad("occupancy question count is 0 or too large"));
            }
            let len = count as u64 * core::mem::size_of::<OccupancyItem>() as u64;
            let bytes = trailing(index, opcode, "occupancy questions", tail, len, len)?;
            let items = <[OccupancyItem]>::ref_from_bytes(bytes).map_err(|_| bad("occupancy questions"))?;
            C::Occupancy(o, items)
        }
    })
}

/// Runs the decoder over arbitrary bytes; the fuzz target calls this.
pub fn fuzz_one(data: &[u8]) {
    if let Ok(batch) = decode_batch(data) {
        for cmd in batch.commands() {
            match cmd {
                Err(_) => break,
                Ok(Decoded { cmd: Command::GraphInstantiate(_, body), .. }) => {
                    assert_eq!(body.nodes().count(), body.num_nodes() as usize);
                }
                Ok(_) => {}
            }
        }
    }
    crate::module_image::fuzz_one(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::BatchWriter;
    use zerocopy::little_endian::{U32, U64};
    use zerocopy::IntoBytes;

    fn sample() -> Vec<u8> {
        let mut w = BatchWriter::new();
        w.begin(7);
        w.push(Opcode::MemAlloc, 0, PRIMARY_CTX, &MemAlloc { size: U64::new(4096) }, &[]);
        let m = MemcpyHtoD {
            dst: U64::new(0x1000),
            len: U64::new(5),
            stream: U64::new(0),
            src: HostRef { kind: U32::new(HOST_INLINE), ..Default::default() },
        };
        w.push(Opcode::MemcpyHtoD, CMD_FLAG_ASYNC, PRIMARY_CTX, &m, b"hello");
        let g = ModuleGetFunction {
            module_id: U64::new(3),
            func_id: U64::new(9),
            name_len: U32::new(6),
            _pad: U32::new(0),
        };
        w.push(Opcode::ModuleGetFunction, 0, PRIMARY_CTX, &g, b"kernel");
        w.push_empty(Opcode::CtxSynchronize, 0, PRIMARY_CTX);
        w.finish().to_vec()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let batch = decode_batch(&bytes).unwrap();
        assert_eq!(batch.seq(), 7);
        let cmds: Vec<_> = batch.commands().collect::<Result<_, _>>().unwrap();
        assert_eq!(cmds.len(), 4);
        match cmds[1].cmd {
            Command::MemcpyHtoD(m, data) => {
                assert_eq!(m.dst.get(), 0x1000);
                assert_eq!(data, b"hello");
                assert_eq!(cmds[1].flags, CMD_FLAG_ASYNC);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(cmds[2].cmd, Command::ModuleGetFunction(_, "kernel")));
        assert!(matches!(cmds[3].cmd, Command::CtxSynchronize));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for n in 0..bytes.len() {
            assert!(decode_batch(&bytes[..n]).is_err(), "prefix {n} accepted");
        }
    }

    #[test]
    fn inline_length_past_the_command_is_rejected() {
        let mut bytes = sample();
        // The MemcpyHtoD command starts after the batch header and the MemAlloc
        // command; its `len` field (inline bytes) sits 8 bytes into its payload.
        let off = core::mem::size_of::<BatchHeader>() + fixed_len::<MemAlloc>() + 16 + 8;
        bytes[off..off + 8].copy_from_slice(&1_000_000u64.to_le_bytes());
        let batch = decode_batch(&bytes).unwrap();
        let errs: Vec<_> = batch.commands().filter_map(|c| c.err()).collect();
        assert!(matches!(errs[0], DecodeError::BadTrailingLength { what: "inline data", .. }), "{errs:?}");
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(decode_batch(&[0xAB; 100]), Err(DecodeError::BadMagic(_))));
        let mut bytes = sample();
        bytes[4] = 99; // version
        assert!(matches!(decode_batch(&bytes), Err(DecodeError::UnsupportedVersion(99))));
    }

    #[test]
    fn command_count_must_match() {
        let mut bytes = sample();
        let off = 16; // num_cmds
        bytes[off..off + 4].copy_from_slice(&9u32.to_le_bytes());
        let batch = decode_batch(&bytes).unwrap();
        let last = batch.commands().last().unwrap();
        assert!(matches!(last, Err(DecodeError::CountMismatch { claimed: 9, found: 4 })));
        bytes[off..off + 4].copy_from_slice(&2u32.to_le_bytes());
        let batch = decode_batch(&bytes).unwrap();
        assert!(batch.commands().any(|c| c.is_err()));
    }

    #[test]
    fn unknown_opcode_and_bad_lengths() {
        let mut bytes = sample();
        let first = core::mem::size_of::<BatchHeader>();
        bytes[first..first + 2].copy_from_slice(&500u16.to_le_bytes());
        let batch = decode_batch(&bytes).unwrap();
        assert!(matches!(batch.commands().next(), Some(Err(DecodeError::UnknownOpcode { opcode: 500, .. }))));
        let mut bytes = sample();
        bytes[first + 4..first + 8].copy_from_slice(&13u32.to_le_bytes());
        let batch = decode_batch(&bytes).unwrap();
        assert!(matches!(batch.commands().next(), Some(Err(DecodeError::BadCommandLength { len: 13, .. }))));
        let hdr = BatchHeader::default();
        assert_eq!(hdr.as_bytes().len(), 24);
    }

    #[test]
    fn memory_opcodes_round_trip_and_bad_access_flags_are_rejected() {
        for v in 40..=52u16 {
            let op = Opcode::from_u16(v).expect("a memory opcode");
            assert_eq!(op as u16, v);
        }
        assert_eq!(Opcode::from_u16(53), None, "nothing past the last memory opcode");
        let mut w = BatchWriter::new();
        w.begin(1);
        let a = MemAllocAsync { pool_id: U64::new(5), dptr: U64::new(0x2000), size: U64::new(64), stream: U64::new(0) };
        w.push(Opcode::MemAllocAsync, CMD_FLAG_ASYNC, PRIMARY_CTX, &a, &[]);
        let s =
            MemSetAccess { va: U64::new(0x20_0000), size: U64::new(0x20_0000), flags: U32::new(2), _pad: U32::new(0) };
        w.push(Opcode::MemSetAccess, 0, PRIMARY_CTX, &s, &[]);
        let bytes = w.finish().to_vec();
        let batch = decode_batch(&bytes).unwrap();
        let cmds: Vec<_> = batch.commands().collect();
        match cmds[0].as_ref().unwrap().cmd {
            Command::MemAllocAsync(m) => assert_eq!((m.pool_id.get(), m.dptr.get(), m.size.get()), (5, 0x2000, 64)),
            ref other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(cmds[1], Err(DecodeError::BadField { opcode: Opcode::MemSetAccess, .. })), "{cmds:?}");
    }

    #[test]
    fn zero_launch_dimension_is_rejected() {
        let mut w = BatchWriter::new();
        w.begin(1);
        let l = LaunchKernel { func_id: U64::new(1), ..Default::default() };
        w.push(Opcode::LaunchKernel, 0, 1, &l, &[]);
        let bytes = w.finish().to_vec();
        let batch = decode_batch(&bytes).unwrap();
        assert!(matches!(batch.commands().next(), Some(Err(DecodeError::BadField { .. }))));
    }

    fn launch_ex(cluster: [u32; 3], flags: u32, params: &[u8]) -> Vec<u8> {
        let l = LaunchKernelEx {
            launch: LaunchKernel {
                func_id: U64::new(3),
                stream: U64::new(0),
                grid: [U32::new(8), U32::new(2), U32::new(1)],
                block: [U32::new(128), U32::new(1), U32::new(1)],
                shared_mem: U32::new(0),
                params_len: U32::new(params.len() as u32),
            },
            extra: LaunchExtra::new(cluster, flags),
        };
        let mut w = BatchWriter::new();
        w.begin(1);
        w.push(Opcode::LaunchKernelEx, CMD_FLAG_ASYNC, PRIMARY_CTX, &l, params);
        w.finish().to_vec()
    }

    #[test]
    fn cluster_launch_round_trips() {
        let bytes = launch_ex([2, 2, 1], LAUNCH_F_COOPERATIVE, &[7; 12]);
        let batch = decode_batch(&bytes).unwrap();
        match batch.commands().next().unwrap().unwrap().cmd {
            Command::LaunchKernelEx(l, params) => {
                assert_eq!(l.extra.cluster(), [2, 2, 1]);
                assert!(l.extra.cooperative());
                assert_eq!(l.launch.grid[0].get(), 8);
                assert_eq!(params, &[7; 12]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(core::mem::size_of::<LaunchKernelEx>(), core::mem::size_of::<LaunchKernel>() + 16);
        assert_eq!(Opcode::from_u16(Opcode::LaunchKernelEx as u16), Some(Opcode::LaunchKernelEx));
    }

    #[test]
    fn malformed_cluster_launches_are_rejected() {
        fn first(bytes: &[u8]) -> Result<Decoded<'_>, DecodeError> {
            decode_batch(bytes).unwrap().commands().next().unwrap()
        }
        for (cluster, flags, what) in [
            ([0, 1, 1], 0, "a cluster dimension is zero"),
            ([1, 1, 0], 0, "a cluster dimension is zero"),
            ([4, 4, 2], 0, "the cluster holds more blocks than any GPU allows"),
            ([u32::MAX, u32::MAX, u32::MAX], 0, "the cluster holds more blocks than any GPU allows"),
            ([2, 1, 1], 1 << 5, "unknown launch flags"),
        ] {
            let err = first(&launch_ex(cluster, flags, &[])).unwrap_err();
            assert_eq!(err, DecodeError::BadField { index: 0, opcode: Opcode::LaunchKernelEx, what }, "{cluster:?}");
        }
        // Parameters past the command, and every truncation of the batch.
        let mut bytes = launch_ex([2, 1, 1], 0, &[1; 8]);
        let params_len = core::mem::size_of::<BatchHeader>() + core::mem::size_of::<CmdHeader>() + 44;
        bytes[params_len..params_len + 4].copy_from_slice(&4096u32.to_le_bytes());
        assert!(matches!(first(&bytes), Err(DecodeError::BadTrailingLength { .. })));
        let bytes = launch_ex([2, 1, 1], 0, &[1; 8]);
        for n in 0..bytes.len() {
            assert!(decode_batch(&bytes[..n]).is_err(), "prefix {n} accepted");
        }
        // A command too short for the extra.
        let mut w = BatchWriter::new();
        w.begin(1);
        w.push(Opcode::LaunchKernelEx, 0, PRIMARY_CTX, &LaunchKernel::default(), &[]);
        let bytes = w.finish().to_vec();
        assert!(matches!(first(&bytes), Err(DecodeError::BadTrailingLength { what: "fixed payload", .. })));
    }

    #[test]
    fn graph_and_occupancy_commands_decode_and_check_their_counts() {
        let mut body = Vec::new();
        crate::graph::push_node(&mut body, &GraphNodeDesc::Empty);
        crate::graph::push_node(&mut body, &GraphNodeDesc::EventWait(4));
        crate::graph::push_edges(&mut body, &[GraphEdge { from: U32::new(0), to: U32::new(1) }]);
        let g = GraphInstantiate {
            exec_id: U64::new(5),
            flags: U64::new(0),
            num_nodes: U32::new(2),
            num_edges: U32::new(1),
            body_len: U64::new(body.len() as u64),
        };
        let item = OccupancyItem { block: [U32::new(128), U32::new(1), U32::new(1)], ..Default::default() };
        let o = Occupancy {
            func_id: U64::new(3),
            kind: U32::new(OCCUPANCY_ACTIVE_BLOCKS),
            count: U32::new(2),
            ..Default::default()
        };
        let mut w = BatchWriter::new();
        w.begin(1);
        w.push(Opcode::GraphInstantiate, 0, PRIMARY_CTX, &g, &body);
        w.push(Opcode::Occupancy, 0, PRIMARY_CTX, &o, [item, item].as_bytes());
        let bytes = w.finish().to_vec();
        let batch = decode_batch(&bytes).unwrap();
        let cmds: Vec<_> = batch.commands().collect::<Result<_, _>>().unwrap();
        assert!(matches!(cmds[0].cmd, Command::GraphInstantiate(_, b) if b.num_nodes() == 2 && b.edges().len() == 1));
        assert!(matches!(cmds[1].cmd, Command::Occupancy(_, items) if items.len() == 2));

        // A count that the trailing bytes do not hold.
        let short = Occupancy { count: U32::new(3), ..o };
        let mut w = BatchWriter::new();
        w.begin(1);
        w.push(Opcode::Occupancy, 0, PRIMARY_CTX, &short, [item, item].as_bytes());
        let bytes = w.finish().to_vec();
        assert!(decode_batch(&bytes).unwrap().commands().next().unwrap().is_err());
    }
}
