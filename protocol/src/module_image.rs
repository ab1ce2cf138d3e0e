//! Reads CUDA module images (PTX text, ELF cubins, fatbins) from untrusted
//! guest bytes: what kind an image is, how many bytes it occupies, and each
//! kernel's parameter layout, so that the guest driver can pack
//! `cuLaunchKernel`'s `kernelParams` into bytes without a round trip.
//!
//! Nothing here trusts the input. Every offset, length and count is checked,
//! nothing panics, and no allocation is sized by a field of the image: what is
//! allocated grows with the bytes actually present. Every failure is an
//! [`ImageError`]; a caller that gets one asks the host instead
//! (`cuFuncGetParamInfo`), which is also the path for compressed fatbin
//! entries, which this module never decompresses.

#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use core::cmp::Reverse;
use core::ops::Range;

use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// First bytes of an ELF file; a cubin is an ELF64 file.
pub const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// `e_machine` of a cubin.
pub const EM_CUDA: u16 = 190;
/// First word of a fatbin container: the bytes a `__fatBinC_Wrapper_t`
/// points at, and what `cuModuleLoadData`/`cuModuleLoadFatBinary` accept.
pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;
/// First word of a `__fatBinC_Wrapper_t`, the struct nvcc puts in a host
/// binary's `.nvFatBinSegment`. It holds the *address* of a fatbin, not a
/// fatbin; see [`fatbin_wrapper`].
pub const FATBIN_WRAPPER_MAGIC: u32 = 0x4662_43B1;
/// Size of a `__fatBinC_Wrapper_t`: magic, version, data pointer, and a
/// pointer to the file name (or prelinked fatbins).
pub const FATBIN_WRAPPER_LEN: usize = 24;
/// Largest image [`image_len`] accepts. A module image larger than this is
/// far more likely a corrupt header than real code, and the guest would
/// otherwise read that many bytes from a raw pointer.
pub const MAX_IMAGE_LEN: u64 = 1 << 31;
/// CUDA's limit on one kernel's parameter buffer (since CUDA 12.1, Volta and
/// later; 4 KiB before). Layouts reaching past it are rejected.
pub const MAX_KERNEL_PARAM_BYTES: u32 = 32764;
/// In a fatbin, [`kernels`] reads the cubin of the highest SM arch at or
/// below this one (sm_90, the H100), else the lowest above it. Parameter
/// layout is part of the ABI and does not depend on the arch; the choice only
/// makes the answer deterministic.
pub const PREFERRED_SM: u32 = 90;

/// Every way an image can fail to parse. The caller's answer to nearly all of
/// them is the same (ask the host), so the variants say what went wrong for
/// logs and tests. Two steer the caller: [`ImageError::Truncated`], with
/// which [`image_len`] asks for more bytes, and [`ImageError::FatbinWrapper`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// No ELF or fatbin magic, and no PTX directive in the text.
    #[error("not a PTX, cubin or fatbin image")]
    UnknownFormat,
    /// The bytes end before something the image declares: at least `need`
    /// bytes (counted from the start of the slice parsed) are required.
    #[error("image truncated: {need} bytes needed, {have} present")]
    Truncated { need: u64, have: usize },
    /// An offset plus a length does not fit in 64 bits.
    #[error("{0}: offset plus length overflows")]
    Overflow(&'static str),
    /// The image declares a size above [`MAX_IMAGE_LEN`].
    #[error("image declares {len} bytes, more than the limit of {}", MAX_IMAGE_LEN)]
    TooLarge { len: u64 },
    /// The ELF header or section table is not that of a cubin, or is
    /// inconsistent.
    #[error("bad cubin: {0}")]
    BadElf(&'static str),
    /// A kernel's `.nv.info.<name>` section is malformed.
    #[error("bad .nv.info section: {0}")]
    BadNvInfo(&'static str),
    /// The fatbin container or one of its entries is malformed.
    #[error("bad fatbin: {0}")]
    BadFatbin(&'static str),
    /// PTX this parser does not understand; `offset` counts bytes from the
    /// start of the PTX text.
    #[error("PTX not understood at byte {offset}: {reason}")]
    Ptx { offset: usize, reason: &'static str },
    /// Parameter records that do not describe a layout (ordinal gaps,
    /// duplicates, a parameter past the buffer or past CUDA's limit).
    #[error("bad kernel parameter layout: {0}")]
    BadParams(&'static str),
    /// A kernel name is not UTF-8.
    #[error("a kernel name is not UTF-8")]
    BadName,
    /// A fatbin whose every cubin and PTX entry is compressed (or that has
    /// none): only the host can read it.
    #[error("fatbin has no uncompressed cubin or PTX entry")]
    NoReadableEntry,
    /// The bytes are a `__fatBinC_Wrapper_t`; the image is at the address it
    /// holds ([`fatbin_wrapper`]).
    #[error("a __fatBinC_Wrapper_t, not an image: read the fatbin at its data pointer")]
    FatbinWrapper,
}

/// The three kinds of image `cuModuleLoadData` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// NUL-terminated PTX text.
    Ptx,
    /// An ELF64 cubin.
    Cubin,
    /// A fatbin container (magic [`FATBIN_MAGIC`]).
    Fatbin,
}

/// One kernel parameter: where it sits in the packed parameter buffer and how
/// many bytes it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamInfo {
    pub offset: u32,
    pub size: u32,
}

/// One kernel (entry point) of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    pub name: String,
    /// In ordinal order: `params[i]` describes `kernelParams[i]`.
    pub params: Vec<ParamInfo>,
}

impl KernelInfo {
    /// Bytes of the packed parameter buffer: the end of the last parameter.
    /// Never above [`MAX_KERNEL_PARAM_BYTES`].
    pub fn param_buffer_size(&self) -> u32 {
        self.params.iter().map(|p| p.offset.saturating_add(p.size)).max().unwrap_or(0)
    }
}

/// What a fatbin entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatbinEntryKind {
    /// Entry kind 1: PTX text (NUL-padded).
    Ptx,
    /// Entry kind 2: an ELF cubin.
    Cubin,
    /// Any other kind (LTO IR, the sm_100 family's ELF variants, ...), with
    /// its raw value.
    Other(u16),
}

/// One entry of a fatbin container, as [`fatbin_entries`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatbinEntry<'a> {
    pub kind: FatbinEntryKind,
    /// SM arch, e.g. 90 for sm_90 (a cubin) or compute_90 (PTX).
    pub arch: u32,
    /// The payload is compressed (LZ4 or zstd); this module does not read it.
    pub compressed: bool,
    /// The entry's raw flags word.
    pub flags: u64,
    /// Where the payload lies in the slice given to [`fatbin_entries`]
    /// (padding included).
    pub payload_range: Range<usize>,
    /// The payload bytes, `&image[payload_range]`.
    pub payload: &'a [u8],
}

/// Which entries of a fatbin a device of compute capability `major`.`minor`
/// can load (see [`fatbin_for_device`]).
fn device_keeps(entries: &[FatbinEntry<'_>], major: u32, minor: u32) -> impl Fn(&FatbinEntry<'_>) -> bool {
    let device = major.saturating_mul(10).saturating_add(minor);
    let best_ptx = entries.iter().filter(|e| e.kind == FatbinEntryKind::Ptx && e.arch <= device).map(|e| e.arch).max();
    move |e: &FatbinEntry<'_>| match e.kind {
        FatbinEntryKind::Cubin => e.arch / 10 == major && e.arch % 10 <= minor,
        FatbinEntryKind::Ptx => Some(e.arch) == best_ptx,
        FatbinEntryKind::Other(_) => false,
    }
}

/// Whether a device of compute capability `major`.`minor` can load any
/// entry of the fatbin container `image` (the test of [`fatbin_for_device`],
/// without the copy).
pub fn fatbin_loads_on(image: &[u8], major: u32, minor: u32) -> Result<bool, ImageError> {
    let entries = fatbin_entries(image)?;
    let keep = device_keeps(&entries, major, minor);
    Ok(entries.iter().any(keep))
}

/// A copy of the fatbin container `image` with only the entries a device of
/// compute capability `major`.`minor` can load: cubins of its major version
/// and a minor at or below its own (the driver's binary compatibility), and
/// the PTX of the highest arch at or below the device's (for the driver to
/// compile when no cubin fits). Frameworks build for many GPU generations;
/// their images shrink by as many times. Entries are copied byte for byte,
/// headers included; `None` when nothing would be left.
pub fn fatbin_for_device(image: &[u8], major: u32, minor: u32) -> Result<Option<Vec<u8>>, ImageError> {
    let entries = fatbin_entries(image)?;
    let (start, _) = fatbin_container(image)?;
    let keep = device_keeps(&entries, major, minor);
    let mut body = Vec::new();
    let mut pos = to_usize(start)?;
    for e in &entries {
        // An entry's header runs from where the previous payload ended.
        let header_start = pos;
        pos = e.payload_range.end;
        if keep(e) {
            body.extend_from_slice(image.get(header_start..e.payload_range.end).ok_or(ImageError::Overflow("fatbin"))?);
        }
    }
    if body.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend(body);
    Ok(Some(out))
}

/// What a `__fatBinC_Wrapper_t` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatbinWrapper {
    pub version: u32,
    /// Guest address of the fatbin container.
    pub data: u64,
}

/// The kind of `image`, from its first bytes: ELF magic is a cubin, fatbin
/// magic a fatbin, and text (up to the first NUL) that holds `.version`,
/// `.target` or `.entry` is PTX. A `__fatBinC_Wrapper_t` is not an image and
/// gives `None`; see [`fatbin_wrapper`].
pub fn detect(image: &[u8]) -> Option<ImageKind> {
    if image.starts_with(&ELF_MAGIC) {
        return Some(ImageKind::Cubin);
    }
    match first_word(image) {
        Some(FATBIN_MAGIC) => Some(ImageKind::Fatbin),
        Some(FATBIN_WRAPPER_MAGIC) => None,
        _ => looks_like_ptx(text_of(image)).then_some(ImageKind::Ptx),
    }
}

