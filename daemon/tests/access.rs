//! GPU access lists: which GPUs (or MIG instances) each VM may use, set by
//! the admin over the real HTTP API with the bearer token, stored in SQLite
//! and enforced by gpuvisord when backends register; a refused real backend
//! runs nothing on the GPU until it is allowed.

mod common;

use common::*;
use gpuvisor_admin::{Client, GpuAccessMode, VmState};
use gpuvisor_backend::grants::{Counters, DaemonLink, Registration};
use protocol::control::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "access-test-token";
/// A GPU no test backend runs on.
const OTHER_GPU: &str = "GPU-00000000-5157-0000-0000-0000000000ff";
/// The simulated host of the MIG test: one H100 with two MIG instances.
const H100: &str = "GPU-00000000-5157-0000-0000-0000000000c1";
const MIG_A: &str = "MIG-00000000-5157-0000-0000-00000000a001";
const MIG_B: &str = "MIG-00000000-5157-0000-0000-00000000a002";

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < until, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A Hello for `vm` on `gpu` (the cuda engine unless it is `sim`).
fn hello_on(vm: &str, gpu: &str, reconnect: bool) -> BackendMsg {
    let mut h = hello(vm, QosRequest::default(), reconnect);
    if let BackendMsg::Hello { engine, gpu: g, .. } = &mut h {
        *engine = if gpu == "sim" { "sim" } else { "cuda" }.into();
        *g = gpu.into();
    }
    h
}

/// Says `hello` and expects to be refused the GPU: returns the reason,
/// once the daemon has closed the connection.
fn refused_gpu(socket: &Path, hello: &BackendMsg) -> String {
    let (mut b, answer) = FakeBackend::hello(socket, hello);
    let DaemonMsg::Refused { reason, code } = answer else { panic!("{hello:?} was answered with {answer:?}") };
    assert_eq!(code, Some(RefusalCode::GpuNotAllowed), "{reason}");
    b.expect_closed(Duration::from_secs(2));
    reason
}

fn welcomed(socket: &Path, hello: &BackendMsg) -> (FakeBackend, VmSettings) {
    match FakeBackend::hello(socket, hello) {
        (b, DaemonMsg::Welcome { settings, .. }) => (b, settings),
        (_, other) => panic!("{hello:?} was answered with {other:?}"),
    }
}

fn list(ids: &[&str]) -> Option<Vec<String>> {
    Some(ids.iter().map(|s| s.to_string()).collect())
}

/// `GET /metrics` with the token.
fn scrape(url: &str, token: &str) -> String {
    let mut resp =
        ureq::get(format!("{url}/metrics")).header("Authorization", format!("Bearer {token}")).call().unwrap();
    resp.body_mut().read_to_string().unwrap()
}

fn refusals(metrics: &str, reason: &str) -> f64 {
    let key = format!("gpuvisor_registrations_refused_total{{reason=\"{reason}\"}} ");
    let line = metrics.lines().find(|l| l.starts_with(&key)).unwrap_or_else(|| panic!("no {key} in\n{metrics}"));
    line[key.len()..].parse().unwrap()
}

#[test]
fn an_allowed_vm_registers_and_one_not_allowed_is_refused_with_the_reason_and_no_grant() {
    let dir = scratch("access-refused");
    let d = TestDaemon::start(&dir);
    let url = d.serve_http(TOKEN);
    let client = Client::new(url.clone(), Some(TOKEN.to_owned()));
    // Lists for VMs that have not registered yet, through the real HTTP API.
    client.set_vm_access("ok", list(&["sim"])).unwrap();
    let a = client.set_vm_access("no", list(&[OTHER_GPU, MIG_A])).unwrap();
    assert_eq!((a.gpu, a.gpu_allowed, a.connected, a.mode), (None, None, false, GpuAccessMode::Open));

    let (mut ok, _) = welcomed(&d.socket, &hello_on("ok", "sim", false));
    ok.send(&BackendMsg::Demand);
    ok.grant(Duration::from_secs(2)).expect("an allowed VM gets grants");

    let reason = refused_gpu(&d.socket, &hello_on("no", "sim", false));
    for needle in ["\"no\"", "\"sim\"", OTHER_GPU, MIG_A, "gpuvisorctl access-set no --allow-gpu sim"] {
        assert!(reason.contains(needle), "{reason:?} should name {needle}");
    }
    // Not registered: no VM, no scheduler entry, no grant.
    assert_eq!(client.vm("no").unwrap_err().status(), Some(404));
    let a = client.vm_access("no").unwrap();
    assert_eq!((a.gpu, a.connected), (None, false));
    assert_eq!(client.gpu("sim").unwrap().vms, 1);
    // A reconnecting backend is checked too.
    refused_gpu(&d.socket, &hello_on("no", "sim", true));
    // An empty list allows nothing, even in open mode.
    client.set_vm_access("none", list(&[])).unwrap();
    assert!(refused_gpu(&d.socket, &hello_on("none", "sim", false)).contains("empty"));
    // "*" allows any GPU.
    client.set_vm_access("any", list(&["*"])).unwrap();
    welcomed(&d.socket, &hello_on("any", OTHER_GPU, false));

    let metrics = scrape(&url, TOKEN);
    assert_eq!(refusals(&metrics, "gpu_not_allowed"), 3.0, "{metrics}");
    assert_eq!(refusals(&metrics, "overcommit"), 0.0);
    assert!(metrics.contains("gpuvisor_vm_gpu_allowed{vm=\"ok\",gpu=\"sim\",class=\"burstable\"} 1"), "{metrics}");
}

