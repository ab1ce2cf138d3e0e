//! Module images given as a bare pointer (cuModuleLoadData,
//! cuModuleLoadFatBinary, cuLibraryLoadData): how many bytes the image
//! occupies, from its own headers, reading no byte the image does not
//! declare. PTX is text up to its NUL; a cubin ends where its ELF tables and
//! sections end; a fatbin is `header_size + fat_size` bytes; a
//! `__fatBinC_Wrapper_t` points at the fatbin to read.

use super::CuRes;
use protocol::cuda::*;
use protocol::module_image::{
    self, ImageError, ELF_MAGIC, FATBIN_MAGIC, FATBIN_WRAPPER_LEN, FATBIN_WRAPPER_MAGIC, MAX_IMAGE_LEN,
};

/// Bytes of an ELF64 header, the first read of a cubin.
const ELF_HEADER_LEN: usize = 64;
/// Bytes of a fatbin container header.
const FATBIN_HEADER_LEN: usize = 16;
/// Rounds of "read what the headers ask for" before giving up; an ELF needs
/// three (header, tables, sections).
const MAX_ROUNDS: usize = 8;

/// The image at `p` as a slice of exactly its own length.
///
/// # Safety
/// `p` points at a PTX string, a cubin, a fatbin or a fatbin wrapper (whose
/// data pointer points at a fatbin), readable for as many bytes as the
/// image's headers declare.
pub unsafe fn image_at<'a>(p: *const u8) -> CuRes<&'a [u8]> {
    // SAFETY: forwarded; one level of wrapper is followed.
    unsafe { image_at_depth(p, 0) }
}

/// # Safety
/// As for [`image_at`].
unsafe fn image_at_depth<'a>(p: *const u8, depth: u32) -> CuRes<&'a [u8]> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // The first four bytes, one at a time: a short PTX string may end (and
    // its memory with it) before four bytes.
    let mut head = [0u8; 4];
    for (i, b) in head.iter_mut().enumerate() {
        // SAFETY: bytes before the first NUL are part of the image.
        *b = unsafe { *p.add(i) };
        if *b == 0 {
            // SAFETY: the i + 1 bytes just read.
            return Ok(unsafe { std::slice::from_raw_parts(p, i + 1) });
        }
    }
    let word = u32::from_le_bytes(head);
    let first_read = if head == ELF_MAGIC {
        ELF_HEADER_LEN
    } else if word == FATBIN_MAGIC {
        FATBIN_HEADER_LEN
    } else if word == FATBIN_WRAPPER_MAGIC {
        if depth > 0 {
            return Err(CUDA_ERROR_INVALID_IMAGE);
        }
        // SAFETY: a wrapper is FATBIN_WRAPPER_LEN bytes.
        let raw = unsafe { std::slice::from_raw_parts(p, FATBIN_WRAPPER_LEN) };
        let w = module_image::fatbin_wrapper(raw).ok_or(CUDA_ERROR_INVALID_IMAGE)?;
        let data = usize::try_from(w.data).map_err(|_| CUDA_ERROR_INVALID_IMAGE)? as *const u8;
        if data.is_null() {
            return Err(CUDA_ERROR_INVALID_IMAGE);
        }
        // SAFETY: the wrapper's data pointer points at the fatbin.
        return unsafe { image_at_depth(data, depth + 1) };
    } else {
        // Text: up to and including its NUL.
        // SAFETY: PTX is a NUL-terminated string.
        let n = unsafe { libc::strlen(p as *const libc::c_char) };
        if n as u64 >= MAX_IMAGE_LEN {
            return Err(CUDA_ERROR_INVALID_IMAGE);
        }
        // SAFETY: n bytes and the NUL.
        return Ok(unsafe { std::slice::from_raw_parts(p, n + 1) });
    };
    let mut have = first_read;
    for _ in 0..MAX_ROUNDS {
        // SAFETY: `have` bytes are ones the image's headers declare (the
        // fixed header first, then what image_len asked for).
        let bytes = unsafe { std::slice::from_raw_parts(p, have) };
        match module_image::image_len(bytes) {
            // SAFETY: the headers say the image is `n` bytes.
            Ok(n) => return Ok(unsafe { std::slice::from_raw_parts(p, n) }),
            Err(ImageError::Truncated { need, .. }) if need > have as u64 && need <= MAX_IMAGE_LEN => {
                have = need as usize;
            }
            Err(e) => {
                crate::log::debug(&format!("module image rejected: {e}"));
                return Err(CUDA_ERROR_INVALID_IMAGE);
            }
        }
    }
    Err(CUDA_ERROR_INVALID_IMAGE)
}

