//! The backend socket: accepts backends, registers each from its `Hello`,
//! then forwards its demands, releases, charges and memory messages to its
//! GPU's scheduler and memory broker, and its stats there and to the
//! registry. A backend that breaks the protocol loses its own connection and
//! nothing else.

use crate::driver::GpuEvent;
use crate::lines::LineReader;
use crate::registry::Hello;
use crate::Shared;
use protocol::control::{BackendMsg, ControlError, DaemonMsg};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// How long a new connection has to say `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the backend socket: creates its directory, replaces a stale socket
/// file (one nobody listens on) and makes it group-accessible (0660).
pub fn bind(path: &Path) -> Result<UnixListener, crate::Error> {
    prepare_socket_path(path)?;
    let listener =
        UnixListener::bind(path).map_err(|source| crate::Error::Socket { path: path.to_path_buf(), source })?;
    set_socket_mode(path)?;
    Ok(listener)
}

/// Makes `path` ready to bind a socket at: creates its directory and
/// removes a stale socket file (one nobody listens on); refuses a live
/// socket or a file that is not a socket.
pub fn prepare_socket_path(path: &Path) -> Result<(), crate::Error> {
    let err = |source| crate::Error::Socket { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(crate::Error::SocketInUse(path.to_path_buf()));
            }
            tracing::info!(socket = %path.display(), "removing a stale socket");
            std::fs::remove_file(path).map_err(err)
        }
        Ok(_) => Err(err(std::io::Error::other("the path exists and is not a socket; remove it or choose another"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Backends may run as another user of the socket's group: 0660.
pub fn set_socket_mode(path: &Path) -> Result<(), crate::Error> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|source| crate::Error::Socket { path: path.to_path_buf(), source })
}

/// Resolves once `shutdown` is set (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await;
}

/// Accepts backends until `shutdown`, then closes every connection and
/// returns once they are all done.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!("accepting a backend: {e}");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections as we go.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn connection(stream: UnixStream, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let (rd, mut wr) = stream.into_split();
    let mut reader = LineReader::new(BufReader::new(rd));
    let first = tokio::select! {
        _ = stopped(&mut shutdown) => return,
        r = tokio::time::timeout(HELLO_TIMEOUT, reader.next_msg::<BackendMsg>()) => r,
    };
    let hello = match first {
        Ok(Ok(BackendMsg::Hello {
            version,
            vm,
            pid,
            engine,
            gpu,
            quota_bytes,
            requested,
            reconnect,
            gpu_ns_total,
            memory,
        })) => Hello { version, vm, pid, engine, gpu, quota_bytes, requested, reconnect, gpu_ns_total, memory },
        Ok(Ok(other)) => {
            tracing::warn!("backend's first message is {other:?}, not hello; closing");
            return;
        }
        Ok(Err(ControlError::Closed)) => return,
        Ok(Err(e)) => {
            tracing::warn!("backend's hello: {e}; closing");
            return;
        }
        Err(_) => {
            tracing::warn!("backend sent no hello within {HELLO_TIMEOUT:?}; closing");
            return;
        }
    };
    let (tx, rx) = unbounded_channel();
    let registered = shared.registry().register(&hello, tx);
    let reg = match registered {
        Ok(r) => r,
        Err(refusal) => {
            // The names come from the backend: escaped, so that a hostile
            // one cannot forge log lines.
            tracing::warn!(vm = %hello.vm.escape_debug(), gpu = %hello.gpu.escape_debug(), pid = hello.pid,
                code = %refusal.code, "registration refused: {}", refusal.reason.escape_debug());
            let msg = DaemonMsg::Refused { reason: refusal.reason, code: Some(refusal.code) };
            let mut line = serde_json::to_vec(&msg).unwrap_or_default();
            line.push(b'\n');
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&line)).await;
            return;
        }
    };
    let span = tracing::info_span!("vm", vm = %hello.vm);
    let s = &reg.settings;
    span.in_scope(|| {
        tracing::info!(pid = hello.pid, engine = %hello.engine, gpu = %reg.gpu_id, reconnect = hello.reconnect,
            class = %s.class, weight = s.weight, priority = s.priority, slice_us = s.slice_us, drained = s.drained,
            "backend registered")
    });
    let writer = tokio::spawn(write_loop(wr, rx).instrument(span.clone()));
    read_loop(&mut reader, &shared, &hello.vm, reg.conn, &reg.gpu, &mut shutdown).instrument(span).await;
    shared.registry().disconnect(&hello.vm, reg.conn);
    // Dropping both halves closes the socket.
    writer.abort();
}

async fn read_loop<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut LineReader<R>,
    shared: &Shared,
    vm: &str,
    conn: u64,
    gpu: &crate::driver::GpuHandle,
    shutdown: &mut watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stopped(shutdown) => {
                tracing::debug!("closing at shutdown");
                return;
            }
            m = reader.next_msg::<BackendMsg>() => m,
        };
        let ev = match msg {
            Ok(BackendMsg::Demand) => GpuEvent::Demand { vm: conn },
            Ok(BackendMsg::Release { grant, gpu_ns, ops: _, more }) => {
                GpuEvent::Release { vm: conn, grant, used_ns: gpu_ns, more }
            }
            Ok(BackendMsg::Charge { gpu_ns }) => GpuEvent::Charge { vm: conn, used_ns: gpu_ns },
            Ok(BackendMsg::Stats(stats)) => {
                let ev = GpuEvent::Stats { vm: conn, stats: Box::new(stats.clone()) };
                shared.registry().record_stats(vm, conn, stats);
                ev
            }
            Ok(BackendMsg::MemNeed { bytes }) => GpuEvent::MemNeed { vm: conn, bytes },
            Ok(BackendMsg::Evicted { state, moved_bytes, ns, least_move_bytes }) => {
                GpuEvent::Evicted { vm: conn, state, moved_bytes, ns, least_move_bytes }
            }
            Ok(BackendMsg::Restored { state, moved_bytes, ns }) => {
                GpuEvent::Restored { vm: conn, state, moved_bytes, ns }
            }
            Ok(BackendMsg::Hello { .. }) => {
                tracing::warn!("protocol violation: a second hello; closing the connection");
                return;
            }
            Err(ControlError::Closed) => {
                tracing::info!("backend disconnected");
                return;
            }
            Err(ControlError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) =>
            {
                tracing::info!("backend disconnected ({e})");
                return;
            }
            Err(e) => {
                tracing::warn!("bad message from the backend ({e}); closing the connection");
                return;
            }
        };
        if gpu.send(ev).is_err() {
            // The scheduler thread is gone: the daemon is stopping.
            return;
        }
    }
}

/// Writes queued messages, several per write when they pile up.
async fn write_loop(mut wr: OwnedWriteHalf, mut rx: UnboundedReceiver<DaemonMsg>) {
    let mut buf = Vec::with_capacity(256);
    while let Some(msg) = rx.recv().await {
        buf.clear();
        encode(&msg, &mut buf);
        while let Ok(msg) = rx.try_recv() {
            encode(&msg, &mut buf);
        }
        if let Err(e) = wr.write_all(&buf).await {
            tracing::debug!("writing to the backend: {e}");
            return;
        }
    }
}

fn encode(msg: &DaemonMsg, buf: &mut Vec<u8>) {
    // Serializing these plain structs cannot fail.
    if serde_json::to_writer(&mut *buf, msg).is_ok() {
        buf.push(b'\n');
    }
}
