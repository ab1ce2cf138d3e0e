//! What can go wrong with a guest's request, and the one place each failure
//! becomes the `CUresult` the guest sees.

use crate::engine::CuError;
use crate::guest_mem::SpanError;
use protocol::cuda::*;
use protocol::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed batch: {0}")]
    Decode(#[from] DecodeError),
    #[error("{kind} handle {id:#x} is unknown")]
    HandleNotFound { kind: &'static str, id: u64 },
    #[error("{kind} handle {id:#x} is already in use")]
    HandleInUse { kind: &'static str, id: u64 },
    #[error("device range {dptr:#x}+{len:#x} is not inside one allocation of this context")]
    BadDeviceRange { dptr: u64, len: u64 },
    #[error("device pointer {0:#x} is not the start of an allocation")]
    NotAnAllocation(u64),
    #[error("allocation of {size} bytes exceeds the VM's quota ({used} of {quota} bytes used)")]
    QuotaExceeded { size: u64, used: u64, quota: u64 },
    #[error("resource {0} is unknown or not attached to this context")]
    ResourceNotFound(u32),
    #[error("resource {0} has no guest backing")]
    NoBacking(u32),
    #[error("guest memory: {0}")]
    GuestMemory(#[from] SpanError),
    #[error("the session has not sent Hello")]
    NoSession,
    #[error("{0} bytes do not fit the reply buffer")]
    ReplyTooLarge(u64),
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("bad thread block cluster: {0}")]
    BadCluster(&'static str),
    #[error("batch sequence {got} out of order (expected {expected})")]
    OutOfOrder { got: u64, expected: u64 },
    #[error("engine: {0}")]
    Engine(#[from] CuError),
    #[error(transparent)]
    Memory(#[from] crate::grants::MemoryError),
    #[error("graph: {0}")]
    Graph(#[from] crate::graph::DagError),
    #[error("the GPU context is lost (CUDA error {0}): every call fails with it until the backend restarts")]
    ContextLost(CuResult),
}

impl Error {
    /// The CUDA result the guest gets for this error.
    pub fn cu_result(&self) -> CuResult {
        match self {
            Error::Decode(_) => CUDA_ERROR_INVALID_VALUE,
            Error::HandleNotFound { kind: "context", .. } => CUDA_ERROR_INVALID_CONTEXT,
            Error::HandleNotFound { .. } => CUDA_ERROR_INVALID_HANDLE,
            Error::HandleInUse { .. } => CUDA_ERROR_INVALID_VALUE,
            Error::BadDeviceRange { .. } => CUDA_ERROR_INVALID_VALUE,
            Error::NotAnAllocation(_) => CUDA_ERROR_INVALID_VALUE,
            Error::QuotaExceeded { .. } => CUDA_ERROR_OUT_OF_MEMORY,
            Error::ResourceNotFound(_) => CUDA_ERROR_INVALID_VALUE,
            Error::NoBacking(_) => CUDA_ERROR_INVALID_VALUE,
            Error::GuestMemory(_) => CUDA_ERROR_INVALID_VALUE,
            Error::NoSession => CUDA_ERROR_NOT_INITIALIZED,
            Error::ReplyTooLarge(_) => CUDA_ERROR_INVALID_VALUE,
            Error::InvalidArgument(_) => CUDA_ERROR_INVALID_VALUE,
            Error::NotSupported(_) => CUDA_ERROR_NOT_SUPPORTED,
            Error::BadCluster(_) => CUDA_ERROR_INVALID_CLUSTER_SIZE,
            Error::OutOfOrder { .. } => CUDA_ERROR_INVALID_VALUE,
            Error::Engine(e) => e.0,
            Error::Memory(crate::grants::MemoryError::Denied { .. }) => CUDA_ERROR_OUT_OF_MEMORY,
            Error::Memory(crate::grants::MemoryError::Engine(e)) => e.0,
            Error::Graph(_) => CUDA_ERROR_INVALID_VALUE,
            Error::ContextLost(code) => *code,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
