//! Per-VM state and the execution of the CUDA command stream: each
//! virtio-gpu context is one guest process (a *client*) with its own handle
//! tables; every request is decoded, its handles resolved and its ranges
//! checked here before the engine sees it, and the reply is written back into
//! the client's control buffer.

use crate::engine::{
    CuError, DeviceInfo, Engine, EngineCtx, EngineEvent, EngineFunc, EngineModule, EngineStream, Launch,
};
use crate::error::{Error, Result};
use crate::grants::{CopyDir, Counters, Gate};
use crate::guest_mem::{GuestMemory, HostDst, HostSrc};
use crate::handles::{Allocation, AllocationTable, HandleTable};
use crate::heartbeat::Heartbeat;
use crate::journal::{self, Journal};
use crate::resources::ResourceTable;
use crate::watchdog::{InFlight, Watchdog};
use protocol::cuda::*;
use protocol::decode::Decoded;
use protocol::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{debug, info, warn};
use vm_memory::Bytes;
use zerocopy::little_endian::{F32, I32, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

mod graph;
mod pools;
mod vmm;

/// Allocations are charged against the quota in units of this many bytes.
const CHARGE_GRANULE: u64 = 512;

#[derive(Debug)]
struct ModuleEntry {
    engine: EngineModule,
    ctx: u64,
    /// Bases of the globals the guest looked up, removed with the module.
    globals: Vec<u64>,
}

#[derive(Debug)]
struct FuncEntry {
    engine: EngineFunc,
    module: u64,
}

#[derive(Debug)]
struct StreamEntry {
    engine: EngineStream,
    ctx: u64,
}

#[derive(Debug)]
struct EventEntry {
    engine: EngineEvent,
    ctx: u64,
}

/// One guest process: a virtio-gpu context.
#[derive(Debug)]
pub struct Client {
    pid: u32,
    /// The capset the guest's kernel created the context with.
    capset: u32,
    control: Option<u32>,
    /// The error every batch of the session gets, once the session is lost
    /// (it was opened with a backend process that has since ended).
    lost: Option<CuResult>,
    last_seq: u64,
    deferred: Option<(CuResult, Opcode)>,
    contexts: HandleTable<EngineCtx>,
    allocations: AllocationTable,
    modules: HandleTable<ModuleEntry>,
    functions: HandleTable<FuncEntry>,
    streams: HandleTable<StreamEntry>,
    events: HandleTable<EventEntry>,
    graph_execs: HandleTable<graph::GraphExecEntry>,
    /// Bumped whenever the client frees, unloads or destroys something a
    /// graph may use, so that launches re-check only after a change.
    epoch: u64,
    /// Bytes of quota this client holds.
    charged: u64,
    /// The virtual-memory API's reservations, physical memory and mappings.
    vmm: vmm::ClientVmm,
    /// Stream-ordered allocation pools.
    pools: pools::ClientPools,
}

impl Client {
    fn new() -> Self {
        Client {
            pid: 0,
            capset: 0,
            control: None,
            lost: None,
            last_seq: 0,
            deferred: None,
            contexts: HandleTable::new("context"),
            allocations: AllocationTable::default(),
            modules: HandleTable::new("module"),
            functions: HandleTable::new("function"),
            streams: HandleTable::new("stream"),
            events: HandleTable::new("event"),
            graph_execs: HandleTable::new("graph exec"),
            epoch: 0,
            charged: 0,
            vmm: vmm::ClientVmm::default(),
            pools: pools::ClientPools::default(),
        }
    }

    /// `[dptr, dptr + len)` is device memory this client may name: inside
    /// one of its allocations (pool allocations included), or in mapped
    /// ranges of its own it gave the device access to.
    fn check_range(&self, dptr: u64, len: u64) -> Result<()> {
        self.allocations.check(dptr, len).or_else(|e| self.vmm.check(dptr, len).map_err(|_| e))
    }
}

/// A synchronous command's answer.
struct Reply {
    status: CuResult,
    payload: Vec<u8>,
}

impl Reply {
    fn ok(payload: Vec<u8>) -> Self {
        Reply { status: CUDA_SUCCESS, payload }
    }
}

/// Usage figures for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmUsage {
    pub clients: usize,
    pub quota: u64,
    pub used: u64,
    pub allocations: usize,
    pub resources: usize,
}

pub struct Vm {
    name: String,
    quota: u64,
    used: u64,
    engine: Box<dyn Engine>,
    info: DeviceInfo,
    clients: HashMap<u32, Client>,
    pub resources: ResourceTable,
    /// Grants from gpuvisord, or none when the VM runs alone.
    gate: Gate,
    /// The batch being run holds a call the guest waits for: its time from
    /// arrival to completion is a request latency.
    batch_waited: bool,
    /// Event timings the guest reads are rounded down to this (0: exact).
    timer_resolution_ns: u64,
    /// The sticky error that lost the engine's contexts (a kernel faulted),
    /// once seen: every later call of every client gets it (`run_batch`),
    /// and the device layer ends the process (`device.rs`).
    fault: Option<CuResult>,
    /// Marks every GPU operation for `--watchdog-ms`, if on.
    watchdog: Option<Watchdog>,
    /// Where what the guest's kernel believes exists is recorded for a
    /// restarted backend process (`journal.rs`), under the supervisor.
    journal: Option<Journal>,
    /// Beats in each session's control buffer (`CAPSET_F_HEARTBEAT`), if on.
    heartbeat: Option<Heartbeat>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // The watchdog's marks must not outlive the engine's contexts.
        if let Some(wd) = &self.watchdog {
            wd.forget_all();
        }
    }
}

