//! The answer to the CUDA runtime's integrity check (an export table the
//! runtime asks for before it trusts a driver).
//!
//! How the check works, as far as the runtime shows it: the runtime calls the
//! driver's check function with a version number and the current Unix time
//! and gets 16 bytes back. It then computes the same 16 bytes itself and
//! refuses to run when they differ. Both sides compute an HMAC (RFC 2104)
//! over MD2 (RFC 1319, with the checksum fix from its errata), keyed with
//! 16 fixed bytes both sides carry. The message is a 48-byte record (the
//! driver's version, the runtime's version argument, the process id, the low
//! 32 bits of the calling thread's `pthread_t`, the addresses of the
//! runtime-interface table, of the integrity table and of the check function
//! itself, then the Unix time), followed by one 28-byte record per device in
//! ordinal order (its UUID, then its PCI domain, bus and device numbers as
//! 32-bit integers). Everything in it is something the runtime can see for
//! itself: what `cuDriverGetVersion`, `cuDeviceGetUuid` and
//! `cuDeviceGetAttribute` report, and the table addresses it was handed, so
//! a virtual device passes as long as the driver hashes what it reports.
//! For version numbers ending in 0 or 1 the runtime expects fixed answers
//! instead.

/// MD2's byte substitution (RFC 1319, section 3.2: a permutation of 0..=255
/// built from the digits of pi).
const PI_SUBST: [u8; 256] = [
    41, 46, 67, 201, 162, 216, 124, 1, 61, 54, 84, 161, 236, 240, 6, 19, 98, 167, 5, 243, 192, 199, 115, 140, 152, 147,
    43, 217, 188, 76, 130, 202, 30, 155, 87, 60, 253, 212, 224, 22, 103, 66, 111, 24, 138, 23, 229, 18, 190, 78, 196,
    214, 218, 158, 222, 73, 160, 251, 245, 142, 187, 47, 238, 122, 169, 104, 121, 145, 21, 178, 7, 63, 148, 194, 16,
    137, 11, 34, 95, 33, 128, 127, 93, 154, 90, 144, 50, 39, 53, 62, 204, 231, 191, 247, 151, 3, 255, 25, 48, 179, 72,
    165, 181, 209, 215, 94, 146, 42, 172, 86, 170, 198, 79, 184, 56, 210, 150, 164, 125, 182, 118, 252, 107, 226, 156,
    116, 4, 241, 69, 157, 112, 89, 100, 113, 135, 32, 134, 91, 207, 101, 230, 45, 168, 2, 27, 96, 37, 173, 174, 176,
    185, 246, 28, 70, 97, 105, 52, 64, 126, 15, 85, 71, 163, 35, 221, 81, 175, 58, 195, 92, 249, 206, 186, 197, 234,
    38, 44, 83, 13, 110, 133, 40, 132, 9, 211, 223, 205, 244, 65, 129, 77, 82, 106, 220, 55, 200, 108, 193, 171, 250,
    36, 225, 123, 8, 12, 189, 177, 74, 120, 136, 149, 139, 227, 99, 232, 109, 233, 203, 213, 254, 59, 0, 29, 57, 242,
    239, 183, 14, 102, 88, 208, 228, 166, 119, 114, 248, 235, 117, 75, 10, 49, 68, 80, 180, 143, 237, 31, 26, 219, 153,
    141, 51, 159, 17, 131, 20,
];

/// MD2 works on 16-byte blocks and gives a 16-byte digest.
const BLOCK: usize = 16;

/// The HMAC key the runtime and the driver share.
const KEY: [u8; BLOCK] =
    [0x14, 0x6A, 0xDD, 0xAE, 0x53, 0xA9, 0xA7, 0x52, 0xAA, 0x08, 0x41, 0x36, 0x0B, 0xF5, 0x5A, 0x9F];

/// The answers for version numbers ending in 0 and in 1.
const FIXED_ANSWERS: [[u64; 2]; 2] =
    [[0x3341_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8], [0x1841_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8]];

/// An MD2 computation in progress.
struct Md2 {
    /// The 48-byte state: bytes 0..16 become the digest.
    x: [u8; 48],
    checksum: [u8; BLOCK],
    block: [u8; BLOCK],
    filled: usize,
}

