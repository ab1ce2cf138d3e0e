//! The virtio-gpu device model: every control and cursor queue command the
//! guest kernel (or the direct transport) sends, answered from the request
//! bytes of one descriptor chain. 2D resources and the scanout go to QEMU's
//! display through the vhost-user-gpu socket; 3D contexts and SUBMIT_3D carry
//! gpuvisor's CUDA command stream into `vm.rs`.

use crate::error::Error;
use crate::guest_mem::{Extent, GuestMemory, GuestSpan};
use crate::journal::Record;
use crate::resources::{Resource, MAX_BACKING_ENTRIES};
use crate::vm::Vm;
use protocol::virtio_gpu::*;
use protocol::{CAPSET_ID, CAPSET_VERSION};
use tracing::{debug, warn};
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuEdidRequest, VhostUserGpuScanout, VhostUserGpuUpdate,
};
use vhost::vhost_user::GpuBackend;
use vm_memory::GuestAddress;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

/// The one scanout we expose, so the guest's console has somewhere to go.
const NUM_SCANOUTS: u32 = 1;
const DEFAULT_WIDTH: u32 = 1024;
const DEFAULT_HEIGHT: u32 = 768;
const CURSOR_SIZE: u32 = 64;

#[derive(Debug, Default, Clone, Copy)]
struct Scanout {
    resource_id: u32,
}

/// A failed command: the virtio-gpu error response type.
struct Nak(u32);

impl From<Error> for Nak {
    fn from(e: Error) -> Nak {
        debug!("virtio-gpu command failed: {e}");
        Nak(match e {
            Error::ResourceNotFound(_) | Error::NoBacking(_) => RESP_ERR_INVALID_RESOURCE_ID,
            Error::HandleNotFound { .. } => RESP_ERR_INVALID_CONTEXT_ID,
            _ => RESP_ERR_INVALID_PARAMETER,
        })
    }
}

type CmdResult = Result<Vec<u8>, Nak>;

pub struct GpuDevice {
    pub vm: Vm,
    scanout: Scanout,
    display: Option<GpuBackend>,
}

/// The product of a resource's dimensions, in bytes; a product past u64 (a
/// guest's 4G x 4G x 4G buffer) is a bad parameter, not a wrap.
fn byte_size(dims: &[u32]) -> Result<u64, Nak> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).ok_or(Nak(RESP_ERR_INVALID_PARAMETER))
}

fn parse<T: FromBytes>(body: &[u8]) -> Result<(T, &[u8]), Nak> {
    T::read_from_prefix(body).map_err(|_| Nak(RESP_ERR_INVALID_PARAMETER))
}

fn nodata() -> CmdResult {
    Ok(CtrlHdr { type_: U32::new(RESP_OK_NODATA), ..Default::default() }.as_bytes().to_vec())
}

impl GpuDevice {
    pub fn new(vm: Vm) -> Self {
        GpuDevice { vm, scanout: Scanout::default(), display: None }
    }

    pub fn config(&self) -> Config {
        Config {
            events_read: U32::new(0),
            events_clear: U32::new(0),
            num_scanouts: U32::new(NUM_SCANOUTS),
            num_capsets: U32::new(1),
        }
    }

    pub fn set_display(&mut self, display: GpuBackend) {
        self.display = Some(display);
    }

    /// The frontend went away or reset the device: forget every guest object.
    pub fn reset(&mut self) {
        self.vm.destroy_all_clients();
        self.vm.resources.clear();
        self.vm.clear_journal();
        self.scanout = Scanout::default();
        self.display = None;
    }

    /// Handles one control queue request; returns the response bytes.
    pub fn handle_ctrl(&mut self, mem: &GuestMemory, req: &[u8]) -> Vec<u8> {
        let Ok((hdr, body)) = CtrlHdr::read_from_prefix(req) else {
            return CtrlHdr { type_: U32::new(RESP_ERR_UNSPEC), ..Default::default() }.as_bytes().to_vec();
        };
        let result = self.dispatch(mem, &hdr, body);
        let mut resp = match result {
            Ok(bytes) => bytes,
            Err(Nak(t)) => CtrlHdr { type_: U32::new(t), ..Default::default() }.as_bytes().to_vec(),
        };
        // Echo the fence so the guest kernel can signal it.
        if hdr.flags.get() & FLAG_FENCE != 0 {
            if let Ok((mut r, _)) = CtrlHdr::read_from_prefix(&resp) {
                r.flags = U32::new(r.flags.get() | FLAG_FENCE);
                r.fence_id = hdr.fence_id;
                r.ctx_id = hdr.ctx_id;
                r.ring_idx = hdr.ring_idx;
                resp[..core::mem::size_of::<CtrlHdr>()].copy_from_slice(r.as_bytes());
            }
        }
        resp
    }

