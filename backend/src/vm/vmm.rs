//! The virtual-memory API of one guest process (cuMemAddressReserve,
//! cuMemCreate, cuMemMap, cuMemSetAccess and their inverses): its reserved
//! ranges, physical allocations and mappings, checked here and carried out
//! on the engine's primitives. Physical memory is charged to the VM's quota
//! when it is created and zeroed before it goes back to the engine; mapped
//! ranges the device was given access to are device memory that copies,
//! memsets and kernels may name, and no other client's are.

use super::{Client, Reply, Vm};
use crate::engine::EnginePhys;
use crate::error::{Error, Result};
use protocol::*;
use std::collections::{BTreeMap, HashMap};
use tracing::warn;
use zerocopy::little_endian::U64;
use zerocopy::IntoBytes;

/// Device addresses one guest process may hold reserved, its pools'
/// windows included: far more than any GPU's memory, far less than the
/// address space of the backend, which every client of the VM shares.
pub(super) const VA_LIMIT: u64 = 1 << 46;

#[derive(Debug)]
struct Phys {
    engine: EnginePhys,
    size: u64,
    /// Mappings of it; it is given back once released and mapped nowhere.
    maps: u32,
    /// The guest released its handle; the memory lives on while mapped.
    released: bool,
}

#[derive(Debug)]
struct Mapping {
    size: u64,
    handle: u64,
    /// `MEM_ACCESS_*`: a mapping starts with none, as natively.
    access: u32,
}

/// One client's virtual-memory objects.
#[derive(Debug, Default)]
pub(super) struct ClientVmm {
    /// Reserved ranges: base → size.
    reservations: BTreeMap<u64, u64>,
    /// Physical allocations by guest handle.
    phys: HashMap<u64, Phys>,
    /// Mappings by base address.
    mappings: BTreeMap<u64, Mapping>,
    /// Bytes of device addresses reserved, pools' windows included.
    va_reserved: u64,
}

impl ClientVmm {
    /// `[dptr, dptr + len)` lies in contiguous mappings the device may
    /// access.
    pub(super) fn check(&self, dptr: u64, len: u64) -> Result<()> {
        let bad = || Error::BadDeviceRange { dptr, len };
        let end = dptr.checked_add(len).ok_or_else(bad)?;
        let mut at = dptr;
        loop {
            let (base, m) = self.mappings.range(..=at).next_back().ok_or_else(bad)?;
            // Mappings lie inside reservations, whose ends did not overflow.
            let m_end = base + m.size;
            if at >= m_end || m.access == MEM_ACCESS_NONE {
                return Err(bad());
            }
            if end <= m_end {
                return Ok(());
            }
            at = m_end;
        }
    }

    /// The bases of the mappings that cover `[va, va + size)` exactly,
    /// whole and back to back, as cuMemUnmap and cuMemSetAccess require.
    fn covering(&self, va: u64, size: u64) -> Result<Vec<u64>> {
        let end = va.checked_add(size).filter(|_| size > 0).ok_or(Error::InvalidArgument("empty or wrapping range"))?;
        let mut bases = Vec::new();
        let mut at = va;
        while at < end {
            let m = self.mappings.get(&at).ok_or(Error::InvalidArgument("range is not whole mappings"))?;
            bases.push(at);
            at += m.size;
        }
        if at != end {
            return Err(Error::InvalidArgument("range ends inside a mapping"));
        }
        Ok(bases)
    }

    /// Counts `size` more reserved addresses against `VA_LIMIT`.
    pub(super) fn take_va(&mut self, size: u64) -> Result<()> {
        match self.va_reserved.checked_add(size) {
            Some(total) if total <= VA_LIMIT => {
                self.va_reserved = total;
                Ok(())
            }
            _ => Err(Error::Engine(crate::engine::CuError(protocol::cuda::CUDA_ERROR_OUT_OF_MEMORY))),
        }
    }

    pub(super) fn give_va(&mut self, size: u64) {
        self.va_reserved = self.va_reserved.saturating_sub(size);
    }
}

