//! The heartbeat (`CAPSET_F_HEARTBEAT`): a thread of its own adds one to a
//! word in every live session's control buffer each period, whatever the
//! queue thread is doing (a long kernel, a grant wait). A guest waiting for
//! a reply sees the word move while the backend lives; when it stops (the
//! process is stopped, or hangs outside the GPU) the guest fails its call
//! instead of waiting for ever.

use crate::guest_mem::{Extent, GuestMemory, GuestSpan};
use protocol::HEARTBEAT_OFFSET;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Sessions = Arc<Mutex<HashMap<u32, (GuestMemory, Vec<Extent>)>>>;

/// The sessions that get beats, shared with the heartbeat thread.
#[derive(Clone)]
pub struct Heartbeat {
    sessions: Sessions,
}

impl Heartbeat {
    /// Starts the thread, beating every `period`.
    pub fn start(vm: &str, period: Duration) -> std::io::Result<Heartbeat> {
        let sessions: Sessions = Arc::default();
        let s = sessions.clone();
        std::thread::Builder::new().name(format!("heartbeat-{vm}")).spawn(move || loop {
            std::thread::sleep(period);
            let map = s.lock().unwrap_or_else(|p| p.into_inner());
            for (mem, control) in map.values() {
                beat(mem, control);
            }
        })?;
        Ok(Heartbeat { sessions })
    }

    /// Session `ctx_id` opened with this control buffer: beat it from now on.
    pub fn add(&self, ctx_id: u32, mem: &GuestMemory, control: &[Extent]) {
        beat(mem, control);
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(ctx_id, (mem.clone(), control.to_vec()));
    }

    /// Session `ctx_id` ended.
    pub fn remove(&self, ctx_id: u32) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&ctx_id);
    }
}

/// Adds one to the heartbeat word. The guest only compares it with what it
/// read before, so a plain read and write will do.
fn beat(mem: &GuestMemory, control: &[Extent]) {
    let Ok(span) = GuestSpan::new(mem, control, HEARTBEAT_OFFSET, 8) else { return };
    let mut w = [0u8; 8];
    span.read_into(&mut w);
    span.write_from(&u64::from_le_bytes(w).wrapping_add(1).to_le_bytes());
}