    fn dispatch(&mut self, mem: &GuestMemory, hdr: &CtrlHdr, body: &[u8]) -> CmdResult {
        let ctx_id = hdr.ctx_id.get();
        match hdr.type_.get() {
            CMD_GET_DISPLAY_INFO => self.display_info(),
            CMD_GET_EDID => self.edid(body),
            CMD_RESOURCE_CREATE_2D => {
                let (c, _) = parse::<ResourceCreate2d>(body)?;
                // 2D formats are all 4 bytes a pixel.
                let size = byte_size(&[c.width.get(), c.height.get(), 4])?;
                self.create_resource(c.resource_id.get(), c.width.get(), c.height.get(), c.format.get(), size)
            }
            CMD_RESOURCE_CREATE_3D => {
                let (c, _) = parse::<ResourceCreate3d>(body)?;
                // gpuvisor's buffers are byte buffers: width bytes.
                let size = byte_size(&[c.width.get(), c.height.get().max(1), c.depth.get().max(1)])?;
                self.create_resource(c.resource_id.get(), c.width.get(), c.height.get(), c.format.get(), size)
            }
            CMD_RESOURCE_UNREF => {
                let (c, _) = parse::<ResourceUnref>(body)?;
                let id = c.resource_id.get();
                self.vm.resources.remove(id)?;
                self.vm.resource_changed(id);
                self.vm.record(Record::Unref { id });
                if self.scanout.resource_id == id {
                    self.scanout.resource_id = 0;
                }
                nodata()
            }
            CMD_RESOURCE_ATTACH_BACKING => {
                let (c, rest) = parse::<ResourceAttachBacking>(body)?;
                let n = c.nr_entries.get();
                if n == 0 || n > MAX_BACKING_ENTRIES {
                    return Err(Nak(RESP_ERR_INVALID_PARAMETER));
                }
                let want = (n as usize) * core::mem::size_of::<MemEntry>();
                let entries = rest.get(..want).ok_or(Nak(RESP_ERR_INVALID_PARAMETER))?;
                let mut backing = Vec::with_capacity(n as usize);
                for e in entries.chunks_exact(core::mem::size_of::<MemEntry>()) {
                    let (m, _) = parse::<MemEntry>(e)?;
                    let ext = Extent { addr: GuestAddress(m.addr.get()), len: m.length.get() as usize };
                    // Every entry must be guest RAM, checked now rather than at use.
                    GuestSpan::new(mem, &[ext], 0, ext.len as u64).map_err(|e| Nak::from(Error::from(e)))?;
                    backing.push(ext);
                }
                let id = c.resource_id.get();
                self.vm.resources.get_mut(id)?.backing = backing.clone();
                self.vm.resource_changed(id);
                self.vm.record(Record::Backing { id, entries: &backing });
                nodata()
            }
            CMD_RESOURCE_DETACH_BACKING => {
                let (c, _) = parse::<ResourceDetachBacking>(body)?;
                let id = c.resource_id.get();
                self.vm.resources.get_mut(id)?.backing.clear();
                self.vm.resource_changed(id);
                self.vm.record(Record::DetachBacking { id });
                nodata()
            }
            CMD_SET_SCANOUT => {
                let (c, _) = parse::<SetScanout>(body)?;
                self.set_scanout(&c)
            }
            CMD_TRANSFER_TO_HOST_2D => {
                // The backing is read directly at flush time; nothing to copy.
                let (c, _) = parse::<TransferToHost2d>(body)?;
                self.vm.resources.get(c.resource_id.get())?;
                nodata()
            }
            CMD_RESOURCE_FLUSH => {
                let (c, _) = parse::<ResourceFlush>(body)?;
                self.flush(mem, &c)
            }
            CMD_GET_CAPSET_INFO => {
                let (c, _) = parse::<GetCapsetInfo>(body)?;
                if c.capset_index.get() != 0 {
                    return Err(Nak(RESP_ERR_INVALID_PARAMETER));
                }
                let r = RespCapsetInfo {
                    hdr: CtrlHdr { type_: U32::new(RESP_OK_CAPSET_INFO), ..Default::default() },
                    capset_id: U32::new(CAPSET_ID),
                    capset_max_version: U32::new(CAPSET_VERSION),
                    capset_max_size: U32::new(core::mem::size_of::<protocol::Capset>() as u32),
                    padding: U32::new(0),
                };
                Ok(r.as_bytes().to_vec())
            }
            CMD_GET_CAPSET => {
                let (c, _) = parse::<GetCapset>(body)?;
                if c.capset_id.get() != CAPSET_ID || c.capset_version.get() > CAPSET_VERSION {
                    return Err(Nak(RESP_ERR_INVALID_PARAMETER));
                }
                let mut out = CtrlHdr { type_: U32::new(RESP_OK_CAPSET), ..Default::default() }.as_bytes().to_vec();
                out.extend_from_slice(self.vm.capset().as_bytes());
                Ok(out)
            }
            CMD_CTX_CREATE => {
                let (c, _) = parse::<CtxCreate>(body)?;
                let init = c.context_init.get() & 0xff;
                if init != 0 && init != CAPSET_ID {
                    warn!(ctx_id, init, "context of a capset we do not serve");
                    return Err(Nak(RESP_ERR_INVALID_PARAMETER));
                }
                self.vm.create_client_for(ctx_id, init)?;
                nodata()
            }
            CMD_CTX_DESTROY => {
                self.vm.destroy_client(ctx_id);
                nodata()
            }
            CMD_CTX_ATTACH_RESOURCE => {
                let (c, _) = parse::<CtxResource>(body)?;
                if !self.vm.has_client(ctx_id) {
                    return Err(Nak(RESP_ERR_INVALID_CONTEXT_ID));
                }
                let resource = c.resource_id.get();
                self.vm.resources.get_mut(resource)?.attached.insert(ctx_id);
                self.vm.record(Record::Attach { ctx_id, resource });
                nodata()
            }
            CMD_CTX_DETACH_RESOURCE => {
                let (c, _) = parse::<CtxResource>(body)?;
                let resource = c.resource_id.get();
                self.vm.resources.get_mut(resource)?.attached.remove(&ctx_id);
                self.vm.record(Record::Detach { ctx_id, resource });
                nodata()
            }
            CMD_TRANSFER_TO_HOST_3D | CMD_TRANSFER_FROM_HOST_3D => {
                // Guest backing is the only copy of a gpuvisor buffer, so
                // transfers have nothing to move.
                let (c, _) = parse::<TransferHost3d>(body)?;
                self.vm.resources.for_ctx(c.resource_id.get(), ctx_id)?;
                nodata()
            }
            CMD_SUBMIT_3D => {
                let (c, rest) = parse::<CmdSubmit>(body)?;
                let data = rest.get(..c.size.get() as usize).ok_or(Nak(RESP_ERR_INVALID_PARAMETER))?;
                match self.vm.submit(mem, ctx_id, data) {
                    Ok(()) => nodata(),
                    Err(e) => {
                        warn!(vm = %self.vm.name(), ctx_id, "SUBMIT_3D not answered: {e}");
                        Err(Nak::from(e))
                    }
                }
            }
            other => {
                warn!(command = other, "unsupported virtio-gpu command");
                Err(Nak(RESP_ERR_UNSPEC))
            }
        }
    }

