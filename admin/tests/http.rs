//! The admin API over real HTTP: the server from `serve`, over an in-memory
//! `Admin`, driven by the client, raw requests and the gpuvisorctl binary.

use gpuvisor_admin::alerts::{AlertState, AlertView, AlertsResponse};
use gpuvisor_admin::history::{
    HistoryMetric, HistoryMetrics, HistoryQuery, HistoryResponse, HistorySeries, HistoryTier,
};
use gpuvisor_admin::{
    serve, AccessOverview, Admin, AdminError, Auth, Client, ClientError, GpuAccessMode, GpuPatch, GpuView, VmAccess,
    VmPatch, VmState, VmView,
};
use protocol::control::QosClass;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "s3cret-admin-token";
const GPU: &str = "GPU-8a3f21c0-1111-2222-3333-444455556666";

/// GPUs and VMs in maps; patches are applied as they come (the HTTP layer
/// validated them).
struct MemAdmin {
    gpus: Mutex<HashMap<String, GpuView>>,
    vms: Mutex<HashMap<String, VmView>>,
    /// The last history query the HTTP layer passed on.
    history_asked: Mutex<Option<HistoryQuery>>,
    /// Access lists as the HTTP layer passed them on.
    access: Mutex<BTreeMap<String, Vec<String>>>,
}

/// The one metric MemAdmin keeps history of.
const SHARE: &str = "gpuvisor_vm_gpu_share";

fn gpu_view() -> GpuView {
    GpuView {
        id: GPU.to_owned(),
        name: "NVIDIA H100 80GB HBM3".to_owned(),
        index: Some(0),
        memory_total_bytes: 80 << 30,
        mig_enabled: Some(false),
        slice_us: 10_000,
        max_queued_ops: 64,
        holder: Some("alpha".to_owned()),
        busy_fraction: 0.75,
        vms: 2,
        overcommit_ratio: 1.0,
        memory_limit_bytes: None,
        memory_capacity_bytes: Some(78 << 30),
        resident_bytes: 5 << 30,
        evicted_bytes: 0,
        swap_used_bytes: 0,
        swap_limit_bytes: 64 << 30,
        swap_pool: Some(gpuvisor_admin::SwapPoolView {
            limit_bytes: 8 << 30,
            free_bytes: 1 << 30,
            leased_bytes: 6 << 30,
            held_bytes: 0,
        }),
    }
}

fn vm_view(name: &str, weight: u32) -> VmView {
    VmView {
        name: name.to_owned(),
        gpu: GPU.to_owned(),
        state: VmState::Idle,
        connected: true,
        pid: Some(4242),
        engine: Some("cuda".to_owned()),
        class: QosClass::Burstable,
        weight,
        priority: 0,
        slice_us: 10_000,
        slice_us_override: None,
        max_queued_ops: 64,
        drained: false,
        share_configured: 0.5,
        share_used: 0.25,
        gpu_time_s: 12.5,
        queued: 1,
        inflight_ops: 3,
        ops_total: 1000,
        latency_p50_us: 120.0,
        latency_p99_us: 2500.0,
        quota_bytes: 4 << 30,
        used_bytes: 1 << 30,
        limit_bytes: 4 << 30,
        resident_bytes: 1 << 30,
        evicted_bytes: 0,
        evictions: 0,
        restores: 0,
        evict_ms_total: 0.0,
        restore_ms_total: 0.0,
        last_restore_ms: None,
        swapped_out_bytes: 0,
        swapped_in_bytes: 0,
        launches: 0,
        copies_htod: 0,
        copies_dtoh: 0,
        copies_dtod: 0,
        bytes_htod: 0,
        bytes_dtoh: 0,
        bytes_dtod: 0,
        api_errors: Default::default(),
        faults: 0,
        grant_wait_s: 0.5,
        grants: 40,
        preemptions: 2,
        registrations: 1,
        reconnects: 0,
        allowed_gpus: None,
        gpu_allowed: true,
    }
}

impl MemAdmin {
    fn new() -> MemAdmin {
        let vms = [vm_view("beta", 200), vm_view("alpha", 100)];
        MemAdmin {
            gpus: Mutex::new(HashMap::from([(GPU.to_owned(), gpu_view())])),
            vms: Mutex::new(vms.into_iter().map(|v| (v.name.clone(), v)).collect()),
            history_asked: Mutex::new(None),
            access: Mutex::new(BTreeMap::new()),
        }
    }
}

fn no_vm(name: &str) -> AdminError {
    AdminError::NotFound { kind: "VM", name: name.to_owned() }
}

