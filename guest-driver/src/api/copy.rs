//! Copies and memsets. The host side of a copy travels one of three ways:
//! from or into a pinned buffer the backend reaches directly
//! (`HOST_RESOURCE`), inline in the command (host-to-device up to
//! `MAX_INLINE_BYTES`) or in the reply (device-to-host up to
//! `MAX_INLINE_REPLY`), or in chunks through the session's staging buffers.
//! Device ranges are checked against the guest's allocation table first.

use super::capture::intercept;
use super::graph::{Loc, MemcpyNode, MemsetNode, NodeKind};
use super::state;
use super::types::*;
use super::{ffi, session, CuRes};
use crate::client::{Client, MAX_INLINE_REPLY};
use protocol::cuda::*;
use protocol::{
    HostRef, Id, MemcpyDtoD, MemcpyDtoH, MemcpyHtoD, Memset, Opcode, CMD_FLAG_ASYNC, HOST_INLINE, HOST_RESOURCE,
    MAX_INLINE_BYTES,
};
use std::ffi::{c_uchar, c_uint, c_ushort, c_void};
use zerocopy::little_endian::{U32, U64};

/// How an entry point orders its work: the synchronous API, or `*Async` on a
/// stream; `ptsz` for the `_ptsz`/`_ptds` entry points, where NULL is the
/// per-thread stream.
#[derive(Clone, Copy)]
pub struct Order {
    pub async_: bool,
    pub ptsz: bool,
}

const SYNC: Order = Order { async_: false, ptsz: false };
const SYNC_PTDS: Order = Order { async_: false, ptsz: true };
const ASYNC: Order = Order { async_: true, ptsz: false };
const ASYNC_PTSZ: Order = Order { async_: true, ptsz: true };

impl Order {
    fn flags(self) -> u16 {
        if self.async_ {
            CMD_FLAG_ASYNC
        } else {
            0
        }
    }
}

/// A one-dimensional copy as a graph node (stream capture).
fn copy_node(ctx: u64, dst: Loc, src: Loc, len: usize) -> NodeKind {
    NodeKind::Memcpy(MemcpyNode { ctx, dst, src, len: len as u64 })
}

/// Checks `[dst, dst + len)` and resolves the stream: (stream id, context).
fn device_target(dst: u64, len: u64, stream: CUstream, order: Order) -> CuRes<(u64, u64)> {
    let st = state::lock();
    let s = st.resolve_stream(stream, order.ptsz)?;
    st.check_device_range(dst, len)?;
    Ok(s)
}

