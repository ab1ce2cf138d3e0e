//! gpuvisord's admin API: the data model the host admin sees (GPUs, VMs,
//! their QoS settings and measured shares), the `Admin` trait the daemon
//! implements, the HTTP/JSON server over it, and the client `gpuvisorctl` uses.

pub mod client;

pub mod http;
pub mod model;


pub use http::{router, serve, Auth};

pub use model::*;