impl Admin for MemAdmin {
    fn gpus(&self) -> Vec<GpuView> {
        self.gpus.lock().unwrap().values().cloned().collect()
    }
    fn gpu(&self, id: &str) -> Result<GpuView, AdminError> {
        let gpus = self.gpus.lock().unwrap();
        gpus.get(id).cloned().ok_or(AdminError::NotFound { kind: "GPU", name: id.to_owned() })
    }
    fn update_gpu(&self, id: &str, patch: GpuPatch) -> Result<GpuView, AdminError> {
        let mut gpus = self.gpus.lock().unwrap();
        let g = gpus.get_mut(id).ok_or(AdminError::NotFound { kind: "GPU", name: id.to_owned() })?;
        g.slice_us = patch.slice_us.unwrap_or(g.slice_us);
        g.max_queued_ops = patch.max_queued_ops.unwrap_or(g.max_queued_ops);
        g.overcommit_ratio = patch.overcommit_ratio.unwrap_or(g.overcommit_ratio);
        if let Some(limit) = patch.memory_limit_bytes {
            g.memory_limit_bytes = limit;
            g.memory_capacity_bytes = limit.or(Some(78 << 30));
        }
        Ok(g.clone())
    }
    fn vms(&self) -> Vec<VmView> {
        self.vms.lock().unwrap().values().cloned().collect()
    }
    fn vm(&self, name: &str) -> Result<VmView, AdminError> {
        self.vms.lock().unwrap().get(name).cloned().ok_or_else(|| no_vm(name))
    }
    fn update_vm(&self, name: &str, patch: VmPatch) -> Result<VmView, AdminError> {
        let mut vms = self.vms.lock().unwrap();
        let v = vms.get_mut(name).ok_or_else(|| no_vm(name))?;
        v.class = patch.class.unwrap_or(v.class);
        v.weight = patch.weight.unwrap_or(v.weight);
        v.priority = patch.priority.unwrap_or(v.priority);
        if let Some(slice) = patch.slice_us {
            v.slice_us_override = slice;
            v.slice_us = slice.unwrap_or(10_000);
        }
        Ok(v.clone())
    }
    fn set_drained(&self, name: &str, drained: bool) -> Result<VmView, AdminError> {
        let mut vms = self.vms.lock().unwrap();
        let v = vms.get_mut(name).ok_or_else(|| no_vm(name))?;
        v.drained = drained;
        v.state = if drained { VmState::Drained } else { VmState::Idle };
        Ok(v.clone())
    }
    /// Two points of alpha's share, one step apart from `from`.
    fn history(&self, q: &HistoryQuery) -> Result<HistoryResponse, AdminError> {
        *self.history_asked.lock().unwrap() = Some(q.clone());
        if q.metric != SHARE {
            return Err(AdminError::NotFound { kind: "metric", name: q.metric.clone() });
        }
        let (from, to) = (q.from.unwrap(), q.to.unwrap());
        let step = q.step.unwrap_or(10.0);
        Ok(HistoryResponse {
            metric: q.metric.clone(),
            kind: "gauge".into(),
            rate: false,
            from,
            to,
            step,
            resolution: 1.0,
            series: vec![HistorySeries {
                labels: BTreeMap::from([("vm".to_owned(), "alpha".to_owned())]),
                points: vec![(from, 0.25), (from + step, 0.5)],
            }],
        })
    }
    fn access(&self) -> Result<AccessOverview, AdminError> {
        let names: Vec<String> = self.access.lock().unwrap().keys().cloned().collect();
        Ok(AccessOverview {
            mode: GpuAccessMode::Closed,
            vms: names.iter().map(|n| self.vm_access(n).unwrap()).collect(),
        })
    }
    fn vm_access(&self, name: &str) -> Result<VmAccess, AdminError> {
        let vm = self.vms.lock().unwrap().get(name).cloned();
        let list = self.access.lock().unwrap().get(name).cloned();
        Ok(VmAccess {
            vm: name.to_owned(),
            gpu_allowed: vm.as_ref().map(|v| list.as_ref().is_some_and(|l| l.contains(&v.gpu))),
            allowed_gpus: list,
            mode: GpuAccessMode::Closed,
            gpu: vm.as_ref().map(|v| v.gpu.clone()),
            connected: vm.is_some_and(|v| v.connected),
        })
    }
    fn set_vm_access(&self, name: &str, allowed_gpus: Option<Vec<String>>) -> Result<VmAccess, AdminError> {
        match allowed_gpus {
            Some(l) => self.access.lock().unwrap().insert(name.to_owned(), l),
            None => self.access.lock().unwrap().remove(name),
        };
        self.vm_access(name)
    }
    fn history_metrics(&self) -> Result<HistoryMetrics, AdminError> {
        Ok(HistoryMetrics {
            metrics: vec![HistoryMetric { name: SHARE.into(), kind: "gauge".into(), series: 2 }],
            tiers: vec![HistoryTier { name: "raw".into(), resolution: 1.0, retention: 21600.0 }],
        })
    }
    fn alerts(&self) -> Result<AlertsResponse, AdminError> {
        Ok(AlertsResponse {
            evaluating: true,
            webhook: true,
            rules: Vec::new(),
            alerts: vec![AlertView {
                rule: "GuaranteedVmStarved".into(),
                state: AlertState::Firing,
                labels: BTreeMap::from([
                    ("alertname".to_owned(), "GuaranteedVmStarved".to_owned()),
                    ("vm".to_owned(), "alpha".to_owned()),
                ]),
                value: Some(0.25),
                started_at: 1_746_100_800.0,
                fired_at: Some(1_746_100_830.0),
                resolved_at: None,
                summary: Some("alpha gets 0.25".into()),
                description: None,
                fingerprint: "0123456789abcdef".into(),
            }],
        })
    }
}

/// A server on an ephemeral port, on its own runtime thread; stops on drop.
struct Server {
    url: String,
    /// What the server serves, for tests to set figures the API only reports.
    admin: Arc<MemAdmin>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(auth: Auth) -> Server {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = Arc::new(MemAdmin::new());
        let served = admin.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let shutdown = async move {
                    let _ = stopped.await;
                };
                serve(listener, served, auth, shutdown).await.unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Server { url: format!("http://{addr}"), admin, stop: Some(stop), thread: Some(thread) }
    }

