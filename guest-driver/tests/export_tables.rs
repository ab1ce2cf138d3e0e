//! The CUDA runtime's export tables at the driver level, against a sim
//! backend: the parts the runtime programs of tests/cudart.rs do not reach
//! (cudart 12.8 and 13.0 load their fatbins as libraries, not through the
//! runtime interface's module slots), and the context-local storage
//! destructors, which the runtime relies on to forget a context that ended.
//!
//! One test: the driver's session is per process.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/fatbin.rs"]
mod fatbin;

use backend::GpuvisorBackend;
use cuda::api::state::LocalDestructor;
use cuda::api::types::*;
use cuda::api::{context::*, copy::*, device::*, export_table::cuGetExportTable, launch::*, memory::*, module::*};
use protocol::cuda::*;
use protocol::module_image::FATBIN_WRAPPER_MAGIC;
use std::ffi::{c_uint, c_void};
use std::sync::Mutex;

const CUDART_INTERFACE: u128 = 0x6bd5fb6c_5bf4_e74a_8987_d93912fd9df9;
const CONTEXT_LOCAL_STORAGE: u128 = 0xc693336e_1121_df11_a8c3_68f355d89593;
const TOOLS_TLS: u128 = 0x42d85a81_23f6_cb47_8298_f6e78a3aecdc;
const CONTEXT_EXT: u128 = 0x21318c60_9714_3248_8ca6_41ff7324c8f2;
const LIBRARY_QUERY: u128 = 0xf8cff951_2146_8b4e_b9e2_fb469e7c0dd9;
const LT_QUERY: u128 = 0x1734dc26_800d_4745_8726_c0f1e7dd8bca;

type GetModuleFromCubin = unsafe extern "C" fn(*mut CUmodule, *const c_void) -> CUresult;
type PrimaryContext = unsafe extern "C" fn(*mut CUcontext, CUdevice) -> CUresult;
type LocalPut = unsafe extern "C" fn(CUcontext, *mut c_void, *mut c_void, Option<LocalDestructor>) -> CUresult;
type LocalDelete = unsafe extern "C" fn(CUcontext, *mut c_void) -> CUresult;
type LocalGet = unsafe extern "C" fn(*mut *mut c_void, CUcontext, *mut c_void) -> CUresult;
type ToolsCurrent = unsafe extern "C" fn(*mut CUcontext) -> CUresult;
type ContextId = unsafe extern "C" fn(CUcontext, *mut u64) -> CUresult;
type ContextObject = unsafe extern "C" fn(CUcontext, u64, *mut *mut c_void) -> CUresult;
type ContextValue = unsafe extern "C" fn(CUcontext, *const c_void, *mut c_uint) -> CUresult;

/// Slot `i` of the table with id `id`, as a function of type `F`.
///
/// # Safety
/// Slot `i` of that table holds a function of type `F`.
unsafe fn slot<F: Copy>(id: u128, i: usize) -> F {
    let uuid = CUuuid { bytes: id.to_be_bytes().map(|b| b as std::ffi::c_char) };
    let mut table: *const c_void = std::ptr::null();
    // SAFETY: valid id and output slot.
    assert_eq!(unsafe { cuGetExportTable(&mut table, &uuid) }, CUDA_SUCCESS);
    // SAFETY: the table has slot i, holding an F (the caller's contract).
    unsafe { std::mem::transmute_copy(&*(table as *const *const c_void).add(i)) }
}