impl Md2 {
    fn new() -> Self {
        Md2 { x: [0; 48], checksum: [0; BLOCK], block: [0; BLOCK], filled: 0 }
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.block[self.filled] = b;
            self.filled += 1;
            if self.filled == BLOCK {
                self.compress();
                self.filled = 0;
            }
        }
    }

    /// Mixes the full block into the state and the running checksum.
    fn compress(&mut self) {
        let mut last = self.checksum[BLOCK - 1];
        for j in 0..BLOCK {
            self.x[BLOCK + j] = self.block[j];
            self.x[2 * BLOCK + j] = self.block[j] ^ self.x[j];
            // RFC 1319 as corrected: the checksum byte is xored, not replaced.
            self.checksum[j] ^= PI_SUBST[(self.block[j] ^ last) as usize];
            last = self.checksum[j];
        }
        let mut t = 0u8;
        for round in 0..18u8 {
            for x in self.x.iter_mut() {
                *x ^= PI_SUBST[t as usize];
                t = *x;
            }
            t = t.wrapping_add(round);
        }
    }

    fn digest(mut self) -> [u8; BLOCK] {
        // Padding: n bytes of value n, 1 <= n <= 16; then the checksum as a
        // last block.
        let pad = (BLOCK - self.filled) as u8;
        self.update(&[pad; BLOCK][..pad as usize]);
        let checksum = self.checksum;
        self.update(&checksum);
        let mut out = [0u8; BLOCK];
        out.copy_from_slice(&self.x[..BLOCK]);
        out
    }
}

/// HMAC-MD2 of `parts` (concatenated) under a key of at most one block.
fn hmac_md2(key: &[u8], parts: &[&[u8]]) -> [u8; BLOCK] {
    let mut k = [0u8; BLOCK];
    k[..key.len().min(BLOCK)].copy_from_slice(&key[..key.len().min(BLOCK)]);
    let mut inner = Md2::new();
    inner.update(&k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let inner = inner.digest();
    let mut outer = Md2::new();
    outer.update(&k.map(|b| b ^ 0x5c));
    outer.update(&inner);
    outer.digest()
}

/// What the hash covers besides the devices.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput {
    /// What `cuDriverGetVersion` reports.
    pub driver_version: u32,
    /// The version argument the runtime passed.
    pub version: u32,
    pub pid: u32,
    /// The low 32 bits of the caller's `pthread_self()`.
    pub thread: u32,
    pub cudart_table: u64,
    pub integrity_table: u64,
    pub check_fn: u64,
    pub unix_seconds: u64,
}

/// One device as the hash sees it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceId {
    pub uuid: [u8; 16],
    pub pci_domain: i32,
    pub pci_bus: i32,
    pub pci_device: i32,
}

