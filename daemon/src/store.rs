//! The daemon's persistent settings: each GPU's scheduling defaults, each
//! VM's QoS and each VM's GPU access list, in SQLite under the state
//! directory. Everything is loaded at
//! start and written through on every change, so a restarted daemon resumes
//! with the admin's last word.

use protocol::control::QosClass;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "gpuvisord.db";

/// Schema version this daemon writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

const SCHEMA_V1: &str = "
CREATE TABLE gpus (
    id TEXT PRIMARY KEY,
    slice_us INTEGER NOT NULL,
    max_queued_ops INTEGER NOT NULL,
    overcommit_ratio REAL NOT NULL DEFAULT 1.0,
    updated_at INTEGER NOT NULL
);
CREATE TABLE vms (
    name TEXT PRIMARY KEY,
    gpu TEXT NOT NULL,
    class TEXT NOT NULL,
    weight INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    slice_us INTEGER NULL,
    drained INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// Version 2: the admin's cap on the device memory a GPU's VMs share.
const SCHEMA_V2: &str = "
ALTER TABLE gpus ADD COLUMN memory_limit_bytes INTEGER NULL;
";

/// Version 3: the GPUs each VM may use. Apart from `vms`, whose rows exist
/// only once a backend registered: the admin sets lists before that.
/// `allowed_gpus` is a JSON array of GPU ids (`["*"]`: any GPU); a VM
/// without a row has no list.
const SCHEMA_V3: &str = "
CREATE TABLE vm_access (
    name TEXT PRIMARY KEY,
    allowed_gpus TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("the database {path} has schema version {found}, newer than the {SCHEMA_VERSION} this gpuvisord knows")]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
}

/// A GPU's stored scheduling defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuRecord {
    pub id: String,
    pub slice_us: u64,
    pub max_queued_ops: u32,
    pub overcommit_ratio: f64,
    /// The admin's cap on the device memory the GPU's VMs share.
    pub memory_limit_bytes: Option<u64>,
}

