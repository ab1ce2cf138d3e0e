//! The scripted gpuvisord and the sim engine set-up the backend's grant and
//! memory tests share.
#![allow(dead_code)]

use gpuvisor_backend::engine::sim::SimEngine;
use gpuvisor_backend::engine::{Engine, EngineCtx, EngineFunc, EngineStream, Launch};
use gpuvisor_backend::grants::{DaemonLink, Gate, Registration};
use protocol::control::*;
use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const PTX: &str = include_str!("../../../guest-tests/kernels.ptx");

pub fn socket_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gv-grants-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("d.sock")
}

pub fn settings(max_queued_ops: u32) -> VmSettings {
    VmSettings { class: QosClass::Burstable, weight: 1, priority: 0, slice_us: 50_000, max_queued_ops, drained: false }
}

/// The daemon's end of one backend connection.
pub struct Peer {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl Peer {
    pub fn accept(listener: &UnixListener, settings: VmSettings) -> (Peer, BackendMsg) {
        Self::accept_with_limit(listener, settings, None)
    }

    pub fn accept_with_limit(listener: &UnixListener, settings: VmSettings, limit: Option<u64>) -> (Peer, BackendMsg) {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut peer = Peer { reader: BufReader::new(s.try_clone().unwrap()), writer: s };
        let hello: BackendMsg = read_msg(&mut peer.reader).unwrap();
        peer.send(&DaemonMsg::Welcome { version: CONTROL_VERSION, settings, mem_limit_bytes: limit });
        (peer, hello)
    }

    pub fn send(&mut self, m: &DaemonMsg) {
        write_msg(&mut self.writer, m).unwrap();
    }

    /// The next message that is not a Stats report.
    pub fn next(&mut self) -> BackendMsg {
        loop {
            match read_msg(&mut self.reader).unwrap() {
                BackendMsg::Stats(_) => continue,
                m => return m,
            }
        }
    }
}

/// A sim engine with a context, a stream and the spin kernel.
pub fn sim() -> (SimEngine, EngineCtx, EngineStream, EngineFunc) {
    let mut e = SimEngine::new(1 << 30);
    let ctx = e.ctx_create(0).unwrap();
    e.ctx_set_current(ctx).unwrap();
    let m = e.module_load(PTX.as_bytes()).unwrap();
    let (f, _) = e.module_get_function(m, "gv_spin_us").unwrap();
    let s = e.stream_create(0, 0).unwrap();
    (e, ctx, s, f)
}

pub fn spin(gate: &mut Gate, e: &mut SimEngine, ctx: EngineCtx, s: EngineStream, f: EngineFunc, us: u64) {
    gate.before_op(e, ctx, s).unwrap();
    let params = us.to_le_bytes();
    e.launch(f, &Launch::plain([1, 1, 1], [1, 1, 1], s, &params)).unwrap();
    gate.after_op(e, ctx, s);
}

pub fn registration(socket: PathBuf) -> Registration {
    Registration {
        socket,
        vm: "vm-a".into(),
        engine: "sim".into(),
        gpu: "sim".into(),
        quota_bytes: 1 << 30,
        requested: QosRequest { weight: Some(3), ..Default::default() },
        max_queued: Duration::from_secs(1),
    }
}

pub fn wait_connected(link: &DaemonLink) {
    let t = Instant::now();
    while !link.connected() {
        assert!(t.elapsed() < Duration::from_secs(10), "backend never registered");
        std::thread::sleep(Duration::from_millis(5));
    }
}