/// How many bytes the image starting at `image[0]` occupies, for
/// `cuModuleLoadData`, which gets only a pointer.
///
/// - ELF (magic): the furthest end of the ELF header, the program and
///   section header tables, every section's bytes and every segment's file
///   bytes. Only an EM_CUDA ELF64 little-endian file is accepted.
/// - Fatbin (magic): the container header's `header_size + fat_size`.
/// - Anything else is text, as the driver treats it: up to and including the
///   first NUL.
///
/// `Ok(n)` may exceed `image.len()`: the headers say the image is `n` bytes
/// and the rest has not been read yet. `Err(ImageError::Truncated { need, ..
/// })` means "call again with at least `need` bytes". So a guest holding only
/// a pointer reads 64 bytes, calls this, reads what `need` asks and calls
/// again until it gets `Ok` (at most three calls for an ELF; for text, a
/// `strlen` is quicker). Results never exceed [`MAX_IMAGE_LEN`]. A
/// `__fatBinC_Wrapper_t` gives [`ImageError::FatbinWrapper`].
pub fn image_len(image: &[u8]) -> Result<usize, ImageError> {
    // No magic holds a NUL in its first four bytes, so a NUL there is text.
    let head = image.get(..4).unwrap_or(image);
    if let Some(nul) = head.iter().position(|&b| b == 0) {
        return Ok(nul.saturating_add(1));
    }
    if image.len() < 4 {
        return Err(truncated(4, image));
    }
    if image.starts_with(&ELF_MAGIC) {
        return elf_len(image);
    }
    match first_word(image) {
        Some(FATBIN_MAGIC) => {
            let (_, end) = fatbin_container(image)?;
            usize::try_from(end).map_err(|_| ImageError::TooLarge { len: end })
        }
        Some(FATBIN_WRAPPER_MAGIC) => Err(ImageError::FatbinWrapper),
        _ => match image.iter().position(|&b| b == 0) {
            Some(nul) => {
                let len = nul.saturating_add(1);
                let len64 = u64::try_from(len).unwrap_or(u64::MAX);
                if len64 > MAX_IMAGE_LEN {
                    return Err(ImageError::TooLarge { len: len64 });
                }
                Ok(len)
            }
            None => Err(truncated(u64::try_from(image.len()).unwrap_or(u64::MAX).saturating_add(1), image)),
        },
    }
}

/// Every kernel of the image with its parameter layout, sorted by name.
///
/// PTX: the `.entry` directives (`.func`s are not kernels). Cubin: see
/// below. Fatbin: the kernels of one entry, an uncompressed cubin (the
/// highest arch at or below [`PREFERRED_SM`], else the lowest above), else
/// uncompressed PTX, else [`ImageError::NoReadableEntry`]; if that entry does
/// not parse, its error (no other entry is tried, so that [`kernel`] answers
/// from the same entry).
///
/// # Cubin
/// A name is a kernel if the symbol table has it as an `STT_FUNC` symbol
/// marked `STO_CUDA_ENTRY` (0x10 in `st_other`), or, where the symbol table
/// says nothing about it (no symbol of that name, or no symbol marked as an
/// entry at all), if the image has a `.nv.info.<name>` or `.text.<name>`
/// section. A kernel without `.nv.info.<name>` has no parameters.
pub fn kernels(image: &[u8]) -> Result<Vec<KernelInfo>, ImageError> {
    collect(image, None)
}

/// The kernel `name` of the image, `Ok(None)` if the image has no such
/// kernel. Parses only what that kernel needs, so a part of the image this
/// module does not understand elsewhere does not stop it.
pub fn kernel(image: &[u8], name: &str) -> Result<Option<KernelInfo>, ImageError> {
    Ok(collect(image, Some(name))?.into_iter().next())
}

/// The entries of a fatbin container, in file order.
///
/// Container header (16 bytes): `u32 magic` ([`FATBIN_MAGIC`]), `u16
/// version` (1), `u16 header_size` (16), `u64 fat_size` (bytes of entries
/// after the header). Each entry is a header of at least 64 bytes followed by
/// its payload: `u16 kind` (1 PTX, 2 cubin), `u16 version` (0x0101), `u32
/// header_size` (64, or 80/112 on sm_100 and later), `u64 payload_size`
/// (padded to 8), `u32 compressed_size`, `u32 options_offset` (of the
/// options record; every PTX entry has one), `u16 minor, u16
/// major`, `u32 arch`, `u32 name_offset, u32 name_len`, `u64 flags`, `u64`
/// (zero), `u64 uncompressed_size`. The next entry starts right after the
/// payload. An entry is compressed if its flags have 0x2000 (LZ4, CUDA 11)
/// or 0x8000 (zstd, CUDA 12.8 and later) set, or its uncompressed size is
/// not zero.
pub fn fatbin_entries(image: &[u8]) -> Result<Vec<FatbinEntry<'_>>, ImageError> {
    let (start, end) = fatbin_container(image)?;
    let body = sub(image, 0, end)?;
    let mut entries = Vec::new();
    let mut pos = start;
    while pos < end {
        let header: FatbinEntryHeader =
            read_at(body, pos).ok_or(ImageError::BadFatbin("entry header runs past the container"))?;
        let header_size = u64::from(header.header_size.get());
        if header_size < FATBIN_ENTRY_HEADER_LEN {
            return Err(ImageError::BadFatbin("entry header is shorter than 64 bytes"));
        }
        let header_bytes = sub(body, pos, header_size)?;
        check_options_record(header_bytes, header.kind.get(), header.options_offset.get())?;
        let payload_start = pos.checked_add(header_size).ok_or(ImageError::Overflow("fatbin entry"))?;
        let payload_end =
            payload_start.checked_add(header.payload_size.get()).ok_or(ImageError::Overflow("fatbin entry"))?;
        if payload_end > end {
            return Err(ImageError::BadFatbin("entry payload runs past the container"));
        }
        let payload = sub(body, payload_start, header.payload_size.get())?;
        // Both ends lie inside `body`, so they fit in usize.
        let range = to_usize(payload_start)?..to_usize(payload_end)?;
        let flags = header.flags.get();
        entries.push(FatbinEntry {
            kind: match header.kind.get() {
                1 => FatbinEntryKind::Ptx,
                2 => FatbinEntryKind::Cubin,
                other => FatbinEntryKind::Other(other),
            },
            arch: header.arch.get(),
            compressed: flags & FATBIN_FLAGS_COMPRESSED != 0 || header.uncompressed_size.get() != 0,
            flags,
            payload_range: range,
            payload,
        });
        pos = payload_end;
    }
    Ok(entries)
}

/// Checks an entry's options record (the ptxas options it was built with):
/// `options_offset`, counted from the entry's start, is where an 8-byte
/// record `u32 text_offset, u32 text_len` lies, and `text_offset` where
/// the options' `text_len` bytes do (NUL-padded text for PTX, a binary
/// record in sm_100 cubins); both inside the entry header, the record after
/// the fixed 64 bytes. NVIDIA's
/// driver follows these offsets without checking them, and reads the record
/// of every PTX entry: one that has none (offset 0) makes it read the entry
/// header itself as the record and crash. fatbinary (CUDA 13) writes an
/// 80-byte PTX entry header, the record at 64 and the empty text at 72;
/// cubin entries have no record (offset 0) or one as PTX entries do.
fn check_options_record(header: &[u8], kind: u16, options_offset: u32) -> Result<(), ImageError> {
    if options_offset == 0 {
        return if kind == 1 { Err(ImageError::BadFatbin("PTX entry has no options record")) } else { Ok(()) };
    }
    let bad = ImageError::BadFatbin("options record lies outside the entry header");
    let at = u64::from(options_offset);
    if at < FATBIN_ENTRY_HEADER_LEN || at.saturating_add(FATBIN_OPTIONS_RECORD_LEN) > header.len() as u64 {
        return Err(bad);
    }
    let (text_offset, text_len): (U32, U32) = read_at(header, at).ok_or(bad.clone())?;
    if text_len.get() == 0 {
        // Nothing to read; CUDA 12 writes `{0, 0}` for no options.
        return Ok(());
    }
    let text_at = u64::from(text_offset.get());
    let text_end = text_at.checked_add(u64::from(text_len.get())).ok_or(ImageError::Overflow("fatbin options"))?;
    if text_at < FATBIN_ENTRY_HEADER_LEN || text_end > header.len() as u64 {
        return Err(bad);
    }
    Ok(())
}

/// Reads a `__fatBinC_Wrapper_t` (24 bytes: `u32 magic`
/// ([`FATBIN_WRAPPER_MAGIC`]), `u32 version`, `u64 data`, `u64
/// filename_or_fatbins`). The guest follows `data` to the fatbin itself.
pub fn fatbin_wrapper(bytes: &[u8]) -> Option<FatbinWrapper> {
    let raw: FatbinWrapperRaw = read_at(bytes, 0)?;
    (raw.magic.get() == FATBIN_WRAPPER_MAGIC)
        .then(|| FatbinWrapper { version: raw.version.get(), data: raw.data.get() })
}

/// Runs every public parser on `data`, for a fuzz target. Besides not
/// panicking, the parsers must agree with one another; it panics (an
/// `assert!`) only where they do not, which is a bug.
pub fn fuzz_one(data: &[u8]) {
    let kind = detect(data);
    if let Ok(n) = image_len(data) {
        if let Some(prefix) = data.get(..n) {
            assert_eq!(image_len(prefix), Ok(n), "image_len changed on its own prefix");
            if n >= 4 {
                assert_eq!(detect(prefix), kind, "detect changed on the image's own bytes");
            }
        }
    }
    if let Ok(all) = kernels(data) {
        for (i, k) in all.iter().enumerate().take(16) {
            assert!(k.param_buffer_size() <= MAX_KERNEL_PARAM_BYTES);
            assert_eq!(kernel(data, &k.name).ok().flatten().as_ref(), Some(k), "kernel() disagrees with kernels()");
            if let Some(next) = all.get(i.saturating_add(1)) {
                assert!(k.name < next.name, "kernels() not sorted and unique");
            }
        }
    }
    let _ = kernel(data, "k");
    let _ = fatbin_entries(data);
    let _ = fatbin_wrapper(data);
    // A cut fatbin is a fatbin whose entries are some of the original's.
    if let Ok(Some(cut)) = fatbin_for_device(data, 9, 0) {
        let before = fatbin_entries(data).unwrap_or_default();
        let after = fatbin_entries(&cut);
        assert!(after.is_ok(), "a cut fatbin does not parse: {after:?}");
        let after = after.unwrap_or_default();
        assert!(after.len() <= before.len());
        assert!(after.iter().all(|e| before.iter().any(|b| b.payload == e.payload && b.arch == e.arch)));
    }
}

// ---------------------------------------------------------------------------
// Shared helpers

fn collect(image: &[u8], only: Option<&str>) -> Result<Vec<KernelInfo>, ImageError> {
    if image.starts_with(&ELF_MAGIC) {
        return cubin_kernels(image, only);
    }
    match first_word(image) {
        Some(FATBIN_MAGIC) => fatbin_kernels(image, only),
        Some(FATBIN_WRAPPER_MAGIC) => Err(ImageError::FatbinWrapper),
        _ => {
            let text = text_of(image);
            if !looks_like_ptx(text) {
                return Err(ImageError::UnknownFormat);
            }
            ptx_kernels(text, only)
        }
    }
}

