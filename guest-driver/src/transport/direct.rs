//! TEMPORARY STUB by the lead so the crate builds; the vhost-user direct
//! transport replaces this whole file.
use super::{SharedBuf, Transport, TransportError};
pub struct DirectTransport;
impl DirectTransport {
    pub fn connect(_path: &str) -> Result<DirectTransport, TransportError> {
        Err(TransportError::NoDevice("direct transport not built yet".into()))
    }
}
impl Transport for DirectTransport {
    fn name(&self) -> &'static str { "direct" }
    fn capset(&self) -> Result<Vec<u8>, TransportError> { unreachable!() }
    fn alloc_shared(&self, _len: usize) -> Result<SharedBuf, TransportError> { unreachable!() }
    fn free_shared(&self, _buf: &SharedBuf) {}
    fn submit(&self, _batch: &[u8], _r: &[&SharedBuf]) -> Result<(), TransportError> { unreachable!() }
    fn wait_idle(&self) -> Result<(), TransportError> { unreachable!() }
}