    fn create_resource(&mut self, id: u32, width: u32, height: u32, format: u32, size: u64) -> CmdResult {
        self.vm.resources.create(id, Resource { width, height, format, size, ..Default::default() })?;
        self.vm.record(Record::Resource { id, width, height, format, size });
        nodata()
    }

    fn display_info(&self) -> CmdResult {
        let mut r = RespDisplayInfo::default();
        r.hdr.type_ = U32::new(RESP_OK_DISPLAY_INFO);
        if let Some(d) = &self.display {
            match d.get_display_info() {
                Ok(info) => {
                    for (out, m) in r.pmodes.iter_mut().zip(info.pmodes.iter()).take(NUM_SCANOUTS as usize) {
                        out.r = Rect {
                            x: U32::new(m.r.x),
                            y: U32::new(m.r.y),
                            width: U32::new(m.r.width),
                            height: U32::new(m.r.height),
                        };
                        out.enabled = U32::new(m.enabled);
                        out.flags = U32::new(m.flags);
                    }
                    return Ok(r.as_bytes().to_vec());
                }
                Err(e) => warn!("display socket: GET_DISPLAY_INFO failed: {e}"),
            }
        }
        r.pmodes[0].r.width = U32::new(DEFAULT_WIDTH);
        r.pmodes[0].r.height = U32::new(DEFAULT_HEIGHT);
        r.pmodes[0].enabled = U32::new(1);
        Ok(r.as_bytes().to_vec())
    }

