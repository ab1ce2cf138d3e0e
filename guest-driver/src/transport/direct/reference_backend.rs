//! Test harness: QEMU's reference vhost-user-gpu backend as a child process,
//! and a stand-in for QEMU's end of its display socket. Tests that need it
//! skip when the binary is absent.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = "/usr/lib/qemu/vhost-user-gpu";

/// The display mode the stand-in reports for scanout 0.
pub const DISPLAY_WIDTH: u32 = 1280;
pub const DISPLAY_HEIGHT: u32 = 800;

// VhostUserGpuRequest codes and the reply flag (QEMU's docs/interop/vhost-user-gpu.rst).
const GET_PROTOCOL_FEATURES: u32 = 1;
const GET_DISPLAY_INFO: u32 = 3;
const UPDATE: u32 = 8;
const DMABUF_UPDATE: u32 = 10;
const GET_EDID: u32 = 11;
const FLAG_REPLY: u32 = 0x4;
const PROTOCOL_F_EDID: u64 = 1 << 0;

pub struct ReferenceBackend {
    child: Child,
    pub socket: PathBuf,
}

impl ReferenceBackend {
    /// Starts the backend on a fresh socket; None (with a note) when QEMU's
    /// backend is not installed.
    pub fn spawn(test: &str) -> Option<ReferenceBackend> {
        if !std::path::Path::new(BIN).exists() {
            eprintln!("skipping {test}: {BIN} is not installed");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = std::env::temp_dir().join(format!(
            "gv-direct-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(BIN)
            .arg(format!("--socket-path={}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vhost-user-gpu");
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "vhost-user-gpu did not create its socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(ReferenceBackend { child, socket })
    }

    pub fn path(&self) -> &str {
        self.socket.to_str().expect("utf-8 temp path")
    }

    /// Kills the backend (to test a backend that dies mid-request).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ReferenceBackend {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A frame the backend sent to the display: (width, height, pixels).
pub type Frame = (u32, u32, Vec<u8>);

/// QEMU's side of the display socket: answers the backend's questions and
/// passes on the frames it is sent.
pub struct FakeDisplay {
    pub frames: mpsc::Receiver<Frame>,
    /// Set to make GET_DISPLAY_INFO go unanswered (a backend stuck on it).
    pub mute: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeDisplay {
    /// Returns the display and the socket end to give the backend.
    pub fn start() -> (FakeDisplay, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let (tx, frames) = mpsc::channel();
        let mute = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let m = mute.clone();
        std::thread::spawn(move || serve(ours, tx, m));
        (FakeDisplay { frames, mute }, theirs)
    }
}

fn reply(s: &mut UnixStream, request: u32, payload: &[u8]) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(12 + payload.len());
    msg.extend_from_slice(&request.to_le_bytes());
    msg.extend_from_slice(&FLAG_REPLY.to_le_bytes());
    msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    msg.extend_from_slice(payload);
    s.write_all(&msg)
}

fn serve(mut s: UnixStream, frames: mpsc::Sender<Frame>, mute: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use protocol::virtio_gpu::*;
    use zerocopy::little_endian::U32;
    use zerocopy::IntoBytes;
    let mut hdr = [0u8; 12];
    while s.read_exact(&mut hdr).is_ok() {
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (request, size) = (word(0), word(8) as usize);
        let mut payload = vec![0u8; size];
        if s.read_exact(&mut payload).is_err() {
            return;
        }
        let r = match request {
            GET_PROTOCOL_FEATURES => reply(&mut s, request, &PROTOCOL_F_EDID.to_le_bytes()),
            GET_DISPLAY_INFO if mute.load(std::sync::atomic::Ordering::Relaxed) => Ok(()),
            GET_DISPLAY_INFO => {
                let mut d = RespDisplayInfo::default();
                d.hdr.type_ = U32::new(RESP_OK_DISPLAY_INFO);
                d.pmodes[0].r.width = U32::new(DISPLAY_WIDTH);
                d.pmodes[0].r.height = U32::new(DISPLAY_HEIGHT);
                d.pmodes[0].enabled = U32::new(1);
                reply(&mut s, request, d.as_bytes())
            }
            GET_EDID => {
                let mut e = RespEdid::default();
                e.hdr.type_ = U32::new(RESP_OK_EDID);
                e.size = U32::new(128);
                reply(&mut s, request, e.as_bytes())
            }
            DMABUF_UPDATE => reply(&mut s, request, &[]),
            UPDATE if payload.len() >= 20 => {
                let w = u32::from_le_bytes([payload[12], payload[13], payload[14], payload[15]]);
                let h = u32::from_le_bytes([payload[16], payload[17], payload[18], payload[19]]);
                let _ = frames.send((w, h, payload[20..].to_vec()));
                Ok(())
            }
            _ => Ok(()),
        };
        if r.is_err() {
            return;
        }
    }
}

/// Round-trip times of one synchronous request, sorted.
pub fn round_trips(
    dev: &super::DirectDevice,
    hdr: &protocol::virtio_gpu::CtrlHdr,
    body: &[u8],
    resp_cap: usize,
    n: usize,
) -> Vec<Duration> {
    for _ in 0..n / 10 {
        dev.request(hdr, body, resp_cap).expect("warm-up request");
    }
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            dev.request(hdr, body, resp_cap).expect("request");
            s.elapsed()
        })
        .collect();
    t.sort();
    t
}

/// "p50 .. p90 .. p99" in microseconds.
pub fn percentiles(t: &[Duration]) -> String {
    let p = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)].as_secs_f64() * 1e6;
    format!("p50 {:.1} us, p90 {:.1} us, p99 {:.1} us (n={})", p(0.5), p(0.9), p(0.99), t.len())
}
