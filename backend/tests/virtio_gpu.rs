//! The virtio-gpu device model on its own: the 2D path the guest console
//! uses, capsets and contexts, fences, and malformed commands, each answered
//! with the virtio-gpu error a driver expects while the device keeps serving.

use gpuvisor_backend::engine::sim::SimEngine;
use gpuvisor_backend::guest_mem::GuestMemory;
use gpuvisor_backend::virtio_gpu::GpuDevice;
use gpuvisor_backend::vm::Vm;
use protocol::virtio_gpu::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

const RAM: usize = 8 << 20;

fn device() -> (GpuDevice, GuestMemory) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    let vm = Vm::new("t", Box::new(SimEngine::new(64 << 20)), 0);
    (GpuDevice::new(vm), mem)
}

fn req(ty: u32, ctx: u32, body: &[u8]) -> Vec<u8> {
    let mut v = CtrlHdr { type_: U32::new(ty), ctx_id: U32::new(ctx), ..Default::default() }.as_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn resp_type(resp: &[u8]) -> u32 {
    CtrlHdr::read_from_prefix(resp).unwrap().0.type_.get()
}

fn create_2d(dev: &mut GpuDevice, mem: &GuestMemory, id: u32, w: u32, h: u32) -> u32 {
    let c =
        ResourceCreate2d { resource_id: U32::new(id), format: U32::new(1), width: U32::new(w), height: U32::new(h) };
    resp_type(&dev.handle_ctrl(mem, &req(CMD_RESOURCE_CREATE_2D, 0, c.as_bytes())))
}

fn attach(dev: &mut GpuDevice, mem: &GuestMemory, id: u32, addr: u64, len: u32) -> u32 {
    let mut body = ResourceAttachBacking { resource_id: U32::new(id), nr_entries: U32::new(1) }.as_bytes().to_vec();
    body.extend_from_slice(MemEntry { addr: U64::new(addr), length: U32::new(len), padding: U32::new(0) }.as_bytes());
    resp_type(&dev.handle_ctrl(mem, &req(CMD_RESOURCE_ATTACH_BACKING, 0, &body)))
}

#[test]
fn the_console_framebuffer_path_works() {
    let (mut dev, mem) = device();
    let info = dev.handle_ctrl(&mem, &req(CMD_GET_DISPLAY_INFO, 0, &[]));
    let d = RespDisplayInfo::read_from_prefix(&info).unwrap().0;
    assert_eq!(d.hdr.type_.get(), RESP_OK_DISPLAY_INFO);
    assert_eq!(d.pmodes[0].enabled.get(), 1);
    assert!(d.pmodes[0].r.width.get() > 0);
    assert_eq!(create_2d(&mut dev, &mem, 1, 64, 32), RESP_OK_NODATA);
    assert_eq!(attach(&mut dev, &mem, 1, 0x1000, 64 * 32 * 4), RESP_OK_NODATA);
    let scan = SetScanout {
        r: Rect { x: U32::new(0), y: U32::new(0), width: U32::new(64), height: U32::new(32) },
        scanout_id: U32::new(0),
        resource_id: U32::new(1),
    };
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &req(CMD_SET_SCANOUT, 0, scan.as_bytes()))), RESP_OK_NODATA);
    let t = TransferToHost2d { r: scan.r, offset: U64::new(0), resource_id: U32::new(1), padding: U32::new(0) };
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &req(CMD_TRANSFER_TO_HOST_2D, 0, t.as_bytes()))), RESP_OK_NODATA);
    let f = ResourceFlush { r: scan.r, resource_id: U32::new(1), padding: U32::new(0) };
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &req(CMD_RESOURCE_FLUSH, 0, f.as_bytes()))), RESP_OK_NODATA);
    let u = ResourceUnref { resource_id: U32::new(1), padding: U32::new(0) };
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &req(CMD_RESOURCE_UNREF, 0, u.as_bytes()))), RESP_OK_NODATA);
}

