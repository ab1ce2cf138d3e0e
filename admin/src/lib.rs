//! gpuvisord's admin API: the data model the host admin sees (GPUs, VMs,
//! their QoS settings, GPU access lists and measured shares), the `Admin`
//! trait the daemon implements, the HTTP/JSON server over it, the client and
//! `gpuvisorctl`'s commands (among them `top`, a live terminal view, and
//! `report`, plots of the history), the Prometheus metrics it serves, and the
//! telemetry history and alerts it answers with.

pub mod alerts;
pub mod client;
pub mod ctl;
pub mod history;
pub mod http;
pub mod metrics;
pub mod model;
pub mod report;
pub mod time;
pub mod top;

pub use client::{Client, ClientError};
pub use http::{router, serve, Auth};
pub use model::*;
