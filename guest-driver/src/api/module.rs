//! Modules, their functions and globals, and the library API on top of them.
//! A library is context-independent, as natively: it keeps its image and
//! has one module per context that uses it, loaded on first use, so the
//! CUDA runtime's libraries outlive a reset of the primary context. A kernel
//! handle names (library, kernel name); wherever CUDA accepts a `CUkernel`
//! in place of a `CUfunction` it stands for that context's function.
//!
//! The image is sent inline in `ModuleLoad`. Its kernels' parameter layouts
//! are read in the guest from the cubin's `.nv.info` where there is one
//! (protocol::module_image), else taken from the host's answer to
//! `ModuleGetFunction` (`cuFuncGetParamInfo`); either way they are cached per
//! function, so a launch never waits.

use super::device::{attr_or_zero, check_device};
use super::image;
use super::state::{self, param_bytes, Alloc, AllocKind, FuncInfo, KernelInfo, LibraryInfo, ModuleInfo, Param};
use super::types::*;
use super::{c_name, ffi, handle, id_of, session, set_opt, CuRes, Out};
use protocol::cuda::*;
use protocol::module_image::{self, FatbinEntryKind, ImageKind, ELF_MAGIC};
use protocol::{
    FuncSetAttribute, FunctionReply, GlobalReply, Id, ModuleGetFunction, ModuleGetGlobal, ModuleLoad, Opcode,
    ParamLayout, MAX_BATCH_BYTES, NUM_FUNC_ATTRS, PARAMS_FROM_HOST_DRIVER, PRIMARY_CTX,
};
use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::Arc;
use zerocopy::little_endian::{I32, U32, U64};
use zerocopy::FromBytes;

/// Largest image sent in one `ModuleLoad`: a batch holds at most
/// `MAX_BATCH_BYTES`, and other queued commands may share it.
const MAX_MODULE_BYTES: usize = MAX_BATCH_BYTES as usize - (1 << 20);

/// Kernel layouts the guest can trust (from a cubin's `.nv.info`), and the
/// names of all kernels, where the image is readable.
type ImageKernels = (Option<HashMap<String, Vec<Param>>>, Option<Vec<String>>);

fn read_kernels(image: &[u8]) -> ImageKernels {
    let kernels = match module_image::kernels(image) {
        Ok(k) => k,
        Err(e) => {
            crate::log::debug(&format!("kernel layouts left to the host: {e}"));
            return (None, None);
        }
    };
    let names = kernels.iter().map(|k| k.name.clone()).collect();
    let from_cubin = match module_image::detect(image) {
        Some(ImageKind::Cubin) => true,
        // kernels() reads a fatbin's uncompressed cubin when it has one.
        Some(ImageKind::Fatbin) => module_image::fatbin_entries(image).is_ok_and(|es| {
            es.iter().any(|e| e.kind == FatbinEntryKind::Cubin && !e.compressed && e.payload.starts_with(&ELF_MAGIC))
        }),
        _ => false,
    };
    let layouts = from_cubin.then(|| {
        kernels
            .into_iter()
            .map(|k| (k.name, k.params.iter().map(|p| Param { offset: p.offset, size: p.size }).collect()))
            .collect()
    });
    (layouts, Some(names))
}

/// The device's compute capability as the backend reported it; 0.0 when
/// unknown.
fn compute_capability() -> (u32, u32) {
    let major = attr_or_zero(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).max(0) as u32;
    let minor = attr_or_zero(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).max(0) as u32;
    (major, minor)
}

/// A fatbin too large for one command, cut to the entries this device can
/// load (frameworks build for many GPU generations); anything else, or a
/// fatbin with nothing for this device, as it is.
fn only_for_device(image: &[u8]) -> Cow<'_, [u8]> {
    if module_image::detect(image) != Some(ImageKind::Fatbin) {
        return Cow::Borrowed(image);
    }
    let (major, minor) = compute_capability();
    match module_image::fatbin_for_device(image, major, minor) {
        Ok(Some(cut)) => {
            crate::log::debug(&format!(
                "module image of {} bytes cut to {} bytes: the entries for compute capability {major}.{minor}",
                image.len(),
                cut.len()
            ));
            Cow::Owned(cut)
        }
        _ => Cow::Borrowed(image),
    }
}

