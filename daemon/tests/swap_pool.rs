//! gpuvisord's swap pool, served by the real gpuvisord binary, with the
//! backend's own pool client. The descriptors are memfds here, standing in
//! for the driver's exported chunks: the pool never looks inside them, and
//! the import side needs a GPU (proven by scripts/h100/memory.sh with
//! SWAP_POOL_MIB).

mod common;

use common::{scratch, spawn_gpuvisord};
use gpuvisor_backend::engine::swap_pool::PoolLink;
use gpuvisord::swap_pool::CHUNK_BYTES;
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// gpuvisord (sim NVML) with a pool of `chunks` chunks, or none for 0.
struct Daemon {
    child: Child,
    pool: PathBuf,
    /// The admin API (no token: --no-auth).
    admin: gpuvisor_admin::Client,
}

impl Daemon {
    fn start(name: &str, chunks: u64) -> Daemon {
        Daemon::start_in(&scratch(&format!("pool-{name}")), chunks, &[])
    }

    /// The same in `dir` (its socket there: a second daemon in the same
    /// directory takes the first one's place).
    fn start_in(dir: &std::path::Path, chunks: u64, more: &[&str]) -> Daemon {
        let nvml = dir.join("nvml.json");
        std::fs::write(
            &nvml,
            r#"{"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5a1e0000-0000-4000-8000-000000000001",
                "memory_total_mib": 81559, "pci_bus_id": "00000000:01:00.0"}]}"#,
        )
        .unwrap();
        let socket = dir.join("gpuvisord.sock");
        let mib = ((chunks * CHUNK_BYTES) >> 20).to_string();
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let state = dir.join(format!("state-{}", STARTED.fetch_add(1, Ordering::Relaxed)));
        let mut args = vec!["--no-auth", "--swap-pool-mib", &mib];
        args.extend_from_slice(more);
        let (child, line) = spawn_gpuvisord(&socket, &state, &nvml, &args);
        let admin = gpuvisor_admin::Client::new(common::admin_url(&line), None);
        Daemon { child, pool: protocol::swap_pool::pool_socket_path(&socket), admin }
    }

    fn connect(&self) -> std::sync::Arc<PoolLink> {
        PoolLink::connect(&self.pool, CHUNK_BYTES, false).expect("the pool answers")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A memfd whose first byte is `tag`, standing in for a chunk.
fn chunk(tag: u8) -> File {
    let name = std::ffi::CString::new(format!("gv-pool-chunk-{tag}")).unwrap();
    // SAFETY: a valid name; the new descriptor is owned once below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: just created.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(&[tag]).unwrap();
    f
}

fn tag(f: &File) -> u8 {
    let mut b = [0u8];
    f.read_exact_at(&mut b, 0).unwrap();
    b[0]
}

#[test]
fn chunks_one_backend_makes_go_to_another_and_never_to_two_at_once() {
    let d = Daemon::start("share", 4);
    let a = d.connect();
    let (none, grow, _) = a.lease(0);
    assert!(none.is_empty());
    assert_eq!(grow, 4, "an empty pool asks for its whole size");
    a.donate(&[chunk(1), chunk(2), chunk(3)]);
    // Answered in order on a's connection: the donation is in.
    assert_eq!(a.lease(0).1, 1, "one more chunk wanted");

    let b = d.connect();
    let (got, _, generation) = b.lease(8);
    let mut tags: Vec<u8> = got.iter().map(|(_, f)| tag(f)).collect();
    tags.sort();
    assert_eq!(tags, vec![1, 2, 3], "the chunks a made, each its own memory");
    assert!(a.lease(8).0.is_empty(), "all leased: nothing for a");

    let (id, f) = &got[0];
    b.give_back(*id, generation);
    b.lease(0); // answered after the give-back on b's connection
    let (again, _, _) = a.lease(8);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].0, tag(&again[0].1)), (*id, tag(f)), "the chunk b gave back, and only it");
}

