//! Occupancy: how many blocks of a kernel fit on a multiprocessor, and the
//! launch shapes that follow from it. The backend answers from the host
//! driver's calculator (the sim engine from a documented model); a
//! program's block-size-to-shared-memory callback runs here, in the guest,
//! and the block sizes it is asked about go to the backend in one question.

use super::state;
use super::types::*;
use super::{ffi, id_of, session, CuRes, Out};
use protocol::cuda::*;
use protocol::*;
use std::ffi::{c_int, c_uint};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

/// `CUoccupancy_flags`: the default and CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE.
const OCCUPANCY_FLAGS: c_uint = 0x1;
// CUlaunchAttributeID values a cluster question may carry.
const LAUNCH_ATTRIBUTE_IGNORE: c_uint = 0;
const LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION: c_uint = 4;
const LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE: c_uint = 5;
const CU_DEVICE_ATTRIBUTE_WARP_SIZE: usize = 10;
const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: usize = 16;

/// The function a `CUfunction` argument names (a library kernel stands for
/// its function in the current context) and the context it is in.
fn function(f: CUfunction) -> CuRes<(u64, u64)> {
    session()?;
    let h = id_of(f);
    let ctx = {
        let st = state::lock();
        if let Some(fi) = st.functions.get(&h) {
            return Ok((h, fi.ctx));
        }
        if !st.kernels.contains_key(&h) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        st.current()?
    };
    Ok((super::module::kernel_function(h, ctx)?, ctx))
}

/// Asks the backend one occupancy question per item.
fn ask(func: u64, ctx: u64, kind: u32, flags: c_uint, items: &[OccupancyItem]) -> CuRes<Vec<u64>> {
    let c = session()?;
    let o = Occupancy {
        func_id: U64::new(func),
        kind: U32::new(kind),
        flags: U32::new(flags),
        count: U32::new(items.len() as u32),
        _pad: U32::new(0),
    };
    let reply = c.call(Opcode::Occupancy, 0, ctx, &o, items.as_bytes())?;
    if reply.len() != items.len() * 8 {
        crate::log::warn("occupancy reply has the wrong length");
        return Err(CUDA_ERROR_UNKNOWN);
    }
    Ok(reply.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect())
}

fn item(block: c_int, shared_mem: usize) -> CuRes<OccupancyItem> {
    let block = u32::try_from(block).ok().filter(|&b| b > 0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let smem = u32::try_from(shared_mem).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    Ok(OccupancyItem {
        block: [U32::new(block), U32::new(1), U32::new(1)],
        shared_mem: U32::new(smem),
        ..Default::default()
    })
}

fn to_int(v: u64) -> c_int {
    c_int::try_from(v).unwrap_or(c_int::MAX)
}

fn active_blocks(f: CUfunction, block: c_int, smem: usize, flags: c_uint) -> CuRes<c_int> {
    if flags & !OCCUPANCY_FLAGS != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (func, ctx) = function(f)?;
    let v = ask(func, ctx, OCCUPANCY_ACTIVE_BLOCKS, flags, &[item(block, smem)?])?;
    Ok(to_int(v[0]))
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
    numBlocks: *mut c_int,
    func: CUfunction,
    blockSize: c_int,
    dynamicSMemSize: usize,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(numBlocks) }?;
        out.set(active_blocks(func, blockSize, dynamicSMemSize, 0)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    numBlocks: *mut c_int,
    func: CUfunction,
    blockSize: c_int,
    dynamicSMemSize: usize,
    flags: c_uint,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(numBlocks) }?;
        out.set(active_blocks(func, blockSize, dynamicSMemSize, flags)?);
        Ok(())
    })
}

/// `CUoccupancyB2DSize`: dynamic shared memory for a block size.
pub type CUoccupancyB2DSize = Option<unsafe extern "C" fn(blockSize: c_int) -> usize>;

/// The block sizes the occupancy calculator tries, largest first: the
/// limit, then each multiple of the warp size below it.
fn block_sizes(limit: c_int, warp: c_int) -> Vec<c_int> {
    let mut out = Vec::new();
    let mut aligned = (limit + warp - 1) / warp * warp;
    while aligned > 0 {
        out.push(aligned.min(limit));
        aligned -= warp;
    }
    out
}

