//! The vhost-user side: `GpuBackend` implements rust-vmm's
//! `VhostUserBackend`, walks the control and cursor virtqueues, and hands each
//! request to the device model in `virtio_gpu.rs`.

use crate::engine::HostRegion;
use crate::guest_mem::GuestMemory;
use crate::virtio_gpu::GpuDevice;
use protocol::virtio_gpu::{F_EDID, F_VIRGL};
use std::io::{self, Read, Write};
use std::sync::{Mutex, MutexGuard};
use tracing::{debug, info, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_ANY_LAYOUT, VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::IntoBytes;

const CTRL_QUEUE: u16 = 0;
const CURSOR_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// Epoll data of the memory wake-up (`GpuBackend::memory_event`): past the
/// queues and the exit event, which vhost-user-backend numbers 0..=NUM_QUEUES.
pub const MEMORY_EVENT: u16 = NUM_QUEUES as u16 + 1;
const QUEUE_SIZE: usize = 1024;
/// Largest request we read from one descriptor chain: a maximal batch plus
/// the virtio-gpu headers.
const MAX_REQUEST: usize = protocol::MAX_BATCH_BYTES as usize + 4096;
/// VHOST_USER_F_PROTOCOL_FEATURES.
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;
/// VIRTIO_F_RING_RESET: QEMU's virtio-pci offers it to the guest and passes
/// the guest's acknowledgement on; nothing of ours depends on it.
const VIRTIO_F_RING_RESET: u32 = 40;

struct State {
    dev: GpuDevice,
    mem: Option<GuestMemoryAtomic<GuestMemory>>,
    registered: Vec<HostRegion>,
    event_idx: bool,
    exit: Option<EventNotifier>,
    /// Written by the gpuvisord link when the daemon asks for memory to be
    /// swapped out; registered with each connection's epoll loop.
    memory_event: Option<EventFd>,
    /// What to do once the VM's GPU context is lost and the requests in hand
    /// are answered (`main.rs` ends the process).
    on_lost: Option<OnLost>,
    /// Queues to take up where the used ring says, at their first use: this
    /// process took over from one that ended (`resume_after_restart`).
    rewind: [bool; NUM_QUEUES],
}

/// Called with the sticky error that lost the VM's GPU context.
pub type OnLost = Box<dyn Fn(protocol::cuda::CuResult) + Send>;

/// One VM's vGPU as a vhost-user backend.
pub struct GpuBackend {
    state: Mutex<State>,
}

impl GpuBackend {
    pub fn new(dev: GpuDevice) -> Self {
        GpuBackend {
            state: Mutex::new(State {
                dev,
                mem: None,
                registered: Vec::new(),
                event_idx: false,
                exit: None,
                memory_event: None,
                on_lost: None,
                rewind: [false; NUM_QUEUES],
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving rather than
        // cascading it into every later request.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called when the frontend disconnects: every guest object goes, as if
    /// the device had been reset.
    pub fn disconnected(&self) {
        let mut st = self.lock();
        st.dev.reset();
        let regions = std::mem::take(&mut st.registered);
        if !regions.is_empty() {
            if let Err(e) = st.dev.vm.engine().unregister_host_memory(&regions) {
                warn!("unregistering guest memory: {e}");
            }
        }
        st.mem = None;
        if let Some(exit) = st.exit.take() {
            let _ = exit.notify();
        }
        let u = st.dev.vm.usage();
        info!(vm = %st.dev.vm.name(), used = u.used, allocations = u.allocations, "frontend disconnected; state released");
    }

    /// Lets `event` wake the queue thread to swap memory out (see
    /// `Gate::service_memory`); `register_memory_event` adds it to a
    /// connection's epoll loop.
    pub fn set_memory_event(&self, event: EventFd) {
        self.lock().memory_event = Some(event);
    }

    /// Adds the memory wake-up to a new connection's queue thread.
    pub fn register_memory_event<T: vhost_user_backend::VhostUserBackend>(
        &self,
        handler: &vhost_user_backend::VringEpollHandler<T>,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let st = self.lock();
        let Some(ev) = st.memory_event.as_ref() else { return Ok(()) };
        handler.register_listener(ev.as_raw_fd(), EventSet::IN, MEMORY_EVENT as u64)
    }

    /// Runs `f` once a kernel fault has lost the VM's GPU context (see
    /// `Vm::fault`), after the requests in the queue have been answered with
    /// its error. Without it the backend keeps answering every request with
    /// that error.
    pub fn on_context_lost(&self, f: OnLost) {
        self.lock().on_lost = Some(f);
    }

    /// This process takes over the frontend's connection from a backend
    /// process that ended (the supervisor replays the connection's set-up):
    /// each queue starts at the used ring's index, not at the base the
    /// set-up names. Requests the old process took but never answered come
    /// again and get an answer (their sessions' lost error), so no guest
    /// waits forever; requests it answered are not run twice.
    pub fn resume_after_restart(&self) {
        self.lock().rewind = [true; NUM_QUEUES];
    }

    /// Runs `f` on the device model (tests and the demo read usage this way).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut GpuDevice) -> R) -> R {
        f(&mut self.lock().dev)
    }

    fn process_queue(&self, vring: &VringRwLock, queue: u16) -> io::Result<bool> {
        let mut st = self.lock();
        let Some(atomic) = st.mem.clone() else {
            return Ok(false);
        };
        let mem = atomic.memory();
        if std::mem::take(&mut st.rewind[queue as usize]) {
            let mut v = vring.get_mut();
            let q = v.get_queue_mut();
            let used = q
                .used_idx(&*mem, std::sync::atomic::Ordering::Acquire)
                .map_err(|e| io::Error::other(format!("reading the used index: {e}")))?;
            if q.next_avail() != used.0 {
                info!(queue, from = q.next_avail(), to = used.0, "taking the queue up at the used ring's index");
            }
            q.set_next_avail(used.0);
            q.set_next_used(used.0);
        }
        let chains: Vec<_> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(|e| io::Error::other(format!("queue iteration: {e}")))?
            .collect();
        if chains.is_empty() {
            return Ok(false);
        }
        for chain in chains {
            let head = chain.head_index();
            let mut reader = match chain.clone().reader(&*mem) {
                Ok(r) => r,
                Err(e) => {
                    warn!("bad descriptor chain {head}: {e}");
                    vring.add_used(head, 0).map_err(|e| io::Error::other(e.to_string()))?;
                    continue;
                }
            };
            let avail = reader.available_bytes().min(MAX_REQUEST);
            let mut req = vec![0u8; avail];
            if let Err(e) = reader.read_exact(&mut req) {
                warn!("reading request {head}: {e}");
                req.clear();
            }
            let mut written = 0u32;
            if queue == CTRL_QUEUE {
                let resp = st.dev.handle_ctrl(&mem, &req);
                match chain.writer(&*mem) {
                    Ok(mut w) => {
                        let n = resp.len().min(w.available_bytes());
                        if w.write_all(&resp[..n]).is_ok() {
                            written = n as u32;
                        }
                    }
                    Err(e) => warn!("no response buffer in request {head}: {e}"),
                }
            } else {
                st.dev.handle_cursor(&mem, &req);
                if let Ok(mut w) = chain.writer(&*mem) {
                    let hdr = protocol::virtio_gpu::CtrlHdr {
                        type_: protocol::virtio_gpu::RESP_OK_NODATA.into(),
                        ..Default::default()
                    };
                    if w.available_bytes() >= hdr.as_bytes().len() && w.write_all(hdr.as_bytes()).is_ok() {
                        written = hdr.as_bytes().len() as u32;
                    }
                }
            }
            vring.add_used(head, written).map_err(|e| io::Error::other(e.to_string()))?;
        }
        drop(st);
        vring.signal_used_queue()?;
        Ok(true)
    }
}

impl VhostUserBackend for GpuBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_F_ANY_LAYOUT)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << F_VIRGL)
            | (1 << F_EDID)
            | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
            | (1 << VIRTIO_F_RING_RESET)
    }

    fn acked_features(&self, features: u64) {
        debug!("features acked: {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&self) {
        self.lock().dev.reset();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.lock().event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.lock().dev.config();
        let bytes = cfg.as_bytes();
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        let mut out = bytes[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemory>) -> io::Result<()> {
        let mut st = self.lock();
        let old = std::mem::take(&mut st.registered);
        if !old.is_empty() {
            if let Err(e) = st.dev.vm.engine().unregister_host_memory(&old) {
                warn!("unregistering old guest memory: {e}");
            }
        }
        let regions: Vec<HostRegion> = {
            let m = mem.memory();
            m.iter().map(|r| HostRegion { addr: r.as_ptr(), len: r.len() as usize }).collect()
        };
        let total: usize = regions.iter().map(|r| r.len).sum();
        info!(vm = %st.dev.vm.name(), regions = regions.len(), bytes = total, "guest memory mapped");
        if let Err(e) = st.dev.vm.engine().register_host_memory(&regions) {
            warn!("registering guest memory with the engine: {e}; copies will be staged");
        } else {
            st.registered = regions;
        }
        st.mem = Some(mem);
        Ok(())
    }

    fn set_gpu_socket(&self, gpu_backend: vhost::vhost_user::GpuBackend) -> io::Result<()> {
        info!("display socket connected");
        self.lock().dev.set_display(gpu_backend);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        let keep = notifier.try_clone().ok()?;
        self.lock().exit = Some(keep);
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        tracing::trace!(device_event, ?evset, "queue event");
        if device_event == MEMORY_EVENT {
            let mut st = self.lock();
            if let Some(ev) = st.memory_event.as_ref() {
                let _ = ev.read();
            }
            st.dev.vm.service_memory();
            return Ok(());
        }
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let queue = device_event;
        let Some(vring) = vrings.get(queue as usize) else {
            return Err(io::Error::other(format!("event for unknown queue {queue}")));
        };
        if queue != CTRL_QUEUE && queue != CURSOR_QUEUE {
            return Ok(());
        }
        let event_idx = self.lock().event_idx;
        if event_idx {
            loop {
                vring.disable_notification().map_err(|e| io::Error::other(e.to_string()))?;
                self.process_queue(vring, queue)?;
                if !vring.enable_notification().map_err(|e| io::Error::other(e.to_string()))? {
                    break;
                }
            }
        } else {
            self.process_queue(vring, queue)?;
        }
        if queue == CTRL_QUEUE {
            let lost = {
                let mut st = self.lock();
                st.dev.vm.queue_idle();
                st.dev.vm.fault()
            };
            if let Some(code) = lost {
                // Requests that came while the fault's batch ran get the
                // error too (their replies are written and signalled) before
                // the process ends: a guest process waiting on one learns
                // why its VM's context went.
                self.process_queue(vring, queue)?;
                let st = self.lock();
                if let Some(f) = st.on_lost.as_ref() {
                    f(code);
                }
            }
        }
        Ok(())
    }
}
