//! What can go wrong in an exported call, and the one place each failure
//! becomes the `nvmlReturn_t` the caller sees.

use crate::config::ConfigError;
use nvml_wrapper_sys::bindings::*;
use std::ffi::{c_char, CStr};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("nvmlInit has not been called, or every init has been shut down")]
    Uninitialized,
    #[error("an argument is null, out of range or not a handle this library gave out")]
    InvalidArgument,
    #[error("the simulated device does not have this feature")]
    NotSupported,
    #[error("no device or MIG instance matches")]
    NotFound,
    #[error("the caller's buffer is too small")]
    InsufficientSize,
    #[error("the struct's version field is not the version this library fills")]
    ArgumentVersionMismatch,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl SimError {
    pub fn code(&self) -> nvmlReturn_t {
        match self {
            SimError::Uninitialized => nvmlReturn_enum_NVML_ERROR_UNINITIALIZED,
            SimError::InvalidArgument => nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
            SimError::NotSupported => nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED,
            SimError::NotFound => nvmlReturn_enum_NVML_ERROR_NOT_FOUND,
            SimError::InsufficientSize => nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE,
            SimError::ArgumentVersionMismatch => nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
            SimError::Config(_) => nvmlReturn_enum_NVML_ERROR_UNKNOWN,
        }
    }
}

/// The return value of every exported function but `nvmlErrorString`.
pub fn to_return(result: Result<(), SimError>) -> nvmlReturn_t {
    match result {
        Ok(()) => nvmlReturn_enum_NVML_SUCCESS,
        Err(e) => e.code(),
    }
}

/// `nvmlErrorString`'s text for `code`: static, so the pointer stays valid
/// for the life of the library, as NVML promises.
#[allow(non_upper_case_globals)] // bindgen names the return codes
pub fn describe(code: nvmlReturn_t) -> *const c_char {
    let text: &'static CStr = match code {
        nvmlReturn_enum_NVML_SUCCESS => c"Success",
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => c"Uninitialized",
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => c"Insufficient Permissions",
        nvmlReturn_enum_NVML_ERROR_ALREADY_INITIALIZED => c"Already Initialized",
        nvmlReturn_enum_NVML_ERROR_NOT_FOUND => c"Not Found",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_POWER => c"Insufficient External Power",
        nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        nvmlReturn_enum_NVML_ERROR_TIMEOUT => c"Timeout",
        nvmlReturn_enum_NVML_ERROR_IRQ_ISSUE => c"Interrupt request issue",
        nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND => c"NVML Shared Library Not Found",
        nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND => c"Function Not Found",
        nvmlReturn_enum_NVML_ERROR_CORRUPTED_INFOROM => c"Corrupted infoROM",
        nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => c"GPU is lost",
        nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED => c"GPU requires restart",
        nvmlReturn_enum_NVML_ERROR_OPERATING_SYSTEM => c"The operating system has blocked the request",
        nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH => c"RM has detected an NVML/RM version mismatch",
        nvmlReturn_enum_NVML_ERROR_IN_USE => c"In use by another client",
        nvmlReturn_enum_NVML_ERROR_MEMORY => c"Insufficient Memory",
        nvmlReturn_enum_NVML_ERROR_NO_DATA => c"No data",
        nvmlReturn_enum_NVML_ERROR_VGPU_ECC_NOT_SUPPORTED => {
            c"The requested vGPU operation is not available because ECC is enabled"
        }
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES => c"Ran out of critical resources, other than memory",
        nvmlReturn_enum_NVML_ERROR_FREQ_NOT_SUPPORTED => c"The requested frequency is not supported",
        nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH => c"The provided version is invalid or unsupported",
        nvmlReturn_enum_NVML_ERROR_DEPRECATED => c"The requested functionality has been deprecated",
        nvmlReturn_enum_NVML_ERROR_NOT_READY => c"The system is not ready for the request",
        nvmlReturn_enum_NVML_ERROR_GPU_NOT_FOUND => c"The GPU is not found",
        nvmlReturn_enum_NVML_ERROR_INVALID_STATE => c"Invalid state",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}
