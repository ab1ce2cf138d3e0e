//! A blocking client for the admin API, as `gpuvisorctl` uses it: one method
//! per [`Admin`](crate::model::Admin) call, errors as the server stated them.

use crate::alerts::AlertsResponse;
use crate::history::{HistoryMetrics, HistoryQuery, HistoryResponse};
use crate::model::{AccessOverview, ErrorBody, GpuPatch, GpuView, Health, VmAccess, VmAccessUpdate, VmPatch, VmView};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer came back: nothing listens there, the name does not
    /// resolve, the URL is malformed, or the daemon did not answer in time.
    #[error("could not reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: ureq::Error,
    },
    /// The server answered with a non-2xx status.
    #[error("{error} (HTTP {status})")]
    Api { status: u16, error: String, field: Option<String> },
    /// A patch could not be encoded as JSON.
    #[error("could not encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// A 2xx answer whose body is not what the API promises (not gpuvisord
    /// listening there, or a version that speaks another API).
    #[error("unexpected answer from {url}: {message}")]
    BadResponse { url: String, message: String },
}

impl ClientError {
    /// The HTTP status, for errors the server stated.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one gpuvisord's admin API. Clones share the connection
/// pool (`top` fetches on its own thread).
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client for the API at `base_url` (for example `http://127.0.0.1:9400`),
    /// sending `token` as a bearer token when given.
    pub fn new(base_url: impl Into<String>, token: Option<String>) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        let base = base_url.into().trim_end_matches('/').to_owned();
        Client { base, token, agent: config.into() }
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn health(&self) -> Result<Health, ClientError> {
        self.request("GET", "/v1/health", None)
    }

    /// The OpenAPI document, as JSON.
    pub fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.request("GET", "/openapi.json", None)
    }

    pub fn gpus(&self) -> Result<Vec<GpuView>, ClientError> {
        self.request("GET", "/v1/gpus", None)
    }

    pub fn gpu(&self, id: &str) -> Result<GpuView, ClientError> {
        self.request("GET", &format!("/v1/gpus/{}", segment(id)), None)
    }

    pub fn update_gpu(&self, id: &str, patch: &GpuPatch) -> Result<GpuView, ClientError> {
        self.request(
            "PATCH",
            &format!("/v1/gpus/{}", segment(id)),
            Some(serde_json::to_vec(patch).map_err(ClientError::Encode)?),
        )
    }

    pub fn vms(&self) -> Result<Vec<VmView>, ClientError> {
        self.request("GET", "/v1/vms", None)
    }

    pub fn vm(&self, name: &str) -> Result<VmView, ClientError> {
        self.request("GET", &format!("/v1/vms/{}", segment(name)), None)
    }

    pub fn update_vm(&self, name: &str, patch: &VmPatch) -> Result<VmView, ClientError> {
        self.request(
            "PATCH",
            &format!("/v1/vms/{}", segment(name)),
            Some(serde_json::to_vec(patch).map_err(ClientError::Encode)?),
        )
    }

    /// Drains (`true`) or resumes (`false`) a VM.
    pub fn set_drained(&self, name: &str, drained: bool) -> Result<VmView, ClientError> {
        let action = if drained { "drain" } else { "resume" };
        self.request("POST", &format!("/v1/vms/{}/{action}", segment(name)), None)
    }

    /// gpuvisord's access mode and every VM's GPU access (`GET /v1/access`).
    pub fn access(&self) -> Result<AccessOverview, ClientError> {
        self.request("GET", "/v1/access", None)
    }

    /// One VM's GPU access (`GET /v1/vms/{name}/access`).
    pub fn vm_access(&self, name: &str) -> Result<VmAccess, ClientError> {
        self.request("GET", &format!("/v1/vms/{}/access", segment(name)), None)
    }

    /// Replaces a VM's GPU access list; `None` removes it
    /// (`PUT /v1/vms/{name}/access`).
    pub fn set_vm_access(&self, name: &str, allowed_gpus: Option<Vec<String>>) -> Result<VmAccess, ClientError> {
        let body = serde_json::to_vec(&VmAccessUpdate { allowed_gpus }).map_err(ClientError::Encode)?;
        self.request("PUT", &format!("/v1/vms/{}/access", segment(name)), Some(body))
    }

    /// One metric's history (`GET /v1/history`).
    pub fn history(&self, q: &HistoryQuery) -> Result<HistoryResponse, ClientError> {
        let mut path = format!("/v1/history?metric={}", segment(&q.metric));
        for (k, v) in [("vm", q.vm.clone()), ("gpu", q.gpu.clone())] {
            if let Some(v) = v {
                path.push_str(&format!("&{k}={}", segment(&v)));
            }
        }
        for (k, v) in [("from", q.from), ("to", q.to), ("step", q.step)] {
            if let Some(v) = v {
                path.push_str(&format!("&{k}={v}"));
            }
        }
        self.request("GET", &path, None)
    }

    /// The metrics the history holds (`GET /v1/history/metrics`).
    pub fn history_metrics(&self) -> Result<HistoryMetrics, ClientError> {
        self.request("GET", "/v1/history/metrics", None)
    }

    /// The alert rules and alerts (`GET /v1/alerts`).
    pub fn alerts(&self) -> Result<AlertsResponse, ClientError> {
        self.request("GET", "/v1/alerts", None)
    }

    fn request<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url).header("Accept", "application/json");
        if let Some(token) = &self.token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let bytes = body.unwrap_or_default();
        let req = req.body(bytes).map_err(|e| ClientError::Unreachable { url: url.clone(), source: e.into() })?;
        let mut resp = self.agent.run(req).map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::BadResponse { url: url.clone(), message: format!("reading the body: {e}") })?;
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_str::<ErrorBody>(&text) {
                Ok(ErrorBody { error, field }) => ClientError::Api { status, error, field },
                Err(_) => ClientError::Api { status, error: summarize(&text, status), field: None },
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::BadResponse { url, message: e.to_string() })
    }
}

/// A non-JSON error body (a proxy's HTML page, say), cut to one short line.
fn summarize(text: &str, status: u16) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    if line.is_empty() {
        return format!("HTTP {status} with an empty body");
    }
    line.chars().take(200).collect()
}

/// Percent-encodes one path segment (a VM name or GPU id).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_as_one_segment() {
        assert_eq!(segment("vm-1.a_b~"), "vm-1.a_b~");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn an_unreachable_server_names_its_url() {
        // Port 9 (discard) on localhost: nothing listens in a test sandbox.
        let err = Client::new("http://127.0.0.1:9/", None).health().unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("could not reach http://127.0.0.1:9/v1/health"), "{msg}");
    }
}
