//! Builds batches on the guest side. The writer reuses one buffer, so encoding
//! an asynchronous call is a few stores into memory that is already there.

use crate::wire::*;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{Immutable, IntoBytes};

#[derive(Debug, Default)]
pub struct BatchWriter {
    buf: Vec<u8>,
    num_cmds: u32,
}

impl BatchWriter {
    pub fn new() -> Self {
        BatchWriter { buf: Vec::with_capacity(64 << 10), num_cmds: 0 }
    }

    /// Starts a new batch with sequence number `seq`, dropping what was there.
    pub fn begin(&mut self, seq: u64) {
        self.buf.clear();
        self.num_cmds = 0;
        let h = BatchHeader {
            magic: U32::new(BATCH_MAGIC),
            version: U16::new(PROTOCOL_VERSION),
            flags: U16::new(0),
            seq: U64::new(seq),
            num_cmds: U32::new(0),
            total_len: U32::new(0),
        };
        self.buf.extend_from_slice(h.as_bytes());
    }

    /// Sets the sequence number of the batch being built.
    pub fn set_seq(&mut self, seq: u64) {
        self.buf[8..16].copy_from_slice(&seq.to_le_bytes());
    }

    /// Number of commands in the batch so far.
    pub fn len(&self) -> u32 {
        self.num_cmds
    }

    pub fn is_empty(&self) -> bool {
        self.num_cmds == 0
    }

    /// Bytes the batch holds so far.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// Appends a command: header, payload, trailing bytes, padding.
    pub fn push<T: IntoBytes + Immutable + ?Sized>(
        &mut self,
        op: Opcode,
        flags: u16,
        ctx: u64,
        payload: &T,
        trailing: &[u8],
    ) {
        let body = core::mem::size_of::<CmdHeader>() + payload.as_bytes().len() + trailing.len();
        let len = pad8(body).expect("command length overflows");
        let h = CmdHeader {
            opcode: U16::new(op as u16),
            flags: U16::new(flags),
            len: U32::new(u32::try_from(len).expect("command longer than 4 GiB")),
            ctx: U64::new(ctx),
        };
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(payload.as_bytes());
        self.buf.extend_from_slice(trailing);
        self.buf.resize(self.buf.len() + (len - body), 0);
        self.num_cmds += 1;
    }

    /// Appends a command with no payload.
    pub fn push_empty(&mut self, op: Opcode, flags: u16, ctx: u64) {
        self.push(op, flags, ctx, &[0u8; 0], &[]);
    }

    /// Fills in the header's count and length and returns the batch bytes.
    pub fn finish(&mut self) -> &[u8] {
        let n = self.num_cmds.to_le_bytes();
        self.buf[16..20].copy_from_slice(&n);
        let total = u32::try_from(self.buf.len()).unwrap_or(u32::MAX).to_le_bytes();
        self.buf[20..24].copy_from_slice(&total);
        &self.buf
    }
}