#[test]
fn removing_a_connected_vms_gpu_holds_its_work_and_refuses_its_next_registration() {
    let dir = scratch("access-revoke");
    let d = TestDaemon::start(&dir);
    let client = Client::new(d.serve_http(TOKEN), Some(TOKEN.to_owned()));
    // Open mode, no list: today's behaviour, any GPU.
    let (mut b, s) = welcomed(&d.socket, &hello_on("vm", "sim", false));
    assert!(!s.drained);
    let v = client.vm("vm").unwrap();
    assert_eq!((v.allowed_gpus, v.gpu_allowed), (None, true));

    // The admin takes the GPU away while the VM runs: no more grants.
    client.set_vm_access("vm", list(&[OTHER_GPU])).unwrap();
    let Ok(DaemonMsg::Settings { settings }) = b.recv(Duration::from_secs(2)) else { panic!("no settings") };
    assert!(settings.drained, "the backend must hold its work");
    let v = client.vm("vm").unwrap();
    assert_eq!((v.gpu_allowed, v.state, v.drained), (false, VmState::Drained, false), "{v:?}");
    assert_eq!(v.allowed_gpus, list(&[OTHER_GPU]));
    b.send(&BackendMsg::Demand);
    assert_eq!(b.grant(Duration::from_millis(300)), Err(NoMsg::Timeout), "a grant on a GPU no longer allowed");

    // Allowed again: it runs at once, without a resume.
    client.set_vm_access("vm", list(&[OTHER_GPU, "sim"])).unwrap();
    let Ok(DaemonMsg::Settings { settings }) = b.recv(Duration::from_secs(2)) else { panic!("no settings") };
    assert!(!settings.drained);
    b.grant(Duration::from_secs(2)).expect("allowed again, the VM gets its grant");

    // Taken away again, then the backend reconnects: refused.
    client.set_vm_access("vm", list(&[OTHER_GPU])).unwrap();
    drop(b);
    wait_for("the disconnect", || !client.vm("vm").unwrap().connected);
    refused_gpu(&d.socket, &hello_on("vm", "sim", true));
    // Removing the list brings the open default back.
    client.set_vm_access("vm", None).unwrap();
    welcomed(&d.socket, &hello_on("vm", "sim", true));
    assert!(client.vm("vm").unwrap().gpu_allowed);
}

#[test]
fn a_real_backend_refused_in_closed_mode_runs_nothing_until_the_admin_allows_it() {
    let dir = scratch("access-real");
    let d = TestDaemon::start_with(&dir, |c| c.gpu_access = GpuAccessMode::Closed);
    let client = Client::new(d.serve_http(TOKEN), Some(TOKEN.to_owned()));
    let counters = Arc::new(Counters::default());
    let link = DaemonLink::start(
        Registration {
            socket: d.socket.clone(),
            vm: "guest".into(),
            engine: "sim".into(),
            gpu: "sim".into(),
            quota_bytes: 1 << 30,
            requested: QosRequest::default(),
            max_queued: Duration::from_millis(5),
        },
        counters.clone(),
    );
    wait_for("the refusal", || link.refused().is_some());
    let reason = link.refused().unwrap();
    assert!(reason.contains("--gpu-access closed") && reason.contains("\"guest\""), "{reason}");
    let stop = Arc::new(AtomicBool::new(false));
    let worker = sim_load(&link, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counters.ops_total.load(Ordering::Relaxed), 0, "a refused backend ran GPU work");
    assert!(!link.connected());

    client.set_vm_access("guest", list(&["sim"])).unwrap();
    wait_for("the registration", || link.connected());
    assert_eq!(link.refused(), None);
    wait_for("GPU work", || counters.ops_total.load(Ordering::Relaxed) > 20);
    assert!(client.vm("guest").unwrap().gpu_allowed);
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    drop(link);
    d.stop();
}