/// False only for a well-formed fatbin with no entry this device can load;
/// anything else goes to the backend, which checks it in full.
fn loads_on_device(image: &[u8]) -> bool {
    if module_image::detect(image) != Some(ImageKind::Fatbin) {
        return true;
    }
    let (major, minor) = compute_capability();
    major == 0 || module_image::fatbin_loads_on(image, major, minor).unwrap_or(true)
}

/// Loads `image` as a module of context `ctx`.
fn load(image: &[u8], ctx: u64, library: Option<u64>) -> CuRes<u64> {
    let c = session()?;
    if !loads_on_device(image) {
        // Answered here, as the backend would: NVIDIA's libraries register
        // fatbins for other GPUs by the thousand (1200 to 2000 per PyTorch
        // or CuPy process on the H200), each otherwise a round trip.
        return Err(CUDA_ERROR_NO_BINARY_FOR_GPU);
    }
    let image = if image.len() > MAX_MODULE_BYTES { only_for_device(image) } else { Cow::Borrowed(image) };
    let image = &image[..];
    if image.len() > MAX_MODULE_BYTES {
        crate::log::warn(&format!(
            "module image of {} bytes exceeds the {MAX_MODULE_BYTES}-byte limit of one command",
            image.len()
        ));
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let (guest_layouts, kernel_names) = read_kernels(image);
    let id = c.new_id();
    let m = ModuleLoad { module_id: U64::new(id), image_len: U64::new(image.len() as u64) };
    c.call(Opcode::ModuleLoad, 0, ctx, &m, image)?;
    let info = ModuleInfo { ctx, guest_layouts, kernel_names, functions: HashMap::new(), library };
    state::lock().modules.insert(id, info);
    Ok(id)
}

fn current_ctx() -> CuRes<u64> {
    session()?;
    state::lock().current()
}

/// # Safety
/// `image` points at a module image (see [`image::image_at`]).
unsafe fn load_ptr(image: *const c_void, ctx: u64, library: Option<u64>) -> CuRes<u64> {
    session()?;
    // SAFETY: forwarded.
    let bytes = unsafe { image::image_at(image as *const u8) }?;
    load(bytes, ctx, library)
}

/// A module image from a file (cuModuleLoad, cuLibraryLoadFromFile).
fn read_image_file(path: &CStr) -> CuRes<Vec<u8>> {
    session()?;
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => CUDA_ERROR_FILE_NOT_FOUND,
        _ => CUDA_ERROR_INVALID_VALUE,
    })?;
    image::image_from_file(bytes)
}

/// Fills the JIT options' output slots as the driver would after a load
/// that logged nothing: empty log buffers, zero bytes of log, no wall time.
///
/// # Safety
/// `options` and `values` are NULL or arrays of `num` entries, and each log
/// buffer named holds at least the size its size option gives.
unsafe fn answer_jit_options(num: c_uint, options: *const c_uint, values: *mut *mut c_void) -> CuRes {
    if num == 0 {
        return Ok(());
    }
    if options.is_null() || values.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: both arrays hold `num` entries per the caller.
    let (opts, vals) = unsafe {
        (std::slice::from_raw_parts(options, num as usize), std::slice::from_raw_parts_mut(values, num as usize))
    };
    let size_of = |size_opt: c_uint| opts.iter().position(|&o| o == size_opt).map(|i| vals[i] as usize).unwrap_or(0);
    let info_size = size_of(CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES);
    let error_size = size_of(CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES);
    for (o, v) in opts.iter().zip(vals.iter_mut()) {
        match *o {
            CU_JIT_INFO_LOG_BUFFER | CU_JIT_ERROR_LOG_BUFFER => {
                let size = if *o == CU_JIT_INFO_LOG_BUFFER { info_size } else { error_size };
                if !v.is_null() && size > 0 {
                    // SAFETY: a log buffer of at least `size` > 0 bytes.
                    unsafe { *(*v as *mut c_char) = 0 };
                }
            }
            CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES | CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES | CU_JIT_WALL_TIME => {
                *v = std::ptr::null_mut();
            }
            _ => {}
        }
    }
    Ok(())
}