/// Reports an error an earlier asynchronous call left, as a synchronous
/// call that reads device memory must.
fn pending(c: &Client) -> CuRes {
    match c.take_pending_error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Host to device.
///
/// # Safety
/// `src` is valid for reads of `len` bytes (for the async forms, until the
/// stream reaches the copy).
pub unsafe fn htod(dst: u64, src: *const c_void, len: usize, stream: CUstream, order: Order) -> CuRes {
    let c = session()?;
    let (sid, ctx) = device_target(dst, len as u64, stream, order)?;
    if len == 0 {
        return Ok(());
    }
    if src.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let node = || Ok(copy_node(ctx, Loc::Device(dst), Loc::Host(src as usize), len));
    if intercept(sid, ctx, !order.async_, node)? {
        return Ok(());
    }
    let m = |src: HostRef| MemcpyHtoD { dst: U64::new(dst), len: U64::new(len as u64), stream: U64::new(sid), src };
    let inline = HostRef { kind: U32::new(HOST_INLINE), resource: U32::new(0), offset: U64::new(0) };
    // A synchronous copy may return once the bytes are captured, and inline
    // capture is the cheapest way for small ones.
    let small = len <= MAX_INLINE_BYTES as usize;
    if !small || order.async_ {
        if let Some((res, off)) = c.find_pinned(src as usize, len) {
            let r = HostRef { kind: U32::new(HOST_RESOURCE), resource: U32::new(res), offset: U64::new(off) };
            c.enqueue(Opcode::MemcpyHtoD, order.flags(), ctx, &m(r), &[])?;
            // The synchronous API lets the caller reuse the buffer on return.
            return if order.async_ { Ok(()) } else { c.synchronize_transport() };
        }
    }
    // SAFETY: pageable source, readable for `len` bytes per the caller; it is
    // copied (inline or into staging) before this call returns.
    let bytes = unsafe { std::slice::from_raw_parts(src as *const u8, len) };
    if small {
        c.enqueue(Opcode::MemcpyHtoD, order.flags(), ctx, &m(inline), bytes)
    } else {
        c.htod_staged(ctx, dst, bytes, sid, order.flags())
    }
}

/// Device to host.
///
/// # Safety
/// `dst` is valid for writes of `len` bytes (for the async forms into pinned
/// memory, until the stream reaches the copy).
pub unsafe fn dtoh(dst: *mut c_void, src: u64, len: usize, stream: CUstream, order: Order) -> CuRes {
    let c = session()?;
    let (sid, ctx) = device_target(src, len as u64, stream, order)?;
    if len == 0 {
        return Ok(());
    }
    if dst.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let node = || Ok(copy_node(ctx, Loc::Host(dst as usize), Loc::Device(src), len));
    if intercept(sid, ctx, !order.async_, node)? {
        return Ok(());
    }
    let m = |dst: HostRef| MemcpyDtoH { src: U64::new(src), len: U64::new(len as u64), stream: U64::new(sid), dst };
    if let Some((res, off)) = c.find_pinned(dst as usize, len) {
        let r = HostRef { kind: U32::new(HOST_RESOURCE), resource: U32::new(res), offset: U64::new(off) };
        if order.async_ {
            return c.enqueue(Opcode::MemcpyDtoH, CMD_FLAG_ASYNC, ctx, &m(r), &[]);
        }
        c.call(Opcode::MemcpyDtoH, 0, ctx, &m(r), &[])?;
        return pending(c);
    }
    // Pageable memory: synchronous even for the async forms, as natively.
    if len <= MAX_INLINE_REPLY {
        let inline = HostRef { kind: U32::new(HOST_INLINE), resource: U32::new(0), offset: U64::new(0) };
        let data = c.call(Opcode::MemcpyDtoH, 0, ctx, &m(inline), &[])?;
        if data.len() != len {
            crate::log::warn("device-to-host reply has the wrong length");
            return Err(CUDA_ERROR_UNKNOWN);
        }
        // SAFETY: `dst` is writable for `len` bytes per the caller, and
        // `data` is a separate buffer of exactly `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, len) };
        return if order.async_ { Ok(()) } else { pending(c) };
    }
    // SAFETY: `dst` is writable for `len` bytes per the caller and not read
    // by anyone else while this synchronous copy runs.
    let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, len) };
    c.dtoh_staged(ctx, out, src, sid)
}

/// Device to device.
pub fn dtod(dst: u64, src: u64, len: usize, stream: CUstream, order: Order) -> CuRes {
    let c = session()?;
    let (sid, ctx) = {
        let st = state::lock();
        let s = st.resolve_stream(stream, order.ptsz)?;
        st.check_device_range(dst, len as u64)?;
        st.check_device_range(src, len as u64)?;
        s
    };
    if len == 0 {
        return Ok(());
    }
    let node = || Ok(copy_node(ctx, Loc::Device(dst), Loc::Device(src), len));
    if intercept(sid, ctx, !order.async_, node)? {
        return Ok(());
    }
    let m = MemcpyDtoD { dst: U64::new(dst), src: U64::new(src), len: U64::new(len as u64), stream: U64::new(sid) };
    c.enqueue(Opcode::MemcpyDtoD, order.flags(), ctx, &m, &[])
}

/// cuMemcpy/cuMemcpyAsync: with unified addressing the direction follows
/// from which pointers are device allocations the guest knows.
///
/// # Safety
/// Pointers that are not device allocations are valid host memory for `len`
/// bytes.
pub unsafe fn unified(dst: u64, src: u64, len: usize, stream: CUstream, order: Order) -> CuRes {
    let c = session()?;
    let (dst_dev, src_dev) = {
        let st = state::lock();
        (st.alloc_containing(dst).is_some(), st.alloc_containing(src).is_some())
    };
    match (dst_dev, src_dev) {
        (true, true) => dtod(dst, src, len, stream, order),
        // SAFETY: `src` is host memory per the caller.
        (true, false) => unsafe { htod(dst, src as usize as *const c_void, len, stream, order) },
        // SAFETY: `dst` is host memory per the caller.
        (false, true) => unsafe { dtoh(dst as usize as *mut c_void, src, len, stream, order) },
        (false, false) => {
            let (sid, ctx) = state::lock().resolve_stream(stream, order.ptsz)?;
            if len == 0 {
                return Ok(());
            }
            if dst == 0 || src == 0 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let host_to_host = || {
                crate::log::unsupported("host-to-host copies in stream capture");
                Err(CUDA_ERROR_NOT_SUPPORTED)
            };
            intercept(sid, ctx, !order.async_, host_to_host)?;
            // Stream order: earlier copies into either buffer finish first.
            c.sync_call(Opcode::StreamSynchronize, 0, ctx, &Id { id: U64::new(sid) })?;
            // SAFETY: both are host memory valid for `len` bytes per the
            // caller; `copy` tolerates overlap.
            unsafe { std::ptr::copy(src as usize as *const u8, dst as usize as *mut u8, len) };
            Ok(())
        }
    }
}

