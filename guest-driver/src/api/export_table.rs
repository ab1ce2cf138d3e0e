//! cuGetExportTable: the private tables the CUDA runtime (cudart, shared or
//! static) and NVIDIA's libraries ask the driver for by UUID. A table is an
//! array of pointer-sized slots; most start with their own size in bytes,
//! the rest are functions. Their layouts are not documented: what is known
//! comes from reading what the runtime calls (ZLUDA's notes were the
//! starting point), so every slot whose meaning is not known is a function
//! that counts its call under "table[slot]" for the unsupported-call report
//! and returns `CUDA_ERROR_NOT_SUPPORTED`, and an unknown table id is
//! logged, counted and refused with `CUDA_ERROR_INVALID_VALUE`.
//!
//! What the runtime gets here: the module loading it registers fatbins with
//! (routed to the ordinary module path), the primary context, context-local
//! storage (its per-context state, with destructors honoured when a context
//! ends), the tools hook buffers (all zero: no tool is attached), context
//! creation without tool callbacks, and the integrity check (`integrity.rs`)
//! hashed from what this driver reports about the virtual device.

use super::context::ctx_or_current;
use super::device::{attr_or_zero, check_device};
use super::integrity::{self, CheckInput, DeviceId};
use super::state::{self, LocalDestructor, LocalValue};
use super::types::*;
use super::{ffi, handle, session, CuRes, Out};
use protocol::cuda::*;
use protocol::PRIMARY_CTX;
use std::cell::UnsafeCell;
use std::ffi::{c_uint, c_void};

/// A table as the runtime reads it: `N` pointer-sized slots.
#[repr(transparent)]
pub struct ExportTable<const N: usize>([*const c_void; N]);

// SAFETY: the tables are immutable after initialization and hold only
// addresses of functions and plain numbers.
unsafe impl<const N: usize> Sync for ExportTable<N> {}

impl<const N: usize> ExportTable<N> {
    fn start(&'static self) -> *const c_void {
        self.0.as_ptr() as *const c_void
    }
}

/// Which table, for the names of unknown slots; the index is also the `T`
/// of [`unknown_slot`].
const NAMES: [&str; 12] = [
    "CUDART_INTERFACE",
    "TOOLS_TLS",
    "TOOLS_RUNTIME_CALLBACK_HOOKS",
    "CONTEXT_LOCAL_STORAGE",
    "CTX_CREATE_BYPASS",
    "HEAP_ACCESS",
    "DEVICE_EXTENDED_RT",
    "INTEGRITY_CHECK",
    "CONTEXT_CHECKS",
    "CONTEXT_EXT",
    "{f8cff951}",
    "{1734dc26}",
];
const CUDART: usize = 0;
const TOOLS_TLS_T: usize = 1;
const HOOKS: usize = 2;
const CLS: usize = 3;
const BYPASS: usize = 4;
const HEAP: usize = 5;
const DEVICE_EXT: usize = 6;
const INTEGRITY: usize = 7;
const CHECKS: usize = 8;
const CONTEXT_EXT: usize = 9;
const LIBRARY_QUERY_T: usize = 10;
const LT_QUERY_T: usize = 11;