/// A file's bytes as an image: text gets the NUL it may lack on disk.
pub fn image_from_file(mut bytes: Vec<u8>) -> CuRes<Vec<u8>> {
    if bytes.is_empty() {
        return Err(CUDA_ERROR_INVALID_IMAGE);
    }
    let binary = bytes.starts_with(&ELF_MAGIC)
        || bytes.get(..4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])) == Some(FATBIN_MAGIC);
    if !binary && !bytes.contains(&0) {
        bytes.push(0);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal EM_CUDA ELF64: header, a NULL section and a `.shstrtab`
    /// section (`body_len` bytes at offset 64), section headers after it.
    fn tiny_cubin(body_len: usize) -> Vec<u8> {
        let shoff = 64 + body_len as u64;
        let mut v = vec![0u8; 64];
        v[..4].copy_from_slice(&ELF_MAGIC);
        v[4] = 2; // ELFCLASS64
        v[5] = 1; // little-endian
        v[6] = 1; // EV_CURRENT
        v[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        v[18..20].copy_from_slice(&190u16.to_le_bytes()); // EM_CUDA
        v[20..24].copy_from_slice(&1u32.to_le_bytes());
        v[40..48].copy_from_slice(&shoff.to_le_bytes()); // e_shoff
        v[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        v[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        v[60..62].copy_from_slice(&2u16.to_le_bytes()); // e_shnum
        v[62..64].copy_from_slice(&1u16.to_le_bytes()); // e_shstrndx
        let mut body = vec![0u8; body_len];
        body[1..11].copy_from_slice(b".shstrtab\0");
        v.extend_from_slice(&body);
        v.extend_from_slice(&[0u8; 64]); // NULL section
        let mut sh = [0u8; 64];
        sh[0..4].copy_from_slice(&1u32.to_le_bytes()); // name
        sh[4..8].copy_from_slice(&3u32.to_le_bytes()); // SHT_STRTAB
        sh[24..32].copy_from_slice(&64u64.to_le_bytes()); // offset
        sh[32..40].copy_from_slice(&(body_len as u64).to_le_bytes()); // size
        v.extend_from_slice(&sh);
        v
    }

    /// A fatbin container holding one PTX entry with `text`.
    fn tiny_fatbin(text: &[u8]) -> Vec<u8> {
        let payload_len = text.len().next_multiple_of(8);
        let mut entry = vec![0u8; 64];
        entry[0..2].copy_from_slice(&1u16.to_le_bytes()); // PTX
        entry[2..4].copy_from_slice(&0x0101u16.to_le_bytes());
        entry[4..8].copy_from_slice(&64u32.to_le_bytes());
        entry[8..16].copy_from_slice(&(payload_len as u64).to_le_bytes());
        entry[28..32].copy_from_slice(&90u32.to_le_bytes());
        let mut payload = text.to_vec();
        payload.resize(payload_len, 0);
        entry.extend_from_slice(&payload);
        let mut v = Vec::new();
        v.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&16u16.to_le_bytes());
        v.extend_from_slice(&(entry.len() as u64).to_le_bytes());
        v.extend_from_slice(&entry);
        v
    }

    fn len_of(bytes: &[u8]) -> CuRes<usize> {
        // SAFETY: the test images are readable for their full length.
        unsafe { image_at(bytes.as_ptr()) }.map(|s| s.len())
    }

    #[test]
    fn ptx_length_is_text_plus_nul() {
        let ptx = b".version 8.0\n.target sm_90\n.address_size 64\n\0garbage after";
        assert_eq!(len_of(ptx), Ok(ptx.iter().position(|&b| b == 0).unwrap() + 1));
        assert_eq!(len_of(b"ab\0"), Ok(3));
        assert_eq!(len_of(b"\0"), Ok(1));
    }

    #[test]
    fn cubin_length_comes_from_the_elf_tables() {
        let mut elf = tiny_cubin(40);
        let n = elf.len();
        elf.extend_from_slice(&[0xAA; 100]); // bytes after the image
        assert_eq!(len_of(&elf), Ok(n));
    }

    #[test]
    fn fatbin_length_is_header_plus_fat_size() {
        let mut fb = tiny_fatbin(b".version 8.0\n.target sm_90\n\0");
        let n = fb.len();
        fb.extend_from_slice(&[0x55; 32]);
        assert_eq!(len_of(&fb), Ok(n));
    }

    #[test]
    fn fatbin_wrapper_is_followed_to_its_fatbin() {
        let fb = tiny_fatbin(b".version 8.0\n.target sm_90\n\0");
        let mut w = Vec::new();
        w.extend_from_slice(&FATBIN_WRAPPER_MAGIC.to_le_bytes());
        w.extend_from_slice(&1u32.to_le_bytes());
        w.extend_from_slice(&(fb.as_ptr() as u64).to_le_bytes());
        w.extend_from_slice(&0u64.to_le_bytes());
        // SAFETY: the wrapper and the fatbin it points at outlive the call.
        let img = unsafe { image_at(w.as_ptr()) }.unwrap();
        assert_eq!(img.as_ptr(), fb.as_ptr());
        assert_eq!(img.len(), fb.len());
    }

    #[test]
    fn wrapper_of_a_wrapper_and_null_wrapper_are_rejected() {
        let mut w = Vec::new();
        w.extend_from_slice(&FATBIN_WRAPPER_MAGIC.to_le_bytes());
        w.extend_from_slice(&1u32.to_le_bytes());
        w.extend_from_slice(&0u64.to_le_bytes());
        w.extend_from_slice(&0u64.to_le_bytes());
        let mut outer = w.clone();
        outer[8..16].copy_from_slice(&(w.as_ptr() as u64).to_le_bytes());
        assert_eq!(len_of(&outer), Err(CUDA_ERROR_INVALID_IMAGE));
        assert_eq!(len_of(&w), Err(CUDA_ERROR_INVALID_IMAGE));
    }

    #[test]
    fn text_files_get_a_nul() {
        assert_eq!(image_from_file(b".version 8.0".to_vec()).unwrap().last(), Some(&0));
        let elf = tiny_cubin(16);
        assert_eq!(image_from_file(elf.clone()).unwrap(), elf);
    }
}