/// cuMemsetD8/16/32: `count` elements of `elem` bytes.
pub fn memset(dst: u64, value: u32, elem: u32, count: usize, stream: CUstream, order: Order) -> CuRes {
    let c = session()?;
    if dst & (elem as u64 - 1) != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let bytes = (count as u64).checked_mul(elem as u64).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let (sid, ctx) = device_target(dst, bytes, stream, order)?;
    if count == 0 {
        return Ok(());
    }
    let node = || {
        let (width, elem_size) = (count as u64, elem);
        Ok(NodeKind::Memset(MemsetNode { ctx, dst, pitch: bytes, value, elem_size, width, height: 1 }))
    };
    if intercept(sid, ctx, !order.async_, node)? {
        return Ok(());
    }
    let m = Memset {
        dst: U64::new(dst),
        count: U64::new(count as u64),
        stream: U64::new(sid),
        value: U32::new(value),
        elem_size: U32::new(elem),
    };
    c.enqueue(Opcode::Memset, order.flags(), ctx, &m, &[])
}

const NULL_STREAM: CUstream = std::ptr::null_mut();

// ---- host to device ----------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dstDevice: CUdeviceptr, srcHost: *const c_void, ByteCount: usize) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { htod(dstDevice, srcHost, ByteCount, NULL_STREAM, SYNC) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2_ptds(
    dstDevice: CUdeviceptr,
    srcHost: *const c_void,
    ByteCount: usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { htod(dstDevice, srcHost, ByteCount, NULL_STREAM, SYNC_PTDS) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD(
    dstDevice: CUdeviceptr_v1,
    srcHost: *const c_void,
    ByteCount: c_uint,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { htod(dstDevice as u64, srcHost, ByteCount as usize, NULL_STREAM, SYNC) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dstDevice: CUdeviceptr,
    srcHost: *const c_void,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { htod(dstDevice, srcHost, ByteCount, hStream, ASYNC) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2_ptsz(
    dstDevice: CUdeviceptr,
    srcHost: *const c_void,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { htod(dstDevice, srcHost, ByteCount, hStream, ASYNC_PTSZ) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync(
    dstDevice: CUdeviceptr_v1,
    srcHost: *const c_void,
    ByteCount: c_uint,
    hStream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { htod(dstDevice as u64, srcHost, ByteCount as usize, hStream, ASYNC) })
}

// ---- device to host ----------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dstHost: *mut c_void, srcDevice: CUdeviceptr, ByteCount: usize) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { dtoh(dstHost, srcDevice, ByteCount, NULL_STREAM, SYNC) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2_ptds(
    dstHost: *mut c_void,
    srcDevice: CUdeviceptr,
    ByteCount: usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { dtoh(dstHost, srcDevice, ByteCount, NULL_STREAM, SYNC_PTDS) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH(dstHost: *mut c_void, srcDevice: CUdeviceptr_v1, ByteCount: c_uint) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { dtoh(dstHost, srcDevice as u64, ByteCount as usize, NULL_STREAM, SYNC) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dstHost: *mut c_void,
    srcDevice: CUdeviceptr,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { dtoh(dstHost, srcDevice, ByteCount, hStream, ASYNC) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2_ptsz(
    dstHost: *mut c_void,
    srcDevice: CUdeviceptr,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { dtoh(dstHost, srcDevice, ByteCount, hStream, ASYNC_PTSZ) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync(
    dstHost: *mut c_void,
    srcDevice: CUdeviceptr_v1,
    ByteCount: c_uint,
    hStream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { dtoh(dstHost, srcDevice as u64, ByteCount as usize, hStream, ASYNC) })
}

// ---- device to device --------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dstDevice: CUdeviceptr, srcDevice: CUdeviceptr, ByteCount: usize) -> CUresult {
    ffi(|| dtod(dstDevice, srcDevice, ByteCount, NULL_STREAM, SYNC))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2_ptds(
    dstDevice: CUdeviceptr,
    srcDevice: CUdeviceptr,
    ByteCount: usize,
) -> CUresult {
    ffi(|| dtod(dstDevice, srcDevice, ByteCount, NULL_STREAM, SYNC_PTDS))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD(
    dstDevice: CUdeviceptr_v1,
    srcDevice: CUdeviceptr_v1,
    ByteCount: c_uint,
) -> CUresult {
    ffi(|| dtod(dstDevice as u64, srcDevice as u64, ByteCount as usize, NULL_STREAM, SYNC))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dstDevice: CUdeviceptr,
    srcDevice: CUdeviceptr,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    ffi(|| dtod(dstDevice, srcDevice, ByteCount, hStream, ASYNC))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2_ptsz(
    dstDevice: CUdeviceptr,
    srcDevice: CUdeviceptr,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    ffi(|| dtod(dstDevice, srcDevice, ByteCount, hStream, ASYNC_PTSZ))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync(
    dstDevice: CUdeviceptr_v1,
    srcDevice: CUdeviceptr_v1,
    ByteCount: c_uint,
    hStream: CUstream,
) -> CUresult {
    ffi(|| dtod(dstDevice as u64, srcDevice as u64, ByteCount as usize, hStream, ASYNC))
}

// ---- unified -----------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, ByteCount: usize) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { unified(dst, src, ByteCount, NULL_STREAM, SYNC) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, ByteCount: usize) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { unified(dst, src, ByteCount, NULL_STREAM, SYNC_PTDS) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAsync(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { unified(dst, src, ByteCount, hStream, ASYNC) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAsync_ptsz(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { unified(dst, src, ByteCount, hStream, ASYNC_PTSZ) })
}

// ---- memset ------------------------------------------------------------

macro_rules! memsets {
    ($($name:ident, $name_ptds:ident, $name_v1:ident, $async:ident, $async_ptsz:ident: $t:ty, $elem:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(dstDevice: CUdeviceptr, value: $t, N: usize) -> CUresult {
            ffi(|| memset(dstDevice, value as u32, $elem, N, NULL_STREAM, SYNC))
        }

        #[no_mangle]
        pub unsafe extern "C" fn $name_ptds(dstDevice: CUdeviceptr, value: $t, N: usize) -> CUresult {
            ffi(|| memset(dstDevice, value as u32, $elem, N, NULL_STREAM, SYNC_PTDS))
        }

        #[no_mangle]
        pub unsafe extern "C" fn $name_v1(dstDevice: CUdeviceptr_v1, value: $t, N: c_uint) -> CUresult {
            ffi(|| memset(dstDevice as u64, value as u32, $elem, N as usize, NULL_STREAM, SYNC))
        }

        #[no_mangle]
        pub unsafe extern "C" fn $async(dstDevice: CUdeviceptr, value: $t, N: usize, hStream: CUstream) -> CUresult {
            ffi(|| memset(dstDevice, value as u32, $elem, N, hStream, ASYNC))
        }

        #[no_mangle]
        pub unsafe extern "C" fn $async_ptsz(dstDevice: CUdeviceptr, value: $t, N: usize, hStream: CUstream) -> CUresult {
            ffi(|| memset(dstDevice, value as u32, $elem, N, hStream, ASYNC_PTSZ))
        }
    )*};
}

memsets! {
    cuMemsetD8_v2, cuMemsetD8_v2_ptds, cuMemsetD8, cuMemsetD8Async, cuMemsetD8Async_ptsz: c_uchar, 1;
    cuMemsetD16_v2, cuMemsetD16_v2_ptds, cuMemsetD16, cuMemsetD16Async, cuMemsetD16Async_ptsz: c_ushort, 2;
    cuMemsetD32_v2, cuMemsetD32_v2_ptds, cuMemsetD32, cuMemsetD32Async, cuMemsetD32Async_ptsz: c_uint, 4;
}