/// A slot whose meaning is not known. Under the C calling conventions this
/// library is built for (x86-64 System V, AArch64) the caller places and
/// removes the arguments, so it may be called with any: it takes the first
/// six integer argument registers as plain numbers, never dereferenced, and
/// logs them (GPUVISOR_LOG=debug) so that a trace shows what a library
/// passed, which is how the known slots were worked out.
extern "C" fn unknown_slot<const T: usize, const S: usize>(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> CUresult {
    crate::log::unsupported(&format!("cuGetExportTable {}[{S}]", NAMES[T]));
    crate::log::debug(&format!(
        "cuGetExportTable {}[{S}] called with {a:#x} {b:#x} {c:#x} {d:#x} {e:#x} {f:#x}",
        NAMES[T]
    ));
    CUDA_ERROR_NOT_SUPPORTED
}

/// Slot 0 of most tables: the table's size in bytes.
const fn size_slot(slots: usize) -> *const c_void {
    (slots * std::mem::size_of::<*const c_void>()) as *const c_void
}

/// `N` slots of table `T`, each an [`unknown_slot`] until a known function
/// replaces it (at most 96, the longest table).
const fn unknown_slots<const T: usize, const N: usize>() -> [*const c_void; N] {
    macro_rules! slots {
        ($($s:literal)*) => { [$(unknown_slot::<T, $s> as *const c_void),*] };
    }
    let all: [*const c_void; 96] = slots!(
        0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39
        40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75
        76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95
    );
    let mut out = [std::ptr::null(); N];
    let mut i = 0;
    while i < N {
        out[i] = all[i];
        i += 1;
    }
    out
}

/// A table of `N` slots with slot 0 its size and the `known` slots set.
const fn sized<const T: usize, const N: usize>(known: &[(usize, *const c_void)]) -> [*const c_void; N] {
    let mut t = unknown_slots::<T, N>();
    t[0] = size_slot(N);
    let mut i = 0;
    while i < known.len() {
        t[known[i].0] = known[i].1;
        i += 1;
    }
    t
}

// ---- the tables, with the UUIDs the runtime asks for them by ------------

/// {6bd5fb6c-5bf4-e74a-8987-d93912fd9df9}: how the runtime loads the
/// modules it registers and finds the primary context.
const CUDART_INTERFACE_ID: [u8; 16] = uuid(0x6bd5fb6c_5bf4_e74a_8987_d93912fd9df9);
static CUDART_INTERFACE: ExportTable<13> = ExportTable(sized::<CUDART, 13>(&[
    (1, get_module_from_cubin as *const c_void),
    (2, primary_context as *const c_void),
    (6, get_module_from_cubin_ext1 as *const c_void),
    (7, cudart_slot7 as *const c_void),
    (8, get_module_from_cubin_ext2 as *const c_void),
    (12, load_compilers as *const c_void),
]));

/// {42d85a81-23f6-cb47-8298-f6e78a3aecdc}: tools' thread-local state. The
/// runtime reads its size; cuBLASLt calls slot 2 for the calling thread's
/// context (found equal to cuCtxGetCurrent by those who traced it; on the
/// H200 cuBLAS called it 75 times before its first GEMM and gave up with
/// CUBLAS_STATUS_NOT_SUPPORTED when it failed).
const TOOLS_TLS_ID: [u8; 16] = uuid(0x42d85a81_23f6_cb47_8298_f6e78a3aecdc);
static TOOLS_TLS: ExportTable<4> =
    ExportTable(sized::<TOOLS_TLS_T, 4>(&[(2, crate::api::context::cuCtxGetCurrent as *const c_void)]));

/// {a094798c-2e74-2e74-93f2-0800200c0a66}: buffers where a tool (CUPTI)
/// would switch the runtime's callbacks on; all zero here.
const TOOLS_RUNTIME_CALLBACK_HOOKS_ID: [u8; 16] = uuid(0xa094798c_2e74_2e74_93f2_0800200c0a66);
static TOOLS_RUNTIME_CALLBACK_HOOKS: ExportTable<7> =
    ExportTable(sized::<HOOKS, 7>(&[(2, hooks_buffer_a as *const c_void), (6, hooks_buffer_b as *const c_void)]));

/// {c693336e-1121-df11-a8c3-68f355d89593}: context-local storage. This one
/// has no size slot.
const CONTEXT_LOCAL_STORAGE_ID: [u8; 16] = uuid(0xc693336e_1121_df11_a8c3_68f355d89593);
static CONTEXT_LOCAL_STORAGE: ExportTable<4> = ExportTable({
    let mut t = unknown_slots::<CLS, 4>();
    t[0] = local_put as *const c_void;
    t[1] = local_delete as *const c_void;
    t[2] = local_get as *const c_void;
    t
});

/// {0ca50b8c-1004-929a-89a7-d0df10e77286}: context creation that skips
/// tool callbacks (there are none here).
const CTX_CREATE_BYPASS_ID: [u8; 16] = uuid(0x0ca50b8c_1004_929a_89a7_d0df10e77286);
static CTX_CREATE_BYPASS: ExportTable<2> = ExportTable(sized::<BYPASS, 2>(&[(1, ctx_create_bypass as *const c_void)]));

/// {195bcbf4-d67d-024a-acc5-1d29cea631ae}: slots 1 and 2 allocate and free
/// records of some heap; what they hold is not known, so both are counted
/// NOT_SUPPORTED.
const HEAP_ACCESS_ID: [u8; 16] = uuid(0x195bcbf4_d67d_024a_acc5_1d29cea631ae);
static HEAP_ACCESS: ExportTable<3> = ExportTable(sized::<HEAP, 3>(&[]));

/// {b10541e1-f7c7-c74a-9f64-f223be99f1e2}: extended device queries of
/// NVIDIA's libraries; none is known well enough to answer.
const DEVICE_EXTENDED_RT_ID: [u8; 16] = uuid(0xb10541e1_f7c7_c74a_9f64_f223be99f1e2);
static DEVICE_EXTENDED_RT: ExportTable<26> = ExportTable(sized::<DEVICE_EXT, 26>(&[]));

/// {d4082055-bde6-704b-8d34-ba123c66e1f2}: the integrity check.
const INTEGRITY_CHECK_ID: [u8; 16] = uuid(0xd4082055_bde6_704b_8d34_ba123c66e1f2);
static INTEGRITY_CHECK: ExportTable<3> = ExportTable(sized::<INTEGRITY, 3>(&[(1, integrity_check as *const c_void)]));

/// {263e8860-7cd2-6143-92f6-bbd5006dfa7e}: checks on a context whose
/// answers are "nothing special" on every driver observed.
const CONTEXT_CHECKS_ID: [u8; 16] = uuid(0x263e8860_7cd2_6143_92f6_bbd5006dfa7e);
static CONTEXT_CHECKS: ExportTable<4> =
    ExportTable(sized::<CHECKS, 4>(&[(2, context_check as *const c_void), (3, context_check_flags as *const c_void)]));

/// {21318c60-9714-3248-8ca6-41ff7324c8f2}: per-context queries of NVIDIA's
/// libraries, asked for by cuBLAS before its first GEMM (on the H200, a
/// refusal made cublasSgemm return CUBLAS_STATUS_NOT_SUPPORTED). Those who
/// traced it agree on slot 4, the context's id as `cuCtxGetId` gives it
/// (context, pointer to the id); the other slots are counted by number so
/// the next run names the ones a library needs. 95 slots, as CUDA 13.4's
/// runtime finds it.
const CONTEXT_EXT_ID: [u8; 16] = uuid(0x21318c60_9714_3248_8ca6_41ff7324c8f2);
static CONTEXT_EXT_TABLE: ExportTable<95> = ExportTable(sized::<CONTEXT_EXT, 95>(&[
    (4, crate::api::context::cuCtxGetId as *const c_void),
    (39, context_ext_value as *const c_void),
    (51, context_ext_object as *const c_void),
]));

/// The object slot 51 hands out for one context: 64 words laid out as the
/// scalar words of driver 580's object for a primary context (its pointer
/// words stay zero: they point into the driver's own state, which this
/// driver does not have). Word 2 is the context.
struct ContextExtObject(UnsafeCell<[u64; 64]>);
// SAFETY: written once, before its address is handed out; afterwards only
// the caller touches it, as it would touch the driver's own object.
unsafe impl Sync for ContextExtObject {}

/// What slot 39 writes for an object of slot 51: 7 for the primary context
/// in the native trace (13 for a context from cuCtxCreate, which no library
/// was seen to ask about).
const CONTEXT_EXT_VALUE: c_uint = 7;

/// One object per context, kept for the life of the process as the driver's
/// are for the life of their context (a second call gives the same one).
fn context_ext_objects() -> &'static std::sync::Mutex<Vec<(u64, &'static ContextExtObject)>> {
    static OBJECTS: std::sync::OnceLock<std::sync::Mutex<Vec<(u64, &'static ContextExtObject)>>> =
        std::sync::OnceLock::new();
    OBJECTS.get_or_init(Default::default)
}

/// Bounds the objects a program can make this driver keep.
const MAX_CONTEXT_EXT_OBJECTS: usize = 4096;

/// Slot 51 of `{21318c60-...}`: (context, 0, &object). CuPy's cuBLAS calls
/// it, then slot 39 with the object (bench/results/h100/runtime-logs/
/// export-trace-*: NVIDIA's driver returns a per-context heap object whose
/// word 2 is the context). Other second arguments give other objects
/// natively; none was seen from a library, so they are NOT_SUPPORTED.
unsafe extern "C" fn context_ext_object(ctx: CUcontext, which: u64, out: *mut *mut c_void) -> CUresult {
    crate::log::debug(&format!("cuGetExportTable CONTEXT_EXT[51]({:#x}, {which:#x}, {out:p})", ctx as usize));
    if which != 0 {
        crate::log::unsupported(&format!("cuGetExportTable CONTEXT_EXT[51] with {which}"));
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    crate::log::imitated("cuGetExportTable CONTEXT_EXT[51]");
    ffi(|| {
        // SAFETY: an output pointer by the observed calls; NULL is refused.
        let out = unsafe { Out::new(out) }?;
        if ctx.is_null() {
            // As the native driver answers (0, 0, &out).
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let id = ctx_or_current(ctx)?;
        let mut objects = context_ext_objects().lock().unwrap_or_else(|p| p.into_inner());
        let obj = match objects.iter().find(|(c, _)| *c == id) {
            Some((_, o)) => *o,
            None => {
                if objects.len() >= MAX_CONTEXT_EXT_OBJECTS {
                    return Err(CUDA_ERROR_OUT_OF_MEMORY);
                }
                let mut words = [0u64; 64];
                for (i, v) in [(0, 1), (2, ctx as u64), (5, 1), (11, 1), (32, 0x101), (42, CONTEXT_EXT_VALUE as u64)] {
                    words[i] = v;
                }
                let o: &'static ContextExtObject = Box::leak(Box::new(ContextExtObject(UnsafeCell::new(words))));
                objects.push((id, o));
                o
            }
        };
        out.set(obj.0.get().cast());
        Ok(())
    })
}

/// Slot 39 of `{21318c60-...}`: (context, object from slot 51, &value);
/// NVIDIA's driver wrote 7 for the primary context's object in the native
/// trace. An object this driver did not hand out for that context is refused.
unsafe extern "C" fn context_ext_value(ctx: CUcontext, obj: *const c_void, out: *mut c_uint) -> CUresult {
    crate::log::debug(&format!("cuGetExportTable CONTEXT_EXT[39]({:#x}, {obj:p}, {out:p})", ctx as usize));
    crate::log::imitated("cuGetExportTable CONTEXT_EXT[39]");
    ffi(|| {
        // SAFETY: an output pointer by the observed calls; NULL is refused.
        let out = unsafe { Out::new(out) }?;
        let id = ctx_or_current(ctx)?;
        let objects = context_ext_objects().lock().unwrap_or_else(|p| p.into_inner());
        if !objects.iter().any(|(c, o)| *c == id && std::ptr::eq(o.0.get() as *const c_void, obj)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        out.set(CONTEXT_EXT_VALUE);
        Ok(())
    })
}

/// {f8cff951-2146-8b4e-b9e2-fb469e7c0dd9}: asked for by cuBLAS in CuPy and
/// PyTorch, whose native runs never called its two functions; refusing it
/// sent cuBLAS down a path through CONTEXT_EXT[51] and [39] that natively
/// it does not take (and that crashed PyTorch's HGEMM in the guest). Served
/// with its size (3 slots, as natively) and both functions counted.
const LIBRARY_QUERY_ID: [u8; 16] = uuid(0xf8cff951_2146_8b4e_b9e2_fb469e7c0dd9);
static LIBRARY_QUERY: ExportTable<3> = ExportTable(sized::<LIBRARY_QUERY_T, 3>(&[]));

/// {1734dc26-800d-4745-8726-c0f1e7dd8bca}: asked for by cuBLASLt before its
/// half-precision heuristics, which call slot 4 with two output pointers
/// through it without checking that the table was given: a refusal
/// crashed PyTorch's HGEMM (a call through slot 4 of NULL, reproduced on
/// the sim). Served with every slot counted NOT_SUPPORTED, which cuBLASLt
/// checks for and goes on without.
const LT_QUERY_ID: [u8; 16] = uuid(0x1734dc26_800d_4745_8726_c0f1e7dd8bca);
static LT_QUERY: ExportTable<16> = ExportTable(sized::<LT_QUERY_T, 16>(&[]));

/// A UUID's 16 bytes in the order they are written (and stored).
const fn uuid(v: u128) -> [u8; 16] {
    v.to_be_bytes()
}

/// "{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}" for logs and the report.
pub fn uuid_string(b: &[u8; 16]) -> String {
    let hex = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("{{{}-{}-{}-{}-{}}}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16))
}

/// The table with id `id`, if this driver serves it.
pub fn lookup(id: &[u8; 16]) -> Option<*const c_void> {
    let tables: [(&[u8; 16], *const c_void); 12] = [
        (&CUDART_INTERFACE_ID, CUDART_INTERFACE.start()),
        (&TOOLS_TLS_ID, TOOLS_TLS.start()),
        (&TOOLS_RUNTIME_CALLBACK_HOOKS_ID, TOOLS_RUNTIME_CALLBACK_HOOKS.start()),
        (&CONTEXT_LOCAL_STORAGE_ID, CONTEXT_LOCAL_STORAGE.start()),
        (&CTX_CREATE_BYPASS_ID, CTX_CREATE_BYPASS.start()),
        (&HEAP_ACCESS_ID, HEAP_ACCESS.start()),
        (&DEVICE_EXTENDED_RT_ID, DEVICE_EXTENDED_RT.start()),
        (&INTEGRITY_CHECK_ID, INTEGRITY_CHECK.start()),
        (&CONTEXT_CHECKS_ID, CONTEXT_CHECKS.start()),
        (&CONTEXT_EXT_ID, CONTEXT_EXT_TABLE.start()),
        (&LIBRARY_QUERY_ID, LIBRARY_QUERY.start()),
        (&LT_QUERY_ID, LT_QUERY.start()),
    ];
    tables.iter().find(|(k, _)| *k == id).map(|(_, t)| *t)
}

/// Works before cuInit: the runtime asks for its tables first.
#[no_mangle]
pub unsafe extern "C" fn cuGetExportTable(
    ppExportTable: *mut *const c_void,
    pExportTableId: *const CUuuid,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(ppExportTable) }?;
        if pExportTableId.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-NULL, a CUuuid per the CUDA API.
        let id = unsafe { pExportTableId.read_unaligned() }.bytes.map(|b| b as u8);
        match lookup(&id) {
            Some(t) => {
                crate::log::debug(&format!("cuGetExportTable({})", uuid_string(&id)));
                out.set(t);
                Ok(())
            }
            None => {
                let name = format!("cuGetExportTable {}", uuid_string(&id));
                crate::unsupported_calls::record(&name);
                // The runtime and the libraries probe for tables and go on
                // without those they do not get, as they do on NVIDIA's
                // driver: counted for the report, not printed.
                crate::log::debug(&format!(
                    "{name}: a table gpuvisor does not know; returning CUDA_ERROR_INVALID_VALUE"
                ));
                out.set(std::ptr::null());
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        }
    })
}

// ---- CUDART_INTERFACE --------------------------------------------------

/// Slot 1: loads a registered fatbin (`__fatBinC_Wrapper_t`) as a module.
unsafe extern "C" fn get_module_from_cubin(module: *mut CUmodule, wrapper: *const c_void) -> CUresult {
    ffi(|| {
        // SAFETY: output argument, as for cuModuleLoadData.
        let out = unsafe { Out::new(module) }?;
        // SAFETY: the runtime passes the wrapper it registered.
        out.set(handle(unsafe { super::module::load_for_runtime(wrapper) }?));
        Ok(())
    })
}

/// Logs what the `_ext` variants get besides the image: what these
/// arguments mean is not known, and loading works without them.
fn note_extra_arguments(slot: usize, a: *mut c_void, b: *mut c_void, c: c_uint) {
    if !a.is_null() || !b.is_null() || c != 0 {
        crate::log::debug(&format!("CUDART_INTERFACE[{slot}] extra arguments ignored: {a:?} {b:?} {c}"));
    }
}

/// Slot 6: slot 1 with three more arguments.
unsafe extern "C" fn get_module_from_cubin_ext1(
    module: *mut CUmodule,
    wrapper: *const c_void,
    a: *mut c_void,
    b: *mut c_void,
    c: c_uint,
) -> CUresult {
    note_extra_arguments(6, a, b, c);
    // SAFETY: the caller's contract, forwarded.
    unsafe { get_module_from_cubin(module, wrapper) }
}

/// Slot 8: as slot 6, but given the fatbin itself, first.
unsafe extern "C" fn get_module_from_cubin_ext2(
    fatbin: *const c_void,
    module: *mut CUmodule,
    a: *mut c_void,
    b: *mut c_void,
    c: c_uint,
) -> CUresult {
    note_extra_arguments(8, a, b, c);
    // SAFETY: the caller's contract, forwarded; image_at reads a fatbin
    // as well as a wrapper.
    unsafe { get_module_from_cubin(module, fatbin) }
}

/// Slot 2: the device's primary context, without retaining it (the runtime
/// retains it itself when it wants to keep it). The context becomes known
/// to the guest's tables so that it can be made current.
unsafe extern "C" fn primary_context(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the runtime's use.
        let out = unsafe { Out::new(pctx) }?;
        check_device(dev)?;
        let mut st = state::lock();
        let flags = st.primary.flags;
        st.ctxs.entry(PRIMARY_CTX).or_insert_with(|| state::CtxInfo::new(flags));
        out.set(handle(PRIMARY_CTX));
        Ok(())
    })
}

/// Slot 7: called with one number and no answer expected; nothing to do.
extern "C" fn cudart_slot7(_arg: usize) {}

/// Slot 12: natively loads the JIT compilers; the backend has its own.
extern "C" fn load_compilers() -> CUresult {
    CUDA_SUCCESS
}

// ---- TOOLS_RUNTIME_CALLBACK_HOOKS --------------------------------------

/// A zeroed buffer the runtime reads (and a tool would write).
#[repr(C, align(64))]
struct HookBuffer(UnsafeCell<[u8; 4096]>);

// SAFETY: handed out as raw memory to C; this code never reads or writes it.
unsafe impl Sync for HookBuffer {}

static HOOKS_A: HookBuffer = HookBuffer(UnsafeCell::new([0; 4096]));
static HOOKS_B: HookBuffer = HookBuffer(UnsafeCell::new([0; 4096]));

/// Writes a buffer's address and size. The sizes are ZLUDA's observations
/// (1024 and 14), which are no larger than the buffers whether the runtime
/// counts them in bytes or in 32-bit words.
///
/// # Safety
/// `ptr` and `size` are NULL or writable.
unsafe fn hooks_buffer(buf: &'static HookBuffer, len: usize, ptr: *mut *mut c_void, size: *mut usize) {
    // SAFETY: per the caller; NULL outputs are skipped.
    unsafe {
        if let Some(p) = Out::optional(ptr) {
            p.set(buf.0.get() as *mut c_void);
        }
        if let Some(s) = Out::optional(size) {
            s.set(len);
        }
    }
}

unsafe extern "C" fn hooks_buffer_a(ptr: *mut *mut c_void, size: *mut usize) {
    // SAFETY: the runtime passes two output slots.
    unsafe { hooks_buffer(&HOOKS_A, 1024, ptr, size) }
}

unsafe extern "C" fn hooks_buffer_b(ptr: *mut *mut c_void, size: *mut usize) {
    // SAFETY: the runtime passes two output slots.
    unsafe { hooks_buffer(&HOOKS_B, 14, ptr, size) }
}

// ---- CONTEXT_LOCAL_STORAGE ---------------------------------------------

/// Slot 0: keeps `value` under `key` with the context; `destructor` is
/// called when the context ends (context.rs). Putting a key again replaces
/// its value and destructor.
unsafe extern "C" fn local_put(
    ctx: CUcontext,
    key: *mut c_void,
    value: *mut c_void,
    destructor: Option<LocalDestructor>,
) -> CUresult {
    ffi(|| {
        let id = ctx_or_current(ctx)?;
        let mut st = state::lock();
        let info = st.ctxs.get_mut(&id).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        let v = LocalValue { key: key as usize, value: value as usize, destructor };
        match info.local.iter_mut().find(|l| l.key == v.key) {
            Some(l) => *l = v,
            None => info.local.push(v),
        }
        Ok(())
    })
}

/// Slot 1: forgets `key` without calling its destructor. Forgetting a key
/// that is not there succeeds.
unsafe extern "C" fn local_delete(ctx: CUcontext, key: *mut c_void) -> CUresult {
    ffi(|| {
        let id = ctx_or_current(ctx)?;
        let mut st = state::lock();
        let info = st.ctxs.get_mut(&id).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        info.local.retain(|l| l.key != key as usize);
        Ok(())
    })
}

/// Slot 2: the value under `key`; `CUDA_ERROR_INVALID_HANDLE` when there is
/// none (how the runtime learns that a context is new to it).
unsafe extern "C" fn local_get(value: *mut *mut c_void, ctx: CUcontext, key: *mut c_void) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the runtime's use.
        let out = unsafe { Out::new(value) }?;
        let id = ctx_or_current(ctx)?;
        let st = state::lock();
        let info = st.ctxs.get(&id).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        let v = info.local.iter().find(|l| l.key == key as usize).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        out.set(v.value as *mut c_void);
        Ok(())
    })
}