impl Vm {
    /// The virtual-memory API's commands.
    pub(super) fn vmm_command(&mut self, client: &mut Client, cmd: &Command<'_>) -> Result<Option<Reply>> {
        let g = self.engine.vmm_granularity().ok_or(Error::NotSupported("the virtual-memory API"))?;
        let aligned = |v: u64| v.is_multiple_of(g);
        match *cmd {
            Command::MemGetGranularity => {
                let r = MemGranularityReply { granularity: U64::new(g) };
                Ok(Some(Reply::ok(r.as_bytes().to_vec())))
            }
            Command::MemAddressReserve(r) => {
                let (size, align, hint) = (r.size.get(), r.alignment.get(), r.addr.get());
                if size == 0 || !aligned(size) {
                    return Err(Error::InvalidArgument("reservation is not a multiple of the granularity"));
                }
                if align != 0 && !align.is_power_of_two() {
                    return Err(Error::InvalidArgument("reservation alignment is not a power of two"));
                }
                // Only a hint: one the engine could not use is dropped.
                let hint = if aligned(hint) { hint } else { 0 };
                client.vmm.take_va(size)?;
                match self.engine.va_reserve(size, align.max(g), hint) {
                    Ok(va) => {
                        client.vmm.reservations.insert(va, size);
                        Ok(Some(Reply::ok(MemAllocReply { dptr: U64::new(va) }.as_bytes().to_vec())))
                    }
                    Err(e) => {
                        client.vmm.give_va(size);
                        Err(e.into())
                    }
                }
            }
            Command::MemAddressFree(r) => {
                let (va, size) = (r.va.get(), r.size.get());
                if client.vmm.reservations.get(&va) != Some(&size) {
                    return Err(Error::InvalidArgument("not a whole reservation"));
                }
                if client.vmm.mappings.range(va..va + size).next().is_some() {
                    return Err(Error::InvalidArgument("reservation still has mappings"));
                }
                self.engine.va_free(va, size)?;
                client.vmm.reservations.remove(&va);
                client.vmm.give_va(size);
                Ok(None)
            }
            Command::MemCreate(c) => {
                let (id, size) = (c.handle.get(), c.size.get());
                if id == 0 || client.vmm.phys.contains_key(&id) {
                    return Err(Error::HandleInUse { kind: "memory handle", id });
                }
                if size == 0 || !aligned(size) {
                    return Err(Error::InvalidArgument("allocation is not a multiple of the granularity"));
                }
                let engine = self.new_phys(client, size)?;
                client.vmm.phys.insert(id, Phys { engine, size, maps: 0, released: false });
                Ok(Some(Reply::ok(Vec::new())))
            }
            Command::MemRelease(r) => {
                let id = r.id.get();
                let p = match client.vmm.phys.get_mut(&id) {
                    Some(p) if !p.released => p,
                    _ => return Err(Error::HandleNotFound { kind: "memory handle", id }),
                };
                p.released = true;
                if p.maps == 0 {
                    self.drop_phys(client, id);
                }
                Ok(None)
            }
            Command::MemMap(m) => {
                let (va, size, id) = (m.va.get(), m.size.get(), m.handle.get());
                if m.offset.get() != 0 {
                    return Err(Error::InvalidArgument("mapping offset is not zero"));
                }
                if size == 0 || !aligned(size) || !aligned(va) {
                    return Err(Error::InvalidArgument("mapping is not granularity-aligned"));
                }
                let end = va.checked_add(size).ok_or(Error::InvalidArgument("mapping wraps"))?;
                let vmm = &client.vmm;
                if vmm.reservations.range(..=va).next_back().is_none_or(|(b, s)| end > b + s) {
                    return Err(Error::InvalidArgument("mapping is not inside one reservation"));
                }
                if vmm.mappings.range(..end).next_back().is_some_and(|(b, m)| b + m.size > va) {
                    return Err(Error::InvalidArgument("mapping overlaps another"));
                }
                let phys = match vmm.phys.get(&id) {
                    Some(p) if !p.released => p,
                    _ => return Err(Error::HandleNotFound { kind: "memory handle", id }),
                };
                if size > phys.size {
                    return Err(Error::InvalidArgument("mapping is larger than its allocation"));
                }
                self.engine.mem_map(va, size, phys.engine)?;
                client.vmm.mappings.insert(va, Mapping { size, handle: id, access: MEM_ACCESS_NONE });
                if let Some(p) = client.vmm.phys.get_mut(&id) {
                    p.maps += 1;
                }
                Ok(None)
            }
            Command::MemUnmap(r) => {
                for base in client.vmm.covering(r.va.get(), r.size.get())? {
                    self.unmap(client, base)?;
                }
                Ok(None)
            }
            Command::MemSetAccess(a) => {
                for base in client.vmm.covering(a.va.get(), a.size.get())? {
                    if let Some(m) = client.vmm.mappings.get_mut(&base) {
                        m.access = a.flags.get();
                    }
                }
                Ok(None)
            }
            _ => Err(Error::NotSupported("not a virtual-memory command")),
        }
    }

