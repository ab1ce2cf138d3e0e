//! virtio-gpu resources: buffers with guest backing, created by the guest
//! kernel (scanout framebuffers, cursor images) or by the guest driver (the
//! control buffer, staging buffers, pinned host memory), and the contexts
//! each one is attached to.

use crate::error::{Error, Result};
use crate::guest_mem::{Extent, GuestMemory, GuestSpan};
use std::collections::{HashMap, HashSet};

/// Most backing entries one resource may have. Linux coalesces contiguous
/// pages, so real resources use far fewer; the bound keeps a guest from
/// making us allocate without limit.
pub const MAX_BACKING_ENTRIES: u32 = 1 << 18;

#[derive(Debug, Default)]
pub struct Resource {
    /// Width, height and format for 2D resources; buffers have height 1.
    pub width: u32,
    pub height: u32,
    pub format: u32,
    /// Size in bytes the guest declared (width for buffers).
    pub size: u64,
    pub backing: Vec<Extent>,
    /// virtio-gpu context ids the resource is attached to.
    pub attached: HashSet<u32>,
}

impl Resource {
    pub fn backing_len(&self) -> u64 {
        self.backing.iter().map(|e| e.len as u64).sum()
    }
}

#[derive(Debug, Default)]
pub struct ResourceTable {
    map: HashMap<u32, Resource>,
}

impl ResourceTable {
    pub fn create(&mut self, id: u32, res: Resource) -> Result<()> {
        if id == 0 || self.map.contains_key(&id) {
            return Err(Error::InvalidArgument("resource id is zero or in use"));
        }
        self.map.insert(id, res);
        Ok(())
    }

    pub fn get(&self, id: u32) -> Result<&Resource> {
        self.map.get(&id).ok_or(Error::ResourceNotFound(id))
    }

    pub fn get_mut(&mut self, id: u32) -> Result<&mut Resource> {
        self.map.get_mut(&id).ok_or(Error::ResourceNotFound(id))
    }

    pub fn remove(&mut self, id: u32) -> Result<Resource> {
        self.map.remove(&id).ok_or(Error::ResourceNotFound(id))
    }

    /// A resource that context `ctx_id` may use.
    pub fn for_ctx(&self, id: u32, ctx_id: u32) -> Result<&Resource> {
        match self.map.get(&id) {
            Some(r) if r.attached.contains(&ctx_id) => Ok(r),
            _ => Err(Error::ResourceNotFound(id)),
        }
    }

    /// `[offset, offset + len)` of resource `id`, as context `ctx_id` sees it.
    pub fn span<'m>(&self, mem: &'m GuestMemory, id: u32, ctx_id: u32, offset: u64, len: u64) -> Result<GuestSpan<'m>> {
        let r = self.for_ctx(id, ctx_id)?;
        if r.backing.is_empty() {
            return Err(Error::NoBacking(id));
        }
        Ok(GuestSpan::new(mem, &r.backing, offset, len)?)
    }

    /// Detaches every resource from a context that is going away.
    pub fn detach_all(&mut self, ctx_id: u32) {
        for r in self.map.values_mut() {
            r.attached.remove(&ctx_id);
        }
    }

    /// Every resource with its id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Resource)> {
        self.map.iter().map(|(&id, r)| (id, r))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}
