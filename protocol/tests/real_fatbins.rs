//! The fatbin parser against the fatbins NVIDIA ships in its libraries
//! (cuBLAS, cuBLASLt, ...): every container a `__fatBinC_Wrapper_t` in
//! `.nvFatBinSegment` points at is measured as the guest driver measures
//! it, parsed, and cut for a 9.0 device, which must keep what the device
//! can load.
//!
//! Runs only when GPUVISOR_FATBIN_LIBS lists host libraries (paths joined
//! by ':'), e.g. libcublasLt.so.13 from the `nvidia-cublas` wheel;
//! otherwise it says so and passes.

use protocol::module_image::{
    fatbin_entries, fatbin_for_device, fatbin_wrapper, image_len, FatbinEntryKind, FATBIN_WRAPPER_LEN,
};
use std::collections::BTreeMap;

/// `(address, file offset, size)` of each section, by name.
fn sections(elf: &[u8]) -> BTreeMap<String, (u64, usize, usize)> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    assert_eq!(&elf[..5], b"\x7fELF\x02", "an ELF64 library");
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28) as usize, u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 24) as usize;
    (0..shnum)
        .map(|i| {
            let h = header(i);
            let name = &elf[strtab + u32_at(h)..];
            let name = String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap()]).into_owned();
            (name, (u64_at(h + 16), u64_at(h + 24) as usize, u64_at(h + 32) as usize))
        })
        .collect()
}

/// The addends of R_X86_64_RELATIVE relocations, by the address they patch:
/// in a shared library a wrapper's data pointer is one.
fn relative_relocations(elf: &[u8], secs: &BTreeMap<String, (u64, usize, usize)>) -> BTreeMap<u64, u64> {
    let Some(&(_, off, size)) = secs.get(".rela.dyn") else { return BTreeMap::new() };
    elf[off..off + size]
        .chunks_exact(24)
        .filter(|r| u64::from_le_bytes(r[8..16].try_into().unwrap()) & 0xffff_ffff == 8)
        .map(|r| (u64::from_le_bytes(r[..8].try_into().unwrap()), u64::from_le_bytes(r[16..24].try_into().unwrap())))
        .collect()
}

#[test]
fn every_fatbin_of_a_real_library_parses_and_cuts_for_sm90() {
    let Ok(libs) = std::env::var("GPUVISOR_FATBIN_LIBS") else {
        eprintln!(
            "skipping: GPUVISOR_FATBIN_LIBS names no library (e.g. libcublasLt.so.13 of the nvidia-cublas wheel)"
        );
        return;
    };
    for lib in libs.split(':').filter(|l| !l.is_empty()) {
        let elf = std::fs::read(lib).unwrap_or_else(|e| panic!("{lib}: {e}"));
        let secs = sections(&elf);
        let (fat_addr, fat_off, fat_size) = secs[".nv_fatbin"];
        let (seg_addr, seg_off, seg_size) = secs[".nvFatBinSegment"];
        let relocs = relative_relocations(&elf, &secs);
        let mut kinds: BTreeMap<(String, u32, u64, bool), usize> = BTreeMap::new();
        let (mut containers, mut without_sm90, mut failures) = (0usize, 0usize, Vec::new());
        for (i, w) in elf[seg_off..seg_off + seg_size].chunks_exact(FATBIN_WRAPPER_LEN).enumerate() {
            let wrapper = fatbin_wrapper(w).unwrap_or_else(|| panic!("{lib}: wrapper {i} has no magic"));
            let data = match wrapper.data {
                0 => relocs.get(&(seg_addr + (i * FATBIN_WRAPPER_LEN) as u64 + 8)).copied().unwrap_or(0),
                d => d,
            };
            assert!(data >= fat_addr && data < fat_addr + fat_size as u64, "{lib}: wrapper {i} points outside");
            let start = fat_off + (data - fat_addr) as usize;
            let rest = &elf[start..fat_off + fat_size];
            containers += 1;
            // As the guest driver sizes an image it only has a pointer to.
            let image = match image_len(rest) {
                Ok(n) => &rest[..n],
                Err(e) => {
                    failures.push(format!("container {i} at {data:#x}: image_len: {e}"));
                    continue;
                }
            };
            let entries = match fatbin_entries(image) {
                Ok(e) => e,
                Err(e) => {
                    failures.push(format!("container {i} at {data:#x}: {e}"));
                    continue;
                }
            };
            for e in &entries {
                let kind = match e.kind {
                    FatbinEntryKind::Ptx => "ptx".to_string(),
                    FatbinEntryKind::Cubin => "cubin".to_string(),
                    FatbinEntryKind::Other(k) => format!("kind {k}"),
                };
                *kinds.entry((kind, e.arch, e.flags, e.compressed)).or_default() += 1;
            }
            let loadable = |es: &[protocol::module_image::FatbinEntry<'_>]| {
                es.iter().any(|e| {
                    (e.kind == FatbinEntryKind::Cubin && e.arch == 90)
                        || (e.kind == FatbinEntryKind::Ptx && e.arch <= 90)
                })
            };
            match fatbin_for_device(image, 9, 0) {
                Ok(Some(cut)) => {
                    let kept = fatbin_entries(&cut).unwrap_or_else(|e| panic!("{lib}: cut of container {i}: {e}"));
                    if loadable(&entries) && !loadable(&kept) {
                        failures.push(format!("container {i} at {data:#x}: the cut lost the sm_90 entry"));
                    }
                }
                Ok(None) if loadable(&entries) => failures.push(format!("container {i}: cut to nothing")),
                Ok(None) => without_sm90 += 1,
                Err(e) => failures.push(format!("container {i}: fatbin_for_device: {e}")),
            }
        }
        eprintln!("{lib}: {containers} containers, {without_sm90} with nothing for a 9.0 device");
        for ((kind, arch, flags, compressed), n) in &kinds {
            eprintln!("  {n:6} x {kind:7} arch {arch:3} flags {flags:#09x} compressed {compressed}");
        }
        assert!(failures.is_empty(), "{lib}:\n{}", failures.join("\n"));
    }
}
