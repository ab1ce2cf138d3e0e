//! Fatbin containers as nvcc's fatbinary writes them, for the tests that
//! hand the guest driver images of their own making.

/// A fatbin container of `entries` (kind: 1 PTX, 2 cubin; arch; payload).
pub fn fatbin(entries: &[(u16, u32, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for &(kind, arch, payload) in entries {
        let mut padded = payload.to_vec();
        padded.resize(payload.len().next_multiple_of(8), 0);
        // A PTX entry carries an (empty) options record, as fatbinary writes it.
        let ptx = kind == 1;
        body.extend_from_slice(&kind.to_le_bytes());
        body.extend_from_slice(&0x0101u16.to_le_bytes());
        body.extend_from_slice(&(if ptx { 80u32 } else { 64 }).to_le_bytes());
        body.extend_from_slice(&(padded.len() as u64).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes()); // compressed size
        body.extend_from_slice(&(if ptx { 64u32 } else { 0 }).to_le_bytes()); // options record
        body.extend_from_slice(&8u16.to_le_bytes()); // minor, major of the format
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&arch.to_le_bytes());
        body.extend_from_slice(&[0u8; 8]); // name
        body.extend_from_slice(&0x11u64.to_le_bytes()); // 64-bit, Linux
        body.extend_from_slice(&[0u8; 16]); // zero, uncompressed size
        if ptx {
            body.extend_from_slice(&72u32.to_le_bytes()); // options text: empty
            body.extend_from_slice(&[0u8; 12]);
        }
        body.extend(padded);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&protocol::module_image::FATBIN_MAGIC.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend(body);
    out
}