fn unload(id: u64) -> CuRes {
    let c = session()?;
    let m = state::lock().forget_module(id).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    c.enqueue(Opcode::ModuleUnload, 0, m.ctx, &Id { id: U64::new(id) }, &[])
}

/// The function `name` of module `module`, looked up once and cached.
pub fn get_function(module: u64, name: &CStr) -> CuRes<u64> {
    let c = session()?;
    let name_str = name.to_str().map_err(|_| CUDA_ERROR_NOT_FOUND)?;
    if name_str.is_empty() {
        return Err(CUDA_ERROR_NOT_FOUND);
    }
    let (ctx, guest) = {
        let st = state::lock();
        let m = st.modules.get(&module).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if let Some(f) = m.functions.get(name_str) {
            return Ok(*f);
        }
        (m.ctx, m.guest_layouts.as_ref().and_then(|l| l.get(name_str).cloned()))
    };
    let fid = c.new_id();
    let req = ModuleGetFunction {
        module_id: U64::new(module),
        func_id: U64::new(fid),
        name_len: U32::new(name_str.len() as u32),
        _pad: U32::new(0),
    };
    let reply = c.call(Opcode::ModuleGetFunction, 0, ctx, &req, name_str.as_bytes())?;
    let (head, rest) = FunctionReply::read_from_prefix(&reply).map_err(|_| CUDA_ERROR_UNKNOWN)?;
    let host: Vec<Param> = rest
        .chunks_exact(core::mem::size_of::<ParamLayout>())
        .take(head.num_params.get() as usize)
        .filter_map(|b| ParamLayout::read_from_bytes(b).ok())
        .map(|p| Param { offset: p.offset.get(), size: p.size.get() })
        .collect();
    if host.len() != head.num_params.get() as usize {
        crate::log::warn("function reply is shorter than its parameter count");
        return Err(CUDA_ERROR_UNKNOWN);
    }
    let params = match guest {
        Some(g) if !host.is_empty() && g != host && head.param_source.get() == PARAMS_FROM_HOST_DRIVER => {
            crate::log::warn(&format!(
                "parameter layout of {name_str} in the image disagrees with the host driver's; using the host's"
            ));
            host
        }
        Some(g) => g,
        None => host,
    };
    let info = FuncInfo {
        module,
        ctx,
        name: CString::from(name),
        attrs: head.attrs.map(|a| a.get()),
        param_bytes: param_bytes(&params),
        params,
        cache_config: 0,
    };
    let mut st = state::lock();
    st.functions.insert(fid, info);
    if let Some(m) = st.modules.get_mut(&module) {
        m.functions.insert(name_str.to_string(), fid);
    }
    Ok(fid)
}

/// A module global: its address and size, recorded as a device range.
fn get_global(module: u64, name: &CStr) -> CuRes<(u64, u64)> {
    let c = session()?;
    let name_str = name.to_str().map_err(|_| CUDA_ERROR_NOT_FOUND)?;
    if name_str.is_empty() {
        return Err(CUDA_ERROR_NOT_FOUND);
    }
    let ctx = state::lock().modules.get(&module).ok_or(CUDA_ERROR_INVALID_HANDLE)?.ctx;
    let req =
        ModuleGetGlobal { module_id: U64::new(module), name_len: U32::new(name_str.len() as u32), _pad: U32::new(0) };
    let reply = c.call(Opcode::ModuleGetGlobal, 0, ctx, &req, name_str.as_bytes())?;
    let g = GlobalReply::read_from_prefix(&reply).map_err(|_| CUDA_ERROR_UNKNOWN)?.0;
    let (dptr, size) = (g.dptr.get(), g.size.get());
    let mut st = state::lock();
    if st.check_device_range(dptr, size.max(1)).is_err() {
        st.allocs.insert(dptr, Alloc { size, ctx, kind: AllocKind::Global { module } });
    }
    Ok((dptr, size))
}

/// Runs `f` on a function's cached facts.
pub fn with_func<T>(f: u64, body: impl FnOnce(&mut FuncInfo) -> CuRes<T>) -> CuRes<T> {
    session()?;
    let mut st = state::lock();
    body(st.functions.get_mut(&f).ok_or(CUDA_ERROR_INVALID_HANDLE)?)
}

