//! Peer access for a VM with one device, answered as CUDA answers it for a
//! device and itself: a device is not its own peer (cuDeviceCanAccessPeer
//! says 0), so peer access between contexts cannot be enabled, and peer
//! attributes of a device with itself are an invalid-device error. Copies
//! between contexts of the one device are ordinary device-to-device copies.

use super::copy::{dtod, Order};
use super::device::check_device;
use super::state;
use super::types::*;
use super::{ffi, id_of, session, CuRes, Out};
use protocol::cuda::*;
use std::ffi::{c_int, c_uint};

/// The current context and a peer context argument, which must be another
/// valid context.
/// `ctx` is the calling thread's current context.
fn is_current(ctx: CUcontext) -> bool {
    state::lock().current().is_ok_and(|me| me == id_of(ctx))
}

fn contexts(peer: CUcontext) -> CuRes<(u64, u64)> {
    session()?;
    let st = state::lock();
    let me = st.current()?;
    let peer = id_of(peer);
    if peer == me || !st.ctx_valid(peer) {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    Ok((me, peer))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxEnablePeerAccess(peerContext: CUcontext, Flags: c_uint) -> CUresult {
    ffi(|| {
        match contexts(peerContext) {
            // NVIDIA's driver (580, H200) answers a context asking for
            // access to itself this way, not with INVALID_CONTEXT.
            Err(CUDA_ERROR_INVALID_CONTEXT) if is_current(peerContext) => {
                return Err(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED)
            }
            r => r?,
        };
        if Flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Err(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDisablePeerAccess(peerContext: CUcontext) -> CUresult {
    ffi(|| {
        contexts(peerContext)?;
        Err(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED)
    })
}

/// Peer attributes exist between two different devices; the VM has one.
fn peer_pair(src: CUdevice, dst: CUdevice) -> CuRes {
    check_device(src)?;
    check_device(dst)?;
    Err(CUDA_ERROR_INVALID_DEVICE)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetP2PAttribute(
    value: *mut c_int,
    _attrib: c_int,
    srcDevice: CUdevice,
    dstDevice: CUdevice,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        unsafe { Out::new(value) }?;
        peer_pair(srcDevice, dstDevice)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetP2PAtomicCapabilities(
    capabilities: *mut c_uint,
    _operations: *const std::ffi::c_void,
    _count: c_uint,
    srcDevice: CUdevice,
    dstDevice: CUdevice,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        unsafe { Out::new(capabilities) }?;
        peer_pair(srcDevice, dstDevice)
    })
}

/// A copy between contexts of the one device.
fn copy_peer(
    dst: CUdeviceptr,
    dst_ctx: CUcontext,
    src: CUdeviceptr,
    src_ctx: CUcontext,
    n: usize,
    stream: CUstream,
    order: Order,
) -> CuRes {
    session()?;
    {
        let st = state::lock();
        if !st.ctx_valid(id_of(dst_ctx)) || !st.ctx_valid(id_of(src_ctx)) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
    }
    dtod(dst, src, n, stream, order)
}

const SYNC: Order = Order { async_: false, ptsz: false };

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyPeer(
    dstDevice: CUdeviceptr,
    dstContext: CUcontext,
    srcDevice: CUdeviceptr,
    srcContext: CUcontext,
    ByteCount: usize,
) -> CUresult {
    ffi(|| copy_peer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, std::ptr::null_mut(), SYNC))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyPeer_ptds(
    dstDevice: CUdeviceptr,
    dstContext: CUcontext,
    srcDevice: CUdeviceptr,
    srcContext: CUcontext,
    ByteCount: usize,
) -> CUresult {
    let order = Order { async_: false, ptsz: true };
    ffi(|| copy_peer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, std::ptr::null_mut(), order))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyPeerAsync(
    dstDevice: CUdeviceptr,
    dstContext: CUcontext,
    srcDevice: CUdeviceptr,
    srcContext: CUcontext,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    let order = Order { async_: true, ptsz: false };
    ffi(|| copy_peer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, hStream, order))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyPeerAsync_ptsz(
    dstDevice: CUdeviceptr,
    dstContext: CUcontext,
    srcDevice: CUdeviceptr,
    srcContext: CUcontext,
    ByteCount: usize,
    hStream: CUstream,
) -> CUresult {
    let order = Order { async_: true, ptsz: true };
    ffi(|| copy_peer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, hStream, order))
}

/// These exports for cuGetProcAddress: (name, the CUDA version of the ABI,
/// symbol), as the CUDA headers' typedefs give them.
pub fn rows() -> Vec<super::proc_address::ProcRow> {
    use super::proc_address::ProcRow;
    vec![
        ProcRow::new("cuMemcpyPeer", 4000, "cuMemcpyPeer", cuMemcpyPeer as *const () as usize, false),
        ProcRow::new("cuMemcpyPeer", 7000, "cuMemcpyPeer_ptds", cuMemcpyPeer_ptds as *const () as usize, true),
        ProcRow::new("cuMemcpyPeerAsync", 4000, "cuMemcpyPeerAsync", cuMemcpyPeerAsync as *const () as usize, false),
        ProcRow::new(
            "cuMemcpyPeerAsync",
            7000,
            "cuMemcpyPeerAsync_ptsz",
            cuMemcpyPeerAsync_ptsz as *const () as usize,
            true,
        ),
        ProcRow::new(
            "cuCtxDisablePeerAccess",
            4000,
            "cuCtxDisablePeerAccess",
            cuCtxDisablePeerAccess as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuCtxEnablePeerAccess",
            4000,
            "cuCtxEnablePeerAccess",
            cuCtxEnablePeerAccess as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuDeviceGetP2PAtomicCapabilities",
            13000,
            "cuDeviceGetP2PAtomicCapabilities",
            cuDeviceGetP2PAtomicCapabilities as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuDeviceGetP2PAttribute",
            8000,
            "cuDeviceGetP2PAttribute",
            cuDeviceGetP2PAttribute as *const () as usize,
            false,
        ),
    ]
}
