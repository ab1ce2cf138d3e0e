//! The in-VM transport: the stock Linux virtio-gpu driver through its DRM
//! render node. Shared buffers are 3D buffer resources (guest pages the
//! backend reaches through guest RAM) mapped into this process; batches are
//! EXECBUFFERs, which the kernel turns into SUBMIT_3D in this file's context.

use super::{SharedBuf, Transport, TransportError};
use protocol::{CAPSET_ID, CAPSET_VERSION};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// The virtgpu DRM uAPI (include/uapi/drm/virtgpu_drm.h), as the 6.1 kernel
// defines it; later kernels only append fields, which DRM zero-fills.
#[repr(C)]
#[derive(Default)]
struct DrmVirtgpuGetparam {
    param: u64,
    value: u64,
}

#[repr(C)]
#[derive(Default)]
struct DrmVirtgpuGetCaps {
    cap_set_id: u32,
    cap_set_ver: u32,
    addr: u64,
    size: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct DrmVirtgpuResourceCreate {
    target: u32,
    format: u32,
    bind: u32,
    width: u32,
    height: u32,
    depth: u32,
    array_size: u32,
    last_level: u32,
    nr_samples: u32,
    flags: u32,
    bo_handle: u32,
    res_handle: u32,
    size: u32,
    stride: u32,
}

#[repr(C)]
#[derive(Default)]
struct DrmVirtgpuMap {
    offset: u64,
    handle: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct DrmVirtgpuExecbuffer {
    flags: u32,
    size: u32,
    command: u64,
    bo_handles: u64,
    num_bo_handles: u32,
    fence_fd: i32,
    ring_idx: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct DrmVirtgpu3dWait {
    handle: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct DrmGemClose {
    handle: u32,
    pad: u32,
}

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | ((b'd' as u64) << 8) | nr
}
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | ((b'd' as u64) << 8) | nr
}
const DRM_COMMAND_BASE: u64 = 0x40;
const IOCTL_GEM_CLOSE: u64 = iow(0x09, core::mem::size_of::<DrmGemClose>());
const IOCTL_MAP: u64 = iowr(DRM_COMMAND_BASE + 0x01, core::mem::size_of::<DrmVirtgpuMap>());
const IOCTL_EXECBUFFER: u64 = iowr(DRM_COMMAND_BASE + 0x02, core::mem::size_of::<DrmVirtgpuExecbuffer>());
const IOCTL_GETPARAM: u64 = iowr(DRM_COMMAND_BASE + 0x03, core::mem::size_of::<DrmVirtgpuGetparam>());
const IOCTL_RESOURCE_CREATE: u64 = iowr(DRM_COMMAND_BASE + 0x04, core::mem::size_of::<DrmVirtgpuResourceCreate>());
const IOCTL_WAIT: u64 = iowr(DRM_COMMAND_BASE + 0x08, core::mem::size_of::<DrmVirtgpu3dWait>());
const IOCTL_GET_CAPS: u64 = iowr(DRM_COMMAND_BASE + 0x09, core::mem::size_of::<DrmVirtgpuGetCaps>());
const PARAM_3D_FEATURES: u64 = 1;
const PARAM_CAPSET_QUERY_FIX: u64 = 2;

pub struct VirtioTransport {
    fd: OwnedFd,
    path: String,
    /// GEM handle of the buffer every batch names, so waiting on it waits for
    /// the last batch.
    fence_bo: std::sync::atomic::AtomicU32,
}

fn ioctl<T>(fd: &OwnedFd, req: u64, arg: &mut T, op: &'static str) -> Result<(), TransportError> {
    loop {
        // SAFETY: `arg` is a live, correctly sized struct for this request
        // number (the size is encoded in `req` from the same type).
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(TransportError::Io { op, source: e });
    }
}

impl VirtioTransport {
    /// Opens `GPUVISOR_RENDER_NODE`, or the first render node whose device
    /// offers the gpuvisor capset.
    pub fn open_default() -> Result<Self, TransportError> {
        if let Ok(p) = std::env::var("GPUVISOR_RENDER_NODE") {
            return Self::open(&p);
        }
        let mut why = String::from("no /dev/dri/renderD* node");
        for n in 128..136 {
            let p = format!("/dev/dri/renderD{n}");
            if !std::path::Path::new(&p).exists() {
                continue;
            }
            match Self::open(&p) {
                Ok(t) => return Ok(t),
                Err(e) => why = format!("{p}: {e}"),
            }
        }
        Err(TransportError::NoDevice(why))
    }

    pub fn open(path: &str) -> Result<Self, TransportError> {
        let c = CString::new(path).map_err(|_| TransportError::NoDevice(path.into()))?;
        // SAFETY: a NUL-terminated path and plain flags.
        let raw = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(TransportError::Io { op: "open render node", source: std::io::Error::last_os_error() });
        }
        // SAFETY: `raw` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let t = VirtioTransport { fd, path: path.to_string(), fence_bo: 0.into() };
        let mut has3d: i32 = 0;
        let mut gp = DrmVirtgpuGetparam { param: PARAM_3D_FEATURES, value: &mut has3d as *mut i32 as u64 };
        ioctl(&t.fd, IOCTL_GETPARAM, &mut gp, "GETPARAM 3D_FEATURES")?;
        if has3d == 0 {
            return Err(TransportError::NoDevice(format!("{path}: virtio-gpu without 3D contexts (not gpuvisor)")));
        }
        let mut fix: i32 = 0;
        let mut gp = DrmVirtgpuGetparam { param: PARAM_CAPSET_QUERY_FIX, value: &mut fix as *mut i32 as u64 };
        let _ = ioctl(&t.fd, IOCTL_GETPARAM, &mut gp, "GETPARAM CAPSET_QUERY_FIX");
        t.capset()?;
        Ok(t)
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Transport for VirtioTransport {
    fn name(&self) -> &'static str {
        "virtio"
    }