    /// Physical memory of `size` bytes for `client`: charged to the quota,
    /// room made for it under gpuvisord's limit, then made.
    pub(super) fn new_phys(&mut self, client: &mut Client, size: u64) -> Result<EnginePhys> {
        self.charge(client, size)?;
        let made = self
            .gate
            .reserve_memory(self.engine.as_mut(), size)
            .map_err(Error::from)
            .and_then(|()| self.engine.phys_create(size).map_err(Error::from));
        self.gate.note_residency(self.engine.residency());
        if made.is_err() {
            self.uncharge(client, size);
        }
        made
    }

    /// Gives physical memory back: zeroed first, so that whoever the device
    /// hands it to next never sees this client's data. It is mapped
    /// nowhere, or, with `mapped_at`, whole at that address, which is
    /// unmapped here.
    pub(super) fn give_back_phys(
        &mut self,
        client: &mut Client,
        phys: EnginePhys,
        size: u64,
        mapped_at: Option<u64>,
    ) -> Result<()> {
        if let Err(e) = self.engine.phys_zero(phys, mapped_at) {
            warn!(vm = %self.name, size, "scrubbing freed device memory: {e}");
        }
        if let Some(va) = mapped_at {
            self.engine.mem_unmap(va, size)?;
        }
        if let Err(e) = self.engine.phys_release(phys) {
            warn!(vm = %self.name, size, "releasing device memory: {e}");
        }
        self.uncharge(client, size);
        self.gate.note_residency(self.engine.residency());
        Ok(())
    }

    /// Drops released, unmapped physical allocation `id`.
    fn drop_phys(&mut self, client: &mut Client, id: u64) {
        if let Some(p) = client.vmm.phys.remove(&id) {
            // Mapped nowhere: no unmap that could fail.
            let _ = self.give_back_phys(client, p.engine, p.size, None);
        }
    }

    /// Removes the mapping at `base`, and its physical memory if that was
    /// released and this was its last mapping.
    fn unmap(&mut self, client: &mut Client, base: u64) -> Result<()> {
        let Some(m) = client.vmm.mappings.get(&base) else {
            return Err(Error::InvalidArgument("not a mapping"));
        };
        let (size, handle) = (m.size, m.handle);
        self.engine.mem_unmap(base, size)?;
        client.vmm.mappings.remove(&base);
        let last = match client.vmm.phys.get_mut(&handle) {
            Some(p) => {
                p.maps = p.maps.saturating_sub(1);
                p.maps == 0 && p.released
            }
            None => false,
        };
        if last {
            self.drop_phys(client, handle);
        }
        Ok(())
    }

    /// Everything the client's virtual-memory objects hold, given back (the
    /// client went away; its contexts are gone, so no work uses them).
    pub(super) fn release_client_vmm(&mut self, client: &mut Client) {
        let bases: Vec<u64> = client.vmm.mappings.keys().copied().collect();
        for base in bases {
            if let Err(e) = self.unmap(client, base) {
                warn!(vm = %self.name, base, "unmapping a departed client's memory: {e}");
            }
        }
        let ids: Vec<u64> = client.vmm.phys.keys().copied().collect();
        for id in ids {
            self.drop_phys(client, id);
        }
        for (va, size) in std::mem::take(&mut client.vmm.reservations) {
            if let Err(e) = self.engine.va_free(va, size) {
                warn!(vm = %self.name, va, "freeing a departed client's addresses: {e}");
            }
            client.vmm.give_va(size);
        }
    }
}
