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
