//! Event sets: what gpuvisord uses to learn of XID errors. A simulated GPU's
//! `xid_errors` list (a reading, so a test appends to it under a running
//! daemon) is its error history; a set registered for critical XID errors
//! gets each error appended after it registered, once, in order, as the
//! real driver delivers errors that happen after registration.

use crate::error::{to_return, SimError};
use crate::handle::DeviceId;
use crate::out_param::{non_null, write};
use crate::session;
use nvml_wrapper_sys::bindings::*;
use std::collections::HashMap;
use std::ffi::{c_uint, c_ulonglong};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bits 24..32 of every event set handle, unlike device handles' tag.
const TAG: usize = 0x52 << 24;
const TAG_MASK: usize = !0x00ff_ffff;
/// How often a waiting call looks for new errors (the config is re-read then).
const POLL: Duration = Duration::from_millis(10);

/// The event types the simulated GPUs report.
const SUPPORTED: c_ulonglong = nvmlEventTypeXidCriticalError as c_ulonglong;

struct Registration {
    gpu: usize,
    types: c_ulonglong,
    /// How many of the GPU's `xid_errors` this set has seen.
    seen: usize,
}

#[derive(Default)]
struct Sets {
    next: usize,
    sets: HashMap<usize, Vec<Registration>>,
}

static SETS: Mutex<Option<Sets>> = Mutex::new(None);

fn sets() -> MutexGuard<'static, Option<Sets>> {
    // Every update is a single insert or push: a poisoned lock still holds consistent sets.
    SETS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn to_handle(id: usize) -> nvmlEventSet_t {
    std::ptr::without_provenance_mut::<nvmlEventSet_st>(TAG | (id & 0x00ff_ffff))
}

fn from_handle(set: nvmlEventSet_t) -> Option<usize> {
    let addr = set.addr();
    (addr & TAG_MASK == TAG).then_some(addr & 0x00ff_ffff)
}

/// A new, empty event set.
///
/// # Safety
/// `set` is null or valid for writing one `nvmlEventSet_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    to_return(session::with_host(|_| {
        non_null(set)?;
        let mut guard = sets();
        let all = guard.get_or_insert_with(Sets::default);
        if all.next > 0x00ff_ffff {
            return Err(SimError::InvalidArgument);
        }
        let id = all.next;
        all.next += 1;
        all.sets.insert(id, Vec::new());
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(set, to_handle(id)) }
    }))
}

/// The event types a GPU reports: critical XID errors (none on a MIG instance).
///
/// # Safety
/// `event_types` is null or valid for writing one `unsigned long long`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    event_types: *mut c_ulonglong,
) -> nvmlReturn_t {
    to_return(session::with_device(device, |d| {
        let types = match d {
            session::Device::Gpu { .. } => SUPPORTED,
            session::Device::Mig { .. } => 0,
        };
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(event_types, types) }
    }))
}

/// Adds `device`'s events of `event_types` to `set`; types the GPU does not
/// report are `NVML_ERROR_NOT_SUPPORTED`, as on the real library.
#[no_mangle]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    event_types: c_ulonglong,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    to_return(session::with_host(|host| {
        let Some(DeviceId::Gpu(gpu)) = DeviceId::from_handle(device) else {
            return Err(SimError::NotSupported);
        };
        let seen = host.gpus.get(gpu).ok_or(SimError::InvalidArgument)?.readings.xid_errors.len();
        if event_types & !SUPPORTED != 0 {
            return Err(SimError::NotSupported);
        }
        let id = from_handle(set).ok_or(SimError::InvalidArgument)?;
        let mut guard = sets();
        let regs = guard.as_mut().and_then(|s| s.sets.get_mut(&id)).ok_or(SimError::InvalidArgument)?;
        regs.push(Registration { gpu, types: event_types, seen });
        Ok(())
    }))
}

/// Waits up to `timeout_ms` for the next event of `set`; none in time is
/// `NVML_ERROR_TIMEOUT`.
///
/// # Safety
/// `data` is null or valid for writing one `nvmlEventData_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> nvmlReturn_t {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.into());
    let Some(id) = from_handle(set) else { return SimError::InvalidArgument.code() };
    if data.is_null() {
        return SimError::InvalidArgument.code();
    }
    loop {
        let next = session::with_host(|host| {
            let mut guard = sets();
            let regs = guard.as_mut().and_then(|s| s.sets.get_mut(&id)).ok_or(SimError::InvalidArgument)?;
            for r in regs.iter_mut().filter(|r| r.types & SUPPORTED != 0) {
                let errors = host.gpus.get(r.gpu).map_or(&[][..], |g| &g.readings.xid_errors[..]);
                if let Some(&xid) = errors.get(r.seen) {
                    r.seen += 1;
                    return Ok(Some((r.gpu, xid)));
                }
            }
            Ok(None)
        });
        match next {
            Err(e) => return e.code(),
            Ok(Some((gpu, xid))) => {
                let event = nvmlEventData_t {
                    device: DeviceId::Gpu(gpu).to_handle(),
                    eventType: nvmlEventTypeXidCriticalError.into(),
                    eventData: xid,
                    gpuInstanceId: u32::MAX,
                    computeInstanceId: u32::MAX,
                };
                // SAFETY: `data` is not null and, by the caller's contract, valid for one write.
                return to_return(unsafe { write(data, event) });
            }
            Ok(None) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return nvmlReturn_enum_NVML_ERROR_TIMEOUT;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// Frees `set`.
#[no_mangle]
pub extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    let Some(id) = from_handle(set) else { return SimError::InvalidArgument.code() };
    match sets().as_mut().and_then(|s| s.sets.remove(&id)) {
        Some(_) => nvmlReturn_enum_NVML_SUCCESS,
        None => SimError::InvalidArgument.code(),
    }
}