/// The block size with the most threads resident per multiprocessor (the
/// largest among equals) and its blocks per multiprocessor, as CUDA's
/// calculator (cuda_occupancy.h) picks it.
fn best_block(sizes: &[c_int], blocks: &[u64]) -> (c_int, u64) {
    let (mut best, mut best_blocks, mut most) = (0, 0, 0u64);
    for (&size, &n) in sizes.iter().zip(blocks) {
        let threads = size as u64 * n;
        if threads > most {
            (best, best_blocks, most) = (size, n, threads);
        }
    }
    (best, best_blocks)
}

/// # Safety
/// `b2d` is NULL or a function that may be called with a block size.
unsafe fn potential_block_size(
    f: CUfunction,
    b2d: CUoccupancyB2DSize,
    smem: usize,
    limit: c_int,
    flags: c_uint,
) -> CuRes<(c_int, c_int)> {
    let c = session()?;
    if flags & !OCCUPANCY_FLAGS != 0 || limit < 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (func, ctx) = function(f)?;
    let func_max = state::lock().functions.get(&func).map(|fi| fi.attrs[0]).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    let attr = |a| c.facts.attr(a).filter(|v| *v > 0);
    let device_max = attr(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let warp = attr(CU_DEVICE_ATTRIBUTE_WARP_SIZE).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let sms = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut max = device_max;
    if func_max > 0 {
        max = max.min(func_max);
    }
    if limit > 0 {
        max = max.min(limit);
    }
    let sizes = block_sizes(max, warp);
    let mut items = Vec::with_capacity(sizes.len());
    for &s in &sizes {
        // SAFETY: the program's callback, called with a block size.
        let bytes = match b2d {
            Some(cb) => unsafe { cb(s) },
            None => smem,
        };
        items.push(item(s, bytes)?);
    }
    let blocks = ask(func, ctx, OCCUPANCY_ACTIVE_BLOCKS, flags, &items)?;
    let (best, per_sm) = best_block(&sizes, &blocks);
    Ok((to_int(per_sm.saturating_mul(sms as u64)), best))
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxPotentialBlockSize(
    minGridSize: *mut c_int,
    blockSize: *mut c_int,
    func: CUfunction,
    blockSizeToDynamicSMemSize: CUoccupancyB2DSize,
    dynamicSMemSize: usize,
    blockSizeLimit: c_int,
) -> CUresult {
    ffi(|| {
        // SAFETY: output arguments per the CUDA API.
        let (g, b) = unsafe { (Out::new(minGridSize)?, Out::new(blockSize)?) };
        // SAFETY: the callback as the CUDA API describes it.
        let (grid, block) =
            unsafe { potential_block_size(func, blockSizeToDynamicSMemSize, dynamicSMemSize, blockSizeLimit, 0) }?;
        g.set(grid);
        b.set(block);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxPotentialBlockSizeWithFlags(
    minGridSize: *mut c_int,
    blockSize: *mut c_int,
    func: CUfunction,
    blockSizeToDynamicSMemSize: CUoccupancyB2DSize,
    dynamicSMemSize: usize,
    blockSizeLimit: c_int,
    flags: c_uint,
) -> CUresult {
    ffi(|| {
        // SAFETY: output arguments per the CUDA API.
        let (g, b) = unsafe { (Out::new(minGridSize)?, Out::new(blockSize)?) };
        // SAFETY: the callback as the CUDA API describes it.
        let (grid, block) =
            unsafe { potential_block_size(func, blockSizeToDynamicSMemSize, dynamicSMemSize, blockSizeLimit, flags) }?;
        g.set(grid);
        b.set(block);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyAvailableDynamicSMemPerBlock(
    dynamicSmemSize: *mut usize,
    func: CUfunction,
    numBlocks: c_int,
    blockSize: c_int,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(dynamicSmemSize) }?;
        let (func, ctx) = function(func)?;
        let mut q = item(blockSize, 0)?;
        q.num_blocks = U32::new(u32::try_from(numBlocks).ok().filter(|&n| n > 0).ok_or(CUDA_ERROR_INVALID_VALUE)?);
        let v = ask(func, ctx, OCCUPANCY_AVAILABLE_SMEM, 0, &[q])?;
        out.set(usize::try_from(v[0]).unwrap_or(usize::MAX));
        Ok(())
    })
}

/// A cluster question from a launch configuration: its shape and the
/// cluster attributes (others are refused).
///
/// # Safety
/// `config` is NULL or a `CUlaunchConfig` whose `attrs` holds `numAttrs`
/// attributes.
unsafe fn cluster_item(config: *const CUlaunchConfig) -> CuRes<OccupancyItem> {
    // SAFETY: NULL or a CUlaunchConfig per the caller.
    let cfg = unsafe { config.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut q = OccupancyItem {
        block: [cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ].map(U32::new),
        grid: [cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ].map(U32::new),
        shared_mem: U32::new(cfg.sharedMemBytes),
        ..Default::default()
    };
    let attrs: &[CUlaunchAttribute] = match (cfg.numAttrs, cfg.attrs.is_null()) {
        (0, _) => &[],
        (_, true) => return Err(CUDA_ERROR_INVALID_VALUE),
        // SAFETY: `numAttrs` attributes per the caller.
        (n, false) => unsafe { std::slice::from_raw_parts(cfg.attrs as *const CUlaunchAttribute, n as usize) },
    };
    for a in attrs {
        let word = |i: usize| u32::from_le_bytes([a.value[i], a.value[i + 1], a.value[i + 2], a.value[i + 3]]);
        match a.id {
            LAUNCH_ATTRIBUTE_IGNORE => {}
            LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION => q.cluster = [word(0), word(4), word(8)].map(U32::new),
            LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE => q.policy = U32::new(word(0)),
            other => {
                crate::log::unsupported(&format!("occupancy questions with launch attribute {other}"));
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
        }
    }
    Ok(q)
}

/// # Safety
/// As for [`cluster_item`].
unsafe fn cluster_question(kind: u32, f: CUfunction, config: *const CUlaunchConfig) -> CuRes<c_int> {
    // SAFETY: forwarded.
    let q = unsafe { cluster_item(config) }?;
    let (func, ctx) = function(f)?;
    Ok(to_int(ask(func, ctx, kind, 0, &[q])?[0]))
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxPotentialClusterSize(
    clusterSize: *mut c_int,
    func: CUfunction,
    config: *const CUlaunchConfig,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(clusterSize) }?;
        // SAFETY: the caller's contract, forwarded.
        out.set(unsafe { cluster_question(OCCUPANCY_CLUSTER_SIZE, func, config) }?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveClusters(
    numClusters: *mut c_int,
    func: CUfunction,
    config: *const CUlaunchConfig,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(numClusters) }?;
        // SAFETY: the caller's contract, forwarded.
        out.set(unsafe { cluster_question(OCCUPANCY_ACTIVE_CLUSTERS, func, config) }?);
        Ok(())
    })
}

/// These exports for cuGetProcAddress: (name, the CUDA version of the ABI,
/// symbol), as the CUDA headers' typedefs give them.
pub fn rows() -> Vec<super::proc_address::ProcRow> {
    use super::proc_address::ProcRow;
    vec![
        ProcRow::new(
            "cuOccupancyAvailableDynamicSMemPerBlock",
            10020,
            "cuOccupancyAvailableDynamicSMemPerBlock",
            cuOccupancyAvailableDynamicSMemPerBlock as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuOccupancyMaxActiveBlocksPerMultiprocessor",
            6050,
            "cuOccupancyMaxActiveBlocksPerMultiprocessor",
            cuOccupancyMaxActiveBlocksPerMultiprocessor as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags",
            7000,
            "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags",
            cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuOccupancyMaxActiveClusters",
            11070,
            "cuOccupancyMaxActiveClusters",
            cuOccupancyMaxActiveClusters as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuOccupancyMaxPotentialBlockSize",
            6050,
            "cuOccupancyMaxPotentialBlockSize",
            cuOccupancyMaxPotentialBlockSize as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuOccupancyMaxPotentialBlockSizeWithFlags",
            7000,
            "cuOccupancyMaxPotentialBlockSizeWithFlags",
            cuOccupancyMaxPotentialBlockSizeWithFlags as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuOccupancyMaxPotentialClusterSize",
            11070,
            "cuOccupancyMaxPotentialClusterSize",
            cuOccupancyMaxPotentialClusterSize as *const () as usize,
            false,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_step_down_by_warps_from_the_limit() {
        assert_eq!(block_sizes(100, 32), vec![100, 96, 64, 32]);
        assert_eq!(block_sizes(64, 32), vec![64, 32]);
        assert_eq!(block_sizes(1024, 32).len(), 32);
    }

    #[test]
    fn the_block_size_with_most_resident_threads_wins_and_ties_go_to_the_larger() {
        // 512 threads x 4 blocks = 256 x 8 = 2048: the larger (first) wins.
        assert_eq!(best_block(&[512, 256, 128], &[4, 8, 10]), (512, 4));
        assert_eq!(best_block(&[1024, 512], &[1, 3]), (512, 3));
        assert_eq!(best_block(&[64, 32], &[0, 0]), (0, 0));
    }
}