#[test]
fn malformed_2d_commands_get_virtio_errors() {
    let (mut dev, mem) = device();
    assert_eq!(create_2d(&mut dev, &mem, 0, 8, 8), RESP_ERR_INVALID_PARAMETER, "resource id 0");
    assert_eq!(create_2d(&mut dev, &mem, 2, 8, 8), RESP_OK_NODATA);
    assert_eq!(create_2d(&mut dev, &mem, 2, 8, 8), RESP_ERR_INVALID_PARAMETER, "id in use");
    assert_eq!(attach(&mut dev, &mem, 2, RAM as u64 - 100, 4096), RESP_ERR_INVALID_PARAMETER, "backing past RAM");
    assert_eq!(attach(&mut dev, &mem, 9, 0x1000, 4096), RESP_ERR_INVALID_RESOURCE_ID);
    let mut huge =
        ResourceAttachBacking { resource_id: U32::new(2), nr_entries: U32::new(u32::MAX) }.as_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 16]);
    assert_eq!(
        resp_type(&dev.handle_ctrl(&mem, &req(CMD_RESOURCE_ATTACH_BACKING, 0, &huge))),
        RESP_ERR_INVALID_PARAMETER
    );
    let scan = SetScanout {
        r: Rect { x: U32::new(4), y: U32::new(0), width: U32::new(8), height: U32::new(8) },
        scanout_id: U32::new(0),
        resource_id: U32::new(2),
    };
    assert_eq!(
        resp_type(&dev.handle_ctrl(&mem, &req(CMD_SET_SCANOUT, 0, scan.as_bytes()))),
        RESP_ERR_INVALID_PARAMETER
    );
    let bad_id = SetScanout { scanout_id: U32::new(7), ..scan };
    assert_eq!(
        resp_type(&dev.handle_ctrl(&mem, &req(CMD_SET_SCANOUT, 0, bad_id.as_bytes()))),
        RESP_ERR_INVALID_SCANOUT_ID
    );
    let f = ResourceFlush {
        r: Rect { x: U32::new(u32::MAX), y: U32::new(0), width: U32::new(2), height: U32::new(1) },
        resource_id: U32::new(2),
        padding: U32::new(0),
    };
    assert_eq!(
        resp_type(&dev.handle_ctrl(&mem, &req(CMD_RESOURCE_FLUSH, 0, f.as_bytes()))),
        RESP_ERR_INVALID_PARAMETER
    );
    // Truncated and unknown commands.
    assert_eq!(
        resp_type(&dev.handle_ctrl(&mem, &req(CMD_RESOURCE_CREATE_2D, 0, &[1, 2, 3]))),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &req(0x9999, 0, &[]))), RESP_ERR_UNSPEC);
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &[1, 2, 3])), RESP_ERR_UNSPEC);
    // Still serving.
    assert_eq!(create_2d(&mut dev, &mem, 3, 8, 8), RESP_OK_NODATA);
}

#[test]
fn capsets_contexts_and_fences() {
    let (mut dev, mem) = device();
    assert_eq!(dev.config().num_capsets.get(), 1);
    let info = dev.handle_ctrl(&mem, &req(CMD_GET_CAPSET_INFO, 0, GetCapsetInfo::default().as_bytes()));
    let info = RespCapsetInfo::read_from_prefix(&info).unwrap().0;
    assert_eq!(info.capset_id.get(), protocol::CAPSET_ID);
    let get = GetCapset { capset_id: U32::new(protocol::CAPSET_ID), capset_version: U32::new(1) };
    let cap = dev.handle_ctrl(&mem, &req(CMD_GET_CAPSET, 0, get.as_bytes()));
    let blob = protocol::Capset::read_from_prefix(&cap[24..]).unwrap().0;
    assert_eq!(blob.magic.get(), protocol::CAPSET_MAGIC);
    let other = GetCapset { capset_id: U32::new(1), capset_version: U32::new(1) };
    assert_eq!(
        resp_type(&dev.handle_ctrl(&mem, &req(CMD_GET_CAPSET, 0, other.as_bytes()))),
        RESP_ERR_INVALID_PARAMETER
    );
    let cc = CtxCreate::default();
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &req(CMD_CTX_CREATE, 5, cc.as_bytes()))), RESP_OK_NODATA);
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &req(CMD_CTX_CREATE, 5, cc.as_bytes()))), RESP_ERR_INVALID_PARAMETER);
    // A fenced request echoes its fence, even when it fails, so the guest
    // kernel never waits forever.
    let mut r = req(CMD_SUBMIT_3D, 5, CmdSubmit { size: U32::new(4), padding: U32::new(0) }.as_bytes());
    r.extend_from_slice(b"junk");
    let mut hdr = CtrlHdr::read_from_prefix(&r).unwrap().0;
    hdr.flags = U32::new(FLAG_FENCE);
    hdr.fence_id = U64::new(77);
    r[..24].copy_from_slice(hdr.as_bytes());
    let resp = CtrlHdr::read_from_prefix(&dev.handle_ctrl(&mem, &r)).unwrap().0;
    assert_eq!(resp.flags.get() & FLAG_FENCE, FLAG_FENCE);
    assert_eq!(resp.fence_id.get(), 77);
    assert_eq!(resp.ctx_id.get(), 5);
    // SUBMIT_3D claiming more bytes than it carries.
    let mut r = req(CMD_SUBMIT_3D, 5, CmdSubmit { size: U32::new(1 << 20), padding: U32::new(0) }.as_bytes());
    r.extend_from_slice(&[0u8; 64]);
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &r)), RESP_ERR_INVALID_PARAMETER);
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &req(CMD_CTX_DESTROY, 5, &[]))), RESP_OK_NODATA);
}

