//! Per-client handle tables: guest-chosen ids mapped to engine objects, so
//! the guest never sees a host pointer and can name only what it created.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};

/// Guest id → host object, for one kind of object.
#[derive(Debug)]
pub struct HandleTable<T> {
    kind: &'static str,
    map: HashMap<u64, T>,
}

impl<T> HandleTable<T> {
    pub fn new(kind: &'static str) -> Self {
        HandleTable { kind, map: HashMap::new() }
    }

    /// Adds a new id; an id already in use is an error (the guest chooses ids).
    pub fn insert(&mut self, id: u64, value: T) -> Result<()> {
        if id == 0 || self.map.contains_key(&id) {
            return Err(Error::HandleInUse { kind: self.kind, id });
        }
        self.map.insert(id, value);
        Ok(())
    }

    /// Fails with `HandleNotFound` before the caller commits to a new object.
    pub fn check_free(&self, id: u64) -> Result<()> {
        if id == 0 || self.map.contains_key(&id) {
            Err(Error::HandleInUse { kind: self.kind, id })
        } else {
            Ok(())
        }
    }

    pub fn get(&self, id: u64) -> Result<&T> {
        self.map.get(&id).ok_or(Error::HandleNotFound { kind: self.kind, id })
    }

    pub fn get_mut(&mut self, id: u64) -> Result<&mut T> {
        self.map.get_mut(&id).ok_or(Error::HandleNotFound { kind: self.kind, id })
    }

    pub fn remove(&mut self, id: u64) -> Result<T> {
        self.map.remove(&id).ok_or(Error::HandleNotFound { kind: self.kind, id })
    }

    /// Removes every entry for which `pred` holds and returns them.
    pub fn drain_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<(u64, T)> {
        let ids: Vec<u64> = self.map.iter().filter(|(_, v)| pred(v)).map(|(k, _)| *k).collect();
        ids.into_iter().filter_map(|id| self.map.remove(&id).map(|v| (id, v))).collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.map.values()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.map.iter().map(|(k, v)| (*k, v))
    }
}

/// One device memory range a client may name in copies and memsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub size: u64,
    /// Guest context it was allocated in.
    pub ctx: u64,
    /// False for module globals, which only `ModuleUnload` removes.
    pub freeable: bool,
    /// Bytes charged against the VM's quota.
    pub charged: u64,
}

/// The device ranges of one client, for range checks on every copy.
#[derive(Debug, Default)]
pub struct AllocationTable {
    by_base: BTreeMap<u64, Allocation>,
}

impl AllocationTable {
    pub fn insert(&mut self, base: u64, alloc: Allocation) {
        self.by_base.insert(base, alloc);
    }

    /// `[dptr, dptr + len)` must lie inside one allocation.
    pub fn check(&self, dptr: u64, len: u64) -> Result<()> {
        let bad = || Error::BadDeviceRange { dptr, len };
        let (base, a) = self.by_base.range(..=dptr).next_back().ok_or_else(bad)?;
        let end = dptr.checked_add(len).ok_or_else(bad)?;
        if end <= base + a.size && (len > 0 || dptr < base + a.size) {
            Ok(())
        } else {
            Err(bad())
        }
    }

    /// Removes the allocation starting at `base`.
    pub fn remove_freeable(&mut self, base: u64) -> Result<Allocation> {
        match self.by_base.get(&base) {
            Some(a) if a.freeable => Ok(self.by_base.remove(&base).expect("present")),
            _ => Err(Error::NotAnAllocation(base)),
        }
    }

    /// Removes every allocation of guest context `ctx`.
    pub fn drain_ctx(&mut self, ctx: u64) -> Vec<(u64, Allocation)> {
        let bases: Vec<u64> = self.by_base.iter().filter(|(_, a)| a.ctx == ctx).map(|(b, _)| *b).collect();
        bases.into_iter().filter_map(|b| self.by_base.remove(&b).map(|a| (b, a))).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Allocation)> {
        self.by_base.iter().map(|(b, a)| (*b, a))
    }

    pub fn remove_range(&mut self, base: u64) -> Option<Allocation> {
        self.by_base.remove(&base)
    }

    pub fn len(&self) -> usize {
        self.by_base.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_base.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_checked() {
        let mut t = HandleTable::new("stream");
        t.insert(5, "a").unwrap();
        assert!(matches!(t.insert(5, "b"), Err(Error::HandleInUse { .. })));
        assert!(matches!(t.insert(0, "b"), Err(Error::HandleInUse { .. })));
        assert!(matches!(t.get(6), Err(Error::HandleNotFound { kind: "stream", id: 6 })));
        assert_eq!(t.remove(5).unwrap(), "a");
        assert!(t.get(5).is_err(), "freed handle must be unknown");
    }

    #[test]
    fn ranges_must_stay_inside_one_allocation() {
        let mut t = AllocationTable::default();
        let a = Allocation { size: 0x100, ctx: 1, freeable: true, charged: 0x100 };
        t.insert(0x1000, a);
        t.insert(0x1100, a);
        t.check(0x1000, 0x100).unwrap();
        t.check(0x10ff, 1).unwrap();
        assert!(t.check(0x10ff, 2).is_err(), "crossing into the neighbour");
        assert!(t.check(0xfff, 1).is_err());
        assert!(t.check(0x1200, 0).is_err());
        assert!(t.check(0x1000, u64::MAX).is_err());
        assert!(t.remove_freeable(0x1080).is_err(), "interior pointer is not an allocation");
        t.remove_freeable(0x1100).unwrap();
        assert!(t.check(0x1100, 1).is_err(), "freed range");
    }
}