/// The simulated host: an H100 in MIG mode with two 1g.10gb instances.
fn mig_host(dir: &Path) -> PathBuf {
    let path = dir.join("nvml.json");
    let json = format!(
        r#"{{"gpus": [{{"name": "NVIDIA H100 80GB HBM3", "uuid": "{H100}", "memory_total_mib": 81559,
            "pci_bus_id": "00000000:01:00.0", "mig_enabled": true, "mig_instances": [
            {{"uuid": "{MIG_A}", "memory_mib": 9856, "sm_count": 16, "profile": "1g.10gb"}},
            {{"uuid": "{MIG_B}", "memory_mib": 9856, "sm_count": 16, "profile": "1g.10gb"}}]}}]}}"#
    );
    std::fs::write(&path, json).unwrap();
    path
}

/// A gpuvisord binary killed (and reaped) when the test ends, passed or not.
struct Gpuvisord(std::process::Child);

impl Gpuvisord {
    fn stop(mut self) {
        // SAFETY: signalling the child this test started.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) }, 0);
        let until = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "gpuvisord did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gpuvisord {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn gpuvisord_closed_allows_a_listed_mig_instance_only_and_keeps_the_lists_across_a_restart() {
    let dir = scratch("access-mig");
    let (socket, state, nvml) = (dir.join("d.sock"), dir.join("state"), mig_host(&dir));
    let start = || {
        let (child, line) = spawn_gpuvisord(&socket, &state, &nvml, &["--gpu-access", "closed"]);
        let token = std::fs::read_to_string(state.join("admin.token")).unwrap().trim().to_owned();
        (Gpuvisord(child), Client::new(admin_url(&line), Some(token)))
    };
    let (d, client) = start();
    let wrong = Client::new(client.base_url(), Some("wrong".to_owned()));
    assert_eq!(wrong.set_vm_access("vm", list(&[MIG_A])).unwrap_err().status(), Some(401));
    assert_eq!(client.access().unwrap().mode, GpuAccessMode::Closed);
    // Closed: a VM without a list may use nothing, not even the simulated GPU.
    assert!(refused_gpu(&socket, &hello_on("vm", MIG_A, false)).contains("--gpu-access closed"));

    client.set_vm_access("vm", list(&[MIG_A])).unwrap();
    let (b, _) = welcomed(&socket, &hello_on("vm", MIG_A, false));
    // The instance is a GPU of its own to gpuvisord, as NVML describes it.
    let g = client.gpu(MIG_A).unwrap();
    assert!(g.name.contains("MIG 1g.10gb") && g.index.is_none(), "{g:?}");
    assert_eq!(g.memory_total_bytes, 9856 << 20);
    drop(b);
    wait_for("the disconnect", || !client.vm("vm").unwrap().connected);
    // Not its sibling, not its parent GPU, not the simulated GPU.
    for other in [MIG_B, H100, "sim"] {
        let reason = refused_gpu(&socket, &hello_on("vm", other, false));
        assert!(reason.contains(other) && reason.contains(&format!("allows only {MIG_A}")), "{reason}");
    }
    // A CUDA backend names a MIG instance by its UUID under `GPU-`: the
    // daemon knows it as the instance.
    let cuda_form = MIG_A.replacen("MIG-", "GPU-", 1);
    welcomed(&socket, &hello_on("vm", &cuda_form, false));
    assert_eq!(client.vm("vm").unwrap().gpu, MIG_A);
    d.stop();

    // Restarted: the lists and the mode hold.
    let (d, client) = start();
    let a = client.vm_access("vm").unwrap();
    assert_eq!((a.allowed_gpus, a.gpu.as_deref(), a.gpu_allowed), (list(&[MIG_A]), Some(MIG_A), Some(true)));
    refused_gpu(&socket, &hello_on("vm", MIG_B, true));
    assert!(refused_gpu(&socket, &hello_on("stranger", "sim", false)).contains("--gpu-access closed"));
    welcomed(&socket, &hello_on("vm", MIG_A, true));
    d.stop();
}
