//! Events. Creating, recording and destroying are queued (the guest picks
//! the id); query, synchronize and elapsed time wait for the backend.

use super::state::{self, EventInfo};
use super::types::*;
use super::{ffi, handle, id_of, session, CuRes, Out};
use protocol::cuda::*;
use protocol::{ElapsedReply, EventCreate, EventElapsedTime, EventRecord, Id, Opcode};
use std::ffi::c_uint;
use zerocopy::little_endian::{U32, U64};
use zerocopy::FromBytes;

const EVENT_FLAGS: c_uint = CU_EVENT_DEFAULT | CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;

fn create(out: Out<CUevent>, flags: c_uint) -> CuRes {
    let c = session()?;
    if flags & !EVENT_FLAGS != 0 || (flags & CU_EVENT_INTERPROCESS != 0 && flags & CU_EVENT_DISABLE_TIMING == 0) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let ctx = state::lock().current()?;
    let id = c.new_id();
    let p = EventCreate { event_id: U64::new(id), flags: U32::new(flags), _pad: U32::new(0) };
    c.enqueue(Opcode::EventCreate, 0, ctx, &p, &[])?;
    state::lock().events.insert(id, EventInfo { ctx, flags, recorded: false });
    out.set(handle(id));
    Ok(())
}

fn destroy(h: CUevent) -> CuRes {
    let c = session()?;
    let id = id_of(h);
    let e = state::lock().events.remove(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    c.enqueue(Opcode::EventDestroy, 0, e.ctx, &Id { id: U64::new(id) }, &[])
}

pub(crate) fn record(h: CUevent, stream: CUstream, flags: c_uint, ptsz: bool) -> CuRes {
    let c = session()?;
    if flags & !CU_EVENT_RECORD_EXTERNAL != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let id = id_of(h);
    let (sid, ctx, stream_ctx) = {
        let st = state::lock();
        let ectx = st.events.get(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?.ctx;
        let (sid, sctx) = st.resolve_stream(stream, ptsz)?;
        (sid, ectx, sctx)
    };
    // In a capture the event stands for the captured work; it is not
    // recorded on the device.
    if super::capture::event_record(id, sid, stream_ctx, flags & CU_EVENT_RECORD_EXTERNAL != 0)? {
        return Ok(());
    }
    if let Some(e) = state::lock().events.get_mut(&id) {
        e.recorded = true;
    }
    let p = EventRecord { event_id: U64::new(id), stream_id: U64::new(sid) };
    c.enqueue(Opcode::EventRecord, 0, ctx, &p, &[])
}

/// A synchronizing event call (query, synchronize).
fn sync_op(op: Opcode, h: CUevent) -> CuRes {
    let c = session()?;
    let id = id_of(h);
    super::capture::check_event(id)?;
    let ctx = state::lock().events.get(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?.ctx;
    c.sync_call(op, 0, ctx, &Id { id: U64::new(id) }).map(|_| ())
}

fn elapsed(start: CUevent, end: CUevent) -> CuRes<f32> {
    let c = session()?;
    let (a, b) = (id_of(start), id_of(end));
    super::capture::check_event(a)?;
    super::capture::check_event(b)?;
    let ctx = {
        let st = state::lock();
        let ea = st.events.get(&a).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let eb = st.events.get(&b).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        // Natively: timing disabled on either, or either never recorded.
        if (ea.flags | eb.flags) & CU_EVENT_DISABLE_TIMING != 0 || !ea.recorded || !eb.recorded {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        ea.ctx
    };
    let p = EventElapsedTime { start: U64::new(a), end: U64::new(b) };
    let reply = c.call(Opcode::EventElapsedTime, 0, ctx, &p, &[])?;
    Ok(ElapsedReply::read_from_prefix(&reply).map_err(|_| CUDA_ERROR_UNKNOWN)?.0.ms.get())
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(phEvent: *mut CUevent, Flags: c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(phEvent) }?;
        create(out, Flags)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy(hEvent: CUevent) -> CUresult {
    ffi(|| destroy(hEvent))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(hEvent: CUevent) -> CUresult {
    ffi(|| destroy(hEvent))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(hEvent: CUevent, hStream: CUstream) -> CUresult {
    ffi(|| record(hEvent, hStream, 0, false))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord_ptsz(hEvent: CUevent, hStream: CUstream) -> CUresult {
    ffi(|| record(hEvent, hStream, 0, true))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags(hEvent: CUevent, hStream: CUstream, flags: c_uint) -> CUresult {
    ffi(|| record(hEvent, hStream, flags, false))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags_ptsz(hEvent: CUevent, hStream: CUstream, flags: c_uint) -> CUresult {
    ffi(|| record(hEvent, hStream, flags, true))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(hEvent: CUevent) -> CUresult {
    ffi(|| sync_op(Opcode::EventQuery, hEvent))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(hEvent: CUevent) -> CUresult {
    ffi(|| sync_op(Opcode::EventSynchronize, hEvent))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(pMilliseconds: *mut f32, hStart: CUevent, hEnd: CUevent) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pMilliseconds) }?;
        out.set(elapsed(hStart, hEnd)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(pMilliseconds: *mut f32, hStart: CUevent, hEnd: CUevent) -> CUresult {
    // SAFETY: the caller's contract, forwarded; same arguments and meaning.
    unsafe { cuEventElapsedTime(pMilliseconds, hStart, hEnd) }
}