/// The 16 bytes the runtime expects, as the two 64-bit words it reads.
pub fn answer(input: &CheckInput, devices: &[DeviceId]) -> [u64; 2] {
    match input.version % 10 {
        0 => return FIXED_ANSWERS[0],
        1 => return FIXED_ANSWERS[1],
        _ => {}
    }
    let mut record = Vec::with_capacity(48);
    for v in [input.driver_version, input.version, input.pid, input.thread] {
        record.extend_from_slice(&v.to_le_bytes());
    }
    for v in [input.cudart_table, input.integrity_table, input.check_fn, input.unix_seconds] {
        record.extend_from_slice(&v.to_le_bytes());
    }
    let devs: Vec<u8> = devices
        .iter()
        .flat_map(|d| {
            let mut r = d.uuid.to_vec();
            for v in [d.pci_domain, d.pci_bus, d.pci_device] {
                r.extend_from_slice(&v.to_le_bytes());
            }
            r
        })
        .collect();
    let h = hmac_md2(&KEY, &[&record, &devs]);
    let (lo, hi) = h.split_at(8);
    [u64::from_le_bytes(lo.try_into().unwrap_or_default()), u64::from_le_bytes(hi.try_into().unwrap_or_default())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md2_hex(s: &[u8]) -> String {
        let mut m = Md2::new();
        m.update(s);
        m.digest().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md2_matches_the_rfc_1319_test_suite() {
        assert_eq!(md2_hex(b""), "8350e5a3e24c153df2275c9f80692773");
        assert_eq!(md2_hex(b"a"), "32ec01ec4a6dac72c0ab96fb34c0b5d1");
        assert_eq!(md2_hex(b"abc"), "da853b0d3f88d99b30283a69e6ded6bb");
        assert_eq!(md2_hex(b"message digest"), "ab4f496bfb2a530b219ff33031fe06b0");
        assert_eq!(md2_hex(b"abcdefghijklmnopqrstuvwxyz"), "4e8ddff3650292ab5a4108c3aa47940b");
        assert_eq!(
            md2_hex(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
            "da33def2a42df13975352846c30338cd"
        );
        assert_eq!(md2_hex(&b"1234567890".repeat(8)), "d5976f79d83d3a0dc9806c3c66f3efd8");
    }

    #[test]
    fn md2_is_the_same_whichever_way_the_input_is_split() {
        let msg = b"the quick brown fox jumps over the lazy dog, twice over";
        let mut m = Md2::new();
        for chunk in msg.chunks(7) {
            m.update(chunk);
        }
        let mut whole = Md2::new();
        whole.update(msg);
        assert_eq!(m.digest(), whole.digest());
    }

    // The vectors below were derived with a separate Python implementation
    // of RFC 1319 (checked against its test suite) and RFC 2104.

    #[test]
    fn hmac_md2_vectors() {
        let hex = |b: [u8; 16]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(hmac_md2(&[0x0b; 16], &[b"Hi There"])), "b524be0196e491ed44823746cd8923af");
        assert_eq!(hex(hmac_md2(b"Jefe", &[b"what do ya ", b"want for nothing?"])), "292f9d34f9e311846de86c495d7adfa2");
    }

    fn sample() -> CheckInput {
        CheckInput {
            driver_version: 12080,
            version: 12082,
            pid: 0x002f_a423,
            thread: 0xf79c_1000,
            cudart_table: 0x7fff_f695_8240,
            integrity_table: 0x7fff_f695_8220,
            check_fn: 0x7fff_f2aa_f4a0,
            unix_seconds: 0x682b_9cee,
        }
    }

    fn device() -> DeviceId {
        let mut uuid = [0u8; 16];
        for (i, w) in [0x8a2b_fe9au32, 0x382d_25ac, 0xc5ae_37ea, 0x5f32_716d].iter().enumerate() {
            uuid[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        DeviceId { uuid, pci_domain: 0, pci_bus: 2, pci_device: 0 }
    }

    #[test]
    fn answer_covers_the_record_and_every_device() {
        assert_eq!(answer(&sample(), &[device()]), [0xf7ce_26b0_71a1_4844, 0xdd02_1b05_393e_8c6c]);
        let second =
            DeviceId { uuid: core::array::from_fn(|i| i as u8), pci_domain: 1, pci_bus: 0x3b, pci_device: 0x1f };
        assert_eq!(answer(&sample(), &[device(), second]), [0xabf2_c686_8000_ee57, 0x7765_eacf_9639_a46c]);
        assert_eq!(answer(&sample(), &[]), [0xd22d_fa4f_5eef_7907, 0xfa7b_90d1_0375_5207]);
    }

    #[test]
    fn any_change_in_what_the_runtime_sees_changes_the_answer() {
        let base = answer(&sample(), &[device()]);
        let mut moved = device();
        moved.pci_bus = 3;
        assert_ne!(answer(&sample(), &[moved]), base);
        let later = CheckInput { unix_seconds: sample().unix_seconds + 1, ..sample() };
        assert_ne!(answer(&later, &[device()]), base);
    }

    #[test]
    fn versions_ending_in_0_or_1_get_fixed_answers() {
        let v0 = CheckInput { version: 13000, ..sample() };
        let v1 = CheckInput { version: 12081, ..sample() };
        assert_eq!(answer(&v0, &[device()]), FIXED_ANSWERS[0]);
        assert_eq!(answer(&v1, &[]), FIXED_ANSWERS[1]);
    }
}