#[test]
fn resources_whose_size_passes_64_bits_are_refused_and_the_device_goes_on() {
    // Found by the virtio_gpu fuzz target: the product of the dimensions
    // overflowed (a panic with overflow checks, a wrapped small size without).
    let (mut dev, mem) = device();
    assert_eq!(create_2d(&mut dev, &mem, 1, u32::MAX, u32::MAX), RESP_ERR_INVALID_PARAMETER);
    let c = ResourceCreate3d {
        resource_id: U32::new(2),
        width: U32::new(u32::MAX),
        height: U32::new(u32::MAX),
        depth: U32::new(u32::MAX),
        ..Default::default()
    };
    let r = resp_type(&dev.handle_ctrl(&mem, &req(CMD_RESOURCE_CREATE_3D, 0, c.as_bytes())));
    assert_eq!(r, RESP_ERR_INVALID_PARAMETER);
    // Neither id was taken: both can be created at a sane size.
    assert_eq!(create_2d(&mut dev, &mem, 1, 64, 32), RESP_OK_NODATA);
    assert_eq!(create_2d(&mut dev, &mem, 2, 64, 32), RESP_OK_NODATA);
}

/// A guest process's session as the guest's kernel and driver set it up:
/// context `ctx`, control buffer `res` (4 KiB at `addr`), attached, and the
/// driver's Hello (batch 1).
fn open_session(dev: &mut GpuDevice, mem: &GuestMemory, ctx: u32, res: u32, addr: u64) {
    let c = CtxCreate { nlen: U32::new(0), context_init: U32::new(0), debug_name: [0; 64] };
    assert_eq!(resp_type(&dev.handle_ctrl(mem, &req(CMD_CTX_CREATE, ctx, c.as_bytes()))), RESP_OK_NODATA);
    let r = ResourceCreate3d {
        resource_id: U32::new(res),
        width: U32::new(4096),
        height: U32::new(1),
        depth: U32::new(1),
        ..Default::default()
    };
    assert_eq!(resp_type(&dev.handle_ctrl(mem, &req(CMD_RESOURCE_CREATE_3D, 0, r.as_bytes()))), RESP_OK_NODATA);
    assert_eq!(attach(dev, mem, res, addr, 4096), RESP_OK_NODATA);
    let a = CtxResource { resource_id: U32::new(res), padding: U32::new(0) };
    assert_eq!(resp_type(&dev.handle_ctrl(mem, &req(CMD_CTX_ATTACH_RESOURCE, ctx, a.as_bytes()))), RESP_OK_NODATA);
    let hello = protocol::Hello {
        control_resource: U32::new(res),
        protocol_version: protocol::PROTOCOL_VERSION.into(),
        ..Default::default()
    };
    submit(dev, mem, ctx, 1, protocol::Opcode::Hello, &hello);
    assert_eq!(reply(mem, addr).status.get(), 0, "the Hello");
}

fn submit<T: IntoBytes + zerocopy::Immutable>(
    dev: &mut GpuDevice,
    mem: &GuestMemory,
    ctx: u32,
    seq: u64,
    op: protocol::Opcode,
    p: &T,
) {
    let mut w = protocol::BatchWriter::new();
    w.begin(seq);
    w.push(op, 0, protocol::PRIMARY_CTX, p, &[]);
    let batch = w.finish().to_vec();
    let mut body = CmdSubmit { size: U32::new(batch.len() as u32), padding: U32::new(0) }.as_bytes().to_vec();
    body.extend_from_slice(&batch);
    assert_eq!(resp_type(&dev.handle_ctrl(mem, &req(CMD_SUBMIT_3D, ctx, &body))), RESP_OK_NODATA);
}

