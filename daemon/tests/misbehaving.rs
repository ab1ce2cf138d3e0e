//! A backend that breaks the protocol loses its own connection; the other
//! backends keep getting grants.

mod common;

use common::*;
use gpuvisor_admin::{Admin, VmState};
use protocol::control::*;
use std::time::{Duration, Instant};

#[test]
fn bad_lines_and_bad_hellos_close_only_their_own_connection() {
    let dir = scratch("misbehaving");
    let d = TestDaemon::start(&dir);
    let stop = Instant::now() + Duration::from_secs(2);
    let (good, _) = FakeBackend::register(&d.socket, "good", QosRequest { slice_us: Some(1000), ..Default::default() });
    let good = std::thread::spawn(move || saturate(good, stop));

    // Garbage after registration, from a VM that holds the grant.
    let long = QosRequest { slice_us: Some(5_000_000), priority: Some(20), ..Default::default() };
    let (mut holder, _) = FakeBackend::register(&d.socket, "garbage", long);
    holder.send(&BackendMsg::Demand);
    holder.grant(Duration::from_secs(2)).unwrap();
    holder.send_raw(b"{\"type\":\"demand\"\n");
    holder.expect_closed(Duration::from_secs(2));

    // A line longer than MAX_LINE.
    let (mut long_line, _) = FakeBackend::register(&d.socket, "oversize", QosRequest::default());
    long_line.send_raw(&vec![b' '; MAX_LINE + 10]);
    long_line.expect_closed(Duration::from_secs(2));

    // An unknown field, and a second hello.
    let (mut unknown, _) = FakeBackend::register(&d.socket, "unknown", QosRequest::default());
    unknown.send_raw(b"{\"type\":\"charge\",\"gpu_ns\":1,\"extra\":2}\n");
    unknown.expect_closed(Duration::from_secs(2));
    let (mut twice, _) = FakeBackend::register(&d.socket, "twice", QosRequest::default());
    twice.send(&hello("twice", QosRequest::default(), false));
    twice.expect_closed(Duration::from_secs(2));

    // Not a hello first, garbage first, and a hello that is refused.
    let mut b = FakeBackend::connect(&d.socket);
    b.send(&BackendMsg::Demand);
    b.expect_closed(Duration::from_secs(2));
    let mut b = FakeBackend::connect(&d.socket);
    b.send_raw(b"\x00\x01 hello?\n");
    b.expect_closed(Duration::from_secs(2));
    let (mut b, answer) = FakeBackend::hello(&d.socket, &hello("../etc", QosRequest::default(), false));
    assert!(matches!(answer, DaemonMsg::Refused { .. }), "{answer:?}");
    b.expect_closed(Duration::from_secs(2));

    // The good backend kept getting grants all along.
    let mid = Instant::now();
    let before = d.admin.vm("good").unwrap();
    assert!(before.connected);
    let grants = good.join().unwrap();
    assert!(grants > 100, "the good backend got only {grants} grants");
    assert!(stop > mid, "the bad connections took too long to be closed");

    for vm in ["garbage", "oversize", "unknown", "twice"] {
        let v = d.admin.vm(vm).unwrap();
        assert_eq!(v.state, VmState::Disconnected, "{vm}");
    }
    assert!(d.admin.vm("../etc").is_err());
}
