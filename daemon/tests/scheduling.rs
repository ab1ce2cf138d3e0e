//! Grants over the real socket: weighted shares, preemption of best-effort
//! work, draining, and how fast a demand is granted.

mod common;

use common::*;
use gpuvisor_admin::{Admin, VmState};
use protocol::control::*;
use std::time::{Duration, Instant};

#[test]
fn three_saturating_backends_share_the_gpu_by_weight() {
    let dir = scratch("sched-share");
    let d = TestDaemon::start(&dir);
    let stop = Instant::now() + Duration::from_millis(3200);
    let threads: Vec<_> = [("w1a", 1), ("w1b", 1), ("w2", 2)]
        .into_iter()
        .map(|(name, w)| {
            let (b, s) = FakeBackend::register(&d.socket, name, weight(w));
            assert_eq!(s.weight, w);
            std::thread::spawn(move || saturate(b, stop))
        })
        .collect();
    std::thread::sleep(stop.saturating_duration_since(Instant::now()) - Duration::from_millis(100));
    let views = d.admin.vms();
    let field = |views: &[gpuvisor_admin::VmView], n: &str, f: fn(&gpuvisor_admin::VmView) -> f64| {
        f(views.iter().find(|v| v.name == n).unwrap())
    };
    let used = ["w1a", "w1b", "w2"].map(|n| field(&views, n, |v| v.share_used));
    let busy = d.admin.gpu("sim").unwrap().busy_fraction;
    // All three busy, w2 is entitled to half. A backend between a late
    // release and the scheduler's revocation is briefly not busy, so look
    // a few times.
    let mut configured = [0.0; 3];
    for _ in 0..20 {
        configured = ["w1a", "w1b", "w2"].map(|n| field(&d.admin.vms(), n, |v| v.share_configured));
        if (configured[2] - 0.5).abs() < 1e-9 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let grants: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("share_used {used:.3?}, grants {grants:?}, busy {busy:.3}");
    // Proportions of the time used, so that the gaps between grants (longer
    // on a loaded machine) do not count against the weights.
    let total: f64 = used.iter().sum();
    for (got, want) in used.iter().zip([0.25, 0.25, 0.5]) {
        assert!((got / total - want).abs() <= 0.03, "share_used {used:.3?} should split 25/25/50 within 3 points");
    }
    assert!((configured[2] - 0.5).abs() < 1e-9, "share_configured {configured:?}");
    assert!(busy > 0.9, "busy_fraction {busy}");
}

#[test]
fn a_burstable_demand_preempts_a_best_effort_holder() {
    let dir = scratch("sched-preempt");
    let d = TestDaemon::start(&dir);
    // Long slices, so only a preemption can end the grant early.
    let long = |class| QosRequest { class: Some(class), slice_us: Some(5_000_000), ..Default::default() };
    let (mut be, _) = FakeBackend::register(&d.socket, "be", long(QosClass::BestEffort));
    let (mut bu, _) = FakeBackend::register(&d.socket, "bu", long(QosClass::Burstable));
    be.send(&BackendMsg::Demand);
    let (g1, _) = be.grant(Duration::from_secs(2)).unwrap();
    assert_eq!(d.admin.vm("be").unwrap().state, VmState::Running);

    let t0 = Instant::now();
    bu.send(&BackendMsg::Demand);
    assert_eq!(be.recv(Duration::from_secs(1)), Ok(DaemonMsg::Revoke { grant: g1 }));
    bu.grant(Duration::from_secs(1)).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "preemption took {:?}", t0.elapsed());
    be.send(&BackendMsg::Release { grant: g1, gpu_ns: 1_000_000, ops: 1, more: true });

    assert_eq!(d.admin.vm("bu").unwrap().state, VmState::Running);
    assert_eq!(d.admin.vm("be").unwrap().state, VmState::Waiting);
    assert_eq!(d.admin.gpu("sim").unwrap().holder.as_deref(), Some("bu"));
}

#[test]
fn a_drained_vm_gets_no_grant_until_resumed() {
    let dir = scratch("sched-drain");
    let d = TestDaemon::start(&dir);
    let (mut b, _) = FakeBackend::register(&d.socket, "dr", QosRequest::default());
    let v = d.admin.set_drained("dr", true).unwrap();
    assert_eq!((v.drained, v.state), (true, VmState::Drained));
    let Ok(DaemonMsg::Settings { settings }) = b.recv(Duration::from_secs(2)) else { panic!("no settings") };
    assert!(settings.drained);

    b.send(&BackendMsg::Demand);
    assert_eq!(b.recv(Duration::from_millis(300)), Err(NoMsg::Timeout), "a drained VM must get no grant");
    assert_eq!(d.admin.vm("dr").unwrap().share_configured, 0.0);

    d.admin.set_drained("dr", false).unwrap();
    let Ok(DaemonMsg::Settings { settings }) = b.recv(Duration::from_secs(2)) else { panic!("no settings") };
    assert!(!settings.drained);
    b.grant(Duration::from_secs(2)).unwrap();
    assert_eq!(d.admin.vm("dr").unwrap().state, VmState::Running);
}

#[test]
fn draining_the_holder_revokes_its_grant() {
    let dir = scratch("sched-drain-holder");
    let d = TestDaemon::start(&dir);
    let (mut b, _) =
        FakeBackend::register(&d.socket, "h", QosRequest { slice_us: Some(5_000_000), ..Default::default() });
    b.send(&BackendMsg::Demand);
    let (g, _) = b.grant(Duration::from_secs(2)).unwrap();
    d.admin.set_drained("h", true).unwrap();
    let mut got = Vec::new();
    while let Ok(m) = b.recv(Duration::from_millis(500)) {
        got.push(m);
    }
    assert!(got.contains(&DaemonMsg::Revoke { grant: g }), "{got:?}");
}

#[test]
fn a_demand_is_granted_within_microseconds() {
    let dir = scratch("sched-latency");
    let d = TestDaemon::start(&dir);
    let (mut b, _) = FakeBackend::register(&d.socket, "fast", QosRequest::default());
    let mut lat = Vec::new();
    for i in 0..1100 {
        let t0 = Instant::now();
        b.send(&BackendMsg::Demand);
        let (grant, _) = b.grant(Duration::from_secs(2)).unwrap();
        let dt = t0.elapsed();
        b.send(&BackendMsg::Release { grant, gpu_ns: 1000, ops: 1, more: false });
        if i >= 100 {
            lat.push(dt);
        }
    }
    lat.sort();
    let median = lat[lat.len() / 2];
    let p99 = lat[lat.len() * 99 / 100];
    eprintln!("demand -> grant over the socket: median {median:?}, p99 {p99:?} ({} samples)", lat.len());
    assert!(median < Duration::from_millis(5), "median {median:?}");
}