fn reply(mem: &GuestMemory, addr: u64) -> protocol::ReplyHeader {
    let mut b = [0u8; core::mem::size_of::<protocol::ReplyHeader>()];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    protocol::ReplyHeader::read_from_bytes(&b).unwrap()
}

fn heartbeat_word(mem: &GuestMemory, addr: u64) -> u64 {
    mem.read_obj(GuestAddress(addr + protocol::HEARTBEAT_OFFSET)).unwrap()
}

use vm_memory::Bytes;

#[test]
fn a_sessions_heartbeat_stops_when_its_buffer_goes_before_its_context() {
    let (mut dev, mem) = device();
    let hb = gpuvisor_backend::heartbeat::Heartbeat::start("t", std::time::Duration::from_millis(5)).unwrap();
    dev.vm.set_heartbeat(hb);
    assert_eq!(dev.vm.capset().flags.get() & protocol::CAPSET_F_HEARTBEAT, protocol::CAPSET_F_HEARTBEAT);
    open_session(&mut dev, &mem, 2, 9, 0x10000);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(heartbeat_word(&mem, 0x10000) >= 2, "the word moves while the session lives");
    // Linux unreferences a dying process's buffers before its context; the
    // pages are the guest kernel's again once UNREF is answered.
    let u = ResourceUnref { resource_id: U32::new(9), padding: U32::new(0) };
    assert_eq!(resp_type(&dev.handle_ctrl(&mem, &req(CMD_RESOURCE_UNREF, 0, u.as_bytes()))), RESP_OK_NODATA);
    let last = heartbeat_word(&mem, 0x10000);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(heartbeat_word(&mem, 0x10000), last, "a beat landed in pages the guest got back");
}

#[test]
fn a_new_backend_rebuilds_the_guests_resources_from_the_journal_and_answers_old_sessions_as_lost() {
    use gpuvisor_backend::journal::{self, Journal};
    let (mut old, mem) = device();
    let fd = journal::create().unwrap();
    let dup = fd.try_clone().unwrap();
    old.vm.set_journal(Journal::open(fd).unwrap());
    open_session(&mut old, &mem, 2, 9, 0x10000);
    // A buffer of the session, and one the guest's kernel gave up.
    assert_eq!(create_2d(&mut old, &mem, 11, 16, 16), RESP_OK_NODATA);
    assert_eq!(attach(&mut old, &mem, 11, 0x20000, 1024), RESP_OK_NODATA);
    assert_eq!(create_2d(&mut old, &mem, 12, 16, 16), RESP_OK_NODATA);
    let u = ResourceUnref { resource_id: U32::new(12), padding: U32::new(0) };
    assert_eq!(resp_type(&old.handle_ctrl(&mem, &req(CMD_RESOURCE_UNREF, 0, u.as_bytes()))), RESP_OK_NODATA);
    drop(old);

    // The next process: what the journal says, its sessions lost with 709.
    let (mut new, _) = device();
    let j = Journal::open(dup).unwrap();
    let state = j.read().unwrap();
    new.vm.set_journal(j);
    assert_eq!(new.vm.recover(state, 709), 1);
    assert_eq!(new.vm.resources.len(), 2, "the control buffer and resource 11, not 12");
    assert_eq!(new.vm.resources.get(11).unwrap().backing.len(), 1);
    let m = protocol::MemAlloc { size: U64::new(4096) };
    submit(&mut new, &mem, 2, 2, protocol::Opcode::MemAlloc, &m);
    let r = reply(&mem, 0x10000);
    assert_eq!((r.completed_seq.get(), r.reply_seq.get(), r.status.get()), (2, 2, 709));
    assert_eq!(r.flags.get() & protocol::REPLY_F_SESSION_LOST, protocol::REPLY_F_SESSION_LOST);
    // A new session on a new context works.
    open_session(&mut new, &mem, 3, 13, 0x30000);
    submit(&mut new, &mem, 3, 2, protocol::Opcode::MemAlloc, &m);
    let r = reply(&mem, 0x30000);
    assert_eq!((r.completed_seq.get(), r.status.get(), r.flags.get()), (2, 0, 0));
}