fn func_attr(f: u64, attrib: c_int) -> CuRes<c_int> {
    let a = usize::try_from(attrib).ok().filter(|a| *a < NUM_FUNC_ATTRS).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    with_func(f, |fi| Ok(fi.attrs[a]))
}

fn func_set_attr(f: u64, attrib: c_int, value: c_int) -> CuRes {
    let c = session()?;
    let a = usize::try_from(attrib).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let settable = a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        || a == CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT
        || (CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH..=CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE)
            .contains(&a);
    if !settable {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let optin = attr_or_zero(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
    let ctx = with_func(f, |fi| {
        let ok = match a {
            CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => {
                let static_shared = fi.attrs[CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES];
                value >= 0 && (optin == 0 || value <= optin - static_shared)
            }
            CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => (-1..=100).contains(&value),
            _ => value >= 0,
        };
        if !ok {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        fi.attrs[a] = value;
        Ok(fi.ctx)
    })?;
    let p = FuncSetAttribute { func_id: U64::new(f), attr: U32::new(a as u32), value: I32::new(value) };
    c.enqueue(Opcode::FuncSetAttribute, 0, ctx, &p, &[])
}

/// `(offset, size)` of parameter `index`.
fn param_info(f: u64, index: usize) -> CuRes<(usize, usize)> {
    with_func(f, |fi| {
        let p = fi.params.get(index).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        Ok((p.offset as usize, p.size as usize))
    })
}

/// # Safety
/// Outputs are NULL or writable.
unsafe fn write_param_info(f: u64, index: usize, offset: *mut usize, size: *mut usize) -> CuRes {
    // SAFETY: output arguments per the CUDA API; the size is optional.
    let (o, s) = unsafe { (Out::new(offset)?, Out::optional(size)) };
    let (off, sz) = param_info(f, index)?;
    o.set(off);
    set_opt(s, sz);
    Ok(())
}

/// Names of the module's kernels, where the guest could read the image.
fn kernel_names(module: u64) -> CuRes<Vec<String>> {
    session()?;
    let st = state::lock();
    let m = st.modules.get(&module).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    m.kernel_names.clone().ok_or_else(|| {
        crate::log::unsupported("enumerating the kernels of an image the guest cannot read");
        CUDA_ERROR_NOT_SUPPORTED
    })
}

/// Writes the handle `handle_of` gives for each of `module`'s kernels, up to
/// `num` of them (cuModuleEnumerateFunctions, cuLibraryEnumerateKernels).
///
/// # Safety
/// `out` is NULL or an array of `num` handles.
unsafe fn enumerate(out: *mut *mut c_void, num: c_uint, module: u64, handle_of: impl Fn(&CStr) -> CuRes<u64>) -> CuRes {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let names = kernel_names(module)?;
    for (i, n) in names.iter().take(num as usize).enumerate() {
        let cname = CString::new(n.as_str()).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let h = handle_of(&cname)?;
        // SAFETY: i < num, inside the caller's array.
        unsafe { out.add(i).write_unaligned(handle(h)) };
    }
    Ok(())
}

/// Writes the name of function `f`; it lives as long as the function's
/// entry (its module).
///
/// # Safety
/// `name` is NULL or writable.
unsafe fn write_name(name: *mut *const c_char, f: u64) -> CuRes {
    // SAFETY: output argument per the CUDA API.
    let out = unsafe { Out::new(name) }?;
    out.set(with_func(f, |fi| Ok(fi.name.as_ptr()))?);
    Ok(())
}

// ---- modules -----------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(module) }?;
        let ctx = current_ctx()?;
        // SAFETY: `image` points at a module image per the CUDA API.
        out.set(handle(unsafe { load_ptr(image, ctx, None) }?));
        Ok(())
    })
}