impl Vm {
    /// A VM whose guest sees a device with `quota` bytes of memory (capped at
    /// the physical device's).
    pub fn new(name: &str, engine: Box<dyn Engine>, quota: u64) -> Self {
        let info = engine.device_info().clone();
        let quota = if quota == 0 { info.total_mem } else { quota.min(info.total_mem) };
        info!(vm = name, engine = engine.kind().as_str(), device = %info.name, quota, "VM ready");
        Vm {
            name: name.to_string(),
            quota,
            used: 0,
            engine,
            info,
            clients: HashMap::new(),
            resources: ResourceTable::default(),
            gate: Gate::standalone(Arc::new(Counters::default())),
            batch_waited: false,
            timer_resolution_ns: 0,
            fault: None,
            watchdog: None,
            journal: None,
            heartbeat: None,
        }
    }

    /// Beats in every session's control buffer from now on, and says so in
    /// the capset.
    pub fn set_heartbeat(&mut self, heartbeat: Heartbeat) {
        self.heartbeat = Some(heartbeat);
    }

    /// Records every change to resources, contexts and sessions in
    /// `journal` from now on.
    pub fn set_journal(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// Appends `rec` to the journal, if any (after the change it records is
    /// made: a full journal is compacted from the state as it is now).
    pub fn record(&mut self, rec: journal::Record<'_>) {
        let Some(j) = self.journal.as_mut() else { return };
        let (resources, clients) = (&self.resources, &self.clients);
        j.append(&rec, || journal::snapshot(resources, &Self::journal_contexts(clients)));
    }

    fn journal_contexts(clients: &HashMap<u32, Client>) -> std::collections::BTreeMap<u32, journal::Context> {
        clients
            .iter()
            .map(|(&id, c)| {
                (id, journal::Context { capset: c.capset, session: c.control.map(|r| (r, c.lost.unwrap_or(0))) })
            })
            .collect()
    }

    /// Writes the journal afresh from the state as it is now.
    fn rewrite_journal(&mut self) {
        let Some(j) = self.journal.as_mut() else { return };
        let snap = journal::snapshot(&self.resources, &Self::journal_contexts(&self.clients));
        if !j.rewrite(&snap) {
            warn!(vm = %self.name, "the journal has no room for the state");
        }
    }

    /// A backend process that takes over from one that ended: the guest's
    /// resources and contexts as the journal knows them come back, and each
    /// session opened with the old process is lost, answered from now on
    /// with `code` (sessions lost before keep their own error). Returns the
    /// number of sessions lost.
    pub fn recover(&mut self, state: journal::State, code: CuResult) -> usize {
        self.resources = state.resources;
        let mut lost = 0;
        for (ctx_id, c) in state.contexts {
            let mut client = Client::new();
            client.capset = c.capset;
            if let Some((control, was)) = c.session {
                client.control = Some(control);
                client.lost = Some(if was != 0 { was } else { code });
                lost += 1;
            }
            self.clients.insert(ctx_id, client);
        }
        self.rewrite_journal();
        info!(vm = %self.name, resources = self.resources.len(), contexts = self.clients.len(), lost_sessions = lost,
            lost_error = code, "recovered the guest's device state from the journal");
        lost
    }

    /// Resource `id` goes or its backing changes (virtio-gpu UNREF, ATTACH
    /// or DETACH_BACKING): nothing that writes into guest memory on its own
    /// may touch its old pages any more.
    pub fn resource_changed(&mut self, id: u32) {
        if let Some(hb) = &self.heartbeat {
            hb.forget_resource(id);
        }
    }

    /// Tells the supervisor that this process finished its start-up.
    pub fn journal_ready(&self) {
        if let Some(j) = &self.journal {
            j.set_ready();
        }
    }

    /// The device was reset: nothing is left to recover.
    pub fn clear_journal(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            j.rewrite(&[]);
        }
    }

    /// Lets `watchdog` see every GPU operation and the batch in flight.
    pub fn set_watchdog(&mut self, watchdog: Watchdog) {
        self.watchdog = Some(watchdog);
    }

    /// The sticky error that lost this VM's GPU context, if a kernel
    /// faulted: the process can never get a working context again.
    pub fn fault(&self) -> Option<CuResult> {
        self.fault
    }

    /// Asks the engine whether its contexts are lost, unless known already;
    /// the first time, logs and counts it. Every call's error goes through
    /// here, so this is the one place a fault is noticed.
    fn check_lost(&mut self) -> Option<CuResult> {
        if self.fault.is_some() {
            return self.fault;
        }
        let code = self.engine.lost()?;
        self.fault = Some(code);
        self.gate.counters().record_fault();
        warn!(
            vm = %self.name, code, error = error_name(code).unwrap_or("unknown"),
            "a kernel fault lost the GPU context: the driver fails every call of this process now, so every \
             session gets this error, and the backend ends once the requests in hand are answered, for a fresh \
             process with a fresh context"
        );
        self.fault
    }

    /// Submit GPU work only under `gate`'s grants (a backend registered with
    /// gpuvisord).
    /// Coarsens the GPU timings the guest reads (`cuEventElapsedTime`) to
    /// multiples of `ns`, a side-channel mitigation: a guest timing its own
    /// kernels finely can learn about a neighbour's use of the GPU from the
    /// delays. 0 (the default) leaves them exact. In-kernel clocks
    /// (`%globaltimer`, `clock64`) and the guest's own clock are not
    /// affected.
    pub fn set_timer_resolution_ns(&mut self, ns: u64) {
        self.timer_resolution_ns = ns;
    }

    pub fn set_gate(&mut self, gate: Gate) {
        self.gate = gate;
    }

    /// The counters the backend reports.
    pub fn counters(&self) -> Arc<Counters> {
        self.gate.counters().clone()
    }

    /// Swaps memory out if gpuvisord asked (the link woke the idle queue
    /// thread for it).
    pub fn service_memory(&mut self) {
        self.gate.service_memory(self.engine.as_mut());
    }

