//! The library's one global state: how many `nvmlInit`s are outstanding, the
//! host they loaded, and the config file whose changes refresh the readings.

use crate::config::{read_file, Gpu, Host, MigInstance, CONFIG_ENV};
use crate::error::SimError;
use crate::handle::DeviceId;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

struct Session {
    /// At least 1: the session ends when the last `nvmlShutdown` balances the first `nvmlInit`.
    init_count: u32,
    host: Host,
    source: Option<Source>,
}

/// The config file and the contents the readings were last taken from.
///
/// Comparing contents rather than mtimes catches every rewrite: two writes
/// within one tick of the filesystem's coarse clock share an mtime, and a
/// small JSON file costs no more to read than to stat.
struct Source {
    path: PathBuf,
    contents: Vec<u8>,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Session>> {
    // A panic cannot leave the session half-updated (every update is a single
    // assignment), so a poisoned lock still holds a consistent session.
    SESSION.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Says `message` on stderr the first time it comes up, so a daemon that
/// retries `nvmlInit` or polls a broken file does not flood its log.
pub fn warn_once(message: &str) {
    static SAID: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut said = SAID.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if said.insert(message.to_owned()) {
        eprintln!("gpuvisor-sim-nvml: {message}");
    }
}

/// `nvmlInit_v2`: the first init reads the config named by [`CONFIG_ENV`];
/// later ones only count, as with the real library.
pub fn init() -> Result<(), SimError> {
    let mut session = lock();
    if let Some(s) = session.as_mut() {
        s.init_count = s.init_count.saturating_add(1);
        return Ok(());
    }
    let (host, source) = match std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        None => (Host::default_h100(), None),
        Some(path) => {
            let path = PathBuf::from(path);
            let loaded = read_file(&path).and_then(|contents| {
                let host = Host::from_json(&path, &contents)?;
                Ok((host, Some(Source { path, contents })))
            });
            loaded.inspect_err(|e| warn_once(&format!("nvmlInit failed: {e}")))?
        }
    };
    *session = Some(Session { init_count: 1, host, source });
    Ok(())
}

/// `nvmlShutdown`: the last one forgets the host, so the next init reads the config afresh.
pub fn shutdown() -> Result<(), SimError> {
    let mut session = lock();
    let s = session.as_mut().ok_or(SimError::Uninitialized)?;
    s.init_count -= 1;
    if s.init_count == 0 {
        *session = None;
    }
    Ok(())
}

/// Runs `query` on the host, after taking new readings if the file changed.
pub fn with_host<T>(query: impl FnOnce(&Host) -> Result<T, SimError>) -> Result<T, SimError> {
    let mut session = lock();
    let s = session.as_mut().ok_or(SimError::Uninitialized)?;
    if let Some(source) = &mut s.source {
        refresh(&mut s.host, source);
    }
    query(&s.host)
}

fn refresh(host: &mut Host, source: &mut Source) {
    let contents = match read_file(&source.path) {
        Ok(contents) if contents == source.contents => return,
        Ok(contents) => contents,
        Err(e) => return warn_once(&format!("{e}; keeping the last readings")),
    };
    match Host::from_json(&source.path, &contents) {
        Ok(newer) => {
            if !host.take_readings(&newer) {
                warn_once(&format!(
                    "{} changed more than readings; only utilisation, power, temperature, \
                     energy, used memory, processes and XID errors change before the next first nvmlInit",
                    source.path.display()
                ));
            }
            source.contents = contents;
        }
        // Likely caught mid-write: keep the old contents, so the next query tries again.
        Err(e) => warn_once(&format!("{e}; keeping the last readings")),
    }
}

/// A handle resolved against the host.
pub enum Device<'a> {
    Gpu { index: usize, gpu: &'a Gpu },
    Mig { gpu_index: usize, gpu: &'a Gpu, instance_index: usize, instance: &'a MigInstance },
}

impl Host {
    pub fn device(&self, id: DeviceId) -> Option<Device<'_>> {
        match id {
            DeviceId::Gpu(index) => self.gpus.get(index).map(|gpu| Device::Gpu { index, gpu }),
            DeviceId::Mig { gpu, instance } => {
                let gpu_index = gpu;
                let gpu = self.gpus.get(gpu_index)?;
                let mig = gpu.mig_instances.get(instance)?;
                Some(Device::Mig { gpu_index, gpu, instance_index: instance, instance: mig })
            }
        }
    }

    /// The GPU or MIG instance whose UUID is `uuid`.
    pub fn find_uuid(&self, uuid: &str) -> Option<DeviceId> {
        self.gpus.iter().enumerate().find_map(|(index, gpu)| {
            if gpu.uuid == uuid {
                return Some(DeviceId::Gpu(index));
            }
            let instance = gpu.mig_instances.iter().position(|m| m.uuid == uuid)?;
            Some(DeviceId::Mig { gpu: index, instance })
        })
    }
}

/// Runs `query` on the device `handle` names; a handle this library did not
/// give out, or one from an earlier session that no longer resolves, is an invalid argument.
pub fn with_device<T>(
    handle: nvml_wrapper_sys::bindings::nvmlDevice_t,
    query: impl FnOnce(Device<'_>) -> Result<T, SimError>,
) -> Result<T, SimError> {
    with_host(|host| {
        let id = DeviceId::from_handle(handle).ok_or(SimError::InvalidArgument)?;
        query(host.device(id).ok_or(SimError::InvalidArgument)?)
    })
}