    fn client(&self) -> Client {
        Client::new(self.url.clone(), Some(TOKEN.to_owned()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn server() -> Server {
    Server::start(Auth::Token(TOKEN.to_owned()))
}

/// A raw request: status, `WWW-Authenticate`, and the body as JSON.
fn raw(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut req = ureq::http::Request::builder().method(method).uri(format!("{}{path}", server.url));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let mut resp = agent.run(req.body(body.to_owned()).unwrap()).unwrap();
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let text = resp.body_mut().read_to_string().unwrap();
    let json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: body {text:?} is not JSON: {e}"));
    (status, www, json)
}

fn patch_vm(server: &Server, body: &str) -> (u16, serde_json::Value) {
    let (status, _, json) = raw(server, "PATCH", "/v1/vms/alpha", Some(TOKEN), Some("application/json"), body);
    (status, json)
}

fn api_error(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, String, Option<String>) {
    match r {
        Err(ClientError::Api { status, error, field }) => (status, error, field),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn health_needs_no_token() {
    let s = server();
    let h = Client::new(s.url.clone(), None).health().unwrap();
    assert_eq!(h.status, "ok");
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn lists_and_gets_gpus_and_vms() {
    let s = server();
    let c = s.client();
    let mut names: Vec<String> = c.vms().unwrap().into_iter().map(|v| v.name).collect();
    names.sort();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(c.vm("beta").unwrap(), vm_view("beta", 200));
    assert_eq!(c.gpus().unwrap(), vec![gpu_view()]);
    assert_eq!(c.gpu(GPU).unwrap(), gpu_view());
}

#[test]
fn patches_are_applied() {
    let s = server();
    let c = s.client();
    let patch = VmPatch { class: Some(QosClass::Guaranteed), weight: Some(300), priority: Some(-5), slice_us: None };
    let vm = c.update_vm("alpha", &patch).unwrap();
    assert_eq!((vm.class, vm.weight, vm.priority), (QosClass::Guaranteed, 300, -5));
    assert_eq!(c.vm("alpha").unwrap().weight, 300);

    // A patch that leaves the slice out keeps the VM's own slice; null clears it.
    c.update_vm("alpha", &VmPatch { slice_us: Some(Some(2000)), ..Default::default() }).unwrap();
    let vm = c.update_vm("alpha", &VmPatch { weight: Some(5), ..Default::default() }).unwrap();
    assert_eq!(vm.slice_us_override, Some(2000));
    let (status, json) = patch_vm(&s, r#"{"slice_us": null}"#);
    assert_eq!((status, &json["slice_us_override"]), (200, &serde_json::Value::Null));

    let g =
        c.update_gpu(GPU, &GpuPatch { slice_us: Some(5000), max_queued_ops: Some(16), ..Default::default() }).unwrap();
    assert_eq!((g.slice_us, g.max_queued_ops), (5000, 16));

    // Memory: a limit and a ratio; null clears the limit, absent keeps it.
    let g = c
        .update_gpu(
            GPU,
            &GpuPatch { overcommit_ratio: Some(2.5), memory_limit_bytes: Some(Some(40 << 30)), ..Default::default() },
        )
        .unwrap();
    assert_eq!(
        (g.overcommit_ratio, g.memory_limit_bytes, g.memory_capacity_bytes),
        (2.5, Some(40 << 30), Some(40 << 30))
    );
    let g = c.update_gpu(GPU, &GpuPatch { slice_us: Some(4000), ..Default::default() }).unwrap();
    assert_eq!(g.memory_limit_bytes, Some(40 << 30));
    let (status, _, json) = raw(
        &s,
        "PATCH",
        &format!("/v1/gpus/{GPU}"),
        Some(TOKEN),
        Some("application/json"),
        r#"{"memory_limit_bytes": null}"#,
    );
    assert_eq!((status, &json["memory_limit_bytes"]), (200, &serde_json::Value::Null));
}

#[test]
fn drain_and_resume() {
    let s = server();
    let c = s.client();
    let vm = c.set_drained("alpha", true).unwrap();
    assert!(vm.drained);
    assert_eq!(vm.state, VmState::Drained);
    let vm = c.set_drained("alpha", false).unwrap();
    assert!(!vm.drained);
    assert_eq!(c.vm("alpha").unwrap().state, VmState::Idle);
}

#[test]
fn missing_or_wrong_token_is_401() {
    let s = server();
    let (status, www, json) = raw(&s, "GET", "/v1/vms", None, None, "");
    assert_eq!((status, www.as_deref()), (401, Some("Bearer")));
    assert!(json["error"].as_str().unwrap().contains("missing bearer token"), "{json}");
    let (status, www, json) = raw(&s, "GET", "/v1/vms", Some("wrong"), None, "");
    assert_eq!((status, www.as_deref()), (401, Some("Bearer")));
    assert_eq!(json["error"], "invalid bearer token");
    assert_eq!(json["field"], serde_json::Value::Null);
    // A prefix of the token is as wrong as any other.
    let (status, _, _) = raw(&s, "POST", "/v1/vms/alpha/drain", Some(&TOKEN[..5]), None, "");
    assert_eq!(status, 401);
    assert!(!s.client().vm("alpha").unwrap().drained);
}

#[test]
fn disabled_auth_needs_no_token() {
    let s = Server::start(Auth::None);
    assert_eq!(Client::new(s.url.clone(), None).vms().unwrap().len(), 2);
}

#[test]
fn unknown_vm_gpu_and_route_are_404() {
    let s = server();
    let (status, msg, field) = api_error(s.client().vm("nosuch"));
    assert_eq!((status, field), (404, None));
    assert!(msg.contains("nosuch"), "{msg}");
    let (status, _, _) = api_error(s.client().set_drained("nosuch", true));
    assert_eq!(status, 404);
    let (status, _, _) = api_error(s.client().gpu("GPU-nosuch"));
    assert_eq!(status, 404);
    let (status, _, json) = raw(&s, "GET", "/v1/nothing/here", Some(TOKEN), None, "");
    assert_eq!(status, 404);
    assert!(json["error"].as_str().unwrap().contains("/v1/nothing/here"), "{json}");
}

#[test]
fn wrong_method_is_405_json() {
    let s = server();
    let (status, _, json) = raw(&s, "DELETE", "/v1/vms/alpha", Some(TOKEN), None, "");
    assert_eq!(status, 405);
    assert!(json["error"].as_str().unwrap().contains("DELETE"), "{json}");
}

#[test]
fn unknown_field_is_400_naming_it() {
    let s = server();
    let (status, json) = patch_vm(&s, r#"{"wieght": 3}"#);
    assert_eq!((status, &json["field"]), (400, &serde_json::json!("wieght")));
    assert!(json["error"].as_str().unwrap().contains("unknown field `wieght`"), "{json}");
}

#[test]
fn wrong_type_is_400_naming_the_field() {
    let s = server();
    let (status, json) = patch_vm(&s, r#"{"weight": "heavy"}"#);
    assert_eq!((status, &json["field"]), (400, &serde_json::json!("weight")));
    assert!(json["error"].as_str().unwrap().starts_with("weight: invalid type"), "{json}");
    let (status, json) = patch_vm(&s, r#"{"weight": -1}"#);
    assert_eq!((status, &json["field"]), (400, &serde_json::json!("weight")));
    let path = format!("/v1/gpus/{GPU}");
    let (status, _, json) =
        raw(&s, "PATCH", &path, Some(TOKEN), Some("application/json"), r#"{"max_queued_ops": 1.5}"#);
    assert_eq!((status, &json["field"]), (400, &serde_json::json!("max_queued_ops")));
}

#[test]
fn whole_numbers_written_as_floats_are_integers_and_nulls_are_not_values() {
    // JSON Schema's `integer` (the OpenAPI document's type) includes 5.0.
    let s = server();
    let (status, json) = patch_vm(&s, r#"{"weight": 5.0}"#);
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["weight"], 5);
    let (status, json) = patch_vm(&s, r#"{"weight": 5.5}"#);
    assert_eq!((status, &json["field"]), (400, &serde_json::json!("weight")));
    assert!(json["error"].as_str().unwrap().contains("whole number"), "{json}");
    // Only slice_us may be null (it clears the VM's own slice).
    for body in [r#"{"weight": null}"#, r#"{"priority": null, "weight": 3}"#, r#"{"class": null}"#] {
        let (status, json) = patch_vm(&s, body);
        assert_eq!(status, 400, "{body}: {json}");
    }
    let (status, json) = patch_vm(&s, r#"{"slice_us": null}"#);
    assert_eq!(status, 200, "{json}");
}

#[test]
fn unknown_class_is_400_naming_the_field() {
    let s = server();
    let (status, json) = patch_vm(&s, r#"{"class": "gold"}"#);
    assert_eq!((status, &json["field"]), (400, &serde_json::json!("class")));
    let msg = json["error"].as_str().unwrap();
    assert!(msg.starts_with("class: ") && msg.contains("gold") && msg.contains("best-effort"), "{msg}");
}

#[test]
fn malformed_json_is_400() {
    let s = server();
    let (status, json) = patch_vm(&s, r#"{"weight": 3"#);
    assert_eq!(status, 400);
    assert!(json["error"].as_str().unwrap().starts_with("malformed JSON"), "{json}");
    let (status, json) = patch_vm(&s, "");
    assert_eq!(status, 400, "{json}");
    let (status, json) = patch_vm(&s, "[1, 2]");
    assert_eq!(status, 400, "{json}");
}

#[test]
fn out_of_range_values_are_422_naming_the_field() {
    let s = server();
    let (status, json) = patch_vm(&s, r#"{"weight": 0}"#);
    assert_eq!((status, &json["field"]), (422, &serde_json::json!("weight")));
    assert_eq!(json["error"], "weight: must be between 1 and 10000, got 0");
    let (status, json) = patch_vm(&s, r#"{"priority": 21}"#);
    assert_eq!((status, &json["field"]), (422, &serde_json::json!("priority")));
    let (status, json) = patch_vm(&s, r#"{"slice_us": 100}"#);
    assert_eq!((status, &json["field"]), (422, &serde_json::json!("slice_us")));
    let (status, _, field) =
        api_error(s.client().update_gpu(GPU, &GpuPatch { max_queued_ops: Some(0), ..Default::default() }));
    assert_eq!((status, field.as_deref()), (422, Some("max_queued_ops")));
    let (status, _, field) =
        api_error(s.client().update_gpu(GPU, &GpuPatch { overcommit_ratio: Some(0.5), ..Default::default() }));
    assert_eq!((status, field.as_deref()), (422, Some("overcommit_ratio")));
    let (status, error, field) =
        api_error(s.client().update_gpu(GPU, &GpuPatch { memory_limit_bytes: Some(Some(4096)), ..Default::default() }));
    assert_eq!((status, field.as_deref()), (422, Some("memory_limit_bytes")), "{error}");
    assert_eq!(s.client().gpu(GPU).unwrap(), gpu_view());
    // Nothing was applied.
    assert_eq!(s.client().vm("alpha").unwrap(), vm_view("alpha", 100));
}

#[test]
fn empty_patch_is_422_without_field() {
    let s = server();
    let (status, json) = patch_vm(&s, "{}");
    assert_eq!((status, &json["field"]), (422, &serde_json::Value::Null));
    assert!(json["error"].as_str().unwrap().contains("nothing to change"), "{json}");
}

#[test]
fn non_json_body_is_415() {
    let s = server();
    let (status, _, json) = raw(&s, "PATCH", "/v1/vms/alpha", Some(TOKEN), Some("text/plain"), r#"{"weight": 3}"#);
    assert_eq!(status, 415);
    assert!(json["error"].as_str().unwrap().contains("application/json"), "{json}");
    let (status, _, _) = raw(&s, "PATCH", "/v1/vms/alpha", Some(TOKEN), None, r#"{"weight": 3}"#);
    assert_eq!(status, 415);
    let (status, _, _) =
        raw(&s, "PATCH", "/v1/vms/alpha", Some(TOKEN), Some("application/json; charset=utf-8"), r#"{"weight": 3}"#);
    assert_eq!(status, 200);
}

#[test]
fn openapi_lists_every_route() {
    let s = server();
    let doc = Client::new(s.url.clone(), None).openapi().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let routes = [
        ("/v1/health", "get"),
        ("/openapi.json", "get"),
        ("/v1/gpus", "get"),
        ("/v1/gpus/{id}", "get"),
        ("/v1/gpus/{id}", "patch"),
        ("/v1/vms", "get"),
        ("/v1/vms/{name}", "get"),
        ("/v1/vms/{name}", "patch"),
        ("/v1/vms/{name}/drain", "post"),
        ("/v1/vms/{name}/resume", "post"),
        ("/metrics", "get"),
        ("/v1/history", "get"),
        ("/v1/history/metrics", "get"),
        ("/v1/alerts", "get"),
        ("/v1/access", "get"),
        ("/v1/vms/{name}/access", "get"),
        ("/v1/vms/{name}/access", "put"),
    ];
    for (path, method) in routes {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing");
    }
    assert_eq!(doc["paths"].as_object().unwrap().len(), 14);
    // Text, not JSON: schemathesis must not expect a JSON body.
    let metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"].as_object().unwrap();
    assert_eq!(metrics.keys().collect::<Vec<_>>(), vec!["text/plain; version=0.0.4; charset=utf-8"]);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    // What the handlers accept, the document says: a patch changes something,
    // and of its fields only slice_us may be null.
    for patch in ["VmPatch", "GpuPatch"] {
        assert_eq!(doc["components"]["schemas"][patch]["minProperties"], 1, "{patch}");
    }
    assert_eq!(doc["components"]["schemas"]["VmPatch"]["properties"]["weight"]["type"], "integer");
    assert_eq!(
        doc["components"]["schemas"]["VmPatch"]["properties"]["slice_us"]["type"],
        serde_json::json!(["integer", "null"])
    );
    // Memory: the GPU's limit may be null (cleared), the ratio may not; the
    // views say where null is an answer.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["GpuPatch"]["properties"]["memory_limit_bytes"]["type"], serde_json::json!(["integer", "null"]));
    assert_eq!(schemas["GpuPatch"]["properties"]["overcommit_ratio"]["type"], "number");
    for (schema, field) in [("GpuView", "memory_capacity_bytes"), ("GpuView", "memory_limit_bytes")] {
        assert_eq!(schemas[schema]["properties"][field]["type"], serde_json::json!(["integer", "null"]), "{field}");
    }
    assert_eq!(schemas["VmView"]["properties"]["last_restore_ms"]["type"], serde_json::json!(["number", "null"]));
    for field in ["resident_bytes", "evicted_bytes", "limit_bytes", "evictions", "restores"] {
        assert_eq!(schemas["VmView"]["properties"][field]["type"], "integer", "{field}");
    }
    let patch = &doc["paths"]["/v1/vms/{name}"]["patch"];
    for status in ["200", "400", "401", "404", "415", "422"] {
        assert!(patch["responses"][status].is_object(), "PATCH /v1/vms/{{name}} lacks {status}");
    }
    let classes = &doc["components"]["schemas"]["QosClass"]["enum"];
    assert_eq!(classes, &serde_json::json!(["guaranteed", "burstable", "best-effort"]));
}

#[test]
fn the_document_says_what_an_access_list_may_be() {
    let s = server();
    let doc = Client::new(s.url.clone(), None).openapi().unwrap();
    let schemas = &doc["components"]["schemas"];
    let update = &schemas["VmAccessUpdate"];
    assert_eq!(update["required"], serde_json::json!(["allowed_gpus"]), "{update}");
    let one_of = update["properties"]["allowed_gpus"]["oneOf"].as_array().unwrap();
    assert_eq!(one_of.len(), 3, "{update}");
    assert_eq!(one_of[0]["type"], "null");
    assert_eq!(
        (one_of[1]["items"]["enum"].clone(), one_of[1]["maxItems"].clone()),
        (serde_json::json!(["*"]), 1.into())
    );
    assert_eq!(one_of[2]["items"]["pattern"], gpuvisor_admin::GPU_ID_PATTERN);
    assert_eq!(one_of[2]["maxItems"], gpuvisor_admin::MAX_ALLOWED_GPUS);
    assert_eq!(one_of[2]["uniqueItems"], true);
    for view in ["VmView", "VmAccess"] {
        assert!(schemas[view]["properties"]["allowed_gpus"]["oneOf"].is_array(), "{view}");
    }
    assert_eq!(schemas["GpuAccessMode"]["enum"], serde_json::json!(["open", "closed"]));
    for method in ["get", "put"] {
        let name = &doc["paths"]["/v1/vms/{name}/access"][method]["parameters"][0];
        assert_eq!(name["schema"]["pattern"], gpuvisor_admin::VM_NAME_PATTERN, "{method}");
    }
}

fn put_access(server: &Server, vm: &str, body: &str) -> (u16, serde_json::Value) {
    let path = format!("/v1/vms/{vm}/access");
    let (status, _, json) = raw(server, "PUT", &path, Some(TOKEN), Some("application/json"), body);
    (status, json)
}

#[test]
fn access_lists_are_checked_field_by_field() {
    let s = server();
    let mig = "MIG-11111111-0000-0000-0000-000000000000";
    // A VM that never registered may be given a list.
    let (status, json) = put_access(&s, "new-vm", &format!(r#"{{"allowed_gpus": ["{mig}", "sim"]}}"#));
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["allowed_gpus"], serde_json::json!([mig, "sim"]));
    assert_eq!(s.admin.access.lock().unwrap().get("new-vm"), Some(&vec![mig.to_owned(), "sim".to_owned()]));
    for ok in [r#"{"allowed_gpus": ["*"]}"#, r#"{"allowed_gpus": []}"#, r#"{"allowed_gpus": null}"#] {
        assert_eq!(put_access(&s, "alpha", ok).0, 200, "{ok}");
    }
    assert_eq!(s.admin.access.lock().unwrap().get("alpha"), None, "null removes the list");
    let many: Vec<String> = (0..65).map(|i| format!("\"GPU-{i}\"")).collect();
    let many = format!(r#"{{"allowed_gpus": [{}]}}"#, many.join(","));
    let cases = [
        (r#"{"allowed_gpus": ["*", "sim"]}"#, 422, "allowed_gpus", "stands alone"),
        (r#"{"allowed_gpus": ["sim", "sim"]}"#, 422, "allowed_gpus", "twice"),
        (r#"{"allowed_gpus": ["GPU-1/0/0"]}"#, 422, "allowed_gpus", "not a GPU id"),
        (r#"{"allowed_gpus": [""]}"#, 422, "allowed_gpus", "not a GPU id"),
        (many.as_str(), 422, "allowed_gpus", "at most 64"),
        (r#"{"allowed_gpus": "sim"}"#, 400, "allowed_gpus", "invalid type"),
        (r#"{"allowed_gpus": [7]}"#, 400, "allowed_gpus[0]", "invalid type"),
        (r#"{}"#, 400, "allowed_gpus", "missing field"),
        (r#"{"allowed_gpus": [], "gpus": []}"#, 400, "gpus", "unknown field"),
    ];
    for (body, status, field, text) in cases {
        let (got, json) = put_access(&s, "alpha", body);
        assert_eq!((got, json["field"].as_str()), (status, Some(field)), "{body}: {json}");
        assert!(json["error"].as_str().unwrap().contains(text), "{body}: {json}");
    }
    assert_eq!(s.admin.access.lock().unwrap().get("alpha"), None, "nothing refused was stored");
    let (status, json) = put_access(&s, "bad%20name", r#"{"allowed_gpus": []}"#);
    assert_eq!((status, json["field"].as_str()), (422, Some("name")), "{json}");
    let (status, _, json) = raw(&s, "GET", "/v1/vms/a%2Fb/access", Some(TOKEN), None, "");
    assert_eq!((status, json["field"].as_str()), (422, Some("name")), "{json}");
    let (status, _, _) = raw(&s, "PUT", "/v1/vms/alpha/access", None, Some("application/json"), "{}");
    assert_eq!(status, 401);
    let (status, _, _) = raw(&s, "GET", "/v1/access", Some("wrong"), None, "");
    assert_eq!(status, 401);
}

#[test]
fn ctl_access_set_replaces_a_list_and_access_shows_it() {
    let s = server();
    let mig = "MIG-11111111-0000-0000-0000-000000000000";
    let o = ctl(&s, Some(TOKEN), &["access-set", "alpha", "--allow-gpu", mig, "--allow-gpu", GPU]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.lines().any(|l| l.starts_with("allowed_gpus:") && l.ends_with(&format!("{mig}, {GPU}"))), "{out}");
    assert!(out.lines().any(|l| l.starts_with("gpu_allowed:") && l.ends_with("yes")), "{out}");
    assert_eq!(s.admin.access.lock().unwrap()["alpha"], [mig, GPU]);
    assert!(ctl(&s, Some(TOKEN), &["access-set", "later", "--allow-any-gpu"]).status.success());
    assert_eq!(s.admin.access.lock().unwrap()["later"], ["*"]);
    assert!(ctl(&s, Some(TOKEN), &["access-set", "beta", "--deny-all-gpus"]).status.success());
    let out = stdout(&ctl(&s, Some(TOKEN), &["access"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "gpu access closed: a VM without a list may use no GPU", "{out}");
    assert!(lines[1].starts_with("VM") && lines[1].contains("GPU ALLOWED"), "{out}");
    assert!(lines[2].starts_with("alpha") && lines[2].contains(mig), "{out}");
    assert!(lines[3].starts_with("beta ") && lines[3].contains("none") && lines[3].contains(" no "), "{out}");
    assert!(lines[4].starts_with("later") && lines[4].contains("any GPU"), "{out}");
    let out = stdout(&ctl(&s, Some(TOKEN), &["access", "nobody"]));
    assert!(out.contains("default: none (--gpu-access closed)") && out.contains("never registered"), "{out}");
    assert!(ctl(&s, Some(TOKEN), &["access-set", "alpha", "--clear"]).status.success());
    assert!(!s.admin.access.lock().unwrap().contains_key("alpha"));
    let o = ctl(&s, Some(TOKEN), &["access-set", "alpha", "--allow-gpu", "sim", "--allow-gpu", "sim"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("allowed_gpus") && stderr(&o).contains("--allow-gpu takes"), "{}", stderr(&o));
}

#[test]
fn unreachable_server_names_the_url() {
    // Bind and drop a listener: its port is then free, so nothing answers.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let err = Client::new(url.clone(), None).vms().unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
}

/// Runs gpuvisorctl against `server` with `token` in its environment.
fn ctl(server: &Server, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuvisorctl"));
    cmd.args(args).env("GPUVISOR_URL", &server.url).env_remove("GPUVISOR_TOKEN");
    if let Some(t) = token {
        cmd.env("GPUVISOR_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ctl_vms_prints_a_sorted_table() {
    let s = server();
    let o = ctl(&s, Some(TOKEN), &["vms"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("SHARE(cfg)") && lines[0].contains("P99"), "{out}");
    assert!(
        lines[1].starts_with("alpha ") && lines[1].contains("GPU-8a3f21c0") && lines[1].contains("burstable"),
        "{out}"
    );
    assert!(lines[2].starts_with("beta ") && lines[2].contains("200"), "{out}");
    assert_eq!(lines.len(), 3);
    // Columns line up: WEIGHT starts at the same place on every line.
    let col = lines[0].find("WEIGHT").unwrap();
    assert_eq!(&lines[1][col..col + 3], "100");

    let o = ctl(&s, Some(TOKEN), &["vms", "--gpu", "GPU-nosuch"]);
    assert_eq!(stdout(&o).lines().count(), 1);
}

#[test]
fn ctl_vms_shows_where_each_vms_memory_is() {
    let s = server();
    {
        let mut vms = s.admin.vms.lock().unwrap();
        let beta = vms.get_mut("beta").unwrap();
        (beta.resident_bytes, beta.evicted_bytes, beta.evictions, beta.last_restore_ms) = (0, 1 << 30, 3, Some(41.25));
    }
    let out = stdout(&ctl(&s, Some(TOKEN), &["vms"]));
    let lines: Vec<&str> = out.lines().collect();
    let cell = |line: &str, name: &str| -> String {
        let start = lines[0].find(name).unwrap();
        line[start..].split_whitespace().next().unwrap_or("").to_owned()
    };
    for col in ["QUOTA", "RESIDENT", "EVICTED", "EVICTS", "RESTORE(ms)"] {
        assert!(lines[0].contains(col), "{out}");
    }
    assert_eq!(
        ["QUOTA", "RESIDENT", "EVICTED", "EVICTS", "RESTORE(ms)"].map(|c| cell(lines[1], c)),
        ["4.0G", "1.0G", "0", "0", "-"],
        "{out}"
    );
    assert_eq!(
        ["QUOTA", "RESIDENT", "EVICTED", "EVICTS", "RESTORE(ms)"].map(|c| cell(lines[2], c)),
        ["4.0G", "0", "1.0G", "3", "41.2"],
        "{out}"
    );
}

#[test]
fn ctl_gpu_set_changes_the_memory_limit_and_clears_it() {
    let s = server();
    let o = ctl(&s, Some(TOKEN), &["gpu-set", GPU, "--memory-limit", "40G", "--overcommit-ratio", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.lines().any(|l| l.starts_with("memory_limit:") && l.ends_with("40.0 GiB")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("overcommit_ratio:") && l.ends_with(" 2")), "{out}");
    assert_eq!(s.admin.gpu(GPU).unwrap().memory_limit_bytes, Some(40 << 30));
    let out = stdout(&ctl(&s, Some(TOKEN), &["gpus"]));
    assert!(out.lines().next().unwrap().contains("CAPACITY") && out.contains("40.0G"), "{out}");
    let o = ctl(&s, Some(TOKEN), &["gpu-set", GPU, "--memory-limit", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.admin.gpu(GPU).unwrap().memory_limit_bytes, None);
    let o = ctl(&s, Some(TOKEN), &["gpu-set", GPU, "--memory-limit", "4K"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--memory-limit takes"), "{}", stderr(&o));
}

#[test]
fn ctl_gpus_and_vm_detail() {
    let s = server();
    let out = stdout(&ctl(&s, Some(TOKEN), &["gpus"]));
    assert!(out.starts_with("ID") && out.contains(GPU) && out.contains("80.0 GiB") && out.contains("75.0%"), "{out}");
    let out = stdout(&ctl(&s, Some(TOKEN), &["vm", "beta"]));
    assert!(out.lines().any(|l| l.starts_with("weight:") && l.ends_with(" 200")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("latency_p99:") && l.ends_with("2.5 ms")), "{out}");
    let out = stdout(&ctl(&s, Some(TOKEN), &["--json", "vm", "beta"]));
    let vm: VmView = serde_json::from_str(&out).unwrap();
    assert_eq!(vm, vm_view("beta", 200));
}

#[test]
fn ctl_set_changes_a_weight() {
    let s = server();
    let o = ctl(&s, Some(TOKEN), &["set", "alpha", "--weight", "700", "--priority", "-3", "--slice-ms", "2.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).lines().any(|l| l.starts_with("weight:") && l.ends_with(" 700")), "{}", stdout(&o));
    let vm = s.client().vm("alpha").unwrap();
    assert_eq!((vm.weight, vm.priority, vm.slice_us_override), (700, -3, Some(2500)));
    // --gpu-slice drops the VM's own slice; the weight stays.
    assert!(ctl(&s, Some(TOKEN), &["set", "alpha", "--gpu-slice"]).status.success());
    let vm = s.client().vm("alpha").unwrap();
    assert_eq!((vm.weight, vm.slice_us_override), (700, None));
}

#[test]
fn ctl_drain_and_resume() {
    let s = server();
    assert!(ctl(&s, Some(TOKEN), &["drain", "beta"]).status.success());
    assert!(s.client().vm("beta").unwrap().drained);
    assert!(ctl(&s, Some(TOKEN), &["resume", "beta"]).status.success());
    assert!(!s.client().vm("beta").unwrap().drained);
}

#[test]
fn ctl_bad_value_fails_naming_the_field() {
    let s = server();
    let o = ctl(&s, Some(TOKEN), &["set", "alpha", "--weight", "0"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("gpuvisorctl: weight: must be between 1 and 10000, got 0"), "{err}");
    let o = ctl(&s, Some(TOKEN), &["set", "nosuch", "--weight", "5"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nosuch"), "{}", stderr(&o));
    // Usage errors are clap's: exit 2.
    assert_eq!(ctl(&s, Some(TOKEN), &["set", "alpha", "--weight", "lots"]).status.code(), Some(2));
}

#[test]
fn ctl_without_token_says_so() {
    let s = server();
    let o = ctl(&s, None, &["vms"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    // Where /var/lib/gpuvisor/admin.token exists its token is sent (and refused here).
    assert!(err.starts_with("gpuvisorctl: ") && err.contains("token") && err.contains("401"), "{err}");
    let o = ctl(&s, Some("wrong"), &["vms"]);
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));
    // health needs none.
    let o = ctl(&s, None, &["health"]);
    assert!(o.status.success() && stdout(&o).starts_with("ok"), "{}", stderr(&o));
}

#[test]
fn ctl_unreachable_daemon_names_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = Command::new(env!("CARGO_BIN_EXE_gpuvisorctl"))
        .args(["--url", &format!("http://127.0.0.1:{port}"), "--token", "x", "vms"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&format!("could not reach http://127.0.0.1:{port}/v1/vms")), "{}", stderr(&o));
}

/// `GET /metrics` with `token`: status, Content-Type and body text.
fn scrape(server: &Server, token: Option<&str>) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut req = ureq::http::Request::builder().method("GET").uri(format!("{}/metrics", server.url));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = agent.run(req.body(()).unwrap()).unwrap();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (resp.status().as_u16(), ct, resp.body_mut().read_to_string().unwrap())
}

#[test]
fn metrics_need_the_token_and_are_prometheus_text() {
    let s = server();
    for token in [None, Some("wrong")] {
        let (status, ct, body) = scrape(&s, token);
        assert_eq!(status, 401, "{token:?}");
        assert!(ct.starts_with("application/json"), "{ct}");
        assert!(body.contains("bearer token"), "{body}");
    }
    let (status, ct, body) = scrape(&s, Some(TOKEN));
    assert_eq!(status, 200);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let series = format!(r#"gpuvisor_vm_memory_quota_bytes{{vm="alpha",gpu="{GPU}",class="burstable"}} 4294967296"#);
    assert!(body.lines().any(|l| l == series), "{series} missing from\n{body}");
    let latency = format!(
        r#"gpuvisor_vm_request_latency_seconds{{vm="beta",gpu="{GPU}",class="burstable",quantile="0.99"}} 0.0025"#
    );
    assert!(body.lines().any(|l| l == latency), "{latency} missing from\n{body}");

    let open = Server::start(Auth::None);
    assert_eq!(scrape(&open, None).0, 200);
}

#[test]
fn every_metric_has_help_and_type_before_its_samples_and_each_series_appears_once() {
    let s = server();
    let (_, _, body) = scrape(&s, Some(TOKEN));
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = std::collections::HashSet::new();
    let mut series = std::collections::HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name.to_owned()), "two HELP lines for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(["counter", "gauge", "summary"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "two TYPE lines for {name}");
        } else {
            let (key, value) = line.rsplit_once(' ').unwrap();
            let name = key.split('{').next().unwrap();
            assert!(typed.contains_key(name), "sample of {name} without TYPE: {line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.insert(key.to_owned()), "series twice: {key}");
            if typed[name] == "counter" {
                assert!(name.ends_with("_total") || name.starts_with("DCGM_"), "counter {name} must end in _total");
            }
        }
    }
    // Two VMs: one sample each for every per-VM gauge.
    assert_eq!(series.iter().filter(|k| k.starts_with("gpuvisor_vm_weight{")).count(), 2);
    // No NVML behind the in-memory admin: DCGM families are declared but empty.
    assert!(typed.contains_key("DCGM_FI_DEV_GPU_TEMP"));
    assert!(!series.iter().any(|k| k.starts_with("DCGM_")));
    // Every name the dashboard may query is served.
    for name in gpuvisor_admin::metrics::metric_names() {
        assert!(typed.contains_key(name), "{name} not served");
    }
}

fn get(server: &Server, path: &str) -> (u16, serde_json::Value) {
    let (status, _, json) = raw(server, "GET", path, Some(TOKEN), None, "");
    (status, json)
}

#[test]
fn a_history_query_without_a_range_is_passed_on_as_the_last_hour() {
    let s = server();
    let q = HistoryQuery { metric: SHARE.into(), vm: Some("alpha".into()), ..Default::default() };
    let h = s.client().history(&q).unwrap();
    assert_eq!(h.series[0].points.len(), 2);
    let asked = s.admin.history_asked.lock().unwrap().clone().unwrap();
    assert_eq!((asked.to.unwrap() - asked.from.unwrap(), asked.vm.as_deref()), (3600.0, Some("alpha")));
    // JSON numbers read back within an ulp or so.
    assert!((h.from - asked.from.unwrap()).abs() < 1e-3 && (h.to - asked.to.unwrap()).abs() < 1e-3, "{h:?}");
}

#[test]
fn history_query_errors_are_400_naming_the_parameter() {
    let s = server();
    for (query, field) in [
        ("metric=m&from=10&to=5", "from"),
        ("metric=m&step=0", "step"),
        ("metric=m&step=-2", "step"),
        ("metric=m&from=soon", "from"),
        ("metric=m&to=NaN", "to"),
        ("from=1", "metric"),
        ("metric=m&bogus=1", "bogus"),
        ("metric=m&from=0&to=100000&step=1", "step"),
    ] {
        let (status, body) = get(&s, &format!("/v1/history?{query}"));
        assert_eq!((status, body["field"].as_str()), (400, Some(field)), "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(field), "{query}: {body}");
    }
    assert!(s.admin.history_asked.lock().unwrap().is_none(), "an invalid query reached the daemon");
}

#[test]
fn an_unknown_metric_is_404_and_history_needs_the_token() {
    let s = server();
    let (status, body) = get(&s, "/v1/history?metric=no_such_metric");
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no_such_metric"), "{body}");
    for path in ["/v1/history?metric=m", "/v1/history/metrics", "/v1/alerts"] {
        let (status, _, _) = raw(&s, "GET", path, None, None, "");
        assert_eq!(status, 401, "{path}");
    }
}

#[test]
fn ctl_history_lists_the_metrics_and_prints_a_series() {
    let s = server();
    let o = ctl(&s, Some(TOKEN), &["history"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).lines().any(|l| l.starts_with(SHARE) && l.contains("gauge")), "{}", stdout(&o));
    let o = ctl(&s, Some(TOKEN), &["history", "--metric", SHARE, "--since", "10m", "--step", "30s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("mean of each step") && lines[0].contains("step 30s"), "{out}");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["TIME(UTC)", "VALUE"], "{out}");
    assert!(lines[2].ends_with(" 0.25") && lines[3].ends_with(" 0.5"), "{out}");
    let asked = s.admin.history_asked.lock().unwrap().clone().unwrap();
    assert!((asked.to.unwrap() - asked.from.unwrap() - 600.0).abs() < 5.0, "{asked:?}");
    let o = ctl(&s, Some(TOKEN), &["history", "--metric", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("without --metric lists"), "{}", stderr(&o));
}

#[test]
fn ctl_alerts_prints_state_rule_labels_and_times() {
    let s = server();
    let o = ctl(&s, Some(TOKEN), &["alerts"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let row = out.lines().find(|l| l.starts_with("firing")).unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..4], ["firing", "GuaranteedVmStarved", "vm=alpha", "0.25"], "{out}");
    assert!(row.contains("05-01 12:00:30"), "{out}");
    let o = ctl(&s, Some(TOKEN), &["--json", "alerts"]);
    let json: AlertsResponse = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json.alerts[0].fired_at, Some(1_746_100_830.0));
}