    /// The guest's queue is empty: hand back the grant, if any.
    pub fn queue_idle(&mut self) {
        self.gate.counters().queued.store(0, Ordering::Relaxed);
        self.gate.idle(self.engine.as_mut());
    }

    /// One GPU operation on `stream` of `ctx`, submitted under a grant.
    fn gpu_op<T>(
        &mut self,
        ctx: EngineCtx,
        stream: EngineStream,
        op: impl FnOnce(&mut dyn Engine) -> crate::engine::EngineResult<T>,
    ) -> Result<T> {
        self.gate.before_op(self.engine.as_mut(), ctx, stream)?;
        let r = op(self.engine.as_mut())?;
        self.gate.after_op(self.engine.as_mut(), ctx, stream);
        if let Some(wd) = &self.watchdog {
            match self.engine.mark(stream) {
                Ok(mark) => wd.submitted(ctx, stream, mark),
                Err(e) => debug!(vm = %self.name, "no watchdog mark for a GPU operation: {e}"),
            }
        }
        Ok(r)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn engine(&mut self) -> &mut dyn Engine {
        self.engine.as_mut()
    }

    pub fn engine_kind(&self) -> crate::engine::EngineKind {
        self.engine.kind()
    }

    pub fn device_name(&self) -> &str {
        &self.info.name
    }

    pub fn usage(&self) -> VmUsage {
        VmUsage {
            clients: self.clients.len(),
            quota: self.quota,
            used: self.used,
            allocations: self.clients.values().map(|c| c.allocations.len()).sum(),
            resources: self.resources.len(),
        }
    }

    /// The capset blob the device advertises.
    pub fn capset(&self) -> Capset {
        Capset {
            magic: U32::new(CAPSET_MAGIC),
            protocol_min: PROTOCOL_VERSION.into(),
            protocol_max: PROTOCOL_VERSION.into(),
            max_batch_bytes: U32::new(MAX_BATCH_BYTES),
            max_inline_bytes: U32::new(MAX_INLINE_BYTES),
            engine: U32::new(matches!(self.engine.kind(), crate::engine::EngineKind::Cuda) as u32),
            flags: U32::new(CAPSET_F_LAUNCH_EX | if self.heartbeat.is_some() { CAPSET_F_HEARTBEAT } else { 0 }),
        }
    }

    /// virtio-gpu CTX_CREATE of a context for gpuvisor's capset.
    pub fn create_client(&mut self, ctx_id: u32) -> Result<()> {
        self.create_client_for(ctx_id, CAPSET_ID)
    }

    /// virtio-gpu CTX_CREATE of a context for `capset` (0: the default).
    pub fn create_client_for(&mut self, ctx_id: u32, capset: u32) -> Result<()> {
        if self.clients.contains_key(&ctx_id) {
            return Err(Error::InvalidArgument("virtio-gpu context already exists"));
        }
        let mut client = Client::new();
        client.capset = capset;
        self.clients.insert(ctx_id, client);
        self.record(journal::Record::CtxCreate { ctx_id, capset });
        debug!(vm = %self.name, ctx_id, "client created");
        Ok(())
    }

    pub fn has_client(&self, ctx_id: u32) -> bool {
        self.clients.contains_key(&ctx_id)
    }

    /// virtio-gpu CTX_DESTROY, or the guest going away: releases everything
    /// the client held, so a killed guest process leaves nothing behind.
    pub fn destroy_client(&mut self, ctx_id: u32) {
        let Some(mut client) = self.clients.remove(&ctx_id) else {
            return;
        };
        self.resources.detach_all(ctx_id);
        self.record(journal::Record::CtxDestroy { ctx_id });
        if let Some(hb) = &self.heartbeat {
            hb.remove(ctx_id);
        }
        let ctxs: Vec<EngineCtx> = client.contexts.values().copied().collect();
        for (id, &c) in client.contexts.iter() {
            let mine: Vec<(u64, u64)> =
                client.allocations.iter().filter(|(_, a)| a.ctx == id).map(|(b, a)| (b, a.size)).collect();
            self.scrub_in(c, &mine);
        }
        for c in &ctxs {
            self.gate.forget_ctx(*c);
            if let Some(wd) = &self.watchdog {
                wd.forget_ctx(*c);
            }
            if let Err(e) = self.engine.ctx_destroy(*c) {
                warn!(vm = %self.name, ctx_id, "destroying engine context: {e}");
            }
        }
        // Pool and virtual memory outlive contexts; no work uses it now.
        self.release_client_pools(&mut client);
        self.release_client_vmm(&mut client);
        self.used = self.used.saturating_sub(client.charged);
        self.gate.note_residency(self.engine.residency());
        info!(
            vm = %self.name, ctx_id, pid = client.pid, contexts = ctxs.len(), returned = client.charged,
            used = self.used, "client released"
        );
    }

    /// Every client, e.g. when the frontend disconnects or resets the device.
    pub fn destroy_all_clients(&mut self) {
        let ids: Vec<u32> = self.clients.keys().copied().collect();
        for id in ids {
            self.destroy_client(id);
        }
    }

    /// virtio-gpu SUBMIT_3D: runs one batch and writes its reply.
    pub fn submit(&mut self, mem: &GuestMemory, ctx_id: u32, bytes: &[u8]) -> Result<()> {
        let Some(mut client) = self.clients.remove(&ctx_id) else {
            return Err(Error::HandleNotFound { kind: "virtio-gpu context", id: ctx_id as u64 });
        };
        let arrived = std::time::Instant::now();
        let counters = self.gate.counters().clone();
        counters.queued.store(1, Ordering::Relaxed);
        let r = self.run_batch(mem, ctx_id, &mut client, bytes);
        self.clients.insert(ctx_id, client);
        if std::mem::take(&mut self.batch_waited) {
            counters.record_latency(arrived.elapsed().as_nanos() as u64);
        }
        counters.used_bytes.store(self.used, Ordering::Relaxed);
        counters.clients.store(self.clients.len() as u32, Ordering::Relaxed);
        r
    }

    fn run_batch(&mut self, mem: &GuestMemory, ctx_id: u32, client: &mut Client, bytes: &[u8]) -> Result<()> {
        if let Some(code) = client.lost {
            // Whatever the batch asks, the session's GPU state is gone with
            // the process that held it: answer its sequence number (the one
            // the guest waits on) with the error, and say why.
            let seq = BatchHeader::read_from_prefix(bytes)
                .map(|(h, _)| h.seq.get())
                .unwrap_or(client.last_seq.saturating_add(1));
            client.last_seq = seq;
            debug!(vm = %self.name, ctx_id, seq, code, "batch of a lost session");
            let reply = Reply { status: code, payload: Vec::new() };
            return self.write_reply(mem, ctx_id, client, seq, reply, REPLY_F_SESSION_LOST);
        }
        let mut reply = Reply::ok(Vec::new());
        // A fault noticed between batches (by the grant gate's own queries,
        // or on the GPU's time) fails this batch already.
        self.check_lost();
        let seq = match decode_batch(bytes) {
            Err(e) => {
                warn!(vm = %self.name, ctx_id, "rejected batch: {e}");
                reply.status = CUDA_ERROR_INVALID_VALUE;
                self.gate.counters().record_error(reply.status);
                client.last_seq + 1
            }
            Ok(batch) if batch.seq() != client.last_seq + 1 => {
                let e = Error::OutOfOrder { got: batch.seq(), expected: client.last_seq + 1 };
                warn!(vm = %self.name, ctx_id, "rejected batch: {e}");
                reply.status = e.cu_result();
                self.gate.counters().record_error(reply.status);
                client.last_seq + 1
            }
            Ok(batch) => {
                self.watch_batch(mem, ctx_id, client, batch.seq());
                for cmd in batch.commands() {
                    match cmd {
                        Err(e) => {
                            warn!(vm = %self.name, ctx_id, seq = batch.seq(), "rejected command: {e}");
                            reply = Reply { status: CUDA_ERROR_INVALID_VALUE, payload: Vec::new() };
                            self.gate.counters().record_error(reply.status);
                            break;
                        }
                        Ok(d) => {
                            let op = d.cmd.opcode();
                            if op != Opcode::Hello && is_sync(op, d.flags) {
                                self.batch_waited = true;
                            }
                            // Once the context is lost, every call fails as
                            // natively; a new session still gets its Hello.
                            let result = match self.fault {
                                Some(code) if op != Opcode::Hello => Err(Error::ContextLost(code)),
                                _ => self.execute(mem, ctx_id, client, &d),
                            };
                            match result {
                                Ok(Some(r)) => reply = r,
                                Ok(None) => {}
                                Err(e) => {
                                    let code = e.cu_result();
                                    if is_sticky(code) {
                                        self.check_lost();
                                    }
                                    debug!(vm = %self.name, ctx_id, ?op, code, "request failed: {e}");
                                    // "Not ready" answers a query; it is no error.
                                    if code != CUDA_ERROR_NOT_READY {
                                        self.gate.counters().record_error(code);
                                    }
                                    if is_sync(op, d.flags) {
                                        reply = Reply { status: code, payload: Vec::new() };
                                    } else if client.deferred.is_none() {
                                        client.deferred = Some((code, op));
                                    }
                                }
                            }
                        }
                    }
                }
                batch.seq()
            }
        };
        client.last_seq = seq;
        if let Some(wd) = &self.watchdog {
            wd.batch_done();
        }
        self.write_reply(mem, ctx_id, client, seq, reply, 0)
    }

    /// Tells the watchdog where this batch's reply goes, so that it can
    /// answer it if the batch never ends.
    fn watch_batch(&self, mem: &GuestMemory, ctx_id: u32, client: &Client, seq: u64) {
        let Some(wd) = &self.watchdog else { return };
        // A session's first batch (its Hello) names the buffer; it runs no
        // GPU work.
        let Some(control) = client.control else { return };
        if let Ok(res) = self.resources.for_ctx(control, ctx_id) {
            wd.batch_started(InFlight { mem: mem.clone(), control: res.backing.clone(), seq });
        }
    }

    fn write_reply(
        &self,
        mem: &GuestMemory,
        ctx_id: u32,
        client: &mut Client,
        seq: u64,
        mut reply: Reply,
        flags: u32,
    ) -> Result<()> {
        let Some(control) = client.control else {
            return Err(Error::NoSession);
        };
        let res = self.resources.for_ctx(control, ctx_id)?;
        let cap = res.backing_len().saturating_sub(REPLY_PAYLOAD_OFFSET);
        if reply.payload.len() as u64 > cap {
            reply = Reply { status: CUDA_ERROR_INVALID_VALUE, payload: Vec::new() };
        }
        let (deferred, deferred_op) = client.deferred.take().map(|(c, o)| (c, o as u32)).unwrap_or((0, 0));
        let header = ReplyHeader {
            completed_seq: U64::new(0),
            reply_seq: U64::new(seq),
            status: U32::new(reply.status),
            deferred: U32::new(deferred),
            deferred_opcode: U32::new(deferred_op),
            payload_len: U32::new(reply.payload.len() as u32),
            flags: U32::new(flags),
            _reserved: U32::new(0),
        };
        if !reply.payload.is_empty() {
            let span = self.resources.span(mem, control, ctx_id, REPLY_PAYLOAD_OFFSET, reply.payload.len() as u64)?;
            span.write_from(&reply.payload);
        }
        let hdr_bytes = header.as_bytes();
        let span = self.resources.span(mem, control, ctx_id, 8, (hdr_bytes.len() - 8) as u64)?;
        span.write_from(&hdr_bytes[8..]);
        // completed_seq last, so the guest reads a finished reply.
        let first = self.resources.span(mem, control, ctx_id, 0, 8)?;
        let addr = first.extents()[0].addr;
        std::sync::atomic::fence(Ordering::Release);
        mem.store(seq, addr, Ordering::Release).map_err(|_| Error::InvalidArgument("control buffer unaligned"))?;
        Ok(())
    }

    /// Engine context for guest context `ctx`, created on first use for the
    /// primary context, and made current.
    fn enter_ctx(&mut self, client: &mut Client, ctx: u64) -> Result<EngineCtx> {
        let ectx = match client.contexts.get(ctx) {
            Ok(c) => *c,
            Err(_) if ctx == PRIMARY_CTX => {
                let c = self.engine.ctx_create(0)?;
                client.contexts.insert(PRIMARY_CTX, c)?;
                c
            }
            Err(e) => return Err(e),
        };
        self.engine.ctx_set_current(ectx)?;
        Ok(ectx)
    }

    /// A kernel launch, plain or with a cluster or as a cooperative launch.
    fn launch_kernel(
        &mut self,
        client: &Client,
        ectx: EngineCtx,
        l: &LaunchKernel,
        extra: &LaunchExtra,
        params: &[u8],
    ) -> Result<()> {
        let func = client.functions.get(l.func_id.get())?.engine;
        let stream = Self::stream(client, l.stream.get())?;
        let grid = l.grid.map(|d| d.get());
        check_cluster(grid, extra)?;
        let launch = Launch {
            grid,
            block: l.block.map(|d| d.get()),
            shared_mem: l.shared_mem.get(),
            stream,
            params,
            cluster: extra.cluster(),
            cooperative: extra.cooperative(),
        };
        self.gpu_op(ectx, stream, |e| e.launch(func, &launch))?;
        self.gate.counters().launches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn stream(client: &Client, id: u64) -> Result<EngineStream> {
        match id {
            STREAM_NULL | STREAM_LEGACY | STREAM_PER_THREAD => Ok(EngineStream::NULL),
            _ => Ok(client.streams.get(id)?.engine),
        }
    }

    fn execute(
        &mut self,
        mem: &GuestMemory,
        ctx_id: u32,
        client: &mut Client,
        d: &Decoded<'_>,
    ) -> Result<Option<Reply>> {
        use Command as C;
        let async_flag = d.flags & CMD_FLAG_ASYNC != 0 && d.flags & CMD_FLAG_STAGING == 0;
        if !matches!(d.cmd, C::Hello(_)) && client.control.is_none() {
            return Err(Error::NoSession);
        }
        // Commands that do not run in a guest context.
        match d.cmd {
            C::Hello(h) => return self.hello(mem, ctx_id, client, &h).map(Some),
            C::CtxCreate(c) => {
                let id = c.ctx_id.get();
                client.contexts.check_free(id)?;
                let e = self.engine.ctx_create(c.flags.get())?;
                client.contexts.insert(id, e)?;
                return Ok(Some(Reply::ok(Vec::new())));
            }
            C::CtxDestroy(c) => {
                self.destroy_ctx(client, c.id.get())?;
                return Ok(None);
            }
            C::MemGetInfo => {
                let (phys_free, _) = self.engine.mem_get_info()?;
                let free = self.quota.saturating_sub(self.used).min(phys_free);
                let r = MemGetInfoReply { free: U64::new(free), total: U64::new(self.quota) };
                return Ok(Some(Reply::ok(r.as_bytes().to_vec())));
            }
            _ => {}
        }
        let ectx = self.enter_ctx(client, d.ctx)?;
        if matches!(d.cmd, C::MemFree(_) | C::ModuleUnload(_) | C::EventDestroy(_)) {
            client.epoch += 1;
        }
        match d.cmd {
            C::Hello(_) | C::CtxCreate(_) | C::CtxDestroy(_) | C::MemGetInfo => {
                unreachable!("handled above")
            }
            C::CtxSynchronize => {
                self.engine.ctx_synchronize()?;
                Ok(Some(Reply::ok(Vec::new())))
            }
            C::MemAlloc(m) => {
                let size = m.size.get();
                if size == 0 {
                    return Err(Error::InvalidArgument("zero-byte allocation"));
                }
                let charged = size.checked_next_multiple_of(CHARGE_GRANULE).ok_or(Error::QuotaExceeded {
                    size,
                    used: self.used,
                    quota: self.quota,
                })?;
                if self.used.checked_add(charged).is_none_or(|u| u > self.quota) {
                    return Err(Error::QuotaExceeded { size, used: self.used, quota: self.quota });
                }
                let footprint = self.engine.alloc_footprint(size);
                self.gate.reserve_memory(self.engine.as_mut(), footprint)?;
                let allocated = self.engine.mem_alloc(size);
                self.gate.note_residency(self.engine.residency());
                let dptr = allocated?;
                self.used += charged;
                client.charged += charged;
                client.allocations.insert(dptr, Allocation { size, ctx: d.ctx, freeable: true, charged });
                Ok(Some(Reply::ok(MemAllocReply { dptr: U64::new(dptr) }.as_bytes().to_vec())))
            }
            C::MemFree(m) => {
                let base = m.id.get();
                let a = client.allocations.remove_freeable(base)?;
                self.used = self.used.saturating_sub(a.charged);
                client.charged = client.charged.saturating_sub(a.charged);
                self.scrub(base, a.size);
                let freed = self.engine.mem_free(base);
                self.gate.note_residency(self.engine.residency());
                freed?;
                Ok(None)
            }
            C::MemcpyHtoD(m, inline) => {
                let len = m.len.get();
                client.check_range(m.dst.get(), len)?;
                let stream = Self::stream(client, m.stream.get())?;
                let src = match m.src.kind.get() {
                    HOST_INLINE => HostSrc::Bytes(inline),
                    _ => HostSrc::Guest(self.resources.span(
                        mem,
                        m.src.resource.get(),
                        ctx_id,
                        m.src.offset.get(),
                        len,
                    )?),
                };
                self.gpu_op(ectx, stream, |e| e.memcpy_htod(m.dst.get(), src, stream, async_flag))?;
                self.gate.counters().record_copy(CopyDir::HtoD, len);
                Ok(None)
            }
            C::MemcpyDtoH(m) => {
                let len = m.len.get();
                client.check_range(m.src.get(), len)?;
                let stream = Self::stream(client, m.stream.get())?;
                match m.dst.kind.get() {
                    HOST_INLINE => {
                        let control = client.control.ok_or(Error::NoSession)?;
                        let cap =
                            self.resources.for_ctx(control, ctx_id)?.backing_len().saturating_sub(REPLY_PAYLOAD_OFFSET);
                        if len > cap {
                            return Err(Error::ReplyTooLarge(len));
                        }
                        let mut buf = vec![0u8; len as usize];
                        self.gpu_op(ectx, stream, |e| {
                            e.memcpy_dtoh(HostDst::Bytes(&mut buf), m.src.get(), stream, false)
                        })?;
                        self.gate.counters().record_copy(CopyDir::DtoH, len);
                        Ok(Some(Reply::ok(buf)))
                    }
                    _ => {
                        let span = self.resources.span(mem, m.dst.resource.get(), ctx_id, m.dst.offset.get(), len)?;
                        self.gpu_op(ectx, stream, |e| {
                            e.memcpy_dtoh(HostDst::Guest(span), m.src.get(), stream, async_flag)
                        })?;
                        self.gate.counters().record_copy(CopyDir::DtoH, len);
                        Ok(if async_flag { None } else { Some(Reply::ok(Vec::new())) })
                    }
                }
            }
            C::MemcpyDtoD(m) => {
                let len = m.len.get();
                client.check_range(m.dst.get(), len)?;
                client.check_range(m.src.get(), len)?;
                let stream = Self::stream(client, m.stream.get())?;
                self.gpu_op(ectx, stream, |e| e.memcpy_dtod(m.dst.get(), m.src.get(), len, stream, async_flag))?;
                self.gate.counters().record_copy(CopyDir::DtoD, len);
                Ok(None)
            }
            C::Memset(m) => {
                let bytes = m
                    .count
                    .get()
                    .checked_mul(m.elem_size.get() as u64)
                    .ok_or(Error::InvalidArgument("memset size overflows"))?;
                client.check_range(m.dst.get(), bytes)?;
                let stream = Self::stream(client, m.stream.get())?;
                self.gpu_op(ectx, stream, |e| {
                    e.memset(m.dst.get(), m.value.get(), m.elem_size.get(), m.count.get(), stream, async_flag)
                })?;
                Ok(None)
            }
            C::ModuleLoad(m, image) => {
                let id = m.module_id.get();
                client.modules.check_free(id)?;
                let module = self.engine.module_load(image)?;
                client.modules.insert(id, ModuleEntry { engine: module, ctx: d.ctx, globals: Vec::new() })?;
                Ok(Some(Reply::ok(Vec::new())))
            }
            C::ModuleUnload(m) => {
                let id = m.id.get();
                let entry = client.modules.remove(id)?;
                client.functions.drain_where(|f| f.module == id);
                if entry.ctx != d.ctx {
                    self.engine.ctx_set_current(*client.contexts.get(entry.ctx)?)?;
                }
                for g in entry.globals {
                    if let Some(a) = client.allocations.remove_range(g) {
                        self.scrub(g, a.size);
                    }
                }
                self.engine.module_unload(entry.engine)?;
                Ok(None)
            }
            C::ModuleGetFunction(m, name) => {
                let module = client.modules.get(m.module_id.get())?.engine;
                let fid = m.func_id.get();
                client.functions.check_free(fid)?;
                let (func, fi) = self.engine.module_get_function(module, name)?;
                client.functions.insert(fid, FuncEntry { engine: func, module: m.module_id.get() })?;
                let mut attrs = [I32::new(0); NUM_FUNC_ATTRS];
                for (a, v) in attrs.iter_mut().zip(fi.attrs.iter()) {
                    *a = I32::new(*v);
                }
                let head = FunctionReply {
                    num_params: U32::new(fi.params.len() as u32),
                    param_source: U32::new(fi.param_source),
                    attrs,
                };
                let mut payload = head.as_bytes().to_vec();
                for p in &fi.params {
                    payload.extend_from_slice(p.as_bytes());
                }
                Ok(Some(Reply::ok(payload)))
            }
            C::ModuleGetGlobal(m, name) => {
                let mid = m.module_id.get();
                let module = client.modules.get(mid)?.engine;
                let (dptr, size) = self.engine.module_get_global(module, name)?;
                if client.allocations.check(dptr, size.max(1)).is_err() {
                    client.allocations.insert(dptr, Allocation { size, ctx: d.ctx, freeable: false, charged: 0 });
                    client.modules.get_mut(mid)?.globals.push(dptr);
                }
                Ok(Some(Reply::ok(GlobalReply { dptr: U64::new(dptr), size: U64::new(size) }.as_bytes().to_vec())))
            }
            C::FuncSetAttribute(f) => {
                let func = client.functions.get(f.func_id.get())?.engine;
                self.engine.func_set_attribute(func, f.attr.get(), f.value.get())?;
                Ok(None)
            }
            C::LaunchKernel(l, params) => {
                self.launch_kernel(client, ectx, &l, &LaunchExtra::PLAIN, params).map(|_| None)
            }
            C::LaunchKernelEx(l, params) => self.launch_kernel(client, ectx, &l.launch, &l.extra, params).map(|_| None),
            C::StreamCreate(s) => {
                let id = s.stream_id.get();
                if id <= STREAM_PER_THREAD {
                    return Err(Error::HandleInUse { kind: "stream", id });
                }
                client.streams.check_free(id)?;
                let e = self.engine.stream_create(s.flags.get(), s.priority.get())?;
                client.streams.insert(id, StreamEntry { engine: e, ctx: d.ctx })?;
                Ok(None)
            }
            C::StreamDestroy(s) => {
                let e = client.streams.remove(s.id.get())?;
                self.engine.stream_destroy(e.engine)?;
                Ok(None)
            }
            C::StreamSynchronize(s) => {
                let st = Self::stream(client, s.id.get())?;
                self.engine.stream_synchronize(st)?;
                Ok(Some(Reply::ok(Vec::new())))
            }
            C::StreamQuery(s) => {
                let st = Self::stream(client, s.id.get())?;
                self.engine.stream_query(st)?;
                Ok(Some(Reply::ok(Vec::new())))
            }
            C::StreamWaitEvent(w) => {
                let st = Self::stream(client, w.stream_id.get())?;
                let ev = client.events.get(w.event_id.get())?.engine;
                self.engine.stream_wait_event(st, ev, w.flags.get())?;
                Ok(None)
            }
            C::EventCreate(e) => {
                let id = e.event_id.get();
                client.events.check_free(id)?;
                let ev = self.engine.event_create(e.flags.get())?;
                client.events.insert(id, EventEntry { engine: ev, ctx: d.ctx })?;
                Ok(None)
            }
            C::EventDestroy(e) => {
                let ev = client.events.remove(e.id.get())?;
                self.engine.event_destroy(ev.engine)?;
                Ok(None)
            }
            C::EventRecord(r) => {
                let ev = client.events.get(r.event_id.get())?.engine;
                let st = Self::stream(client, r.stream_id.get())?;
                self.engine.event_record(ev, st)?;
                Ok(None)
            }
            C::EventQuery(e) => {
                let ev = client.events.get(e.id.get())?.engine;
                self.engine.event_query(ev)?;
                Ok(Some(Reply::ok(Vec::new())))
            }
            C::EventSynchronize(e) => {
                let ev = client.events.get(e.id.get())?.engine;
                self.engine.event_synchronize(ev)?;
                Ok(Some(Reply::ok(Vec::new())))
            }
            C::EventElapsedTime(t) => {
                let a = client.events.get(t.start.get())?.engine;
                let b = client.events.get(t.end.get())?.engine;
                let ms = coarsen_ms(self.engine.event_elapsed_ms(a, b)?, self.timer_resolution_ns);
                Ok(Some(Reply::ok(ElapsedReply { ms: F32::new(ms), _pad: U32::new(0) }.as_bytes().to_vec())))
            }
            C::GraphInstantiate(g, body) => self.graph_instantiate(mem, ctx_id, client, d.ctx, &g, &body).map(Some),
            C::GraphExecDestroy(e) => self.graph_exec_destroy(client, e.id.get()).map(|_| None),
            C::GraphLaunch(l) => self.graph_launch(mem, ctx_id, client, ectx, d.ctx, &l).map(|_| None),
            C::GraphExecUpdateNode(u, node) => self.graph_exec_update_node(client, d.ctx, &u, &node).map(|_| None),
            C::Occupancy(o, items) => self.occupancy(client, &o, items).map(Some),
            C::MemGetGranularity
            | C::MemAddressReserve(_)
            | C::MemAddressFree(_)
            | C::MemCreate(_)
            | C::MemRelease(_)
            | C::MemMap(_)
            | C::MemUnmap(_)
            | C::MemSetAccess(_) => self.vmm_command(client, &d.cmd),
            C::MemPoolCreate(_)
            | C::MemPoolDestroy(_)
            | C::MemAllocAsync(_)
            | C::MemFreeAsync(_)
            | C::MemPoolRelease(_) => self.pool_command(client, d),
        }
    }

    fn hello(&mut self, mem: &GuestMemory, ctx_id: u32, client: &mut Client, h: &Hello) -> Result<Reply> {
        if h.protocol_version.get() != PROTOCOL_VERSION {
            return Err(Error::NotSupported("protocol version"));
        }
        let control = h.control_resource.get();
        let res = self.resources.for_ctx(control, ctx_id)?;
        let needed = REPLY_PAYLOAD_OFFSET + core::mem::size_of::<HelloReply>() as u64;
        if res.backing_len() < needed {
            return Err(Error::InvalidArgument("control buffer too small"));
        }
        if let Some(hb) = &self.heartbeat {
            hb.add(ctx_id, control, mem, &res.backing);
        }
        client.control = Some(control);
        client.pid = h.pid.get();
        let (resources, clients) = (&self.resources, &self.clients);
        if let Some(j) = self.journal.as_mut() {
            // `client` is out of the table while its batch runs.
            let rec = journal::Record::Session { ctx_id, control, lost: 0 };
            j.append(&rec, || {
                let mut ctxs = Self::journal_contexts(clients);
                ctxs.insert(ctx_id, journal::Context { capset: client.capset, session: Some((control, 0)) });
                journal::snapshot(resources, &ctxs)
            });
        }
        let mut r = HelloReply {
            protocol_version: U32::new(PROTOCOL_VERSION as u32),
            engine: U32::new(matches!(self.engine.kind(), crate::engine::EngineKind::Cuda) as u32),
            driver_version: U32::new(self.info.driver_version),
            device_count: U32::new(1),
            total_mem: U64::new(self.quota),
            uuid: self.info.uuid,
            ..Default::default()
        };
        let name = self.info.name.as_bytes();
        let n = name.len().min(r.name.len() - 1);
        r.name[..n].copy_from_slice(&name[..n]);
        for (a, v) in r.attrs.iter_mut().zip(self.info.attrs.iter()) {
            *a = I32::new(*v);
        }
        info!(vm = %self.name, ctx_id, pid = client.pid, "guest session opened");
        Ok(Reply::ok(r.as_bytes().to_vec()))
    }

    /// Zeroes device memory the VM gives back (freed, left behind by a
    /// guest process, or a module's globals), so that whoever the device
    /// hands it to next, another guest process or another VM, never sees
    /// its data. The memory's context is current. A context that has faulted
    /// cannot run the memset; its memory goes back unscrubbed and the
    /// failure is logged.
    fn scrub(&mut self, base: u64, size: u64) -> bool {
        if !self.engine.mem_is_resident(base) {
            // Swapped out: its device memory was zeroed when it left.
            return true;
        }
        match self.engine.memset(base, 0, 1, size, EngineStream::NULL, false) {
            Ok(()) => true,
            Err(e) => {
                warn!(vm = %self.name, base, size, "scrubbing freed device memory: {e}");
                false
            }
        }
    }

    /// Scrubs `(base, size)` ranges of engine context `ctx`, made current. A
    /// context that cannot run one memset (it faulted) cannot run the
    /// others either, so the first failure ends it.
    fn scrub_in(&mut self, ctx: EngineCtx, ranges: &[(u64, u64)]) {
        // A lost context runs nothing; its memory is released with the
        // process, which ends.
        if ranges.is_empty() || self.fault.is_some() || self.engine.ctx_set_current(ctx).is_err() {
            return;
        }
        for &(base, size) in ranges {
            if !self.scrub(base, size) {
                break;
            }
        }
    }

    fn destroy_ctx(&mut self, client: &mut Client, id: u64) -> Result<()> {
        let e = client.contexts.remove(id)?;
        client.epoch += 1;
        // The engine destroys the context's graphs with it.
        client.graph_execs.drain_where(|g| g.ctx == id);
        client.streams.drain_where(|s| s.ctx == id);
        client.events.drain_where(|s| s.ctx == id);
        let mods: Vec<u64> = client.modules.drain_where(|m| m.ctx == id).into_iter().map(|(k, _)| k).collect();
        client.functions.drain_where(|f| mods.contains(&f.module));
        let drained = client.allocations.drain_ctx(id);
        let ranges: Vec<(u64, u64)> = drained.iter().map(|(b, a)| (*b, a.size)).collect();
        self.scrub_in(e, &ranges);
        let freed: u64 = drained.iter().map(|(_, a)| a.charged).sum();
        self.used = self.used.saturating_sub(freed);
        client.charged = client.charged.saturating_sub(freed);
        self.gate.forget_ctx(e);
        if let Some(wd) = &self.watchdog {
            wd.forget_ctx(e);
        }
        let destroyed = self.engine.ctx_destroy(e);
        client.pools.forget_ctx(id);
        self.gate.note_residency(self.engine.residency());
        destroyed?;
        Ok(())
    }

    /// Charges `bytes` to the VM's quota on behalf of `client`.
    fn charge(&mut self, client: &mut Client, bytes: u64) -> Result<()> {
        match self.used.checked_add(bytes) {
            Some(used) if used <= self.quota => {
                self.used = used;
                client.charged += bytes;
                Ok(())
            }
            _ => Err(Error::QuotaExceeded { size: bytes, used: self.used, quota: self.quota }),
        }
    }

    /// Returns `bytes` of `client`'s charge to the quota.
    fn uncharge(&mut self, client: &mut Client, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
        client.charged = client.charged.saturating_sub(bytes);
    }
}

/// Checks a launch's cluster against its grid, as the driver does before it
/// launches: the decoder has checked that no dimension is zero and the
/// cluster is not past any GPU's size; the engine checks its device's limit.
fn check_cluster(grid: [u32; 3], extra: &LaunchExtra) -> Result<()> {
    if grid.iter().zip(extra.cluster()).any(|(g, c)| c == 0 || g % c != 0) {
        return Err(Error::BadCluster("the grid is not a multiple of the cluster"));
    }
    Ok(())
}

/// Whether the guest waits for this command's reply. Errors of the others are
/// deferred to the next reply, as CUDA reports asynchronous errors.
fn is_sync(op: Opcode, flags: u16) -> bool {
    use Opcode::*;
    if op == MemcpyDtoH || op == MemAllocAsync {
        return flags & CMD_FLAG_ASYNC == 0;
    }
    matches!(
        op,
        Hello
            | CtxCreate
            | CtxSynchronize
            | MemGetInfo
            | MemAlloc
            | ModuleLoad
            | ModuleGetFunction
            | ModuleGetGlobal
            | StreamSynchronize
            | StreamQuery
            | EventQuery
            | EventSynchronize
            | EventElapsedTime
            | GraphInstantiate
            | Occupancy
            | MemGetGranularity
            | MemAddressReserve
            | MemCreate
            | MemPoolCreate
    )
}

impl From<CuError> for Reply {
    fn from(e: CuError) -> Self {
        Reply { status: e.0, payload: Vec::new() }
    }
}

/// `ms` rounded down to a multiple of `resolution_ns` (0: unchanged).
fn coarsen_ms(ms: f32, resolution_ns: u64) -> f32 {
    if resolution_ns == 0 || !ms.is_finite() {
        return ms;
    }
    let ns = (ms as f64 * 1e6).max(0.0);
    let r = resolution_ns as f64;
    ((ns / r).floor() * r / 1e6) as f32
}
