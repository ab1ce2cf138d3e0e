//! CUDA driver API result codes as both sides of the wire use them, with the
//! names and descriptions the guest driver returns from `cuGetErrorName` and
//! `cuGetErrorString`.

/// A `CUresult` value.
pub type CuResult = u32;

pub const CUDA_SUCCESS: CuResult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CuResult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CuResult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CuResult = 3;
pub const CUDA_ERROR_DEINITIALIZED: CuResult = 4;
pub const CUDA_ERROR_NO_DEVICE: CuResult = 100;
pub const CUDA_ERROR_INVALID_DEVICE: CuResult = 101;
pub const CUDA_ERROR_INVALID_IMAGE: CuResult = 200;
pub const CUDA_ERROR_INVALID_CONTEXT: CuResult = 201;
pub const CUDA_ERROR_CONTEXT_ALREADY_CURRENT: CuResult = 202;
pub const CUDA_ERROR_MAP_FAILED: CuResult = 205;
pub const CUDA_ERROR_NO_BINARY_FOR_GPU: CuResult = 209;
pub const CUDA_ERROR_ECC_UNCORRECTABLE: CuResult = 214;
pub const CUDA_ERROR_INVALID_PTX: CuResult = 218;
pub const CUDA_ERROR_INVALID_SOURCE: CuResult = 300;
pub const CUDA_ERROR_FILE_NOT_FOUND: CuResult = 301;
pub const CUDA_ERROR_INVALID_HANDLE: CuResult = 400;
pub const CUDA_ERROR_ILLEGAL_STATE: CuResult = 401;
pub const CUDA_ERROR_NOT_FOUND: CuResult = 500;
pub const CUDA_ERROR_NOT_READY: CuResult = 600;
pub const CUDA_ERROR_ILLEGAL_ADDRESS: CuResult = 700;
pub const CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: CuResult = 701;
pub const CUDA_ERROR_LAUNCH_TIMEOUT: CuResult = 702;
pub const CUDA_ERROR_PEER_ACCESS_UNSUPPORTED: CuResult = 217;
pub const CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE: CuResult = 708;
pub const CUDA_ERROR_CONTEXT_IS_DESTROYED: CuResult = 709;
pub const CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED: CuResult = 712;
pub const CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED: CuResult = 713;
pub const CUDA_ERROR_ASSERT: CuResult = 710;
pub const CUDA_ERROR_HARDWARE_STACK_ERROR: CuResult = 714;
pub const CUDA_ERROR_ILLEGAL_INSTRUCTION: CuResult = 715;
pub const CUDA_ERROR_MISALIGNED_ADDRESS: CuResult = 716;
pub const CUDA_ERROR_INVALID_ADDRESS_SPACE: CuResult = 717;
pub const CUDA_ERROR_INVALID_PC: CuResult = 718;
pub const CUDA_ERROR_LAUNCH_FAILED: CuResult = 719;
pub const CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE: CuResult = 720;
pub const CUDA_ERROR_NOT_PERMITTED: CuResult = 800;
pub const CUDA_ERROR_NOT_SUPPORTED: CuResult = 801;
pub const CUDA_ERROR_SYSTEM_NOT_READY: CuResult = 802;
pub const CUDA_ERROR_UNKNOWN: CuResult = 999;
// Peer access, stream capture and graphs (cuda.h's values).
pub const CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED: CuResult = 704;
pub const CUDA_ERROR_PEER_ACCESS_NOT_ENABLED: CuResult = 705;
pub const CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: CuResult = 900;
pub const CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: CuResult = 901;
pub const CUDA_ERROR_STREAM_CAPTURE_MERGE: CuResult = 902;
pub const CUDA_ERROR_STREAM_CAPTURE_UNMATCHED: CuResult = 903;
pub const CUDA_ERROR_STREAM_CAPTURE_UNJOINED: CuResult = 904;
pub const CUDA_ERROR_STREAM_CAPTURE_ISOLATION: CuResult = 905;
pub const CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: CuResult = 906;
pub const CUDA_ERROR_CAPTURED_EVENT: CuResult = 907;
pub const CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD: CuResult = 908;
pub const CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE: CuResult = 910;
pub const CUDA_ERROR_INVALID_CLUSTER_SIZE: CuResult = 912;