// ---- CTX_CREATE_BYPASS -------------------------------------------------

/// Slot 1: cuCtxCreate_v2.
unsafe extern "C" fn ctx_create_bypass(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    unsafe { super::context::cuCtxCreate_v2(pctx, flags, dev) }
}

// ---- INTEGRITY_CHECK ---------------------------------------------------

/// What the hash covers for each device, as this driver reports them.
fn devices() -> CuRes<Vec<DeviceId>> {
    let c = session()?;
    let n = c.facts.reply.device_count.get().min(1);
    Ok((0..n)
        .map(|_| DeviceId {
            uuid: c.facts.reply.uuid,
            pci_domain: attr_or_zero(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
            pci_bus: attr_or_zero(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
            pci_device: attr_or_zero(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID),
        })
        .collect())
}

/// Slot 1: the answer the runtime checks (integrity.rs).
unsafe extern "C" fn integrity_check(version: c_uint, unix_seconds: u64, result: *mut [u64; 2]) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the runtime's use.
        let out = unsafe { Out::new(result) }?;
        let c = session()?;
        let input = CheckInput {
            driver_version: c.facts.reply.driver_version.get(),
            version,
            pid: std::process::id(),
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() } as u32,
            cudart_table: CUDART_INTERFACE.start() as u64,
            integrity_table: INTEGRITY_CHECK.start() as u64,
            check_fn: integrity_check as *const c_void as u64,
            unix_seconds,
        };
        crate::log::debug(&format!("integrity check: {input:?}"));
        out.set(integrity::answer(&input, &devices()?));
        Ok(())
    })
}