fn first_word(image: &[u8]) -> Option<u32> {
    match image {
        [a, b, c, d, ..] => Some(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The text of a PTX image: up to its first NUL, or all of it.
fn text_of(image: &[u8]) -> &[u8] {
    match image.iter().position(|&b| b == 0) {
        Some(nul) => image.get(..nul).unwrap_or(image),
        None => image,
    }
}

fn looks_like_ptx(text: &[u8]) -> bool {
    [&b".version"[..], b".target", b".entry"].iter().any(|k| text.windows(k.len()).any(|w| w == *k))
}

fn truncated(need: u64, have: &[u8]) -> ImageError {
    ImageError::Truncated { need, have: have.len() }
}

fn to_usize(v: u64) -> Result<usize, ImageError> {
    usize::try_from(v).map_err(|_| ImageError::TooLarge { len: v })
}

/// `data[off..off + len]`, checked.
fn sub(data: &[u8], off: u64, len: u64) -> Result<&[u8], ImageError> {
    let end = off.checked_add(len).ok_or(ImageError::Overflow("range"))?;
    let range = usize::try_from(off).ok().zip(usize::try_from(end).ok());
    range.and_then(|(s, e)| data.get(s..e)).ok_or_else(|| truncated(end, data))
}

/// A copy of the `T` at `data[off..]`, if it fits.
fn read_at<T: FromBytes>(data: &[u8], off: u64) -> Option<T> {
    let rest = data.get(usize::try_from(off).ok()?..)?;
    T::read_from_prefix(rest).ok().map(|(value, _)| value)
}

/// The NUL-terminated string at `table[off..]`, without its NUL.
fn cstr_at(table: &[u8], off: u32) -> Option<&[u8]> {
    let rest = table.get(usize::try_from(off).ok()?..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    rest.get(..len)
}

fn name_string(name: &[u8]) -> Result<String, ImageError> {
    core::str::from_utf8(name).map(str::to_owned).map_err(|_| ImageError::BadName)
}

/// Sorts by name and keeps the first of each name.
fn sort_dedup(kernels: &mut Vec<KernelInfo>) {
    kernels.sort_by(|a, b| a.name.cmp(&b.name));
    kernels.dedup_by(|later, first| later.name == first.name);
}

// ---------------------------------------------------------------------------
// ELF (cubin)

const ELF_HEADER_LEN: u64 = 64;
const ELF_SHDR_LEN: u64 = 64;
const ELF_PHDR_LEN: u64 = 56;
const ELF_SYM_LEN: u64 = 24;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
const STT_FUNC: u8 = 2;
/// `st_other` bit NVIDIA's toolchain sets on `__global__` functions.
const STO_CUDA_ENTRY: u8 = 0x10;

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct Elf64Header {
    ident: [u8; 16],
    _e_type: U16,
    machine: U16,
    _version: U32,
    _entry: U64,
    phoff: U64,
    shoff: U64,
    _flags: U32,
    _ehsize: U16,
    phentsize: U16,
    phnum: U16,
    shentsize: U16,
    shnum: U16,
    shstrndx: U16,
}

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct Elf64SectionHeader {
    name: U32,
    sh_type: U32,
    _flags: U64,
    _addr: U64,
    offset: U64,
    size: U64,
    link: U32,
    _info: U32,
    _addralign: U64,
    entsize: U64,
}

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct Elf64ProgramHeader {
    _p_type: U32,
    _flags: U32,
    offset: U64,
    _vaddr: U64,
    _paddr: U64,
    filesz: U64,
    _memsz: U64,
    _align: U64,
}

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct Elf64Symbol {
    name: U32,
    info: u8,
    other: u8,
    _shndx: U16,
    _value: U64,
    _size: U64,
}

/// Checks the ELF header of a cubin.
fn elf_header(data: &[u8]) -> Result<Elf64Header, ImageError> {
    let header: Elf64Header = read_at(data, 0).ok_or_else(|| truncated(ELF_HEADER_LEN, data))?;
    let [m0, m1, m2, m3, class, endian, ..] = header.ident;
    if [m0, m1, m2, m3] != ELF_MAGIC {
        return Err(ImageError::BadElf("no ELF magic"));
    }
    if class != ELFCLASS64 || endian != ELFDATA2LSB {
        return Err(ImageError::BadElf("not a 64-bit little-endian ELF"));
    }
    if header.machine.get() != EM_CUDA {
        return Err(ImageError::BadElf("e_machine is not EM_CUDA"));
    }
    if header.shnum.get() > 0 && u64::from(header.shentsize.get()) != ELF_SHDR_LEN {
        return Err(ImageError::BadElf("e_shentsize is not 64"));
    }
    if header.phnum.get() > 0 && u64::from(header.phentsize.get()) != ELF_PHDR_LEN {
        return Err(ImageError::BadElf("e_phentsize is not 56"));
    }
    if header.shnum.get() == 0 && header.shoff.get() != 0 {
        return Err(ImageError::BadElf("extended section numbering is not supported"));
    }
    elf_table(header.shoff.get(), header.shnum.get(), ELF_SHDR_LEN)?;
    elf_table(header.phoff.get(), header.phnum.get(), ELF_PHDR_LEN)?;
    Ok(header)
}

/// `(offset, bytes)` of a header table, `None` if it has no entries.
fn elf_table(off: u64, num: u16, entry_len: u64) -> Result<Option<(u64, u64)>, ImageError> {
    if num == 0 {
        return Ok(None);
    }
    // At most 65535 * 64 bytes: cannot overflow.
    let len = u64::from(num).saturating_mul(entry_len);
    off.checked_add(len).ok_or(ImageError::Overflow("ELF header table"))?;
    Ok(Some((off, len)))
}

fn elf_len(data: &[u8]) -> Result<usize, ImageError> {
    let header = elf_header(data)?;
    let sections = elf_table(header.shoff.get(), header.shnum.get(), ELF_SHDR_LEN)?;
    let segments = elf_table(header.phoff.get(), header.phnum.get(), ELF_PHDR_LEN)?;
    // Both tables must be at hand before the extents they list can be read.
    let mut end = ELF_HEADER_LEN;
    for (off, len) in sections.iter().chain(segments.iter()) {
        end = end.max(off.saturating_add(*len));
    }
    if end > MAX_IMAGE_LEN {
        return Err(ImageError::TooLarge { len: end });
    }
    if (data.len() as u64) < end {
        return Err(truncated(end, data));
    }
    if let Some((off, len)) = sections {
        let table = sub(data, off, len)?;
        for raw in table.chunks_exact(64) {
            let Ok(sh) = Elf64SectionHeader::read_from_bytes(raw) else {
                continue;
            };
            if sh.sh_type.get() != SHT_NOBITS {
                let e = sh.offset.get().checked_add(sh.size.get()).ok_or(ImageError::Overflow("ELF section"))?;
                end = end.max(e);
            }
        }
    }
    if let Some((off, len)) = segments {
        let table = sub(data, off, len)?;
        for raw in table.chunks_exact(56) {
            let Ok(ph) = Elf64ProgramHeader::read_from_bytes(raw) else {
                continue;
            };
            let e = ph.offset.get().checked_add(ph.filesz.get()).ok_or(ImageError::Overflow("ELF segment"))?;
            end = end.max(e);
        }
    }
    if end > MAX_IMAGE_LEN {
        return Err(ImageError::TooLarge { len: end });
    }
    to_usize(end)
}

/// A cubin whose header and section table have been checked.
struct Elf<'a> {
    data: &'a [u8],
    section_table: &'a [u8],
    shstrtab: &'a [u8],
}

impl<'a> Elf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, ImageError> {
        let header = elf_header(data)?;
        let Some((off, len)) = elf_table(header.shoff.get(), header.shnum.get(), ELF_SHDR_LEN)? else {
            return Ok(Elf { data, section_table: &[], shstrtab: &[] });
        };
        let mut elf = Elf { data, section_table: sub(data, off, len)?, shstrtab: &[] };
        // A section past the bytes is a truncated or corrupt image, even
        // where the section itself is not needed here.
        for sh in elf.sections() {
            elf.section_data(&sh)?;
        }
        let strndx = usize::from(header.shstrndx.get());
        let shstr = elf.section(strndx).ok_or(ImageError::BadElf("e_shstrndx is out of range"))?;
        elf.shstrtab = elf.section_data(&shstr)?;
        Ok(elf)
    }

    fn sections(&self) -> impl Iterator<Item = Elf64SectionHeader> + 'a {
        self.section_table.chunks_exact(64).filter_map(|raw| Elf64SectionHeader::read_from_bytes(raw).ok())
    }

    fn section(&self, index: usize) -> Option<Elf64SectionHeader> {
        read_at(self.section_table, u64::try_from(index).ok()?.checked_mul(ELF_SHDR_LEN)?)
    }

    fn section_data(&self, sh: &Elf64SectionHeader) -> Result<&'a [u8], ImageError> {
        if sh.sh_type.get() == SHT_NOBITS {
            return Ok(&[]);
        }
        sub(self.data, sh.offset.get(), sh.size.get())
    }

    fn section_name(&self, sh: &Elf64SectionHeader) -> Result<&'a [u8], ImageError> {
        cstr_at(self.shstrtab, sh.name.get()).ok_or(ImageError::BadElf("section name is not in .shstrtab"))
    }
}

/// What the symbol and section tables say about one name.
#[derive(Default)]
struct NameFacts {
    /// Index of its `.nv.info.<name>` section.
    info: Option<usize>,
    text: bool,
    /// `Some(entry)` if a function symbol of that name exists.
    func: Option<bool>,
}

fn cubin_kernels(data: &[u8], only: Option<&str>) -> Result<Vec<KernelInfo>, ImageError> {
    let elf = Elf::parse(data)?;
    let wanted = |name: &[u8]| match only {
        Some(o) => !name.is_empty() && o.as_bytes() == name,
        None => !name.is_empty(),
    };
    // (name, facts) pairs; sorted and merged below, so lookups stay
    // O(log n) in cubins with thousands of kernels.
    let mut names: Vec<(&[u8], NameFacts)> = Vec::new();
    let mut any_entry = false;
    for (index, sh) in elf.sections().enumerate() {
        let name = elf.section_name(&sh)?;
        if let Some(kernel) = name.strip_prefix(b".nv.info.") {
            if wanted(kernel) {
                names.push((kernel, NameFacts { info: Some(index), ..NameFacts::default() }));
            }
        } else if let Some(func) = name.strip_prefix(b".text.") {
            if wanted(func) {
                names.push((func, NameFacts { text: true, ..NameFacts::default() }));
            }
        }
        if sh.sh_type.get() != SHT_SYMTAB {
            continue;
        }
        let entsize = sh.entsize.get();
        if entsize != 0 && entsize != ELF_SYM_LEN {
            return Err(ImageError::BadElf("symbol table entries are not 24 bytes"));
        }
        let symbols = elf.section_data(&sh)?;
        let strtab_index = usize::try_from(sh.link.get()).map_err(|_| ImageError::BadElf("bad sh_link"))?;
        let strtab_header =
            elf.section(strtab_index).ok_or(ImageError::BadElf("symbol table's string table is out of range"))?;
        let strtab = elf.section_data(&strtab_header)?;
        for raw in symbols.chunks_exact(24) {
            let Ok(sym) = Elf64Symbol::read_from_bytes(raw) else {
                continue;
            };
            if sym.info & 0xf != STT_FUNC {
                continue;
            }
            let entry = sym.other & STO_CUDA_ENTRY != 0;
            any_entry |= entry;
            let name = cstr_at(strtab, sym.name.get()).ok_or(ImageError::BadElf("symbol name is not in its table"))?;
            if wanted(name) {
                names.push((name, NameFacts { func: Some(entry), ..NameFacts::default() }));
            }
        }
    }
    names.sort_by(|a, b| a.0.cmp(b.0));
    let mut merged: Vec<(&[u8], NameFacts)> = Vec::new();
    for (name, facts) in names {
        match merged.last_mut() {
            Some((last, acc)) if *last == name => {
                acc.info = acc.info.or(facts.info);
                acc.text |= facts.text;
                acc.func = match (acc.func, facts.func) {
                    (Some(a), Some(b)) => Some(a || b),
                    (a, b) => a.or(b),
                };
            }
            _ => merged.push((name, facts)),
        }
    }
    let mut out = Vec::new();
    for (name, facts) in merged {
        // The symbol table decides where it marks entries at all; toolchains
        // that do not mark them fall back to the sections.
        let is_kernel = match facts.func {
            Some(entry) if any_entry => entry,
            _ => facts.info.is_some() || facts.text,
        };
        if !is_kernel {
            continue;
        }
        let params = match facts.info.and_then(|i| elf.section(i)) {
            Some(sh) => nv_info_params(elf.section_data(&sh)?)?,
            None => Vec::new(),
        };
        out.push(KernelInfo { name: name_string(name)?, params });
    }
    Ok(out)
}

