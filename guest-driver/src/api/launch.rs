//! Kernel launches: the arguments are packed into the parameter buffer the
//! function's cached layout describes (or taken as given through `extra`),
//! and the launch is queued. A launch never waits for the backend and, past
//! its first use on a thread, allocates nothing.

use super::graph::{KernelNode, NodeKind};
use super::state::{self, FuncInfo, Param};
use super::types::*;
use super::{ffi, id_of, session, CuRes};
use crate::client::Client;
use protocol::cuda::*;
use protocol::{
    LaunchExtra, LaunchKernel, LaunchKernelEx, Opcode, LAUNCH_F_COOPERATIVE, MAX_CLUSTER_BLOCKS, MAX_PARAM_BYTES,
};
use std::cell::RefCell;
use std::ffi::{c_uint, c_void};
use std::ptr::null_mut;
use zerocopy::little_endian::{U32, U64};

/// Longest `extra` list read: each option is a key and a value, and there
/// are two options.
const MAX_EXTRA_WORDS: usize = 16;

thread_local! {
    /// The packed parameters of this thread's launches, reused.
    static PARAMS: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(4096));
}

/// Packs a launch's arguments into `buf`: `kernel_params[i]` points at
/// parameter `i`, whose bytes go to its offset; or `extra` hands over a
/// packed buffer (`CU_LAUNCH_PARAM_BUFFER_POINTER`, `_BUFFER_SIZE`, `_END`),
/// copied as is. Padding between parameters is zero.
///
/// # Safety
/// `kernel_params` is NULL or holds one pointer per parameter, each readable
/// for that parameter's size; `extra` is NULL or a `CU_LAUNCH_PARAM_END`
/// terminated list whose buffer pointer is readable for the size given.
pub unsafe fn pack_params(
    buf: &mut Vec<u8>,
    params: &[Param],
    total: usize,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuRes {
    buf.clear();
    if total > MAX_PARAM_BYTES as usize {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    match (kernel_params.is_null(), extra.is_null()) {
        (false, false) => Err(CUDA_ERROR_INVALID_VALUE),
        (true, true) => {
            if params.is_empty() {
                Ok(())
            } else {
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        }
        (false, true) => {
            buf.resize(total, 0);
            for (i, p) in params.iter().enumerate() {
                // SAFETY: one pointer per parameter, per the caller.
                let src = unsafe { *kernel_params.add(i) } as *const u8;
                if src.is_null() {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                let (off, size) = (p.offset as usize, p.size as usize);
                let dst = buf.get_mut(off..off + size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
                // SAFETY: `src` is readable for `size` bytes per the caller;
                // `dst` is exactly `size` bytes of our own buffer.
                unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), size) };
            }
            Ok(())
        }
        (true, false) => {
            let (mut data, mut size) = (None, None);
            let mut i = 0;
            loop {
                if i >= MAX_EXTRA_WORDS {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                // SAFETY: the list runs up to its END key, per the caller.
                let key = unsafe { *extra.add(i) } as usize;
                if key == CU_LAUNCH_PARAM_END {
                    break;
                }
                // SAFETY: every key but END is followed by its value.
                let value = unsafe { *extra.add(i + 1) };
                match key {
                    CU_LAUNCH_PARAM_BUFFER_POINTER => data = Some(value as *const u8),
                    CU_LAUNCH_PARAM_BUFFER_SIZE => {
                        if value.is_null() {
                            return Err(CUDA_ERROR_INVALID_VALUE);
                        }
                        // SAFETY: the value of BUFFER_SIZE points at a size_t.
                        size = Some(unsafe { (value as *const usize).read_unaligned() });
                    }
                    _ => return Err(CUDA_ERROR_INVALID_VALUE),
                }
                i += 2;
            }
            let (Some(data), Some(size)) = (data, size) else {
                return Err(CUDA_ERROR_INVALID_VALUE);
            };
            if size > MAX_PARAM_BYTES as usize || (size > 0 && data.is_null()) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            if size > 0 {
                // SAFETY: the buffer is readable for `size` bytes per the caller.
                buf.extend_from_slice(unsafe { std::slice::from_raw_parts(data, size) });
            }
            Ok(())
        }
    }
}

/// Checks the launch geometry against the device's limits, as the driver
/// does before queuing anything.
pub(super) fn check_geometry(grid: [u32; 3], block: [u32; 3]) -> CuRes {
    let c = session()?;
    if grid.contains(&0) || block.contains(&0) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let attr = |a: usize| c.facts.attr(a).filter(|v| *v > 0).map(|v| v as u64);
    for i in 0..3 {
        if attr(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X + i).is_some_and(|m| block[i] as u64 > m)
            || attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X + i).is_some_and(|m| grid[i] as u64 > m)
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    }
    let threads = block.iter().map(|&b| b as u64).product::<u64>();
    if attr(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK).is_some_and(|m| threads > m) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

/// Checks a cluster or cooperative launch as the driver does before it
/// queues it: the backend must run them, the grid must be a multiple of the
/// cluster, and no GPU takes clusters past [`MAX_CLUSTER_BLOCKS`]. The
/// device's own limit for the function (8, or 16 with non-portable sizes
/// allowed) and a cooperative grid's size are the backend's checks.
fn check_launch_ex(c: &Client, grid: [u32; 3], extra: &LaunchExtra) -> CuRes {
    if !c.has_launch_ex() {
        crate::log::unsupported("cuLaunchKernelEx with a cluster or cooperative launch (the backend predates them)");
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let cluster = extra.cluster();
    if extra.cluster_blocks() > MAX_CLUSTER_BLOCKS || grid.iter().zip(cluster).any(|(g, c)| c == 0 || g % c != 0) {
        return Err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
    }
    Ok(())
}

/// Checks a launch's dynamic shared memory against the function's limit
/// (raised through cuFuncSetAttribute), else what a block gets without
/// opting in.
pub(super) fn check_shared_mem(c: &Client, fi: &FuncInfo, shared_mem: u32) -> CuRes {
    let max_dynamic = match fi.attrs[CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES] {
        m if m > 0 => m as i64,
        _ => match c.facts.attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK) {
            Some(d) if d > 0 => d as i64 - fi.attrs[CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES].max(0) as i64,
            _ => i64::MAX,
        },
    };
    if shared_mem as i64 > max_dynamic {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

/// Queues a launch of function `f`; `ex` is its cluster and cooperative
/// flag ([`LaunchExtra::PLAIN`] for cuLaunchKernel).
///
/// # Safety
/// As for [`pack_params`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn launch(
    f: u64,
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem: u32,
    stream: CUstream,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
    ptsz: bool,
    ex: LaunchExtra,
) -> CuRes {
    let c = session()?;
    check_geometry(grid, block)?;
    if !ex.is_plain() {
        check_launch_ex(c, grid, &ex)?;
    }
    let given = f;
    PARAMS.with(|cell| {
        let mut buf = cell.try_borrow_mut().map_err(|_| CUDA_ERROR_UNKNOWN)?;
        let (f, sid, ctx) = loop {
            let st = state::lock();
            let (sid, ctx) = match st.functions.contains_key(&f) || st.kernels.contains_key(&f) {
                true => st.resolve_stream(stream, ptsz)?,
                false => return Err(CUDA_ERROR_INVALID_HANDLE),
            };
            let Some(f) = st.launchable(f, ctx) else {
                // A library kernel not used in this context before: its
                // module is loaded there once, then the launch goes on.
                drop(st);
                super::module::kernel_function(f, ctx)?;
                continue;
            };
            let fi = st.functions.get(&f).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
            check_shared_mem(c, fi, shared_mem)?;
            // SAFETY: forwarded from the caller.
            unsafe { pack_params(&mut buf, &fi.params, fi.param_bytes, kernel_params, extra) }?;
            break (f, sid, ctx);
        };
        let node = || {
            let params = buf.clone();
            Ok(NodeKind::Kernel(KernelNode { given, func: f, ctx, grid, block, shared_mem, params, launch_extra: ex }))
        };
        if super::capture::intercept(sid, ctx, false, node)? {
            return Ok(());
        }
        let l = LaunchKernel {
            func_id: U64::new(f),
            stream: U64::new(sid),
            grid: grid.map(U32::new),
            block: block.map(U32::new),
            shared_mem: U32::new(shared_mem),
            params_len: U32::new(buf.len() as u32),
        };
        // Plain launches keep the shorter command.
        match ex.is_plain() {
            true => c.enqueue(Opcode::LaunchKernel, 0, ctx, &l, &buf),
            false => c.enqueue(Opcode::LaunchKernelEx, 0, ctx, &LaunchKernelEx { launch: l, extra: ex }, &buf),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: CUfunction,
    gridDimX: c_uint,
    gridDimY: c_uint,
    gridDimZ: c_uint,
    blockDimX: c_uint,
    blockDimY: c_uint,
    blockDimZ: c_uint,
    sharedMemBytes: c_uint,
    hStream: CUstream,
    kernelParams: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    ffi(|| {
        let (grid, block) = ([gridDimX, gridDimY, gridDimZ], [blockDimX, blockDimY, blockDimZ]);
        // SAFETY: the caller's contract, forwarded.
        unsafe {
            launch(id_of(f), grid, block, sharedMemBytes, hStream, kernelParams, extra, false, LaunchExtra::PLAIN)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel_ptsz(
    f: CUfunction,
    gridDimX: c_uint,
    gridDimY: c_uint,
    gridDimZ: c_uint,
    blockDimX: c_uint,
    blockDimY: c_uint,
    blockDimZ: c_uint,
    sharedMemBytes: c_uint,
    hStream: CUstream,
    kernelParams: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    ffi(|| {
        let (grid, block) = ([gridDimX, gridDimY, gridDimZ], [blockDimX, blockDimY, blockDimZ]);
        // SAFETY: the caller's contract, forwarded.
        unsafe { launch(id_of(f), grid, block, sharedMemBytes, hStream, kernelParams, extra, true, LaunchExtra::PLAIN) }
    })
}

/// cuLaunchKernel as a cooperative launch: every block resident at once, so
/// grid-wide synchronisation works; a grid too large for that is the
/// device's CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    f: CUfunction,
    gridDimX: c_uint,
    gridDimY: c_uint,
    gridDimZ: c_uint,
    blockDimX: c_uint,
    blockDimY: c_uint,
    blockDimZ: c_uint,
    sharedMemBytes: c_uint,
    hStream: CUstream,
    kernelParams: *mut *mut c_void,
) -> CUresult {
    ffi(|| {
        let (grid, block) = ([gridDimX, gridDimY, gridDimZ], [blockDimX, blockDimY, blockDimZ]);
        let ex = LaunchExtra::new([1; 3], LAUNCH_F_COOPERATIVE);
        // SAFETY: the caller's contract, forwarded; there is no `extra`.
        unsafe { launch(id_of(f), grid, block, sharedMemBytes, hStream, kernelParams, null_mut(), false, ex) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchCooperativeKernel_ptsz(
    f: CUfunction,
    gridDimX: c_uint,
    gridDimY: c_uint,
    gridDimZ: c_uint,
    blockDimX: c_uint,
    blockDimY: c_uint,
    blockDimZ: c_uint,
    sharedMemBytes: c_uint,
    hStream: CUstream,
    kernelParams: *mut *mut c_void,
) -> CUresult {
    ffi(|| {
        let (grid, block) = ([gridDimX, gridDimY, gridDimZ], [blockDimX, blockDimY, blockDimZ]);
        let ex = LaunchExtra::new([1; 3], LAUNCH_F_COOPERATIVE);
        // SAFETY: the caller's contract, forwarded; there is no `extra`.
        unsafe { launch(id_of(f), grid, block, sharedMemBytes, hStream, kernelParams, null_mut(), true, ex) }
    })
}

/// # Safety
/// `config` is NULL or a `CUlaunchConfig`; the rest as for [`pack_params`].
unsafe fn launch_ex(
    config: *const CUlaunchConfig,
    f: CUfunction,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
    ptsz: bool,
) -> CuRes {
    if config.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL, a CUlaunchConfig per the CUDA API.
    let cfg = unsafe { &*config };
    let attrs: &[CUlaunchAttribute] = match cfg.numAttrs {
        0 => &[],
        _ if cfg.attrs.is_null() => return Err(CUDA_ERROR_INVALID_VALUE),
        // SAFETY: numAttrs attributes at attrs, per the CUDA API.
        n => unsafe { std::slice::from_raw_parts(cfg.attrs as *const CUlaunchAttribute, n as usize) },
    };
    let mut events = Vec::new();
    let (mut cluster, mut launch_flags) = ([1u32; 3], 0u32);
    for a in attrs {
        match launch_attribute(a)? {
            LaunchAttr::Same => {}
            LaunchAttr::RecordAfter(event, flags) => events.push((event, flags)),
            LaunchAttr::Cluster(dims) => cluster = dims,
            LaunchAttr::Cooperative(on) => launch_flags = if on { LAUNCH_F_COOPERATIVE } else { 0 },
        }
    }
    let ex = LaunchExtra::new(cluster, launch_flags);
    let grid = [cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ];
    let block = [cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ];
    // SAFETY: forwarded from the caller.
    unsafe { launch(id_of(f), grid, block, cfg.sharedMemBytes, cfg.hStream, kernel_params, extra, ptsz, ex) }?;
    for (event, flags) in events {
        crate::api::event::record(event, cfg.hStream, flags, ptsz)?;
    }
    Ok(())
}

/// What a launch attribute asks of a launch on a vGPU.
#[derive(Debug, PartialEq)]
pub(super) enum LaunchAttr {
    /// A hint, or a request a plain launch already meets.
    Same,
    /// An event to fire once the kernel's blocks have started, or all have
    /// triggered it: recording it after the launch fires it later, at the
    /// kernel's end, which every waiter on it still sees in order.
    RecordAfter(CUevent, c_uint),
    /// Thread block clusters of these dimensions (none zero).
    Cluster([u32; 3]),
    /// A cooperative launch, or not.
    Cooperative(bool),
}

/// Checks one `CUlaunchAttribute` of `cuLaunchKernelEx`. Hints (cache
/// policy, priority, scheduling and carveout preferences, memory
/// synchronisation domains, which only narrow what fences wait for) and
/// programmatic stream serialization (the kernel then simply starts after
/// its predecessor ends, and its grid-dependency waits return at once) keep
/// the plain launch's meaning. Cluster dimensions and cooperative launches
/// travel to the backend with the launch (`LaunchKernelEx`).
pub(super) fn launch_attribute(a: &CUlaunchAttribute) -> CuRes<LaunchAttr> {
    let word = |i: usize| u32::from_le_bytes([a.value[i], a.value[i + 1], a.value[i + 2], a.value[i + 3]]);
    let pointer = || usize::from_le_bytes(a.value[..8].try_into().unwrap_or([0; 8]));
    match a.id {
        // IGNORE, ACCESS_POLICY_WINDOW, SYNCHRONIZATION_POLICY, CLUSTER_SCHEDULING_POLICY_PREFERENCE,
        // PROGRAMMATIC_STREAM_SERIALIZATION, PRIORITY, MEM_SYNC_DOMAIN_MAP, MEM_SYNC_DOMAIN,
        // PREFERRED_CLUSTER_DIMENSION, PREFERRED_SHARED_MEMORY_CARVEOUT, NVLINK_UTIL_CENTRIC_SCHEDULING
        0 | 1 | 3 | 5 | 6 | 8 | 9 | 10 | 11 | 14 | 16 => Ok(LaunchAttr::Same),
        // COOPERATIVE (an int)
        2 => Ok(LaunchAttr::Cooperative(word(0) != 0)),
        // CLUSTER_DIMENSION {x, y, z}
        4 => match [word(0), word(4), word(8)] {
            dims if dims.contains(&0) => Err(CUDA_ERROR_INVALID_VALUE),
            dims => Ok(LaunchAttr::Cluster(dims)),
        },
        // PROGRAMMATIC_EVENT {event, flags, triggerAtBlockStart};
        // LAUNCH_COMPLETION_EVENT {event, flags}
        7 | 12 => Ok(LaunchAttr::RecordAfter(pointer() as CUevent, word(8))),
        // DEVICE_UPDATABLE_KERNEL_NODE is for graph nodes only.
        13 => Err(CUDA_ERROR_INVALID_VALUE),
        id => {
            crate::log::unsupported(&format!("cuLaunchKernelEx launch attribute id {id}"));
            Err(CUDA_ERROR_NOT_SUPPORTED)
        }
    }
}

/// cuLaunchKernel with launch attributes: hints are taken as hints, events
/// are recorded after the launch, clusters and cooperative launches go to
/// the backend with the launch (see `launch_attribute`).
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const CUlaunchConfig,
    f: CUfunction,
    kernelParams: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { launch_ex(config, f, kernelParams, extra, false) })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx_ptsz(
    config: *const CUlaunchConfig,
    f: CUfunction,
    kernelParams: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { launch_ex(config, f, kernelParams, extra, true) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (int32 a, double* b, char c, float4-aligned 16-byte struct d): the
    /// offsets a cubin's .nv.info gives for that signature.
    fn layout() -> Vec<Param> {
        vec![
            Param { offset: 0, size: 4 },
            Param { offset: 8, size: 8 },
            Param { offset: 16, size: 1 },
            Param { offset: 32, size: 16 },
        ]
    }

    #[test]
    fn kernel_params_go_to_their_aligned_offsets() {
        let a: i32 = -7;
        let b: u64 = 0x1122_3344_5566_7788;
        let c: u8 = 0xAB;
        let d: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let mut args: [*mut c_void; 4] = [
            &a as *const i32 as *mut c_void,
            &b as *const u64 as *mut c_void,
            &c as *const u8 as *mut c_void,
            d.as_ptr() as *mut c_void,
        ];
        let params = layout();
        let total = state::param_bytes(&params);
        assert_eq!(total, 48);
        let mut buf = vec![0xEEu8; 3]; // stale content is cleared
                                       // SAFETY: four valid argument pointers of the layout's sizes.
        unsafe { pack_params(&mut buf, &params, total, args.as_mut_ptr(), std::ptr::null_mut()) }.unwrap();
        assert_eq!(buf.len(), 48);
        assert_eq!(&buf[0..4], &a.to_le_bytes());
        assert_eq!(&buf[4..8], &[0; 4], "padding is zero");
        assert_eq!(&buf[8..16], &b.to_le_bytes());
        assert_eq!(buf[16], 0xAB);
        assert!(buf[17..32].iter().all(|&x| x == 0));
        assert_eq!(&buf[32..48], &d);
    }

    #[test]
    fn extra_buffer_is_copied_as_is() {
        let packed: Vec<u8> = (0..24).collect();
        let size: usize = packed.len();
        let mut extra: [*mut c_void; 5] = [
            CU_LAUNCH_PARAM_BUFFER_POINTER as *mut c_void,
            packed.as_ptr() as *mut c_void,
            CU_LAUNCH_PARAM_BUFFER_SIZE as *mut c_void,
            &size as *const usize as *mut c_void,
            CU_LAUNCH_PARAM_END as *mut c_void,
        ];
        let mut buf = Vec::new();
        // SAFETY: a well-formed extra list.
        unsafe { pack_params(&mut buf, &layout(), 48, std::ptr::null_mut(), extra.as_mut_ptr()) }.unwrap();
        assert_eq!(buf, packed);
    }

    fn attr(id: c_uint, words: &[u32]) -> CUlaunchAttribute {
        let mut a = CUlaunchAttribute { id, pad: [0; 4], value: [0; 64] };
        for (i, w) in words.iter().enumerate() {
            a.value[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        a
    }

    #[test]
    fn clusters_and_cooperative_launches_are_carried_and_hints_are_hints() {
        assert_eq!(launch_attribute(&attr(4, &[2, 1, 1])), Ok(LaunchAttr::Cluster([2, 1, 1])));
        assert_eq!(launch_attribute(&attr(4, &[1, 1, 1])), Ok(LaunchAttr::Cluster([1, 1, 1])));
        assert_eq!(launch_attribute(&attr(4, &[2, 0, 1])), Err(CUDA_ERROR_INVALID_VALUE), "a zero dimension");
        assert_eq!(launch_attribute(&attr(2, &[1])), Ok(LaunchAttr::Cooperative(true)));
        assert_eq!(launch_attribute(&attr(2, &[0])), Ok(LaunchAttr::Cooperative(false)));
        assert_eq!(launch_attribute(&attr(8, &[3])), Ok(LaunchAttr::Same), "priority");
        assert_eq!(launch_attribute(&attr(13, &[1])), Err(CUDA_ERROR_INVALID_VALUE), "graph nodes only");
        assert_eq!(launch_attribute(&attr(99, &[1])), Err(CUDA_ERROR_NOT_SUPPORTED));
    }

    #[test]
    fn bad_argument_combinations_are_invalid_value() {
        let mut buf = Vec::new();
        let x = 0u64;
        let mut args: [*mut c_void; 1] = [&x as *const u64 as *mut c_void];
        let mut end: [*mut c_void; 1] = [std::ptr::null_mut()];
        let one = [Param { offset: 0, size: 8 }];
        // SAFETY: all pointers given are valid; the calls must reject them.
        unsafe {
            assert_eq!(
                pack_params(&mut buf, &one, 8, args.as_mut_ptr(), end.as_mut_ptr()),
                Err(CUDA_ERROR_INVALID_VALUE),
                "both kernelParams and extra"
            );
            assert_eq!(
                pack_params(&mut buf, &one, 8, std::ptr::null_mut(), std::ptr::null_mut()),
                Err(CUDA_ERROR_INVALID_VALUE),
                "neither, with parameters"
            );
            assert_eq!(pack_params(&mut buf, &[], 0, std::ptr::null_mut(), std::ptr::null_mut()), Ok(()));
            assert_eq!(
                pack_params(&mut buf, &one, 8, std::ptr::null_mut(), end.as_mut_ptr()),
                Err(CUDA_ERROR_INVALID_VALUE),
                "extra without a buffer"
            );
            let mut null_arg: [*mut c_void; 1] = [std::ptr::null_mut()];
            assert_eq!(
                pack_params(&mut buf, &one, 8, null_arg.as_mut_ptr(), std::ptr::null_mut()),
                Err(CUDA_ERROR_INVALID_VALUE),
                "NULL argument pointer"
            );
            let mut unknown: [*mut c_void; 3] = [7usize as *mut c_void, std::ptr::null_mut(), std::ptr::null_mut()];
            assert_eq!(
                pack_params(&mut buf, &one, 8, std::ptr::null_mut(), unknown.as_mut_ptr()),
                Err(CUDA_ERROR_INVALID_VALUE),
                "unknown extra key"
            );
        }
    }
}