// ---- CONTEXT_CHECKS ----------------------------------------------------

/// Slot 2: a check on a context; the first output is 0 on every driver
/// observed, and the second is left alone.
unsafe extern "C" fn context_check(_ctx: CUcontext, result: *mut c_uint, _other: *mut *const c_void) -> CUresult {
    ffi(|| {
        // SAFETY: optional output per the runtime's use.
        if let Some(r) = unsafe { Out::optional(result) } {
            r.set(0);
        }
        Ok(())
    })
}

/// Slot 3: flags that are 0 on every driver observed.
extern "C" fn context_check_flags() -> c_uint {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(id: [u8; 16]) -> Option<*const usize> {
        lookup(&id).map(|p| p as *const usize)
    }

    #[test]
    fn served_tables_start_with_their_size() {
        for (id, slots) in [
            (CUDART_INTERFACE_ID, 13),
            (TOOLS_TLS_ID, 4),
            (TOOLS_RUNTIME_CALLBACK_HOOKS_ID, 7),
            (CTX_CREATE_BYPASS_ID, 2),
            (HEAP_ACCESS_ID, 3),
            (DEVICE_EXTENDED_RT_ID, 26),
            (INTEGRITY_CHECK_ID, 3),
            (CONTEXT_CHECKS_ID, 4),
            (CONTEXT_EXT_ID, 95),
            (LIBRARY_QUERY_ID, 3),
            (LT_QUERY_ID, 16),
        ] {
            let t = table(id).expect("served");
            // SAFETY: slot 0 of a served table.
            assert_eq!(unsafe { *t }, slots * 8, "{}", uuid_string(&id));
        }
        let cls = table(CONTEXT_LOCAL_STORAGE_ID).expect("served") as *const *const c_void;
        // SAFETY: slot 0 of the storage table.
        assert_eq!(unsafe { *cls }, local_put as *const c_void);
    }

    #[test]
    fn uuids_print_as_the_runtime_writes_them() {
        assert_eq!(uuid_string(&CUDART_INTERFACE_ID), "{6bd5fb6c-5bf4-e74a-8987-d93912fd9df9}");
        assert_eq!(CUDART_INTERFACE_ID[..4], [0x6b, 0xd5, 0xfb, 0x6c]);
    }

    #[test]
    fn an_unknown_id_is_invalid_value_and_counted() {
        let id = CUuuid { bytes: [0x5a; 16].map(|b| b as std::ffi::c_char) };
        let mut t: *const c_void = std::ptr::dangling();
        // SAFETY: valid id and output slot.
        assert_eq!(unsafe { cuGetExportTable(&mut t, &id) }, CUDA_ERROR_INVALID_VALUE);
        assert!(t.is_null());
        let name = format!("cuGetExportTable {}", uuid_string(&[0x5a; 16]));
        assert!(crate::unsupported_calls::snapshot().iter().any(|(n, c)| *n == name && *c >= 1));
        // SAFETY: NULL arguments are refused before any access.
        assert_eq!(unsafe { cuGetExportTable(&mut t, std::ptr::null()) }, CUDA_ERROR_INVALID_VALUE);
    }

    #[test]
    fn unknown_slots_are_counted_not_supported() {
        type Unknown = extern "C" fn(u64, u64, u64, u64, u64, u64) -> CUresult;
        let t = table(CUDART_INTERFACE_ID).expect("served") as *const Unknown;
        // SAFETY: slot 3 of the runtime interface is an unknown-slot
        // function, which takes six plain numbers.
        let r = unsafe { (*t.add(3))(1, 2, 3, 4, 5, 6) };
        assert_eq!(r, CUDA_ERROR_NOT_SUPPORTED);
        assert!(crate::unsupported_calls::snapshot().iter().any(|(n, _)| n == "cuGetExportTable CUDART_INTERFACE[3]"));
    }
}
