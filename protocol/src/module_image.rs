//! TEMPORARY STUB written by the lead so the workspace compiles; the module
//! image parser replaces this whole file.
#[derive(Debug, Clone)]
pub struct ParamInfo { pub offset: u32, pub size: u32 }
#[derive(Debug, Clone)]
pub struct KernelInfo { pub name: String, pub params: Vec<ParamInfo> }
#[derive(Debug)]
pub struct ImageError;
pub fn kernels(_image: &[u8]) -> Result<Vec<KernelInfo>, ImageError> { Err(ImageError) }
pub fn fuzz_one(_data: &[u8]) {}
