//! Placeholder until the cudarc engine lands.
use super::CuError;
pub struct CudaEngine;
impl CudaEngine {
    pub fn probe() -> Result<String, String> {
        Err("cuda engine not built yet".into())
    }
    pub fn new(_device: u32) -> Result<super::sim::SimEngine, CuError> {
        Err(CuError(protocol::cuda::CUDA_ERROR_NOT_SUPPORTED))
    }
}