#[test]
fn chunks_of_a_closed_connection_stay_out_while_its_process_lives() {
    let d = Daemon::start("held", 4);
    let a = d.connect();
    a.donate(&[chunk(1), chunk(2)]);
    a.lease(0);
    let b = d.connect();
    assert_eq!(b.lease(2).0.len(), 2);
    drop(b); // this process still lives, and might still use them
    let c = d.connect();
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert!(c.lease(2).0.is_empty(), "a chunk was handed on while its holder lived");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_backend_uses_no_pool_where_there_is_none_or_its_chunks_differ() {
    let d = Daemon::start("size", 2);
    assert!(PoolLink::connect(&d.pool, CHUNK_BYTES * 2, false).is_none(), "chunks of another size");
    let dir = scratch("pool-none");
    assert!(PoolLink::connect(&dir.join("gpuvisord.sock.pool"), CHUNK_BYTES, false).is_none(), "no pool socket");
}

#[test]
fn after_gpuvisord_restarts_a_backend_leases_from_the_new_pool_and_gives_the_old_one_s_chunks_to_no_one() {
    let dir = scratch("pool-restart");
    let first = Daemon::start_in(&dir, 4, &[]);
    let a = first.connect();
    a.donate(&[chunk(1)]);
    let (old, _, old_generation) = a.lease(1);
    assert_eq!(old.len(), 1);
    drop(first); // killed: the backend keeps its import of the old chunk

    let second = Daemon::start_in(&dir, 4, &[]);
    assert!(a.lease(1).0.is_empty(), "the broken connection gives nothing");
    // Reconnection is tried a while after the break.
    std::thread::sleep(Duration::from_millis(5200));
    let (none, grow, generation) = a.lease(0);
    assert!(none.is_empty());
    assert_eq!(grow, 4, "connected to the new, empty pool");
    assert_ne!(generation, old_generation);
    a.donate(&[chunk(7)]);
    let (new, _, _) = a.lease(1);
    assert_eq!(new.len(), 1);
    assert_eq!(tag(&new[0].1), 7);
    assert_eq!(new[0].0, old[0].0, "the new pool numbers its chunks afresh: the same id");

    // Giving back the old pool's chunk must not free the new pool's chunk
    // of the same id, which this backend still holds.
    a.give_back(old[0].0, old_generation);
    a.lease(0);
    let b = second.connect();
    assert!(b.lease(1).0.is_empty(), "a chunk still held was handed on");
}

#[test]
fn a_pool_larger_than_the_swap_limit_is_cut_to_it() {
    let limit_mib = ((3 * CHUNK_BYTES) >> 20).to_string();
    let d = Daemon::start_in(&scratch("pool-cut"), 8, &["--swap-limit-mib", &limit_mib]);
    assert_eq!(d.connect().lease(0).1, 3, "three chunks fit the swap limit");
}

#[test]
fn a_backend_that_keeps_its_maps_still_gives_chunks_back_and_reuses_a_map_only_for_the_same_pool_s_chunk() {
    let dir = scratch("pool-keep");
    let first = Daemon::start_in(&dir, 4, &[]);
    let a = PoolLink::connect(&first.pool, CHUNK_BYTES, true).expect("the pool answers");
    a.donate(&[chunk(1)]);
    let (got, _, generation) = a.lease(1);
    let id = got[0].0;
    let mapping = (0x7000_0000, 11);
    assert_eq!(a.give_back_mapped(id, generation, mapping), Ok(None), "kept: nothing for the caller to unmap");

    // It is back in the pool: another backend gets it.
    a.lease(0);
    let b = first.connect();
    let (theirs, _, b_generation) = b.lease(1);
    assert_eq!(theirs.len(), 1, "the chunk went back although its map stayed");
    assert_eq!(
        b.give_back_mapped(theirs[0].0, b_generation, (0x9000_0000, 22)),
        Err((0x9000_0000, 22)),
        "a backend that keeps no maps unmaps them itself"
    );
    b.give_back(theirs[0].0, b_generation);
    b.lease(0);

    let (again, _, g) = a.lease(1);
    assert_eq!((again[0].0, g), (id, generation));
    assert_eq!(a.take_kept(id, g), Some(mapping), "leased again: its map is used as it is");
    assert_eq!(a.give_back_mapped(id, g, mapping), Ok(None));

    // gpuvisord restarts: the new pool's chunk of the same id is another chunk.
    drop(first);
    let _second = Daemon::start_in(&dir, 4, &[]);
    assert!(a.lease(1).0.is_empty(), "the broken connection gives nothing");
    std::thread::sleep(Duration::from_millis(5200));
    a.donate(&[chunk(2)]);
    let (new, _, new_generation) = a.lease(1);
    assert_eq!((new[0].0, tag(&new[0].1)), (id, 2));
    assert_eq!(a.take_kept(id, new_generation), None, "the old pool's map is not the new chunk's");
    assert_eq!(a.stale_maps(), vec![mapping], "the old pool's map comes back to be unmapped");
    assert!(a.drain_kept().is_empty());
}

#[test]
fn the_admin_sees_the_pool_s_size_and_what_is_free_leased_and_held() {
    let d = Daemon::start("admin", 4);
    let pool = |d: &Daemon| d.admin.gpus().unwrap()[0].swap_pool.expect("a pool in the GPU's view");
    let p = pool(&d);
    assert_eq!((p.limit_bytes, p.free_bytes, p.leased_bytes), (4 * CHUNK_BYTES, 0, 0), "empty: {p:?}");
    let limit = d.admin.gpus().unwrap()[0].swap_limit_bytes;
    assert_eq!(limit, 4 * CHUNK_BYTES, "evicted memory lives in the pool: its size is the swap limit");
    let a = d.connect();
    a.donate(&[chunk(1), chunk(2), chunk(3)]);
    let (got, _, _) = a.lease(2);
    assert_eq!(got.len(), 2);
    let p = pool(&d);
    assert_eq!((p.free_bytes, p.leased_bytes, p.held_bytes), (CHUNK_BYTES, 2 * CHUNK_BYTES, 0), "{p:?}");
    // The connection closes while this process lives: its chunks are held.
    drop(a);
    let until = Instant::now() + Duration::from_secs(5);
    while pool(&d).held_bytes != 2 * CHUNK_BYTES {
        assert!(Instant::now() < until, "never held: {:?}", pool(&d));
        std::thread::sleep(Duration::from_millis(20));
    }

    let none = Daemon::start("admin-none", 0);
    let g = &none.admin.gpus().unwrap()[0];
    assert_eq!(g.swap_pool, None, "no pool, none in the view");
    assert!(g.swap_limit_bytes > 4 * CHUNK_BYTES, "no pool, the default swap limit (half the host's RAM)");
}
