//! The library's one global state: how many `nvmlInit`s are outstanding, the
//! host they loaded, and the config file whose changes refresh the readings.

use crate::config::{Gpu, Host, MigInstance, CONFIG_ENV};
use crate::error::SimError;
use crate::handle::DeviceId;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

struct Session {
    /// At least 1: the session ends when the last `nvmlShutdown` balances the first `nvmlInit`.
    init_count: u32,
    host: Host,
    source: Option<Source>,
}

/// The config file and what it looked like when last read successfully.
struct Source {
    path: PathBuf,
    stamp: FileStamp,
}

/// Changes when the file is rewritten in place (mtime, length) or replaced
/// by a rename (inode), which is how tests should update it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Session>> {
    // A panic cannot leave the session half-updated (every update is a single
    // assignment), so a poisoned lock still holds a consistent session.
    SESSION
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
            // Stamp before reading: a write in between then shows up as a change.
            let stamp = FileStamp::of(&path);
            let host =
                Host::load(&path).inspect_err(|e| warn_once(&format!("nvmlInit failed: {e}")))?;
            let source = stamp.map(|stamp| Source { path, stamp });
            (host, source)
        }
    };
    *session = Some(Session {
        init_count: 1,
        host,
        source,
    });
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
    let Some(stamp) = FileStamp::of(&source.path) else {
        warn_once(&format!(
            "{} has gone; keeping the last readings",
            source.path.display()
        ));
        return;
    };
    if stamp == source.stamp {
        return;
    }
    match Host::load(&source.path) {
        Ok(newer) => {
            if !host.take_readings(&newer) {
                warn_once(&format!(
                    "{} changed more than readings; only utilisation, power, temperature, \
                     energy, used memory and processes change before the next nvmlInit",
                    source.path.display()
                ));
            }
            source.stamp = stamp;
        }
        // Likely caught mid-write: keep the stamp, so the next query reads again.
        Err(e) => warn_once(&format!("{e}; keeping the last readings")),
    }
}

/// A handle resolved against the host.
pub enum Device<'a> {
    Gpu {
        index: usize,
        gpu: &'a Gpu,
    },
    Mig {
        gpu_index: usize,
        gpu: &'a Gpu,
        instance_index: usize,
        instance: &'a MigInstance,
    },
}

impl Host {
    pub fn device(&self, id: DeviceId) -> Option<Device<'_>> {
        match id {
            DeviceId::Gpu(index) => self.gpus.get(index).map(|gpu| Device::Gpu { index, gpu }),
            DeviceId::Mig { gpu, instance } => {
                let gpu_index = gpu;
                let gpu = self.gpus.get(gpu_index)?;
                let mig = gpu.mig_instances.get(instance)?;
                Some(Device::Mig {
                    gpu_index,
                    gpu,
                    instance_index: instance,
                    instance: mig,
                })
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
            Some(DeviceId::Mig {
                gpu: index,
                instance,
            })
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
