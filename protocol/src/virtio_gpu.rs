//! The virtio-gpu control and cursor queue structs (virtio spec 1.2, 5.7),
//! as little-endian zerocopy types so both the backend and the direct
//! transport decode them with checked casts. Constants come from
//! `virtio-bindings`.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

pub use virtio_bindings::virtio_gpu as sys;

macro_rules! wire {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl Default for $name {
            fn default() -> Self { <$name as FromZeros>::new_zeroed() }
        }
    };
}

wire! {
    /// Header of every control and cursor queue request and response.
    pub struct CtrlHdr {
        pub type_: U32,
        pub flags: U32,
        pub fence_id: U64,
        pub ctx_id: U32,
        pub ring_idx: u8,
        pub padding: [u8; 3],
    }
}

wire! { pub struct Rect { pub x: U32, pub y: U32, pub width: U32, pub height: U32 } }

wire! { pub struct DisplayOne { pub r: Rect, pub enabled: U32, pub flags: U32 } }

wire! {
    pub struct RespDisplayInfo {
        pub hdr: CtrlHdr,
        pub pmodes: [DisplayOne; 16],
    }
}

wire! {
    pub struct ResourceCreate2d {
        pub resource_id: U32,
        pub format: U32,
        pub width: U32,
        pub height: U32,
    }
}

wire! { pub struct ResourceUnref { pub resource_id: U32, pub padding: U32 } }

wire! { pub struct SetScanout { pub r: Rect, pub scanout_id: U32, pub resource_id: U32 } }

wire! { pub struct ResourceFlush { pub r: Rect, pub resource_id: U32, pub padding: U32 } }

wire! {
    pub struct TransferToHost2d {
        pub r: Rect,
        pub offset: U64,
        pub resource_id: U32,
        pub padding: U32,
    }
}

wire! { pub struct MemEntry { pub addr: U64, pub length: U32, pub padding: U32 } }

wire! { pub struct ResourceAttachBacking { pub resource_id: U32, pub nr_entries: U32 } }

wire! { pub struct ResourceDetachBacking { pub resource_id: U32, pub padding: U32 } }

wire! { pub struct GetCapsetInfo { pub capset_index: U32, pub padding: U32 } }

wire! {
    pub struct RespCapsetInfo {
        pub hdr: CtrlHdr,
        pub capset_id: U32,
        pub capset_max_version: U32,
        pub capset_max_size: U32,
        pub padding: U32,
    }
}

wire! { pub struct GetCapset { pub capset_id: U32, pub capset_version: U32 } }

wire! { pub struct GetEdid { pub scanout: U32, pub padding: U32 } }

wire! {
    pub struct RespEdid {
        pub hdr: CtrlHdr,
        pub size: U32,
        pub padding: U32,
        pub edid: [u8; 1024],
    }
}

wire! {
    pub struct CtxCreate {
        pub nlen: U32,
        pub context_init: U32,
        pub debug_name: [u8; 64],
    }
}

wire! { pub struct CtxResource { pub resource_id: U32, pub padding: U32 } }

wire! {
    pub struct ResourceCreate3d {
        pub resource_id: U32,
        pub target: U32,
        pub format: U32,
        pub bind: U32,
        pub width: U32,
        pub height: U32,
        pub depth: U32,
        pub array_size: U32,
        pub last_level: U32,
        pub nr_samples: U32,
        pub flags: U32,
        pub padding: U32,
    }
}

wire! { pub struct Box3d { pub x: U32, pub y: U32, pub z: U32, pub w: U32, pub h: U32, pub d: U32 } }

wire! {
    pub struct TransferHost3d {
        pub box_: Box3d,
        pub offset: U64,
        pub resource_id: U32,
        pub level: U32,
        pub stride: U32,
        pub layer_stride: U32,
    }
}

wire! { pub struct CmdSubmit { pub size: U32, pub padding: U32 } }

wire! { pub struct CursorPos { pub scanout_id: U32, pub x: U32, pub y: U32, pub padding: U32 } }