const EIFMT_NVAL: u8 = 0x01;
const EIFMT_BVAL: u8 = 0x02;
const EIFMT_HVAL: u8 = 0x03;
const EIFMT_SVAL: u8 = 0x04;
const EIATTR_PARAM_CBANK: u8 = 0x0a;
const EIATTR_KPARAM_INFO: u8 = 0x17;
const EIATTR_CBANK_PARAM_SIZE: u8 = 0x19;
const EIATTR_KPARAM_INFO_V2: u8 = 0x45;

/// The parameter layout in a kernel's `.nv.info.<name>` section.
///
/// The section is a run of records, each starting with `u8 format, u8
/// attribute` and two more bytes: for `EIFMT_NVAL` (1) and `EIFMT_BVAL` (2)
/// they are unused or hold the byte, for `EIFMT_HVAL` (3) they are the
/// value, for `EIFMT_SVAL` (4) they are a `u16` byte count of the value that
/// follows. Every record is thus 4 bytes, plus the value for SVAL. Records
/// read here:
///
/// - `EIATTR_KPARAM_INFO` (0x17, SVAL, 12 bytes): `u32 index, u16 ordinal,
///   u16 offset, u32 word`, where in `word` bits 0..8 are the pointee's log2
///   alignment, bits 8..12 the pointee's address space, bits 12..17 the
///   constant bank (0x1f), bit 17 is set when the parameter is *not* in the
///   constant bank, and bits 18..32 are the size in bytes. This is the
///   layout cuobjdump prints field by field (`Ordinal`, `Offset`, `Size`,
///   `Pointee's logAlignment`, `Space`, `cbank`, `Parameter Space`) and the
///   one VivekPanyam/cudaparsers (`src/cubin.rs`) decodes; Cricket
///   (`cpu-elf2.c`, a bitfield of 12 unknown bits, a 6-bit cbank and a
///   14-bit size) reads the size from the same top 14 bits. Only `size =
///   word >> 18` is used: the offset comes from its own field, and the
///   pointee's alignment does not move the parameter.
/// - `EIATTR_KPARAM_INFO_V2` (0x45, SVAL, 12 bytes; ptxas emits it for
///   kernels whose parameters pass the old 4 KiB limit): `u32 index, u16
///   ordinal, u16 offset, u16 size, u16 attributes`.
/// - `EIATTR_PARAM_CBANK` (0x0a, SVAL, 8 bytes): `u32 symbol, u16 offset in
///   bank 0, u16 size` and `EIATTR_CBANK_PARAM_SIZE` (0x19, HVAL): the size
///   of the parameter buffer, to check the parameters against.
///
/// A record of any other format cannot be skipped safely, so it is an error.
fn nv_info_params(section: &[u8]) -> Result<Vec<ParamInfo>, ImageError> {
    let mut params: Vec<(u16, ParamInfo)> = Vec::new();
    let mut buffer_size: Option<u32> = None;
    let mut rest = section;
    while !rest.is_empty() {
        let [format, attribute, lo, hi, tail @ ..] = rest else {
            return Err(ImageError::BadNvInfo("record header runs past the section"));
        };
        let value16 = u16::from_le_bytes([*lo, *hi]);
        match *format {
            EIFMT_NVAL | EIFMT_BVAL => rest = tail,
            EIFMT_HVAL => {
                if *attribute == EIATTR_CBANK_PARAM_SIZE {
                    buffer_size = Some(u32::from(value16));
                }
                rest = tail;
            }
            EIFMT_SVAL => {
                let len = usize::from(value16);
                let value = tail.get(..len).ok_or(ImageError::BadNvInfo("record value runs past the section"))?;
                rest = tail.get(len..).unwrap_or(&[]);
                match *attribute {
                    EIATTR_KPARAM_INFO => {
                        let record: KparamInfo =
                            read_at(value, 0).ok_or(ImageError::BadNvInfo("KPARAM_INFO is shorter than 12 bytes"))?;
                        let size = record.word.get() >> 18;
                        params.push((record.ordinal.get(), ParamInfo { offset: u32::from(record.offset.get()), size }));
                    }
                    EIATTR_KPARAM_INFO_V2 => {
                        let record: KparamInfoV2 = read_at(value, 0)
                            .ok_or(ImageError::BadNvInfo("KPARAM_INFO_V2 is shorter than 12 bytes"))?;
                        params.push((
                            record.ordinal.get(),
                            ParamInfo { offset: u32::from(record.offset.get()), size: u32::from(record.size.get()) },
                        ));
                    }
                    EIATTR_PARAM_CBANK => {
                        let record: ParamCbank =
                            read_at(value, 0).ok_or(ImageError::BadNvInfo("PARAM_CBANK is shorter than 8 bytes"))?;
                        buffer_size = Some(u32::from(record.size.get()));
                    }
                    _ => {}
                }
            }
            _ => return Err(ImageError::BadNvInfo("unknown record format")),
        }
    }
    params.sort_by_key(|(ordinal, _)| *ordinal);
    let limit = buffer_size.unwrap_or(MAX_KERNEL_PARAM_BYTES).min(MAX_KERNEL_PARAM_BYTES);
    let mut out = Vec::new();
    for (expected, (ordinal, param)) in params.into_iter().enumerate() {
        if usize::from(ordinal) != expected {
            return Err(ImageError::BadParams("parameter ordinals are not 0, 1, 2, ..."));
        }
        let end = param.offset.checked_add(param.size).ok_or(ImageError::BadParams("parameter end overflows"))?;
        if end > limit {
            return Err(ImageError::BadParams("parameter ends past the parameter buffer"));
        }
        out.push(param);
    }
    Ok(out)
}

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct KparamInfo {
    _index: U32,
    ordinal: U16,
    offset: U16,
    word: U32,
}

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct KparamInfoV2 {
    _index: U32,
    ordinal: U16,
    offset: U16,
    size: U16,
    _attributes: U16,
}

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct ParamCbank {
    _symbol: U32,
    _offset: U16,
    size: U16,
}

// ---------------------------------------------------------------------------
// Fatbin

const FATBIN_HEADER_LEN: u64 = 16;
const FATBIN_ENTRY_HEADER_LEN: u64 = 64;
/// Bytes of an entry's options record: `u32 text_offset, u32 text_len`.
const FATBIN_OPTIONS_RECORD_LEN: u64 = 8;
/// 0x2000: LZ4-compressed (CUDA 11 onwards); 0x8000: zstd (CUDA 12.8 onwards).
const FATBIN_FLAGS_COMPRESSED: u64 = 0x2000 | 0x8000;

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct FatbinHeader {
    magic: U32,
    _version: U16,
    header_size: U16,
    fat_size: U64,
}

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct FatbinEntryHeader {
    kind: U16,
    _version: U16,
    header_size: U32,
    payload_size: U64,
    _compressed_size: U32,
    options_offset: U32,
    _minor: U16,
    _major: U16,
    arch: U32,
    _name_offset: U32,
    _name_len: U32,
    flags: U64,
    _zero: U64,
    uncompressed_size: U64,
}

#[repr(C)]
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
struct FatbinWrapperRaw {
    magic: U32,
    version: U32,
    data: U64,
    _filename_or_fatbins: U64,
}

/// `(first entry, end)` of the fatbin container at `data[0]`.
fn fatbin_container(data: &[u8]) -> Result<(u64, u64), ImageError> {
    let header: FatbinHeader = read_at(data, 0).ok_or_else(|| truncated(FATBIN_HEADER_LEN, data))?;
    match header.magic.get() {
        FATBIN_MAGIC => {}
        FATBIN_WRAPPER_MAGIC => return Err(ImageError::FatbinWrapper),
        _ => return Err(ImageError::BadFatbin("no fatbin magic")),
    }
    let start = u64::from(header.header_size.get());
    if start < FATBIN_HEADER_LEN {
        return Err(ImageError::BadFatbin("header_size is below 16"));
    }
    let end = start.checked_add(header.fat_size.get()).ok_or(ImageError::Overflow("fatbin size"))?;
    if end > MAX_IMAGE_LEN {
        return Err(ImageError::TooLarge { len: end });
    }
    Ok((start, end))
}

/// The entry [`kernels`] reads in a fatbin: an uncompressed cubin, else
/// uncompressed PTX, in each case of the highest arch at or below
/// [`PREFERRED_SM`], else of the lowest above it. There is no second choice
/// when that entry does not parse: [`kernel`] and [`kernels`] must answer from
/// the same entry, and the host can read any entry.
fn chosen_entry<'a>(entries: Vec<FatbinEntry<'a>>) -> Option<FatbinEntry<'a>> {
    entries
        .into_iter()
        .filter(|e| {
            !e.compressed
                && match e.kind {
                    FatbinEntryKind::Cubin => e.payload.starts_with(&ELF_MAGIC),
                    FatbinEntryKind::Ptx => true,
                    FatbinEntryKind::Other(_) => false,
                }
        })
        .min_by_key(|e| {
            let kind_rank = u8::from(e.kind != FatbinEntryKind::Cubin);
            let arch_rank = if e.arch <= PREFERRED_SM { (0, Reverse(e.arch), 0) } else { (1, Reverse(0), e.arch) };
            (kind_rank, arch_rank)
        })
}

fn fatbin_kernels(image: &[u8], only: Option<&str>) -> Result<Vec<KernelInfo>, ImageError> {
    let entry = chosen_entry(fatbin_entries(image)?).ok_or(ImageError::NoReadableEntry)?;
    match entry.kind {
        FatbinEntryKind::Cubin => cubin_kernels(entry.payload, only),
        _ => ptx_kernels(text_of(entry.payload), only),
    }
}

// ---------------------------------------------------------------------------
// PTX

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Token<'a> {
    /// A run of identifier characters and dots: a directive (`.param`), an
    /// identifier, an instruction (`ld.param.u64`) or a number.
    Word(&'a [u8]),
    Punct(u8),
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'%' | b'.')
}