/// What nvcc embeds for kernels.ptx: a fatbin with one PTX entry, and the
/// `__fatBinC_Wrapper_t` registered with the runtime. Returns (wrapper,
/// fatbin); the wrapper points into the fatbin.
fn fatbin_wrapper() -> (Vec<u64>, Vec<u64>) {
    let mut ptx = include_bytes!("../../guest-tests/kernels.ptx").to_vec();
    ptx.push(0);
    let bytes = fatbin::fatbin(&[(1, 80, &ptx)]);
    // As u64 words, so the fatbin is 8-byte aligned as nvcc's is.
    let fatbin: Vec<u64> = bytes.chunks(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    let wrapper = vec![FATBIN_WRAPPER_MAGIC as u64 | (1 << 32), fatbin.as_ptr() as u64, 0];
    (wrapper, fatbin)
}

/// The destructor calls seen: (context, key, value).
static DESTROYED: Mutex<Vec<(usize, usize, usize)>> = Mutex::new(Vec::new());

unsafe extern "C" fn destructor(ctx: CUcontext, key: *mut c_void, value: *mut c_void) {
    DESTROYED.lock().expect("lock").push((ctx as usize, key as usize, value as usize));
}

fn destroyed() -> Vec<(usize, usize, usize)> {
    std::mem::take(&mut *DESTROYED.lock().expect("lock"))
}

static KEY_A: u8 = 0;
static KEY_B: u8 = 0;

#[test]
fn runtime_interface_loads_registered_fatbins_and_context_values_end_with_their_context() {
    let Some(b) = GpuvisorBackend::spawn("export_tables") else { return };
    std::env::set_var("GPUVISOR_TRANSPORT", format!("direct:{}", b.path()));
    std::env::set_var("GPUVISOR_DIRECT_MEM_MIB", "64");
    // SAFETY: the calls below follow the CUDA API and the tables' layouts
    // (export_table.rs); every pointer passed is valid for the call.
    unsafe {
        assert_eq!(cuInit(0), CUDA_SUCCESS);
        // The runtime's start: the primary context through its interface,
        // retained and made current.
        let primary_context: PrimaryContext = slot(CUDART_INTERFACE, 2);
        let mut primary: CUcontext = std::ptr::null_mut();
        assert_eq!(primary_context(&mut primary, 0), CUDA_SUCCESS);
        let mut retained: CUcontext = std::ptr::null_mut();
        assert_eq!(cuDevicePrimaryCtxRetain(&mut retained, 0), CUDA_SUCCESS);
        assert_eq!(retained, primary, "the interface names the primary context");
        assert_eq!(cuCtxSetCurrent(primary), CUDA_SUCCESS);
        // cuBLASLt's view of the current context agrees with the API's.
        let tools_current: ToolsCurrent = slot(TOOLS_TLS, 2);
        let mut seen: CUcontext = std::ptr::null_mut();
        assert_eq!(tools_current(&mut seen), CUDA_SUCCESS);
        assert_eq!(seen, primary);
        // cuBLAS's per-context table names a context by the id cuCtxGetId gives.
        let context_id: ContextId = slot(CONTEXT_EXT, 4);
        let (mut via_table, mut via_api) = (0u64, 0u64);
        assert_eq!(context_id(primary, &mut via_table), CUDA_SUCCESS);
        assert_eq!(cuCtxGetId(primary, &mut via_api), CUDA_SUCCESS);
        assert_eq!(via_table, via_api);
        // CuPy's cuBLAS, as NVIDIA's driver answered it (bench/results/h100/
        // runtime-logs/export-trace-*): slot 51 gives one object per context
        // whose word 2 is the context, slot 39 a value of 7 for it.
        let object: ContextObject = slot(CONTEXT_EXT, 51);
        let value: ContextValue = slot(CONTEXT_EXT, 39);
        let (mut obj, mut again): (*mut c_void, *mut c_void) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(object(primary, 0, &mut obj), CUDA_SUCCESS);
        assert_eq!(object(primary, 0, &mut again), CUDA_SUCCESS);
        assert!(!obj.is_null() && obj == again, "the same object for the same context");
        assert_eq!(*(obj as *const u64).add(2), primary as u64);
        assert_eq!(object(std::ptr::null_mut(), 0, &mut again), CUDA_ERROR_INVALID_HANDLE, "as natively");
        assert_eq!(object(primary, 0, std::ptr::null_mut()), CUDA_ERROR_INVALID_VALUE);
        let mut v: c_uint = 0;
        assert_eq!(value(primary, obj, &mut v), CUDA_SUCCESS);
        assert_eq!(v, 7);
        let stranger = [0u64; 64];
        assert_eq!(value(primary, stranger.as_ptr() as *const c_void, &mut v), CUDA_ERROR_INVALID_VALUE);
        // The table cuBLAS asks for before deciding that path: served, with
        // its size, as natively.
        let uuid = CUuuid { bytes: LIBRARY_QUERY.to_be_bytes().map(|b| b as std::ffi::c_char) };
        let mut table: *const c_void = std::ptr::null();
        assert_eq!(cuGetExportTable(&mut table, &uuid), CUDA_SUCCESS);
        assert_eq!(*(table as *const usize), 24);
        // cuBLASLt calls slot 4 of {1734dc26-...} through whatever it got
        // (a refusal crashed PyTorch's HGEMM): served, and the slot answers
        // an error cuBLASLt checks for.
        type TwoOutputs = unsafe extern "C" fn(*mut *mut c_void, *mut *mut c_void) -> CUresult;
        let lt_query: TwoOutputs = slot(LT_QUERY, 4);
        let (mut a, mut b): (*mut c_void, *mut c_void) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(lt_query(&mut a, &mut b), CUDA_ERROR_NOT_SUPPORTED);
        assert!(a.is_null() && b.is_null());

        // A registered fatbin becomes a module whose kernel runs.
        let (wrapper, _fatbin) = fatbin_wrapper();
        let get_module: GetModuleFromCubin = slot(CUDART_INTERFACE, 1);
        let mut module: CUmodule = std::ptr::null_mut();
        assert_eq!(get_module(&mut module, wrapper.as_ptr() as *const c_void), CUDA_SUCCESS);
        let mut fill: CUfunction = std::ptr::null_mut();
        assert_eq!(cuModuleGetFunction(&mut fill, module, c"gv_fill_u32".as_ptr()), CUDA_SUCCESS);
        let n: u64 = 4096;
        let mut dptr: CUdeviceptr = 0;
        assert_eq!(cuMemAlloc_v2(&mut dptr, n as usize * 4), CUDA_SUCCESS);
        let value: c_uint = 0x5eed;
        let mut args =
            [&mut dptr as *mut _ as *mut c_void, &value as *const _ as *mut c_void, &n as *const _ as *mut c_void];
        let launched =
            cuLaunchKernel(fill, 16, 1, 1, 128, 1, 1, 0, std::ptr::null_mut(), args.as_mut_ptr(), std::ptr::null_mut());
        assert_eq!(launched, CUDA_SUCCESS);
        let mut host = vec![0u32; n as usize];
        assert_eq!(cuMemcpyDtoH_v2(host.as_mut_ptr() as *mut c_void, dptr, n as usize * 4), CUDA_SUCCESS);
        assert!(host.iter().all(|&v| v == value), "the kernel of the registered fatbin ran");

        // Values kept with the primary context: the destructor runs once
        // when it is reset; a deleted value's never does.
        let put: LocalPut = slot(CONTEXT_LOCAL_STORAGE, 0);
        let delete: LocalDelete = slot(CONTEXT_LOCAL_STORAGE, 1);
        let get: LocalGet = slot(CONTEXT_LOCAL_STORAGE, 2);
        let (key_a, key_b) = (&KEY_A as *const u8 as *mut c_void, &KEY_B as *const u8 as *mut c_void);
        assert_eq!(put(std::ptr::null_mut(), key_a, 7 as *mut c_void, Some(destructor)), CUDA_SUCCESS);
        assert_eq!(put(primary, key_b, 8 as *mut c_void, Some(destructor)), CUDA_SUCCESS);
        assert_eq!(delete(primary, key_b), CUDA_SUCCESS);
        let mut got: *mut c_void = std::ptr::null_mut();
        assert_eq!(get(&mut got, primary, key_a), CUDA_SUCCESS);
        assert_eq!(got as usize, 7);
        assert_eq!(get(&mut got, primary, key_b), CUDA_ERROR_INVALID_HANDLE, "deleted");
        assert!(destroyed().is_empty());
        assert_eq!(cuDevicePrimaryCtxReset(0), CUDA_SUCCESS);
        assert_eq!(destroyed(), vec![(primary as usize, key_a as usize, 7)]);
        assert_eq!(get(&mut got, primary, key_a), CUDA_ERROR_INVALID_HANDLE, "a reset context is new to the runtime");
        assert_eq!(
            cuModuleGetFunction(&mut fill, module, c"gv_fill_u32".as_ptr()),
            CUDA_ERROR_INVALID_HANDLE,
            "the reset ended the module"
        );

        // A created context's values end with it.
        let mut created: CUcontext = std::ptr::null_mut();
        assert_eq!(cuCtxCreate_v2(&mut created, 0, 0), CUDA_SUCCESS);
        assert_eq!(put(created, key_a, 9 as *mut c_void, Some(destructor)), CUDA_SUCCESS);
        assert_eq!(tools_current(&mut seen), CUDA_SUCCESS);
        assert_eq!(seen, created, "a created context is current");
        assert_eq!(cuCtxDestroy_v2(created), CUDA_SUCCESS);
        assert_eq!(destroyed(), vec![(created as usize, key_a as usize, 9)]);
        assert_eq!(put(created, key_a, 9 as *mut c_void, None), CUDA_ERROR_INVALID_CONTEXT, "destroyed");
    }
}
