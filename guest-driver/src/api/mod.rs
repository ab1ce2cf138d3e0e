//! The exported CUDA driver API: the `cu*` symbols of `libcuda.so.1`. Each
//! entry point checks its arguments against the guest's own tables (so errors
//! come back at once, as natively), then encodes a command for the backend
//! through the session in `client.rs`. Handles the program sees are guest ids
//! cast to pointers, never host pointers.
//!
//! Every export wraps its body in [`ffi`], which turns a panic into
//! `CUDA_ERROR_UNKNOWN` so that no unwind crosses the C boundary.

#![allow(non_snake_case, non_camel_case_types, clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod types;

pub mod capture;
pub mod context;
pub mod copy;
pub mod device;
pub mod event;
pub mod export_table;
pub mod graph;
pub mod image;
pub mod integrity;
pub mod launch;
pub mod memory;
pub mod mempool;
pub mod module;
pub mod occupancy;
pub mod peer;
pub mod proc_address;
pub mod state;
pub mod stream;
pub mod stream_alloc;
pub mod unsupported;
pub mod vmm;

use crate::client::{self, Client};
use protocol::cuda::*;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use types::CUresult;

/// What the bodies of the exports return: `Err` carries the `CUresult`.
pub type CuRes<T = ()> = Result<T, CUresult>;

/// Runs an export's body, mapping `Ok` to `CUDA_SUCCESS` and a panic to
/// `CUDA_ERROR_UNKNOWN` (a panic is a bug; the C caller must not unwind).
pub fn ffi(body: impl FnOnce() -> CuRes) -> CUresult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => {
            crate::log::warn("internal error (a panic) inside a CUDA call; returning CUDA_ERROR_UNKNOWN");
            CUDA_ERROR_UNKNOWN
        }
    }
}

/// Set once `cuInit` has opened the session.
static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// The session, or `CUDA_ERROR_NOT_INITIALIZED` before a successful `cuInit`.
pub fn session() -> CuRes<&'static Client> {
    if !INITIALIZED.load(Ordering::Acquire) {
        return Err(CUDA_ERROR_NOT_INITIALIZED);
    }
    client::try_get().ok_or(CUDA_ERROR_NOT_INITIALIZED)
}

pub(crate) fn mark_initialized() {
    INITIALIZED.store(true, Ordering::Release);
}

/// An output argument: checked for NULL before any work is done, written once
/// the answer is known.
pub struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// `CUDA_ERROR_INVALID_VALUE` for NULL.
    ///
    /// # Safety
    /// `p` is NULL or valid for a write of one `T` (the CUDA API's contract on
    /// output arguments).
    pub unsafe fn new(p: *mut T) -> CuRes<Self> {
        NonNull::new(p).map(Out).ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// For outputs the CUDA API documents as optional.
    ///
    /// # Safety
    /// As for [`Out::new`].
    pub unsafe fn optional(p: *mut T) -> Option<Self> {
        NonNull::new(p).map(Out)
    }

    pub fn set(self, v: T) {
        // SAFETY: non-NULL and writable by the contract of `new`; unaligned
        // writes tolerate callers that pack their output structs.
        unsafe { self.0.as_ptr().write_unaligned(v) }
    }
}

/// Writes an optional output.
pub fn set_opt<T>(out: Option<Out<T>>, v: T) {
    if let Some(o) = out {
        o.set(v);
    }
}

/// A guest id as the opaque handle type the program holds.
pub fn handle<T>(id: u64) -> *mut T {
    id as usize as *mut T
}

/// The guest id behind a handle.
pub fn id_of<T>(h: *mut T) -> u64 {
    h as usize as u64
}

/// Reads a NUL-terminated name argument (kernel, global, file).
///
/// # Safety
/// `p` is NULL or points at a NUL-terminated string.
pub unsafe fn c_name<'a>(p: *const std::ffi::c_char) -> CuRes<&'a std::ffi::CStr> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    if s.to_bytes().len() > protocol::MAX_NAME_BYTES as usize {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(s)
}