    fn capset(&self) -> Result<Vec<u8>, TransportError> {
        let mut buf = vec![0u8; core::mem::size_of::<protocol::Capset>()];
        let mut gc = DrmVirtgpuGetCaps {
            cap_set_id: CAPSET_ID,
            cap_set_ver: CAPSET_VERSION,
            addr: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            pad: 0,
        };
        ioctl(&self.fd, IOCTL_GET_CAPS, &mut gc, "GET_CAPS (gpuvisor capset)")
            .map_err(|e| TransportError::NoDevice(format!("{}: no gpuvisor capset ({e})", self.path)))?;
        Ok(buf)
    }

    fn alloc_shared(&self, len: usize) -> Result<SharedBuf, TransportError> {
        let size = len.checked_next_multiple_of(4096).ok_or(TransportError::OutOfMemory(len))?;
        let size32 = u32::try_from(size).map_err(|_| TransportError::OutOfMemory(len))?;
        let mut rc = DrmVirtgpuResourceCreate {
            target: protocol::virtio_gpu::PIPE_BUFFER,
            format: protocol::virtio_gpu::FORMAT_R8_UNORM,
            width: size32,
            height: 1,
            depth: 1,
            array_size: 1,
            size: size32,
            ..Default::default()
        };
        ioctl(&self.fd, IOCTL_RESOURCE_CREATE, &mut rc, "RESOURCE_CREATE")?;
        let handle = rc.bo_handle;
        let close = |h: u32| {
            let mut c = DrmGemClose { handle: h, pad: 0 };
            let _ = ioctl(&self.fd, IOCTL_GEM_CLOSE, &mut c, "GEM_CLOSE");
        };
        let mut map = DrmVirtgpuMap { handle, ..Default::default() };
        if let Err(e) = ioctl(&self.fd, IOCTL_MAP, &mut map, "VIRTGPU_MAP") {
            close(handle);
            return Err(e);
        }
        // SAFETY: mapping the GEM object at the offset the kernel gave us;
        // the kernel checks the size against the object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                map.offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            close(handle);
            return Err(TransportError::Io { op: "mmap shared buffer", source: e });
        }
        Ok(SharedBuf { resource_id: rc.res_handle, ptr: ptr as *mut u8, len: size, handle: handle as u64 })
    }

    fn free_shared(&self, buf: &SharedBuf) {
        // SAFETY: unmapping exactly the mapping alloc_shared made.
        unsafe { libc::munmap(buf.ptr as *mut libc::c_void, buf.len) };
        let mut c = DrmGemClose { handle: buf.handle as u32, pad: 0 };
        let _ = ioctl(&self.fd, IOCTL_GEM_CLOSE, &mut c, "GEM_CLOSE");
    }

    fn submit(&self, batch: &[u8], _resources: &[&SharedBuf]) -> Result<(), TransportError> {
        let bo = self.fence_bo.load(std::sync::atomic::Ordering::Relaxed);
        let handles = [bo];
        let mut eb = DrmVirtgpuExecbuffer {
            size: u32::try_from(batch.len()).map_err(|_| TransportError::Rejected("batch too large"))?,
            command: batch.as_ptr() as u64,
            bo_handles: if bo != 0 { handles.as_ptr() as u64 } else { 0 },
            num_bo_handles: (bo != 0) as u32,
            fence_fd: -1,
            ..Default::default()
        };
        ioctl(&self.fd, IOCTL_EXECBUFFER, &mut eb, "EXECBUFFER")
    }

    fn set_fence_buffer(&self, buf: &SharedBuf) {
        self.fence_bo.store(buf.handle as u32, std::sync::atomic::Ordering::Relaxed);
    }

    fn wait_idle(&self) -> Result<(), TransportError> {
        let bo = self.fence_bo.load(std::sync::atomic::Ordering::Relaxed);
        if bo == 0 {
            return Ok(());
        }
        loop {
            let mut w = DrmVirtgpu3dWait { handle: bo, flags: 0 };
            match ioctl(&self.fd, IOCTL_WAIT, &mut w, "VIRTGPU_WAIT") {
                Ok(()) => return Ok(()),
                // The kernel gives up after 15 s with EBUSY; long kernels are legal.
                Err(TransportError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// One kernel wait: it gives up after its own 15 s (EBUSY), so a frozen
    /// backend is noticed that late at the earliest over virtio.
    fn wait_idle_for(&self, _limit: std::time::Duration) -> Result<bool, TransportError> {
        let bo = self.fence_bo.load(std::sync::atomic::Ordering::Relaxed);
        if bo == 0 {
            return Ok(true);
        }
        let mut w = DrmVirtgpu3dWait { handle: bo, flags: 0 };
        match ioctl(&self.fd, IOCTL_WAIT, &mut w, "VIRTGPU_WAIT") {
            Ok(()) => Ok(true),
            Err(TransportError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