/// A VM's stored settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    pub name: String,
    pub gpu: String,
    pub class: QosClass,
    pub weight: u32,
    pub priority: i32,
    /// The VM's own slice; `None` takes the GPU's.
    pub slice_us: Option<u64>,
    pub drained: bool,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Store {
    /// Opens (or creates) `<state_dir>/gpuvisord.db` and brings its schema up
    /// to date.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        let open_err = |source| StoreError::Open { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(open_err)?;
        // The first statement is where a file that is not a database shows.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(open_err)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;").map_err(open_err)?;
        let store = Store { conn, path };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        match version {
            0 => {
                let sql = format!(
                    "BEGIN; {SCHEMA_V1} {SCHEMA_V2} {SCHEMA_V3} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                );
                self.conn.execute_batch(&sql).map_err(|e| self.err(e))?;
                tracing::info!(path = %self.path.display(), "created the database");
                Ok(())
            }
            1 | 2 => {
                let steps = if version == 1 { format!("{SCHEMA_V2} {SCHEMA_V3}") } else { SCHEMA_V3.to_owned() };
                let sql = format!("BEGIN; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;");
                self.conn.execute_batch(&sql).map_err(|e| self.err(e))?;
                tracing::info!(path = %self.path.display(), from = version, to = SCHEMA_VERSION, "database schema upgraded");
                Ok(())
            }
            SCHEMA_VERSION => Ok(()),
            found => Err(StoreError::NewerSchema { path: self.path.clone(), found }),
        }
    }

    /// All stored GPUs. Rows with values out of range (a hand-edited file)
    /// are skipped with a warning.
    pub fn gpus(&self) -> Result<Vec<GpuRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, slice_us, max_queued_ops, overcommit_ratio, memory_limit_bytes FROM gpus ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, slice_us, max_queued_ops, overcommit_ratio, memory_limit) = row.map_err(|e| self.err(e))?;
            let memory_limit_bytes = memory_limit.map(u64::try_from).transpose();
            match (u64::try_from(slice_us), u32::try_from(max_queued_ops), memory_limit_bytes) {
                (Ok(slice_us), Ok(max_queued_ops), Ok(memory_limit_bytes)) => {
                    out.push(GpuRecord { id, slice_us, max_queued_ops, overcommit_ratio, memory_limit_bytes })
                }
                _ => tracing::warn!(gpu = %id, "stored GPU settings out of range; ignored"),
            }
        }
        Ok(out)
    }

    /// All stored VMs. Rows that do not decode are skipped with a warning.
    pub fn vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, gpu, class, weight, priority, slice_us, drained FROM vms ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, bool>(6)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, gpu, class, weight, priority, slice_us, drained) = row.map_err(|e| self.err(e))?;
            let decoded = (|| {
                Some(VmRecord {
                    class: class.parse().ok()?,
                    weight: u32::try_from(weight).ok()?,
                    priority: i32::try_from(priority).ok()?,
                    slice_us: match slice_us {
                        Some(s) => Some(u64::try_from(s).ok()?),
                        None => None,
                    },
                    drained,
                    gpu: gpu.clone(),
                    name: name.clone(),
                })
            })();
            match decoded {
                Some(vm) => out.push(vm),
                None => tracing::warn!(vm = %name, "stored VM settings do not decode; ignored"),
            }
        }
        Ok(out)
    }

    pub fn put_gpu(&self, gpu: &GpuRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO gpus (id, slice_us, max_queued_ops, overcommit_ratio, memory_limit_bytes, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET slice_us = ?2, max_queued_ops = ?3, overcommit_ratio = ?4,
                     memory_limit_bytes = ?5, updated_at = ?6",
                params![
                    gpu.id,
                    clamp_i64(gpu.slice_us),
                    gpu.max_queued_ops,
                    gpu.overcommit_ratio,
                    gpu.memory_limit_bytes.map(clamp_i64),
                    now_s()
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn put_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let now = now_s();
        self.conn
            .execute(
                "INSERT INTO vms (name, gpu, class, weight, priority, slice_us, drained, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT(name) DO UPDATE SET gpu = ?2, class = ?3, weight = ?4, priority = ?5, slice_us = ?6,
                     drained = ?7, updated_at = ?8",
                params![
                    vm.name,
                    vm.gpu,
                    vm.class.as_str(),
                    vm.weight,
                    vm.priority,
                    vm.slice_us.map(clamp_i64),
                    vm.drained,
                    now
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every VM's GPU access list, by VM name. A list that does not decode
    /// (a hand-edited file) is loaded as empty, allowing no GPU, with a
    /// warning: a broken list must not open access the admin restricted.
    pub fn access_lists(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT name, allowed_gpus FROM vm_access ORDER BY name").map_err(|e| self.err(e))?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(|e| self.err(e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (name, json) = row.map_err(|e| self.err(e))?;
            let list = serde_json::from_str::<Vec<String>>(&json)
                .map_err(|e| e.to_string())
                .and_then(|l| gpuvisor_admin::check_allowed_gpus(&l).map(|()| l));
            match list {
                Ok(l) => {
                    out.insert(name, l);
                }
                Err(e) => {
                    tracing::warn!(vm = %name, "stored GPU access list does not decode ({e}); the VM may use no GPU");
                    out.insert(name, Vec::new());
                }
            }
        }
        Ok(out)
    }

    /// Stores a VM's GPU access list; `None` removes it.
    pub fn put_access(&self, name: &str, allowed_gpus: Option<&[String]>) -> Result<(), StoreError> {
        match allowed_gpus {
            Some(list) => {
                // Serializing a list of strings cannot fail.
                let json = serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned());
                self.conn.execute(
                    "INSERT INTO vm_access (name, allowed_gpus, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(name) DO UPDATE SET allowed_gpus = ?2, updated_at = ?3",
                    params![name, json, now_s()],
                )
            }
            None => self.conn.execute("DELETE FROM vm_access WHERE name = ?1", [name]),
        }
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// When the VM was first stored (Unix seconds).
    pub fn vm_created_at(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row("SELECT created_at FROM vms WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gpuvisord-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn vm(name: &str) -> VmRecord {
        VmRecord {
            name: name.into(),
            gpu: "sim".into(),
            class: QosClass::Guaranteed,
            weight: 7,
            priority: -3,
            slice_us: Some(2500),
            drained: true,
        }
    }

    #[test]
    fn settings_survive_reopening() {
        let dir = scratch("reopen");
        {
            let s = Store::open(&dir).unwrap();
            s.put_vm(&vm("a")).unwrap();
            s.put_vm(&VmRecord { slice_us: None, drained: false, ..vm("b") }).unwrap();
            s.put_gpu(&GpuRecord {
                id: "sim".into(),
                slice_us: 4000,
                max_queued_ops: 9,
                overcommit_ratio: 2.5,
                memory_limit_bytes: Some(3 << 30),
            })
            .unwrap();
        }
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.vms().unwrap(), vec![vm("a"), VmRecord { slice_us: None, drained: false, ..vm("b") }]);
        let g = &s.gpus().unwrap()[0];
        assert_eq!((g.max_queued_ops, g.overcommit_ratio, g.memory_limit_bytes), (9, 2.5, Some(3 << 30)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_version_1_database_is_upgraded_and_keeps_its_settings() {
        let dir = scratch("v1");
        {
            let c = Connection::open(dir.join(DB_FILE)).unwrap();
            c.execute_batch(&format!("{SCHEMA_V1} PRAGMA user_version = 1;")).unwrap();
            c.execute("INSERT INTO gpus VALUES ('sim', 3000, 5, 1.5, 0)", []).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let g = &s.gpus().unwrap()[0];
        assert_eq!((g.slice_us, g.overcommit_ratio, g.memory_limit_bytes), (3000, 1.5, None));
        s.put_gpu(&GpuRecord { memory_limit_bytes: Some(1 << 30), ..g.clone() }).unwrap();
        drop(s);
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.gpus().unwrap()[0].memory_limit_bytes, Some(1 << 30));
        let version: i64 = s.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_version_2_database_gains_access_lists_and_keeps_its_settings() {
        let dir = scratch("v2");
        {
            let c = Connection::open(dir.join(DB_FILE)).unwrap();
            c.execute_batch(&format!("{SCHEMA_V1} {SCHEMA_V2} PRAGMA user_version = 2;")).unwrap();
            c.execute("INSERT INTO vms VALUES ('a', 'sim', 'burstable', 7, 0, NULL, 0, 0, 0)", []).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.vms().unwrap()[0].weight, 7);
        assert!(s.access_lists().unwrap().is_empty(), "no VM has a list after the upgrade");
        s.put_access("a", Some(&["sim".to_owned()])).unwrap();
        let version: i64 = s.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn access_lists_survive_reopening_and_can_be_removed() {
        let dir = scratch("access");
        let mig = "MIG-11111111-0000-0000-0000-000000000000".to_owned();
        {
            let s = Store::open(&dir).unwrap();
            s.put_access("a", Some(&[mig.clone(), "sim".to_owned()])).unwrap();
            s.put_access("b", Some(&[])).unwrap();
            s.put_access("c", Some(&["*".to_owned()])).unwrap();
            s.put_access("c", None).unwrap();
            // Lists are kept for VMs that never registered.
            assert!(s.vms().unwrap().is_empty());
        }
        let s = Store::open(&dir).unwrap();
        let lists = s.access_lists().unwrap();
        assert_eq!(lists.get("a"), Some(&vec![mig, "sim".to_owned()]));
        assert_eq!(lists.get("b"), Some(&vec![]));
        assert_eq!(lists.get("c"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_list_that_does_not_decode_allows_no_gpu() {
        let dir = scratch("access-bad");
        let s = Store::open(&dir).unwrap();
        s.conn.execute("INSERT INTO vm_access VALUES ('x', 'not json', 0)", []).unwrap();
        s.conn.execute("INSERT INTO vm_access VALUES ('y', '[\"*\", \"sim\"]', 0)", []).unwrap();
        let lists = s.access_lists().unwrap();
        assert_eq!((lists.get("x"), lists.get("y")), (Some(&vec![]), Some(&vec![])));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn updates_overwrite_and_keep_the_creation_time() {
        let dir = scratch("update");
        let s = Store::open(&dir).unwrap();
        s.put_vm(&vm("a")).unwrap();
        let created = s.vm_created_at("a").unwrap();
        s.put_vm(&VmRecord { weight: 9, ..vm("a") }).unwrap();
        assert_eq!(s.vms().unwrap()[0].weight, 9);
        assert_eq!(s.vm_created_at("a").unwrap(), created);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error_naming_it() {
        let dir = scratch("garbage");
        std::fs::write(dir.join(DB_FILE), vec![0x5a; 4096]).unwrap();
        let err = Store::open(&dir).unwrap_err().to_string();
        assert!(err.contains(&dir.join(DB_FILE).display().to_string()), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = scratch("newer");
        Connection::open(dir.join(DB_FILE)).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
        assert!(matches!(Store::open(&dir), Err(StoreError::NewerSchema { found: 99, .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rows_out_of_range_are_skipped() {
        let dir = scratch("range");
        let s = Store::open(&dir).unwrap();
        s.put_vm(&vm("good")).unwrap();
        s.conn.execute("INSERT INTO vms VALUES ('bad', 'sim', 'gold', 1, 0, NULL, 0, 0, 0)", []).unwrap();
        s.conn.execute("INSERT INTO vms VALUES ('neg', 'sim', 'burstable', -1, 0, NULL, 0, 0, 0)", []).unwrap();
        assert_eq!(s.vms().unwrap().iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), vec!["good"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
