//! Reading the caller's arguments and filling its out-pointers and buffers,
//! with NVML's null and buffer-length rules.

use crate::error::SimError;
use std::ffi::{c_char, c_uint, CStr};

/// Fails on null, before anything is written, so a call with one null out of
/// two out-pointers leaves both untouched.
pub fn non_null<T>(ptr: *mut T) -> Result<*mut T, SimError> {
    if ptr.is_null() {
        Err(SimError::InvalidArgument)
    } else {
        Ok(ptr)
    }
}

/// Stores `value` through `ptr`.
///
/// # Safety
/// `ptr` is null or valid for writing one aligned `T`.
pub unsafe fn write<T>(ptr: *mut T, value: T) -> Result<(), SimError> {
    let ptr = non_null(ptr)?;
    // SAFETY: not null, and the caller vouches for the rest.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Copies `text` and its NUL into `buf`, or fails with `InsufficientSize`
/// when `len` bytes cannot hold them, as NVML's string getters do.
///
/// # Safety
/// `buf` is null or valid for writing `len` bytes.
pub unsafe fn write_str(buf: *mut c_char, len: c_uint, text: &str) -> Result<(), SimError> {
    let buf = non_null(buf)?;
    let needed = text.len() + 1;
    if usize::try_from(len).is_ok_and(|len| len < needed) {
        return Err(SimError::InsufficientSize);
    }
    // SAFETY: `buf` is not null and, by the caller's contract, holds `len`
    // bytes, which we just checked is at least `needed`; `text` is ours and
    // cannot overlap the caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), buf, text.len());
        buf.add(text.len()).write(0);
    }
    Ok(())
}

/// The caller's NUL-terminated string argument.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string that outlives `'a`.
pub unsafe fn read_str<'a>(ptr: *const c_char) -> Result<&'a str, SimError> {
    if ptr.is_null() {
        return Err(SimError::InvalidArgument);
    }
    // SAFETY: not null, and the caller vouches for the NUL and the lifetime.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map_err(|_| SimError::InvalidArgument)
}