/// (code, name, description) for every code the guest driver can return.
const TABLE: &[(CuResult, &str, &str)] = &[
    (CUDA_SUCCESS, "CUDA_SUCCESS", "no error"),
    (CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"),
    (CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"),
    (CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"),
    (CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"),
    (CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"),
    (CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"),
    (CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"),
    (CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"),
    (CUDA_ERROR_CONTEXT_ALREADY_CURRENT, "CUDA_ERROR_CONTEXT_ALREADY_CURRENT", "context already current"),
    (CUDA_ERROR_MAP_FAILED, "CUDA_ERROR_MAP_FAILED", "mapping of buffer object failed"),
    (
        CUDA_ERROR_NO_BINARY_FOR_GPU,
        "CUDA_ERROR_NO_BINARY_FOR_GPU",
        "no kernel image is available for execution on the device",
    ),
    (CUDA_ERROR_ECC_UNCORRECTABLE, "CUDA_ERROR_ECC_UNCORRECTABLE", "uncorrectable ECC error encountered"),
    (CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"),
    (CUDA_ERROR_INVALID_SOURCE, "CUDA_ERROR_INVALID_SOURCE", "device kernel image is invalid"),
    (CUDA_ERROR_FILE_NOT_FOUND, "CUDA_ERROR_FILE_NOT_FOUND", "file not found"),
    (CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"),
    (CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "the operation is not permitted in the current state"),
    (CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"),
    (CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"),
    (CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"),
    (
        CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
        "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        "too many resources requested for launch",
    ),
    (CUDA_ERROR_LAUNCH_TIMEOUT, "CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated"),
    (
        CUDA_ERROR_PEER_ACCESS_UNSUPPORTED,
        "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED",
        "peer access is not supported between these two devices",
    ),
    (
        CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE,
        "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE",
        "cannot set while device is active in this process",
    ),
    (CUDA_ERROR_CONTEXT_IS_DESTROYED, "CUDA_ERROR_CONTEXT_IS_DESTROYED", "context is destroyed"),
    (
        CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED,
        "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
        "part or all of the requested memory range is already mapped",
    ),
    (
        CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED,
        "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
        "pointer does not correspond to a registered memory region",
    ),
    (CUDA_ERROR_ASSERT, "CUDA_ERROR_ASSERT", "device-side assert triggered"),
    (CUDA_ERROR_HARDWARE_STACK_ERROR, "CUDA_ERROR_HARDWARE_STACK_ERROR", "hardware stack error"),
    (CUDA_ERROR_ILLEGAL_INSTRUCTION, "CUDA_ERROR_ILLEGAL_INSTRUCTION", "an illegal instruction was encountered"),
    (CUDA_ERROR_MISALIGNED_ADDRESS, "CUDA_ERROR_MISALIGNED_ADDRESS", "misaligned address"),
    (
        CUDA_ERROR_INVALID_ADDRESS_SPACE,
        "CUDA_ERROR_INVALID_ADDRESS_SPACE",
        "operation not supported on global/shared address space",
    ),
    (CUDA_ERROR_INVALID_PC, "CUDA_ERROR_INVALID_PC", "invalid program counter"),
    (CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"),
    (CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"),
    (CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"),
    (CUDA_ERROR_SYSTEM_NOT_READY, "CUDA_ERROR_SYSTEM_NOT_READY", "system not yet initialized"),
    (CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"),
    (
        CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED,
        "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED",
        "peer access is already enabled",
    ),
    (
        CUDA_ERROR_PEER_ACCESS_NOT_ENABLED,
        "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED",
        "peer access has not been enabled",
    ),
    (
        CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
        "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
        "operation not permitted when stream is capturing",
    ),
    (
        CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
        "operation failed due to a previous error during capture",
    ),
    (
        CUDA_ERROR_STREAM_CAPTURE_MERGE,
        "CUDA_ERROR_STREAM_CAPTURE_MERGE",
        "operation would result in a merge of separate capture sequences",
    ),
    (CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED", "capture was not ended in the same stream as it began"),
    (
        CUDA_ERROR_STREAM_CAPTURE_UNJOINED,
        "CUDA_ERROR_STREAM_CAPTURE_UNJOINED",
        "capturing stream has unjoined work",
    ),
    (
        CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
        "CUDA_ERROR_STREAM_CAPTURE_ISOLATION",
        "dependency created on uncaptured work in another stream",
    ),
    (
        CUDA_ERROR_STREAM_CAPTURE_IMPLICIT,
        "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
        "operation would make the legacy stream depend on a capturing blocking stream",
    ),
    (
        CUDA_ERROR_CAPTURED_EVENT,
        "CUDA_ERROR_CAPTURED_EVENT",
        "operation not permitted on an event last recorded in a capturing stream",
    ),
    (
        CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD,
        "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
        "attempt to terminate a thread-local capture sequence from another thread",
    ),
    (
        CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE,
        "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE",
        "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update",
    ),
    (CUDA_ERROR_INVALID_CLUSTER_SIZE, "CUDA_ERROR_INVALID_CLUSTER_SIZE", "invalid cluster size"),
    (
        CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE,
        "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
        "too many blocks in cooperative launch",
    ),
];

/// Whether `code` says a kernel faulted (the context that ran it is lost):
/// illegal address, launch timeout, hardware stack error, illegal
/// instruction, misaligned address, invalid address space, invalid PC,
/// launch failure, or a device-side assert.
pub fn is_fault(code: CuResult) -> bool {
    matches!(code, 700 | 702 | 710 | 714..=719)
}

/// Whether `code` is one of the errors after which NVIDIA's driver fails
/// every later call of the process, in every context, with the same code
/// (measured on an H200: `scripts/h100/fault-probe.py`): a kernel's illegal
/// address, trap or launch failure, launch timeout, device-side assert,
/// hardware stack error, illegal instruction, misaligned address, invalid
/// address space or program counter, an uncorrectable ECC error, or the
/// driver's unknown error (the illegal address and the trap measured; the
/// others documented by NVIDIA as leaving the context unusable). A process that
/// got one never gets a working context again, so gpuvisor-backend ends
/// (`gpuvisor_backend::fault_exit_code`) and the guest driver returns it
/// from every later call, as NVIDIA's driver does.
pub fn is_sticky(code: CuResult) -> bool {
    matches!(code, 214 | 700 | 702 | 710 | 714..=719 | 999)
}

/// `cuGetErrorName`'s answer, or `None` for a code it does not know.
pub fn error_name(code: CuResult) -> Option<&'static str> {
    TABLE.iter().find(|e| e.0 == code).map(|e| e.1)
}

/// `cuGetErrorString`'s answer, or `None` for a code it does not know.
pub fn error_string(code: CuResult) -> Option<&'static str> {
    TABLE.iter().find(|e| e.0 == code).map(|e| e.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_unique_name() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert_ne!(a.0, b.0, "duplicate code {}", a.0);
            }
            assert_eq!(error_name(a.0), Some(a.1));
        }
        assert_eq!(error_name(123456), None);
        assert_eq!(error_string(CUDA_ERROR_NOT_READY), Some("device not ready"));
    }

    #[test]
    fn every_sticky_error_is_named_and_an_api_error_is_not_sticky() {
        for code in [214, 700, 702, 715, 716, 717, 718, 719, 999] {
            assert!(is_sticky(code), "{code}");
            assert!(error_name(code).is_some(), "{code} has a name");
        }
        for code in [CUDA_SUCCESS, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_NOT_READY, 701] {
            assert!(!is_sticky(code), "{code}");
        }
    }
}