    fn edid(&self, body: &[u8]) -> CmdResult {
        let (c, _) = parse::<GetEdid>(body)?;
        if c.scanout.get() >= NUM_SCANOUTS {
            return Err(Nak(RESP_ERR_INVALID_SCANOUT_ID));
        }
        let d = self.display.as_ref().ok_or(Nak(RESP_ERR_UNSPEC))?;
        let e = d.get_edid(&VhostUserGpuEdidRequest { scanout_id: c.scanout.get() }).map_err(|e| {
            warn!("display socket: GET_EDID failed: {e}");
            Nak(RESP_ERR_UNSPEC)
        })?;
        let mut r = RespEdid::default();
        r.hdr.type_ = U32::new(RESP_OK_EDID);
        r.size = U32::new(e.size.min(1024));
        r.edid.copy_from_slice(&e.edid);
        Ok(r.as_bytes().to_vec())
    }

    fn set_scanout(&mut self, c: &SetScanout) -> CmdResult {
        if c.scanout_id.get() >= NUM_SCANOUTS {
            return Err(Nak(RESP_ERR_INVALID_SCANOUT_ID));
        }
        let rid = c.resource_id.get();
        let (w, h) = if rid == 0 {
            (0, 0)
        } else {
            let r = self.vm.resources.get(rid)?;
            let (w, h) = (c.r.width.get(), c.r.height.get());
            if c.r.x.get().checked_add(w).is_none_or(|v| v > r.width)
                || c.r.y.get().checked_add(h).is_none_or(|v| v > r.height)
            {
                return Err(Nak(RESP_ERR_INVALID_PARAMETER));
            }
            (w, h)
        };
        self.scanout = Scanout { resource_id: rid };
        if let Some(d) = &self.display {
            let msg = VhostUserGpuScanout { scanout_id: c.scanout_id.get(), width: w, height: h };
            if let Err(e) = d.set_scanout(&msg) {
                warn!("display socket: SCANOUT failed: {e}");
            }
        }
        nodata()
    }

    fn flush(&mut self, mem: &GuestMemory, c: &ResourceFlush) -> CmdResult {
        let rid = c.resource_id.get();
        let r = self.vm.resources.get(rid)?;
        let (x, y, w, h) = (c.r.x.get(), c.r.y.get(), c.r.width.get(), c.r.height.get());
        if x.checked_add(w).is_none_or(|v| v > r.width) || y.checked_add(h).is_none_or(|v| v > r.height) {
            return Err(Nak(RESP_ERR_INVALID_PARAMETER));
        }
        let (Some(d), true) = (&self.display, self.scanout.resource_id == rid) else {
            return nodata();
        };
        if w == 0 || h == 0 || r.backing.is_empty() {
            return nodata();
        }
        let stride = r.width as u64 * 4;
        let mut pixels = vec![0u8; (w as usize) * (h as usize) * 4];
        for row in 0..h as u64 {
            let off = (y as u64 + row) * stride + x as u64 * 4;
            let dst = &mut pixels[(row as usize) * (w as usize) * 4..][..(w as usize) * 4];
            match GuestSpan::new(mem, &r.backing, off, dst.len() as u64) {
                Ok(span) => span.read_into(dst),
                Err(_) => return Err(Nak(RESP_ERR_INVALID_PARAMETER)),
            }
        }
        let update = VhostUserGpuUpdate { scanout_id: 0, x, y, width: w, height: h };
        if let Err(e) = d.update_scanout(&update, &pixels) {
            warn!("display socket: UPDATE failed: {e}");
        }
        nodata()
    }

    /// Handles one cursor queue request (no response payload is expected).
    pub fn handle_cursor(&mut self, mem: &GuestMemory, req: &[u8]) {
        let Ok((hdr, body)) = CtrlHdr::read_from_prefix(req) else {
            return;
        };
        let Ok((c, _)) = UpdateCursor::read_from_prefix(body) else {
            return;
        };
        let Some(d) = &self.display else { return };
        let pos = VhostUserGpuCursorPos { scanout_id: c.pos.scanout_id.get(), x: c.pos.x.get(), y: c.pos.y.get() };
        let r = match hdr.type_.get() {
            CMD_MOVE_CURSOR => d.cursor_pos(&pos),
            CMD_UPDATE_CURSOR if c.resource_id.get() == 0 => d.cursor_pos_hide(&pos),
            CMD_UPDATE_CURSOR => {
                let Ok(res) = self.vm.resources.get(c.resource_id.get()) else {
                    return;
                };
                let mut data = [0u8; (CURSOR_SIZE * CURSOR_SIZE * 4) as usize];
                match GuestSpan::new(mem, &res.backing, 0, data.len() as u64) {
                    Ok(span) => span.read_into(&mut data),
                    Err(_) => return,
                }
                let update = VhostUserGpuCursorUpdate { pos, hot_x: c.hot_x.get(), hot_y: c.hot_y.get() };
                d.cursor_update(&update, &data)
            }
            _ => return,
        };
        if let Err(e) = r {
            warn!("display socket: cursor message failed: {e}");
        }
    }
}