/// PTX tokens, skipping whitespace, `//` and `/* */` comments and string
/// literals (`.file 1 "a//b.cu"` must not start a comment).
struct Lexer<'a> {
    text: &'a [u8],
    pos: usize,
    peeked: Option<(usize, Token<'a>)>,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a [u8]) -> Self {
        Lexer { text, pos: 0, peeked: None }
    }

    fn error(&self, offset: usize, reason: &'static str) -> ImageError {
        ImageError::Ptx { offset, reason }
    }

    fn rest(&self, from: usize) -> &'a [u8] {
        self.text.get(from..).unwrap_or(&[])
    }

    fn peek(&mut self) -> Result<Option<(usize, Token<'a>)>, ImageError> {
        if self.peeked.is_none() {
            self.peeked = self.scan()?;
        }
        Ok(self.peeked)
    }

    fn next(&mut self) -> Result<Option<(usize, Token<'a>)>, ImageError> {
        match self.peeked.take() {
            Some(token) => Ok(Some(token)),
            None => self.scan(),
        }
    }

    fn scan(&mut self) -> Result<Option<(usize, Token<'a>)>, ImageError> {
        loop {
            let start = self.pos;
            let rest = self.rest(start);
            let Some(&b) = rest.first() else {
                return Ok(None);
            };
            if b.is_ascii_whitespace() {
                self.pos = start.saturating_add(1);
            } else if rest.starts_with(b"//") {
                let line = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
                self.pos = start.saturating_add(line);
            } else if rest.starts_with(b"/*") {
                let body = rest.get(2..).unwrap_or(&[]);
                let close = body
                    .windows(2)
                    .position(|w| w == b"*/")
                    .ok_or_else(|| self.error(start, "unterminated /* comment"))?;
                self.pos = start.saturating_add(close).saturating_add(4);
            } else if b == b'"' {
                let mut i = 1usize;
                loop {
                    match rest.get(i) {
                        None => return Err(self.error(start, "unterminated string")),
                        Some(b'\\') => i = i.saturating_add(2),
                        Some(b'"') => break,
                        Some(_) => i = i.saturating_add(1),
                    }
                }
                self.pos = start.saturating_add(i).saturating_add(1);
            } else if is_word_byte(b) {
                let len = rest.iter().position(|&c| !is_word_byte(c)).unwrap_or(rest.len());
                self.pos = start.saturating_add(len);
                return Ok(Some((start, Token::Word(rest.get(..len).unwrap_or(rest)))));
            } else {
                self.pos = start.saturating_add(1);
                return Ok(Some((start, Token::Punct(b))));
            }
        }
    }
}