/// JIT options are accepted and answered as for a load that logged nothing:
/// the host compiles PTX with its own defaults.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut CUmodule,
    image: *const c_void,
    numOptions: c_uint,
    options: *mut c_uint,
    optionValues: *mut *mut c_void,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(module) }?;
        let ctx = current_ctx()?;
        // SAFETY: `image` points at a module image per the CUDA API.
        let id = unsafe { load_ptr(image, ctx, None) }?;
        // SAFETY: option arrays of `numOptions` entries per the CUDA API.
        unsafe { answer_jit_options(numOptions, options, optionValues) }?;
        out.set(handle(id));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadFatBinary(module: *mut CUmodule, fatCubin: *const c_void) -> CUresult {
    // SAFETY: the caller's contract, forwarded (a fatbin or its wrapper).
    unsafe { cuModuleLoadData(module, fatCubin) }
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoad(module: *mut CUmodule, fname: *const c_char) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(module) }?;
        // SAFETY: a NUL-terminated path per the CUDA API.
        let path = unsafe { c_name(fname) }?;
        let ctx = current_ctx()?;
        out.set(handle(load(&read_image_file(path)?, ctx, None)?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(hmod: CUmodule) -> CUresult {
    ffi(|| unload(id_of(hmod)))
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(hfunc: *mut CUfunction, hmod: CUmodule, name: *const c_char) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(hfunc) }?;
        // SAFETY: a NUL-terminated name per the CUDA API.
        let name = unsafe { c_name(name) }?;
        out.set(handle(get_function(id_of(hmod), name)?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetGlobal_v2(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    hmod: CUmodule,
    name: *const c_char,
) -> CUresult {
    ffi(|| {
        // SAFETY: optional output arguments per the CUDA API.
        let (d, b) = unsafe { (Out::optional(dptr), Out::optional(bytes)) };
        // SAFETY: a NUL-terminated name per the CUDA API.
        let name = unsafe { c_name(name) }?;
        let (p, size) = get_global(id_of(hmod), name)?;
        set_opt(d, p);
        set_opt(b, size as usize);
        Ok(())
    })
}

/// The pre-3.2 entry point, with 32-bit outputs.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetGlobal(
    dptr: *mut CUdeviceptr_v1,
    bytes: *mut c_uint,
    hmod: CUmodule,
    name: *const c_char,
) -> CUresult {
    ffi(|| {
        // SAFETY: optional output arguments per the CUDA API.
        let (d, b) = unsafe { (Out::optional(dptr), Out::optional(bytes)) };
        // SAFETY: a NUL-terminated name per the CUDA API.
        let name = unsafe { c_name(name) }?;
        let (p, size) = get_global(id_of(hmod), name)?;
        set_opt(d, CUdeviceptr_v1::try_from(p).map_err(|_| CUDA_ERROR_INVALID_VALUE)?);
        set_opt(b, size.min(c_uint::MAX as u64) as c_uint);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetLoadingMode(mode: *mut c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(mode) }?;
        session()?;
        out.set(CU_MODULE_EAGER_LOADING);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunctionCount(count: *mut c_uint, hmod: CUmodule) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(count) }?;
        out.set(kernel_names(id_of(hmod))?.len() as c_uint);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleEnumerateFunctions(
    functions: *mut CUfunction,
    numFunctions: c_uint,
    hmod: CUmodule,
) -> CUresult {
    // SAFETY: an array of `numFunctions` handles per the CUDA API.
    ffi(|| unsafe {
        let module = id_of(hmod);
        enumerate(functions as *mut *mut c_void, numFunctions, module, |name| get_function(module, name))
    })
}

// ---- functions ---------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(pi: *mut c_int, attrib: c_int, hfunc: CUfunction) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pi) }?;
        out.set(func_attr(id_of(hfunc), attrib)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(hfunc: CUfunction, attrib: c_int, value: c_int) -> CUresult {
    ffi(|| func_set_attr(id_of(hfunc), attrib, value))
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetCacheConfig(hfunc: CUfunction, config: c_uint) -> CUresult {
    ffi(|| set_cache_config(id_of(hfunc), config))
}

/// Remembers a function's (or kernel's) cache preference after checking it.
fn set_cache_config(func: u64, config: c_uint) -> CuRes {
    if config > CU_FUNC_CACHE_MAX {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    with_func(func, |fi| {
        fi.cache_config = config;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetSharedMemConfig(hfunc: CUfunction, config: c_uint) -> CUresult {
    ffi(|| {
        if config > CU_SHARED_MEM_CONFIG_MAX {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        with_func(id_of(hfunc), |_| Ok(()))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetParamInfo(
    func: CUfunction,
    paramIndex: usize,
    paramOffset: *mut usize,
    paramSize: *mut usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { write_param_info(id_of(func), paramIndex, paramOffset, paramSize) })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetName(name: *mut *const c_char, hfunc: CUfunction) -> CUresult {
    // SAFETY: output argument per the CUDA API.
    ffi(|| unsafe { write_name(name, id_of(hfunc)) })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetModule(hmod: *mut CUmodule, hfunc: CUfunction) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(hmod) }?;
        out.set(handle(with_func(id_of(hfunc), |fi| Ok(fi.module))?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncIsLoaded(state: *mut c_uint, function: CUfunction) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(state) }?;
        with_func(id_of(function), |_| Ok(()))?;
        out.set(CU_FUNCTION_LOADING_STATE_LOADED);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncLoad(function: CUfunction) -> CUresult {
    ffi(|| with_func(id_of(function), |_| Ok(())))
}

// ---- libraries and kernels ---------------------------------------------

/// The context a library call works in: the current one, or the primary
/// one when none is current (the runtime loads its libraries before it has
/// made any context current).
fn library_ctx() -> CuRes<u64> {
    session()?;
    Ok(state::lock().current().unwrap_or(PRIMARY_CTX))
}

/// Loads a module for the CUDA runtime (its export table's
/// get-module-from-cubin calls) in the library context.
///
/// # Safety
/// `image` points at a module image (see [`image::image_at`]).
pub(crate) unsafe fn load_for_runtime(image: *const c_void) -> CuRes<u64> {
    let ctx = library_ctx()?;
    // SAFETY: forwarded.
    unsafe { load_ptr(image, ctx, None) }
}

/// Library `lib`'s module in context `ctx`, loaded from the library's image
/// the first time that context uses it.
fn library_module_in(lib: u64, ctx: u64) -> CuRes<u64> {
    let image = {
        let st = state::lock();
        let l = st.libraries.get(&lib).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if let Some(m) = l.modules.get(&ctx) {
            return Ok(*m);
        }
        if l.no_binary {
            return Err(CUDA_ERROR_NO_BINARY_FOR_GPU);
        }
        l.image.clone()
    };
    let module = load(&image, ctx, Some(lib))?;
    let mut st = state::lock();
    match st.libraries.get_mut(&lib) {
        Some(l) => {
            l.modules.insert(ctx, module);
            Ok(module)
        }
        // Unloaded meanwhile: the module just loaded is an orphan.
        None => {
            st.forget_module(module);
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    }
}

/// Library `lib`'s module in the library context.
fn library_module(lib: CUlibrary) -> CuRes<u64> {
    library_module_in(id_of(lib), library_ctx()?)
}

/// Registers a library over `image` and loads it in the library context,
/// so that a bad image fails here, as natively.
///
/// An image with nothing for this device is the exception: the CUDA
/// runtime loads every fatbin of a library such as cuBLASLt, whose fatbins
/// hold kernels for other GPU generations only, and natively (lazy loading,
/// the default since CUDA 12.2) such a load succeeds and only a use of its
/// kernels fails. The library is kept and answers
/// CUDA_ERROR_NO_BINARY_FOR_GPU when a module or function is needed.
fn new_library(out: Out<CUlibrary>, image: &[u8]) -> CuRes {
    let c = session()?;
    let ctx = library_ctx()?;
    let lib = c.new_id();
    let image: Arc<[u8]> = Arc::from(image);
    let (modules, no_binary) = match load(&image, ctx, Some(lib)) {
        Ok(module) => (HashMap::from([(ctx, module)]), false),
        Err(CUDA_ERROR_NO_BINARY_FOR_GPU) => (HashMap::new(), true),
        Err(e) => return Err(e),
    };
    let info = LibraryInfo { image, modules, kernels: HashMap::new(), no_binary };
    state::lock().libraries.insert(lib, info);
    out.set(handle(lib));
    Ok(())
}

/// The kernel handle for `name` in library `lib`, after checking that the
/// library has such a kernel.
fn library_kernel(lib: u64, name: &CStr) -> CuRes<u64> {
    let c = session()?;
    match library_module_in(lib, library_ctx()?) {
        Ok(module) => {
            get_function(module, name)?;
        }
        // Nothing to look the name up in: the handle fails when used, as a
        // lazily loaded library's kernel does natively.
        Err(CUDA_ERROR_NO_BINARY_FOR_GPU) => {}
        Err(e) => return Err(e),
    }
    let name_str = name.to_str().map_err(|_| CUDA_ERROR_NOT_FOUND)?;
    let mut st = state::lock();
    let l = st.libraries.get_mut(&lib).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    if let Some(k) = l.kernels.get(name_str) {
        return Ok(*k);
    }
    let k = c.new_id();
    l.kernels.insert(name_str.to_string(), k);
    st.kernels.insert(k, KernelInfo { library: lib, name: CString::from(name), functions: HashMap::new() });
    Ok(k)
}

/// The function a kernel stands for in context `ctx`, remembered with the
/// kernel so that launching it there finds it in one lookup.
pub fn kernel_function(kernel: u64, ctx: u64) -> CuRes<u64> {
    let (lib, name) = {
        let st = state::lock();
        let k = st.kernels.get(&kernel).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if let Some(f) = k.functions.get(&ctx) {
            return Ok(*f);
        }
        (k.library, k.name.clone())
    };
    let f = get_function(library_module_in(lib, ctx)?, &name)?;
    if let Some(k) = state::lock().kernels.get_mut(&kernel) {
        k.functions.insert(ctx, f);
    }
    Ok(f)
}

/// A `CUfunction` argument, which CUDA lets be a `CUkernel` too: a
/// function as it is; a kernel as its function in the library context.
fn function_of(h: u64) -> CuRes<u64> {
    session()?;
    let is_kernel = {
        let st = state::lock();
        if st.functions.contains_key(&h) {
            return Ok(h);
        }
        st.kernels.contains_key(&h)
    };
    if !is_kernel {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    kernel_function(h, library_ctx()?)
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryLoadData(
    library: *mut CUlibrary,
    code: *const c_void,
    jitOptions: *mut c_uint,
    jitOptionsValues: *mut *mut c_void,
    numJitOptions: c_uint,
    _libraryOptions: *mut c_uint,
    _libraryOptionValues: *mut *mut c_void,
    _numLibraryOptions: c_uint,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(library) }?;
        session()?;
        // SAFETY: `code` points at a module image per the CUDA API.
        new_library(out, unsafe { image::image_at(code as *const u8) }?)?;
        // SAFETY: option arrays of `numJitOptions` entries per the CUDA API.
        unsafe { answer_jit_options(numJitOptions, jitOptions, jitOptionsValues) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryLoadFromFile(
    library: *mut CUlibrary,
    fileName: *const c_char,
    jitOptions: *mut c_uint,
    jitOptionsValues: *mut *mut c_void,
    numJitOptions: c_uint,
    _libraryOptions: *mut c_uint,
    _libraryOptionValues: *mut *mut c_void,
    _numLibraryOptions: c_uint,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(library) }?;
        // SAFETY: a NUL-terminated path per the CUDA API.
        let path = unsafe { c_name(fileName) }?;
        new_library(out, &read_image_file(path)?)?;
        // SAFETY: option arrays of `numJitOptions` entries per the CUDA API.
        unsafe { answer_jit_options(numJitOptions, jitOptions, jitOptionsValues) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryUnload(library: CUlibrary) -> CUresult {
    ffi(|| {
        session()?;
        let lib = id_of(library);
        let modules: Vec<u64> = {
            let mut st = state::lock();
            let l = st.libraries.remove(&lib).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
            st.kernels.retain(|_, k| k.library != lib);
            l.modules.into_values().collect()
        };
        modules.into_iter().try_for_each(unload)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetModule(pMod: *mut CUmodule, library: CUlibrary) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pMod) }?;
        out.set(handle(library_module(library)?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetKernel(
    pKernel: *mut CUkernel,
    library: CUlibrary,
    name: *const c_char,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pKernel) }?;
        // SAFETY: a NUL-terminated name per the CUDA API.
        let name = unsafe { c_name(name) }?;
        out.set(handle(library_kernel(id_of(library), name)?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetGlobal(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    library: CUlibrary,
    name: *const c_char,
) -> CUresult {
    ffi(|| {
        // SAFETY: optional output arguments per the CUDA API.
        let (d, b) = unsafe { (Out::optional(dptr), Out::optional(bytes)) };
        // SAFETY: a NUL-terminated name per the CUDA API.
        let name = unsafe { c_name(name) }?;
        let (p, size) = get_global(library_module(library)?, name)?;
        set_opt(d, p);
        set_opt(b, size as usize);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryGetKernelCount(count: *mut c_uint, lib: CUlibrary) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(count) }?;
        out.set(kernel_names(library_module(lib)?)?.len() as c_uint);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLibraryEnumerateKernels(
    kernels: *mut CUkernel,
    numKernels: c_uint,
    lib: CUlibrary,
) -> CUresult {
    // SAFETY: an array of `numKernels` handles per the CUDA API.
    ffi(|| unsafe {
        let module = library_module(lib)?;
        enumerate(kernels as *mut *mut c_void, numKernels, module, |name| library_kernel(id_of(lib), name))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelGetFunction(pFunc: *mut CUfunction, kernel: CUkernel) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pFunc) }?;
        out.set(handle(function_of(id_of(kernel))?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelGetLibrary(pLib: *mut CUlibrary, kernel: CUkernel) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pLib) }?;
        session()?;
        let lib = state::lock().kernels.get(&id_of(kernel)).map(|k| k.library).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        out.set(handle(lib));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    kernel: CUkernel,
    dev: CUdevice,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pi) }?;
        check_device(dev)?;
        out.set(func_attr(function_of(id_of(kernel))?, attrib)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelSetAttribute(attrib: c_int, val: c_int, kernel: CUkernel, dev: CUdevice) -> CUresult {
    ffi(|| {
        check_device(dev)?;
        func_set_attr(function_of(id_of(kernel))?, attrib, val)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelSetCacheConfig(kernel: CUkernel, config: c_uint, dev: CUdevice) -> CUresult {
    ffi(|| {
        check_device(dev)?;
        set_cache_config(function_of(id_of(kernel))?, config)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelGetName(name: *mut *const c_char, hfunc: CUkernel) -> CUresult {
    // SAFETY: output argument per the CUDA API.
    ffi(|| unsafe { write_name(name, function_of(id_of(hfunc))?) })
}

#[no_mangle]
pub unsafe extern "C" fn cuKernelGetParamInfo(
    kernel: CUkernel,
    paramIndex: usize,
    paramOffset: *mut usize,
    paramSize: *mut usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { write_param_info(function_of(id_of(kernel))?, paramIndex, paramOffset, paramSize) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jit_option_outputs_are_answered() {
        let mut info = [b'x' as c_char; 16];
        let mut error = [b'y' as c_char; 16];
        let opts = [
            CU_JIT_INFO_LOG_BUFFER,
            CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
            CU_JIT_ERROR_LOG_BUFFER,
            CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ];
        let mut vals: [*mut c_void; 4] =
            [info.as_mut_ptr() as *mut c_void, 16 as *mut c_void, error.as_mut_ptr() as *mut c_void, 16 as *mut c_void];
        // SAFETY: four options with buffers of the sizes given.
        unsafe { answer_jit_options(4, opts.as_ptr(), vals.as_mut_ptr()) }.unwrap();
        assert_eq!(info[0], 0);
        assert_eq!(error[0], 0);
        assert!(vals[1].is_null() && vals[3].is_null());
        // SAFETY: NULL arrays with a count are rejected before any read.
        let r = unsafe { answer_jit_options(1, std::ptr::null(), std::ptr::null_mut()) };
        assert_eq!(r, Err(CUDA_ERROR_INVALID_VALUE));
    }

    #[test]
    fn layouts_are_trusted_only_from_cubins() {
        let ptx = b".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k(.param .u64 a, .param .u32 b)\n{\nret;\n}\n\0";
        let (layouts, names) = read_kernels(ptx);
        assert!(layouts.is_none());
        if let Some(n) = names {
            assert_eq!(n, vec!["k".to_string()]);
        }
    }
}