wire! {
    pub struct UpdateCursor {
        pub pos: CursorPos,
        pub resource_id: U32,
        pub hot_x: U32,
        pub hot_y: U32,
        pub padding: U32,
    }
}

wire! {
    /// The device configuration space.
    pub struct Config {
        pub events_read: U32,
        pub events_clear: U32,
        pub num_scanouts: U32,
        pub num_capsets: U32,
    }
}

pub const CMD_GET_DISPLAY_INFO: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_DISPLAY_INFO;
pub const CMD_RESOURCE_CREATE_2D: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D;
pub const CMD_RESOURCE_UNREF: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNREF;
pub const CMD_SET_SCANOUT: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT;
pub const CMD_RESOURCE_FLUSH: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH;
pub const CMD_TRANSFER_TO_HOST_2D: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D;
pub const CMD_RESOURCE_ATTACH_BACKING: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING;
pub const CMD_RESOURCE_DETACH_BACKING: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING;
pub const CMD_GET_CAPSET_INFO: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET_INFO;
pub const CMD_GET_CAPSET: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET;
pub const CMD_GET_EDID: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_EDID;
pub const CMD_CTX_CREATE: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_CREATE;
pub const CMD_CTX_DESTROY: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DESTROY;
pub const CMD_CTX_ATTACH_RESOURCE: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE;
pub const CMD_CTX_DETACH_RESOURCE: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE;
pub const CMD_RESOURCE_CREATE_3D: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_3D;
pub const CMD_TRANSFER_TO_HOST_3D: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D;
pub const CMD_TRANSFER_FROM_HOST_3D: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D;
pub const CMD_SUBMIT_3D: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SUBMIT_3D;
pub const CMD_UPDATE_CURSOR: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_UPDATE_CURSOR;
pub const CMD_MOVE_CURSOR: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_MOVE_CURSOR;
pub const RESP_OK_NODATA: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_NODATA;
pub const RESP_OK_DISPLAY_INFO: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
pub const RESP_OK_CAPSET_INFO: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET_INFO;
pub const RESP_OK_CAPSET: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET;
pub const RESP_OK_EDID: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_EDID;
pub const RESP_ERR_UNSPEC: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_UNSPEC;
pub const RESP_ERR_OUT_OF_MEMORY: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
pub const RESP_ERR_INVALID_SCANOUT_ID: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
pub const RESP_ERR_INVALID_RESOURCE_ID: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
pub const RESP_ERR_INVALID_CONTEXT_ID: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID;
pub const RESP_ERR_INVALID_PARAMETER: u32 = sys::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
pub const FLAG_FENCE: u32 = sys::VIRTIO_GPU_FLAG_FENCE;
pub const F_VIRGL: u32 = sys::VIRTIO_GPU_F_VIRGL;
pub const F_EDID: u32 = sys::VIRTIO_GPU_F_EDID;
pub const F_CONTEXT_INIT: u32 = sys::VIRTIO_GPU_F_CONTEXT_INIT;
/// Gallium's PIPE_BUFFER target: what the guest driver creates its shared
/// buffers as.
pub const PIPE_BUFFER: u32 = 0;
/// Gallium's R8_UNORM format, used for byte buffers.
pub const FORMAT_R8_UNORM: u32 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_spec() {
        assert_eq!(core::mem::size_of::<CtrlHdr>(), 24);
        assert_eq!(core::mem::size_of::<RespDisplayInfo>(), 24 + 16 * 24);
        assert_eq!(core::mem::size_of::<ResourceCreate3d>(), 48);
        assert_eq!(core::mem::size_of::<MemEntry>(), 16);
        assert_eq!(core::mem::size_of::<CtxCreate>(), 72);
        assert_eq!(core::mem::size_of::<UpdateCursor>(), 32);
        assert_eq!(core::mem::size_of::<RespEdid>(), 24 + 8 + 1024);
        assert_eq!(core::mem::size_of::<TransferHost3d>(), 24 + 8 + 16);
    }
}
