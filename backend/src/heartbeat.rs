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

/// Per session (virtio-gpu context): its control buffer's resource id, and
/// where that buffer lies in guest memory.
type Sessions = Arc<Mutex<HashMap<u32, (u32, GuestMemory, Vec<Extent>)>>>;

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
            for (_, mem, control) in map.values() {
                beat(mem, control);
            }
        })?;
        Ok(Heartbeat { sessions })
    }

    /// Session `ctx_id` opened with control buffer `resource` (lying at
    /// `control`): beat it from now on.
    pub fn add(&self, ctx_id: u32, resource: u32, mem: &GuestMemory, control: &[Extent]) {
        beat(mem, control);
        let entry = (resource, mem.clone(), control.to_vec());
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(ctx_id, entry);
    }

    /// Resource `resource` goes, or its backing changes: its pages may go
    /// back to the guest's kernel for other uses (Linux unreferences a
    /// process's buffers before it destroys its context), so no beat may
    /// land there any more. Returns once no beat can.
    pub fn forget_resource(&self, resource: u32) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (r, _, _)| *r != resource);
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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn word(mem: &GuestMemory) -> u64 {
        mem.read_obj(GuestAddress(0x1000 + HEARTBEAT_OFFSET)).unwrap()
    }

    #[test]
    fn beats_move_until_the_control_buffer_goes() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let hb = Heartbeat::start("t", Duration::from_millis(5)).unwrap();
        hb.add(3, 7, &mem, &[Extent { addr: GuestAddress(0x1000), len: 4096 }]);
        std::thread::sleep(Duration::from_millis(60));
        let moving = word(&mem);
        assert!(moving >= 2, "the word moved {moving} times");
        // Linux unreferences a dying process's buffer before its context:
        // its pages may be the guest's for other uses from then on.
        hb.forget_resource(7);
        let last = word(&mem);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(word(&mem), last, "a beat landed in a buffer that went");
        // And a session that ends stops too.
        hb.add(4, 8, &mem, &[Extent { addr: GuestAddress(0x1000), len: 4096 }]);
        hb.remove(4);
        let last = word(&mem);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(word(&mem), last);
    }
}
