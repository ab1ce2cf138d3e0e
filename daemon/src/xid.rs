//! XID errors: NVML reports them only as events, so a thread waits on an
//! event set registered for every NVML GPU and counts what arrives, by GPU
//! and XID, for the metrics and the alert rules to read.

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// How long one wait blocks: also how soon the thread notices that the
/// daemon dropped its book.
const WAIT_MS: u32 = 500;

/// One GPU's XID errors since the watcher started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuXids {
    pub counts: BTreeMap<u64, u64>,
    /// The last XID (0 before the first).
    pub last: u64,
}

/// The counts, by GPU UUID; only GPUs registered for events are present.
#[derive(Debug, Default)]
pub struct XidBook {
    gpus: Mutex<HashMap<String, GpuXids>>,
}

impl XidBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, GpuXids>> {
        // Each update is one insert: a poisoned lock still holds consistent counts.
        self.gpus.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `None` for a GPU whose errors nobody watches.
    pub fn get(&self, uuid: &str) -> Option<GpuXids> {
        self.lock().get(uuid).cloned()
    }

    pub fn record(&self, uuid: &str, xid: u64) {
        let mut gpus = self.lock();
        let g = gpus.entry(uuid.to_owned()).or_default();
        *g.counts.entry(xid).or_insert(0) += 1;
        g.last = xid;
    }

    fn watch(&self, uuid: &str) {
        self.lock().entry(uuid.to_owned()).or_default();
    }
}

/// Starts the watcher over the GPUs `uuids` names. `None` when none of them
/// can report XID errors or the thread cannot start (logged); the returned
/// book lives as long as the caller keeps it, and the thread with it.
pub fn watch(nvml: Arc<Nvml>, uuids: Vec<String>) -> Option<Arc<XidBook>> {
    let book = Arc::new(XidBook::default());
    let weak = Arc::downgrade(&book);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("gpuvisord-xid".into()).spawn(move || {
        // The set borrows the NVML handle, so it is made on this thread.
        let mut set = match nvml.create_event_set() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("XID errors will not be reported: NVML cannot create an event set ({e})");
                let _ = ready_tx.send(false);
                return;
            }
        };
        let mut watched = 0;
        for uuid in &uuids {
            let device = match nvml.device_by_uuid(uuid.as_str()) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(gpu = %uuid, "XID errors of this GPU will not be reported: {e}");
                    continue;
                }
            };
            match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(s) => {
                    set = s;
                    if let Some(book) = weak.upgrade() {
                        book.watch(uuid);
                    }
                    watched += 1;
                }
                Err(e) => {
                    // A failed registration frees the set: start a new one for the rest.
                    tracing::warn!(gpu = %uuid, "XID errors of this GPU will not be reported: {}", e.error);
                    match nvml.create_event_set() {
                        Ok(s) => set = s,
                        Err(e) => {
                            tracing::warn!("XID errors will not be reported: {e}");
                            let _ = ready_tx.send(false);
                            return;
                        }
                    }
                }
            }
        }
        let _ = ready_tx.send(watched > 0);
        if watched == 0 {
            return;
        }
        tracing::info!(gpus = watched, "watching NVML for XID errors");
        loop {
            let event = set.wait(WAIT_MS);
            let Some(book) = weak.upgrade() else { return };
            match event {
                Ok(ev) => {
                    let uuid = ev.device.uuid().unwrap_or_else(|_| "unknown".into());
                    match ev.event_data {
                        Some(XidError::Value(xid)) => {
                            tracing::error!(gpu = %uuid, xid, "NVML reported an XID error");
                            book.record(&uuid, xid);
                        }
                        _ => tracing::warn!(gpu = %uuid, "NVML reported an XID error without its number"),
                    }
                }
                Err(NvmlError::Timeout) => {}
                Err(e) => {
                    tracing::warn!("waiting for XID errors failed ({e}); no more will be reported");
                    return;
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("XID errors will not be reported: cannot start the watcher thread ({e})");
        return None;
    }
    // The registrations take a few NVML calls; wait so that the first
    // scrape already knows which GPUs are watched.
    ready_rx.recv().ok().filter(|&ok| ok).map(|_| book)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_per_gpu_and_xid() {
        let book = XidBook::default();
        assert_eq!(book.get("GPU-1"), None);
        book.watch("GPU-1");
        assert_eq!(book.get("GPU-1"), Some(GpuXids::default()));
        book.record("GPU-1", 79);
        book.record("GPU-1", 13);
        book.record("GPU-1", 79);
        let g = book.get("GPU-1").unwrap();
        assert_eq!(g.counts, BTreeMap::from([(13, 1), (79, 2)]));
        assert_eq!(g.last, 79);
    }
}