/// A PTX integer: decimal or `0x` hex, an optional `U` suffix.
fn ptx_uint(word: &[u8]) -> Option<u32> {
    let word = word.strip_suffix(b"U").unwrap_or(word);
    let (digits, radix) = match word {
        [b'0', b'x' | b'X', hex @ ..] => (hex, 16),
        _ => (word, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &d| {
        let digit = char::from(d).to_digit(radix)?;
        acc.checked_mul(radix)?.checked_add(digit)
    })
}

/// Size in bytes of a PTX parameter type, by its name without the dot.
fn ptx_type_size(name: &[u8]) -> Option<u32> {
    Some(match name {
        b"u8" | b"s8" | b"b8" => 1,
        b"u16" | b"s16" | b"b16" | b"f16" | b"bf16" => 2,
        b"u32" | b"s32" | b"b32" | b"f32" | b"f16x2" | b"bf16x2" => 4,
        b"u64" | b"s64" | b"b64" | b"f64" => 8,
        b"b128" => 16,
        // Opaque handles of the unified texture mode: 64-bit.
        b"texref" | b"samplerref" | b"surfref" => 8,
        _ => return None,
    })
}

/// One `.param` declaration: element size, explicit alignment, element count.
struct ParamDecl {
    elem: u32,
    align: Option<u32>,
    count: u32,
}

/// Parses one parameter declaration, up to (not including) the `,` or `)`
/// after it: `.param [.align A] TYPE [.ptr [SPACE] [.align P]] NAME[[N]...]`.
/// An `.align` after `.ptr` is the pointee's alignment and does not move the
/// parameter.
fn ptx_param(lx: &mut Lexer<'_>) -> Result<ParamDecl, ImageError> {
    let (mut seen_param, mut pointer, mut named) = (false, false, false);
    let (mut elem, mut align, mut count) = (None, None, 1u32);
    loop {
        let Some((at, token)) = lx.peek()? else {
            return Err(lx.error(lx.text.len(), "unterminated parameter list"));
        };
        match token {
            Token::Punct(b',' | b')') => break,
            Token::Punct(b'[') => {
                lx.next()?;
                if !named {
                    return Err(lx.error(at, "array bound before the parameter name"));
                }
                let n = match lx.next()? {
                    Some((_, Token::Word(w))) => ptx_uint(w),
                    _ => None,
                };
                let n = n.filter(|&n| n > 0).ok_or_else(|| lx.error(at, "array bound is not a positive integer"))?;
                if !matches!(lx.next()?, Some((_, Token::Punct(b']')))) {
                    return Err(lx.error(at, "expected ]"));
                }
                count = count.checked_mul(n).ok_or_else(|| lx.error(at, "array too large"))?;
            }
            Token::Word(word) if word.first() == Some(&b'.') => {
                lx.next()?;
                // `.param.u64` is the same as `.param .u64`.
                let mut parts = word.split(|&c| c == b'.').skip(1).peekable();
                while let Some(part) = parts.next() {
                    match part {
                        b"param" if !seen_param => seen_param = true,
                        b"align" => {
                            let n = match (parts.peek(), lx.next()?) {
                                (None, Some((_, Token::Word(w)))) => ptx_uint(w),
                                _ => None,
                            };
                            let n = n
                                .filter(|n| n.is_power_of_two())
                                .ok_or_else(|| lx.error(at, ".align needs a power of two"))?;
                            if !pointer {
                                align = Some(n);
                            }
                        }
                        b"ptr" if elem.is_some() => pointer = true,
                        b"global" | b"const" | b"local" | b"shared" if pointer => {}
                        _ => match ptx_type_size(part) {
                            Some(size) if elem.is_none() && seen_param => elem = Some(size),
                            _ => return Err(lx.error(at, "unsupported parameter type or attribute")),
                        },
                    }
                }
            }
            Token::Word(word) => {
                lx.next()?;
                if named || matches!(word.first(), None | Some(b'0'..=b'9')) || word.contains(&b'.') {
                    return Err(lx.error(at, "unexpected word in parameter declaration"));
                }
                named = true;
            }
            Token::Punct(_) => return Err(lx.error(at, "unexpected character in parameter declaration")),
        }
    }
    match elem {
        Some(elem) if seen_param && named => Ok(ParamDecl { elem, align, count }),
        _ => Err(lx.error(lx.pos, "parameter declaration lacks .param, a type or a name")),
    }
}

/// Places each parameter at the next multiple of its alignment (explicit, or
/// the element's natural one) after the previous one, as CUDA lays out the
/// parameter buffer.
fn ptx_layout(decls: &[ParamDecl]) -> Result<Vec<ParamInfo>, ImageError> {
    let mut out = Vec::new();
    let mut cursor = 0u32;
    for decl in decls {
        let size = decl.elem.checked_mul(decl.count).ok_or(ImageError::BadParams("parameter size overflows"))?;
        let align = decl.align.unwrap_or(decl.elem).max(1);
        let mask = align.wrapping_sub(1);
        let offset =
            cursor.checked_add(mask).map(|v| v & !mask).ok_or(ImageError::BadParams("parameter offset overflows"))?;
        cursor = offset.checked_add(size).ok_or(ImageError::BadParams("parameter end overflows"))?;
        if cursor > MAX_KERNEL_PARAM_BYTES {
            return Err(ImageError::BadParams("parameters exceed CUDA's parameter buffer limit"));
        }
        out.push(ParamInfo { offset, size });
    }
    Ok(out)
}

/// The kernels of PTX text: every `.entry NAME ( params ) [directives] {`.
/// An `.entry` that ends in `;` (a declaration) is skipped.
fn ptx_kernels(text: &[u8], only: Option<&str>) -> Result<Vec<KernelInfo>, ImageError> {
    let mut lx = Lexer::new(text);
    let mut out = Vec::new();
    while let Some((_, token)) = lx.next()? {
        if token != Token::Word(b".entry") {
            continue;
        }
        let name = match lx.next()? {
            Some((_, Token::Word(w))) if !w.contains(&b'.') && w.first().is_some_and(|c| !c.is_ascii_digit()) => w,
            Some((at, _)) => return Err(lx.error(at, "expected a kernel name after .entry")),
            None => return Err(lx.error(text.len(), "expected a kernel name after .entry")),
        };
        if only.is_some_and(|o| o.as_bytes() != name) {
            continue;
        }
        let mut decls = Vec::new();
        if let Some((_, Token::Punct(b'('))) = lx.peek()? {
            lx.next()?;
            if let Some((_, Token::Punct(b')'))) = lx.peek()? {
                lx.next()?;
            } else {
                loop {
                    decls.push(ptx_param(&mut lx)?);
                    match lx.next()? {
                        Some((_, Token::Punct(b','))) => {}
                        Some((_, Token::Punct(b')'))) => break,
                        Some((at, _)) => return Err(lx.error(at, "expected , or )")),
                        None => return Err(lx.error(text.len(), "unterminated parameter list")),
                    }
                }
            }
        }
        // Performance directives (`.maxntid 256, 1, 1`, ...) may sit between
        // the parameters and the body.
        let defined = loop {
            match lx.next()? {
                Some((_, Token::Punct(b'{'))) => break true,
                Some((_, Token::Punct(b';'))) => break false,
                Some((at, Token::Word(b".entry"))) => return Err(lx.error(at, "kernel has no body")),
                Some((_, Token::Word(_) | Token::Punct(b','))) => {}
                Some((at, _)) => return Err(lx.error(at, "unexpected token after kernel parameters")),
                None => return Err(lx.error(text.len(), "kernel has no body")),
            }
        };
        if !defined {
            continue;
        }
        out.push(KernelInfo { name: name_string(name)?, params: ptx_layout(&decls)? });
        if only.is_some() {
            break;
        }
    }
    sort_dedup(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ----- builders -------------------------------------------------------

    fn p16(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn p32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn p64(v: &mut Vec<u8>, x: u64) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn pad8(v: &mut Vec<u8>) {
        while v.len() & 7 != 0 {
            v.push(0);
        }
    }

    /// An `.nv.info.<kernel>` record of format SVAL.
    fn sval(attr: u8, value: &[u8]) -> Vec<u8> {
        let mut v = vec![EIFMT_SVAL, attr];
        p16(&mut v, value.len() as u16);
        v.extend_from_slice(value);
        v
    }

    /// A legacy KPARAM_INFO record, with the bits ptxas sets (cbank 0x1f,
    /// pointer space 5 for pointers).
    fn kparam(ordinal: u16, offset: u16, size: u32, pointer: bool) -> Vec<u8> {
        let mut value = Vec::new();
        p32(&mut value, 0);
        p16(&mut value, ordinal);
        p16(&mut value, offset);
        p32(&mut value, (size << 18) | (1 << 16) | 0xf000 | if pointer { 0x500 } else { 0 });
        sval(EIATTR_KPARAM_INFO, &value)
    }

    fn kparam_v2(ordinal: u16, offset: u16, size: u16) -> Vec<u8> {
        let mut value = Vec::new();
        p32(&mut value, 0);
        p16(&mut value, ordinal);
        p16(&mut value, offset);
        p16(&mut value, size);
        p16(&mut value, 0);
        sval(EIATTR_KPARAM_INFO_V2, &value)
    }

    /// `.nv.info.<kernel>` as ptxas writes it: bookkeeping records around the
    /// parameter records, parameters in descending ordinal order.
    fn nv_info(params: &[(u16, u16, u32)], total: u16) -> Vec<u8> {
        let mut v = sval(0x37, &0x82u32.to_le_bytes()); // CUDA_API_VERSION
        v.extend_from_slice(&[EIFMT_NVAL, 0x35, 0, 0]); // SW2861232_WAR
        let mut cbank = Vec::new();
        p32(&mut cbank, 9);
        p16(&mut cbank, 0x210);
        p16(&mut cbank, total);
        v.extend(sval(EIATTR_PARAM_CBANK, &cbank));
        v.extend_from_slice(&[EIFMT_HVAL, EIATTR_CBANK_PARAM_SIZE]);
        p16(&mut v, total);
        for &(ordinal, offset, size) in params.iter().rev() {
            v.extend(kparam(ordinal, offset, size, size == 8));
        }
        v.extend_from_slice(&[EIFMT_HVAL, 0x1b, 0xff, 0]); // MAXREG_COUNT
        v.extend(sval(0x1c, &[0x70, 0, 0, 0])); // EXIT_INSTR_OFFSETS
        v
    }

    struct Section {
        name: String,
        ty: u32,
        data: Vec<u8>,
    }

    fn section(name: &str, data: Vec<u8>) -> Section {
        Section { name: name.into(), ty: 1, data }
    }

    /// A minimal EM_CUDA ELF64: header, one program header, the given
    /// sections, `.symtab`/`.strtab` for `symbols` (name, st_info,
    /// st_other), `.shstrtab`, and the section header table last.
    fn build_cubin(mut sections: Vec<Section>, symbols: &[(&str, u8, u8)]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; 24];
        for (name, info, other) in symbols {
            p32(&mut symtab, strtab.len() as u32);
            symtab.push(*info);
            symtab.push(*other);
            p16(&mut symtab, 1);
            p64(&mut symtab, 0);
            p64(&mut symtab, 0x80);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        // Index of .strtab once the null section and the user sections come
        // before it: null, user..., .strtab, .symtab, .shstrtab.
        let strtab_index = sections.len() + 1;
        sections.push(Section { name: ".strtab".into(), ty: 3, data: strtab });
        sections.push(Section { name: ".symtab".into(), ty: SHT_SYMTAB, data: symtab });
        let mut shstrtab = vec![0u8];
        let mut name_offsets = Vec::new();
        for s in sections.iter().map(|s| s.name.as_str()).chain([".shstrtab"]) {
            name_offsets.push(shstrtab.len() as u32);
            shstrtab.extend_from_slice(s.as_bytes());
            shstrtab.push(0);
        }
        sections.push(Section { name: ".shstrtab".into(), ty: 3, data: shstrtab });

        let mut out = vec![0u8; 64 + 56];
        let mut placed = Vec::new();
        for s in &sections {
            pad8(&mut out);
            placed.push(out.len() as u64);
            out.extend_from_slice(&s.data);
        }
        pad8(&mut out);
        let shoff = out.len() as u64;
        out.extend_from_slice(&[0u8; 64]);
        for (i, s) in sections.iter().enumerate() {
            let mut sh = Vec::new();
            p32(&mut sh, name_offsets[i]);
            p32(&mut sh, s.ty);
            p64(&mut sh, 0);
            p64(&mut sh, 0);
            p64(&mut sh, placed[i]);
            p64(&mut sh, s.data.len() as u64);
            p32(&mut sh, if s.ty == SHT_SYMTAB { strtab_index as u32 } else { 0 });
            p32(&mut sh, 0);
            p64(&mut sh, 8);
            p64(&mut sh, if s.ty == SHT_SYMTAB { 24 } else { 0 });
            out.extend(sh);
        }
        let mut header = Vec::new();
        header.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0x33, 7, 0, 0, 0, 0, 0, 0, 0]);
        p16(&mut header, 2); // ET_EXEC
        p16(&mut header, EM_CUDA);
        p32(&mut header, 1);
        p64(&mut header, 0);
        p64(&mut header, 64); // phoff
        p64(&mut header, shoff);
        p32(&mut header, 0x005a_055a);
        p16(&mut header, 64);
        p16(&mut header, 56);
        p16(&mut header, 1);
        p16(&mut header, 64);
        p16(&mut header, (sections.len() + 1) as u16);
        p16(&mut header, (sections.len()) as u16); // .shstrtab is last
        out[..64].copy_from_slice(&header);
        // One PT_LOAD over the first section's bytes.
        let mut ph = Vec::new();
        p32(&mut ph, 1);
        p32(&mut ph, 5);
        p64(&mut ph, placed[0]);
        p64(&mut ph, 0);
        p64(&mut ph, 0);
        p64(&mut ph, sections[0].data.len() as u64);
        p64(&mut ph, sections[0].data.len() as u64);
        p64(&mut ph, 8);
        out[64..120].copy_from_slice(&ph);
        out
    }

    const VECADD: &str = "_Z6vecAddPKfS0_Pfi";

    /// vecAdd(const float*, const float*, float*, int), a zero-parameter
    /// kernel without `.nv.info.<name>`, and a device function that has a
    /// `.text` section but is no kernel.
    fn sample_cubin_with(vecadd_info: Vec<u8>) -> Vec<u8> {
        build_cubin(
            vec![
                section(&format!(".text.{VECADD}"), vec![0u8; 0x80]),
                section(&format!(".nv.info.{VECADD}"), vecadd_info),
                section(".text.empty", vec![0u8; 0x20]),
                section(".text._Z3devv", vec![0u8; 0x20]),
                section(".nv.info", nv_info(&[], 0)),
                Section { name: ".nv.shared.reserved".into(), ty: SHT_NOBITS, data: vec![] },
            ],
            &[(VECADD, 0x12, 0x10), ("empty", 0x12, 0x10), ("_Z3devv", 0x02, 0x00), ("x", 0x11, 0)],
        )
    }

    fn sample_cubin() -> Vec<u8> {
        sample_cubin_with(nv_info(&[(0, 0, 8), (1, 8, 8), (2, 16, 8), (3, 24, 4)], 28))
    }

    fn vecadd_params() -> Vec<ParamInfo> {
        [(0, 8), (8, 8), (16, 8), (24, 4)].iter().map(|&(offset, size)| ParamInfo { offset, size }).collect()
    }

    /// A fatbin container holding `entries` (kind, arch, flags, payload).
    fn build_fatbin(entries: &[(u16, u32, u64, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(kind, arch, flags, payload) in entries {
            let mut padded = payload.to_vec();
            pad8(&mut padded);
            // As fatbinary writes them: PTX with an empty options record.
            let ptx = kind == 1;
            p16(&mut body, kind);
            p16(&mut body, 0x0101);
            p32(&mut body, if ptx { 80 } else { 64 });
            p64(&mut body, padded.len() as u64);
            p32(&mut body, 0);
            p32(&mut body, if ptx { 64 } else { 0 });
            p16(&mut body, 8);
            p16(&mut body, 1);
            p32(&mut body, arch);
            p32(&mut body, 0);
            p32(&mut body, 0);
            p64(&mut body, flags);
            p64(&mut body, 0);
            p64(&mut body, 0);
            if ptx {
                p32(&mut body, 72);
                p32(&mut body, 0);
                p64(&mut body, 0);
            }
            body.extend(padded);
        }
        let mut out = Vec::new();
        p32(&mut out, FATBIN_MAGIC);
        p16(&mut out, 1);
        p16(&mut out, 16);
        p64(&mut out, body.len() as u64);
        out.extend(body);
        out
    }

    #[test]
    fn a_fatbin_keeps_only_what_the_device_can_load() {
        let cubin = sample_cubin();
        let ptx = |arch: u32| format!(".version 8.4\n.target sm_{arch}\n\0").into_bytes();
        let (p70, p90, p100) = (ptx(70), ptx(90), ptx(100));
        let image = build_fatbin(&[
            (2, 70, 0, &cubin),
            (2, 80, 0, &cubin),
            (2, 86, 0, &cubin),
            (2, 90, 0x2000, b"compressed"),
            (1, 70, 0, &p70),
            (1, 90, 0, &p90),
            (1, 100, 0, &p100),
            (2, 100, 0, &cubin),
            (16, 90, 0, b"lto ir.."),
        ]);
        let kept = |major, minor| -> Vec<(FatbinEntryKind, u32)> {
            let out = fatbin_for_device(&image, major, minor).unwrap().unwrap();
            assert_eq!(image_len(&out).unwrap(), out.len());
            fatbin_entries(&out).unwrap().iter().map(|e| (e.kind, e.arch)).collect()
        };
        use FatbinEntryKind::{Cubin, Ptx};
        // sm_90: its own cubin (compressed entries are copied as they are) and compute_90.
        assert_eq!(kept(9, 0), vec![(Cubin, 90), (Ptx, 90)]);
        // sm_86: both sm_8x cubins at or below it, and the best PTX below it.
        assert_eq!(kept(8, 6), vec![(Cubin, 80), (Cubin, 86), (Ptx, 70)]);
        // The payloads are the original bytes.
        let out = fatbin_for_device(&image, 8, 0).unwrap().unwrap();
        assert_eq!(fatbin_entries(&out).unwrap()[0].payload, &cubin[..]);
        // Nothing for an older device than any entry.
        assert_eq!(fatbin_for_device(&image, 6, 0).unwrap(), None);
        assert!(!fatbin_loads_on(&image, 6, 0).unwrap());
        assert!(fatbin_loads_on(&image, 8, 0).unwrap());
        // Not a fatbin: an error, not a guess.
        assert!(fatbin_for_device(&cubin, 9, 0).is_err());
    }

    const PTX: &str = r#"//
// Generated by NVIDIA NVVM Compiler
//
// Compiler Build ID: CL-34097967
// Cuda compilation tools, release 12.4, V12.4.131
// Based on NVVM 7.0.1
//

.version 8.4
.target sm_90
.address_size 64

	// .globl	_Z6vecAddPKfS0_Pfi
.file	1 "/src//a/*weird*/.cu"

.func  (.param .b32 func_retval0) _Z6helperi(
	.param .b32 _Z6helperi_param_0
)
{
	ret;
}

.visible .entry _Z6vecAddPKfS0_Pfi(
	.param .u64 .ptr .global .align 1 _Z6vecAddPKfS0_Pfi_param_0,
	.param .u64 .ptr .global .align 1 _Z6vecAddPKfS0_Pfi_param_1,
	.param .u64 _Z6vecAddPKfS0_Pfi_param_2,
	.param .u32 _Z6vecAddPKfS0_Pfi_param_3
)
.maxntid 256, 1, 1
{
	.reg .b32 	%r<5>;
	ld.param.u64 	%rd1, [_Z6vecAddPKfS0_Pfi_param_0];
	mov.u32 	%r1, %tid.x;
	// .entry fake_in_comment(.param .u8 x) {
	ret;
}

/* .entry commented_out() {} */
.weak .entry _Z5mixedcdS_(   // a struct, a char, a double
	.param .u8 _Z5mixedcdS__param_0, /* 1 byte */
	.param .align 8 .b8 _Z5mixedcdS__param_1[24],
	.param .f16 h,
	.param .f64 _Z5mixedcdS__param_2,
	.param .b32 arr[3]
)
{
	ret;
}

.entry empty()
{
	ret;
}

.visible .entry noparens
{
	ret;
}
"#;

    fn ptx_image() -> Vec<u8> {
        let mut v = PTX.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn params(list: &[(u32, u32)]) -> Vec<ParamInfo> {
        list.iter().map(|&(offset, size)| ParamInfo { offset, size }).collect()
    }

    // ----- PTX ------------------------------------------------------------

    #[test]
    fn ptx_kernels_have_cuda_layout() {
        let image = ptx_image();
        assert_eq!(detect(&image), Some(ImageKind::Ptx));
        let all = kernels(&image).unwrap();
        let names: Vec<&str> = all.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["_Z5mixedcdS_", VECADD, "empty", "noparens"]);
        assert_eq!(all[1].params, vecadd_params());
        // u8 at 0; 24-byte struct aligned to 8 at 8; f16 at 32; f64 at 40;
        // b32[3] at 48.
        assert_eq!(all[0].params, params(&[(0, 1), (8, 24), (32, 2), (40, 8), (48, 12)]));
        assert_eq!(all[0].param_buffer_size(), 60);
        assert!(all[2].params.is_empty() && all[3].params.is_empty());
    }

    #[test]
    fn ptx_kernel_lookup_by_name() {
        let image = ptx_image();
        assert_eq!(kernel(&image, VECADD).unwrap().unwrap().params, vecadd_params());
        assert_eq!(kernel(&image, "_Z6helperi").unwrap(), None, ".func is not a kernel");
        assert_eq!(kernel(&image, "fake_in_comment").unwrap(), None);
        assert_eq!(kernel(&image, "commented_out").unwrap(), None);
    }

    #[test]
    fn ptx_len_includes_the_nul() {
        let image = ptx_image();
        let mut padded = image.clone();
        padded.extend_from_slice(b"garbage after the NUL");
        assert_eq!(image_len(&padded), Ok(image.len()));
        assert_eq!(
            image_len(PTX.as_bytes()),
            Err(ImageError::Truncated { need: PTX.len() as u64 + 1, have: PTX.len() })
        );
        assert_eq!(image_len(b"\0"), Ok(1));
        assert_eq!(image_len(b".v"), Err(ImageError::Truncated { need: 4, have: 2 }));
    }

    #[test]
    fn ptx_declarations_are_not_definitions() {
        let ptx = b".version 8.0\n.extern .entry k(.param .u32 a);\n.entry k(.param .u64 b) { ret; }\0";
        assert_eq!(kernels(ptx).unwrap(), vec![KernelInfo { name: "k".into(), params: params(&[(0, 8)]) }]);
    }

    #[test]
    fn ptx_rejects_what_it_cannot_lay_out() {
        for bad in [
            ".entry k(.param .pred p) {}",
            ".entry k(.param .align 3 .b8 s[4]) {}",
            ".entry k(.param .b8 s[0]) {}",
            ".entry k(.param .b8 s[4294967295]) {}",
            ".entry k(.param .b8 s[4000000000], .param .b8 t[4000000000]) {}",
            ".entry k(.param .align 8 .b8 big[32760], .param .u64 p) {}",
            ".entry k(.param .u32) {}",
            ".entry k(.param .u32 a .u32 b) {}",
            ".entry k(.param .u32 a",
            ".entry k(.param .u32 a) ",
            ".entry k(.param .u32 a) /* never closed {",
            ".entry (.param .u32 a) {}",
            ".entry k(.param .v4 .u32 a) {}",
        ] {
            assert!(kernels(bad.as_bytes()).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn ptx_compound_directives_and_hex() {
        let ptx = b".entry k(.param.u16 a, .param .align 0x10 .b8 s[0x20], .param .u8 c) {}";
        assert_eq!(kernels(ptx).unwrap()[0].params, params(&[(0, 2), (16, 32), (48, 1)]));
    }

    // ----- cubin ----------------------------------------------------------

    #[test]
    fn cubin_kernels_from_kparam_info() {
        let image = sample_cubin();
        assert_eq!(detect(&image), Some(ImageKind::Cubin));
        let all = kernels(&image).unwrap();
        assert_eq!(
            all,
            vec![
                KernelInfo { name: VECADD.into(), params: vecadd_params() },
                KernelInfo { name: "empty".into(), params: vec![] },
            ]
        );
        assert_eq!(kernel(&image, VECADD).unwrap().unwrap().param_buffer_size(), 28);
        assert_eq!(kernel(&image, "_Z3devv").unwrap(), None, "a device function is not a kernel");
        assert_eq!(kernel(&image, "missing").unwrap(), None);
    }

    #[test]
    fn cubin_without_entry_marks_falls_back_to_sections() {
        // No symbol carries STO_CUDA_ENTRY: every .text.<name> counts.
        let image = build_cubin(
            vec![
                section(".text.a", vec![0; 16]),
                section(".nv.info.a", nv_info(&[(0, 0, 8)], 8)),
                section(".text.b", vec![0; 16]),
            ],
            &[("a", 0x12, 0), ("b", 0x12, 0)],
        );
        let names: Vec<String> = kernels(&image).unwrap().into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn cubin_kparam_info_v2() {
        let mut info = nv_info(&[], 0x1508);
        info.extend(kparam_v2(1, 0x1500, 8));
        info.extend(kparam_v2(0, 0, 0x1500));
        let image = sample_cubin_with(info);
        assert_eq!(kernel(&image, VECADD).unwrap().unwrap().params, params(&[(0, 0x1500), (0x1500, 8)]));
    }

    #[test]
    fn cubin_bad_param_records_are_errors() {
        let gap = nv_info(&[(0, 0, 8), (2, 16, 8)], 24);
        assert!(matches!(kernels(&sample_cubin_with(gap)), Err(ImageError::BadParams(_))));
        let past_bank = nv_info(&[(0, 0, 8), (1, 8, 8)], 12);
        assert!(matches!(kernels(&sample_cubin_with(past_bank)), Err(ImageError::BadParams(_))));
        let mut dup = nv_info(&[(0, 0, 8)], 16);
        dup.extend(kparam(0, 8, 8, true));
        assert!(matches!(kernels(&sample_cubin_with(dup)), Err(ImageError::BadParams(_))));
        let short = sval(EIATTR_KPARAM_INFO, &[0; 8]);
        assert!(matches!(kernels(&sample_cubin_with(short)), Err(ImageError::BadNvInfo(_))));
        let mut runs_past = vec![EIFMT_SVAL, EIATTR_KPARAM_INFO];
        p16(&mut runs_past, 0xffff);
        assert!(matches!(kernels(&sample_cubin_with(runs_past)), Err(ImageError::BadNvInfo(_))));
        assert!(matches!(kernels(&sample_cubin_with(vec![9, 0x17, 0, 0])), Err(ImageError::BadNvInfo(_))));
        assert!(matches!(kernels(&sample_cubin_with(vec![EIFMT_NVAL, 0x35])), Err(ImageError::BadNvInfo(_))));
        // The broken kernel does not stop a lookup of another one.
        assert_eq!(kernel(&sample_cubin_with(vec![9, 9, 9, 9]), "empty").unwrap().unwrap().params, vec![]);
    }

    #[test]
    fn cubin_len_is_the_furthest_extent_read_in_stages() {
        let image = sample_cubin();
        let mut longer = image.clone();
        longer.extend_from_slice(&[0xAA; 100]);
        assert_eq!(image_len(&longer), Ok(image.len()));
        // A guest holding only a pointer: 64 bytes, then what `need` says.
        let mut have = 64;
        let len = loop {
            match image_len(&image[..have]) {
                Ok(len) => break len,
                Err(ImageError::Truncated { need, .. }) => {
                    assert!(need as usize > have);
                    have = need as usize;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(len, image.len());
    }

    #[test]
    fn cubin_len_counts_sections_past_the_table() {
        // A section that lies after the section header table decides the
        // length, even before its bytes have been read.
        let mut image = sample_cubin();
        let shoff = u64::from_le_bytes(image[40..48].try_into().unwrap()) as usize;
        let far = image.len() as u64 + 1000;
        let sh1 = shoff + 64; // .text._Z6vecAddPKfS0_Pfi, 0x80 bytes
        image[sh1 + 24..sh1 + 32].copy_from_slice(&far.to_le_bytes());
        assert_eq!(image_len(&image), Ok(far as usize + 0x80));
        assert!(matches!(kernels(&image), Err(ImageError::Truncated { .. })));
    }

    #[test]
    fn malformed_elf_headers_are_errors() {
        let good = sample_cubin();
        let set = |at: usize, bytes: &[u8]| {
            let mut v = good.clone();
            v[at..at + bytes.len()].copy_from_slice(bytes);
            v
        };
        let shoff = |v: u64| set(40, &v.to_le_bytes());
        for image in [
            shoff(u64::MAX - 10),                   // table end overflows
            shoff(u64::MAX / 2),                    // past MAX_IMAGE_LEN
            shoff(good.len() as u64),               // table past the end
            set(60, &0xffffu16.to_le_bytes()),      // shnum huge: table past the end
            set(18, &62u16.to_le_bytes()),          // not EM_CUDA
            set(4, &[1]),                           // ELF32
            set(5, &[2]),                           // big-endian
            set(58, &40u16.to_le_bytes()),          // shentsize
            set(54, &40u16.to_le_bytes()),          // phentsize
            set(32, &(u64::MAX - 8).to_le_bytes()), // phoff overflows
        ] {
            assert!(kernels(&image).is_err());
            assert!(image_len(&image).is_err());
            fuzz_one(&image);
        }
        // image_len does not need .shstrtab; the parsers do.
        let bad_strndx = set(62, &0xfff0u16.to_le_bytes());
        assert_eq!(image_len(&bad_strndx), Ok(good.len()));
        assert_eq!(kernels(&bad_strndx), Err(ImageError::BadElf("e_shstrndx is out of range")));
        // A section whose offset + size overflows.
        let shoff_val = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
        let mut v = good.clone();
        let sh1 = shoff_val + 64;
        v[sh1 + 24..sh1 + 32].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        assert_eq!(image_len(&v), Err(ImageError::Overflow("ELF section")));
        assert!(kernels(&v).is_err());
        // Section size past the end.
        let mut v = good.clone();
        v[sh1 + 32..sh1 + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(image_len(&v), Err(ImageError::TooLarge { .. })));
        assert!(matches!(kernels(&v), Err(ImageError::Truncated { .. })));
    }

    // ----- fatbin ---------------------------------------------------------

    fn named_cubin(kernel: &str) -> Vec<u8> {
        build_cubin(
            vec![
                section(&format!(".text.{kernel}"), vec![0; 16]),
                section(&format!(".nv.info.{kernel}"), nv_info(&[(0, 0, 8)], 8)),
            ],
            &[(kernel, 0x12, 0x10)],
        )
    }

    #[test]
    fn fatbin_prefers_highest_uncompressed_cubin_up_to_sm90() {
        let (sm80, sm90, sm100) = (named_cubin("k80"), named_cubin("k90"), named_cubin("k100"));
        let ptx = ptx_image();
        let image = build_fatbin(&[
            (1, 90, 0x11, &ptx),
            (2, 80, 0x11, &sm80),
            (2, 100, 0x11, &sm100),
            (2, 90, 0x11, &sm90),
            (2, 86, 0x2011, b"LZ4 bytes"),
        ]);
        assert_eq!(detect(&image), Some(ImageKind::Fatbin));
        assert_eq!(image_len(&image), Ok(image.len()));
        let entries = fatbin_entries(&image).unwrap();
        let summary: Vec<_> = entries.iter().map(|e| (e.kind, e.arch, e.compressed)).collect();
        assert_eq!(
            summary,
            [
                (FatbinEntryKind::Ptx, 90, false),
                (FatbinEntryKind::Cubin, 80, false),
                (FatbinEntryKind::Cubin, 100, false),
                (FatbinEntryKind::Cubin, 90, false),
                (FatbinEntryKind::Cubin, 86, true),
            ]
        );
        assert_eq!(&entries[3].payload[..sm90.len()], &sm90[..]);
        assert_eq!(&image[entries[3].payload_range.clone()], entries[3].payload);
        assert_eq!(kernels(&image).unwrap()[0].name, "k90");
        assert_eq!(kernel(&image, "k90").unwrap().unwrap().params, params(&[(0, 8)]));
        // Without sm_90: sm_80; with only sm_100: sm_100.
        let image = build_fatbin(&[(2, 100, 0, &sm100), (2, 80, 0, &sm80)]);
        assert_eq!(kernels(&image).unwrap()[0].name, "k80");
        let image = build_fatbin(&[(2, 100, 0, &sm100)]);
        assert_eq!(kernels(&image).unwrap()[0].name, "k100");
    }

    #[test]
    fn fatbin_falls_back_to_ptx_then_to_the_host() {
        let ptx = ptx_image();
        let image = build_fatbin(&[(2, 90, 0x8011, b"zstd bytes"), (1, 90, 0x11, &ptx)]);
        assert_eq!(kernel(&image, VECADD).unwrap().unwrap().params, vecadd_params());
        let image = build_fatbin(&[(2, 90, 0x8011, b"zstd"), (1, 90, 0x2011, b"lz4"), (4, 90, 0, b"ltoir")]);
        assert_eq!(kernels(&image), Err(ImageError::NoReadableEntry));
        assert_eq!(fatbin_entries(&image).unwrap()[2].kind, FatbinEntryKind::Other(4));
        // An entry marked uncompressed whose bytes are no ELF is skipped too.
        let image = build_fatbin(&[(2, 90, 0, b"not an elf")]);
        assert_eq!(kernels(&image), Err(ImageError::NoReadableEntry));
    }

    #[test]
    fn malformed_fatbins_are_errors() {
        let good = build_fatbin(&[(2, 90, 0, &named_cubin("k"))]);
        let set = |at: usize, bytes: &[u8]| {
            let mut v = good.clone();
            v[at..at + bytes.len()].copy_from_slice(bytes);
            v
        };
        let cases = [
            set(8, &u64::MAX.to_le_bytes()),            // fat_size overflows
            set(8, &(1u64 << 40).to_le_bytes()),        // past MAX_IMAGE_LEN
            set(6, &8u16.to_le_bytes()),                // header_size below 16
            set(16 + 4, &32u32.to_le_bytes()),          // entry header too short
            set(16 + 4, &u32::MAX.to_le_bytes()),       // entry header past the end
            set(16 + 8, &u64::MAX.to_le_bytes()),       // payload size overflows
            set(16 + 8, &(1u64 << 20).to_le_bytes()),   // payload past the container
            set(8, &(good.len() as u64).to_le_bytes()), // container past the bytes
        ];
        for image in cases {
            assert!(fatbin_entries(&image).is_err());
            assert!(kernels(&image).is_err());
            fuzz_one(&image);
        }
        // Trailing bytes too short for an entry header.
        let mut v = good.clone();
        v.extend_from_slice(&[0; 8]);
        let grown = (v.len() - 16) as u64;
        v[8..16].copy_from_slice(&grown.to_le_bytes());
        assert!(matches!(fatbin_entries(&v), Err(ImageError::BadFatbin(_))));
    }

    /// The header fatbinary (CUDA 13.5) writes for a PTX entry built with
    /// `--cmdline="-O3 -v"`: 80 bytes, the options record at 64 (text at 72,
    /// 6 bytes). Only the payload size (offset 8) is patched per use.
    const FATBINARY_PTX_HEADER: [u8; 80] = [
        0x01, 0x00, 0x01, 0x01, 0x50, 0x00, 0x00, 0x00, 0x20, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x08, 0x00, 0x07, 0x00, 0x50, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x48, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x2d, 0x4f, 0x33, 0x20, 0x2d, 0x76, 0x00, 0x00,
    ];

    #[test]
    fn a_fatbinary_ptx_entry_parses_and_its_options_record_is_checked() {
        let mut ptx = ptx_image();
        pad8(&mut ptx);
        let mut header = FATBINARY_PTX_HEADER;
        header[8..16].copy_from_slice(&(ptx.len() as u64).to_le_bytes());
        let mut good = Vec::new();
        p32(&mut good, FATBIN_MAGIC);
        p16(&mut good, 1);
        p16(&mut good, 16);
        p64(&mut good, (header.len() + ptx.len()) as u64);
        good.extend_from_slice(&header);
        good.extend_from_slice(&ptx);
        let entries = fatbin_entries(&good).unwrap();
        assert_eq!((entries[0].kind, entries[0].arch, entries[0].compressed), (FatbinEntryKind::Ptx, 80, false));
        assert_eq!(kernel(&good, VECADD).unwrap().unwrap().params, vecadd_params());
        assert_eq!(fatbin_for_device(&good, 9, 0).unwrap().unwrap(), good, "kept byte for byte");

        let set = |at: usize, bytes: &[u8]| {
            let mut v = good.clone();
            v[16 + at..16 + at + bytes.len()].copy_from_slice(bytes);
            v
        };
        for (image, why) in [
            // What gv_cudart.c used to write: the driver then reads the
            // entry header as the record and follows 0x01010001.
            (set(20, &0u32.to_le_bytes()), "a PTX entry without a record"),
            (set(20, &76u32.to_le_bytes()), "record past the header"),
            (set(20, &8u32.to_le_bytes()), "record inside the fixed header"),
            (set(64, &0x0101_0001u32.to_le_bytes()), "text far away"),
            (set(68, &u32::MAX.to_le_bytes()), "text length overflows the header"),
            (set(68, &9u32.to_le_bytes()), "text past the header"),
            (set(64, &[0; 4]), "text inside the fixed header"),
        ] {
            assert!(matches!(fatbin_entries(&image), Err(ImageError::BadFatbin(_))), "{why}");
            assert!(kernels(&image).is_err(), "{why}");
            fuzz_one(&image);
        }
        // A cubin entry needs no record.
        assert!(fatbin_entries(&build_fatbin(&[(2, 90, 0, &sample_cubin())])).is_ok());
    }

    #[test]
    fn fatbin_wrapper_is_followed_not_parsed() {
        let mut w = Vec::new();
        p32(&mut w, FATBIN_WRAPPER_MAGIC);
        p32(&mut w, 1);
        p64(&mut w, 0x7f00_1234_5000);
        p64(&mut w, 0);
        assert_eq!(fatbin_wrapper(&w), Some(FatbinWrapper { version: 1, data: 0x7f00_1234_5000 }));
        assert_eq!(detect(&w), None);
        assert_eq!(image_len(&w), Err(ImageError::FatbinWrapper));
        assert_eq!(kernels(&w), Err(ImageError::FatbinWrapper));
        assert_eq!(fatbin_wrapper(&w[..20]), None);
        assert_eq!(fatbin_wrapper(&sample_cubin()), None);
    }

    // ----- robustness -----------------------------------------------------

    #[test]
    fn unknown_bytes_are_errors() {
        for image in [&b""[..], b"\x7fEL", b"hello\0", &[0xff; 100], b"\x7fELF"] {
            assert_ne!(detect(image), Some(ImageKind::Ptx));
            assert!(kernels(image).is_err());
            fuzz_one(image);
        }
    }

    /// Every prefix of a valid image either fails or says the same as the
    /// whole image.
    fn check_prefixes(image: &[u8]) {
        let full = kernels(image).unwrap();
        let len = image_len(image).unwrap();
        for cut in 0..image.len() {
            let prefix = &image[..cut];
            fuzz_one(prefix);
            if let Ok(got) = kernels(prefix) {
                for k in &got {
                    assert!(full.contains(k), "prefix {cut} invented {k:?}");
                }
            }
            match image_len(prefix) {
                Ok(n) => assert_eq!(n, len, "prefix {cut}"),
                Err(ImageError::Truncated { need, .. }) => {
                    assert!(need as usize > cut && need as usize <= len)
                }
                Err(e) => panic!("prefix {cut}: {e}"),
            }
        }
    }

    #[test]
    fn every_prefix_of_a_cubin() {
        check_prefixes(&sample_cubin());
    }

    #[test]
    fn every_prefix_of_a_fatbin() {
        check_prefixes(&build_fatbin(&[(2, 90, 0, &sample_cubin()), (1, 90, 0, &ptx_image())]));
    }

    #[test]
    fn every_prefix_of_ptx() {
        let image = ptx_image();
        let full = kernels(&image).unwrap();
        for cut in 0..image.len() {
            fuzz_one(&image[..cut]);
            if let Ok(got) = kernels(&image[..cut]) {
                for k in &got {
                    assert!(full.contains(k), "prefix {cut} invented {k:?}");
                }
            }
        }
    }

    /// Byte flips, overwrites with extreme values and truncations of valid
    /// images, through every parser (a small fuzz run).
    #[test]
    fn mutated_images_do_not_panic() {
        let seeds =
            [sample_cubin(), build_fatbin(&[(2, 90, 0, &sample_cubin()), (1, 90, 0, &ptx_image())]), ptx_image()];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // MODULE_IMAGE_FUZZ_ITERS=1000000 cargo test --release runs a longer one.
        let iters = std::env::var("MODULE_IMAGE_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
        for seed in &seeds {
            for _ in 0..iters {
                let mut v = seed.clone();
                for _ in 0..1 + rand() % 4 {
                    let at = (rand() % v.len() as u64) as usize;
                    match rand() % 4 {
                        0 => v[at] ^= 1 << (rand() % 8),
                        1 => v[at] = [0, 0xff, 0x7f, 0x80][(rand() % 4) as usize],
                        2 => {
                            let end = (at + 8).min(v.len());
                            v[at..end].fill(0xff);
                        }
                        _ => v.truncate(at.max(1)),
                    }
                }
                fuzz_one(&v);
            }
        }
    }
}
