//! gpuvisord's swap pool, served by the real gpuvisord binary, with the
//! backend's own lease client: extents keep their pages across leases, come
//! back zeroed, and never reach another backend while the one that gave them
//! back still maps them.

mod common;

use common::{scratch, spawn_gpuvisord};
use gpuvisor_backend::engine::extent_lease::{Lease, Lender};
use gpuvisord::swap_pool::EXTENT_BYTES;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

const EXTENT: u64 = EXTENT_BYTES;

/// gpuvisord (sim NVML, one GPU) with a pool of `extents` extents; its pool
/// socket.
struct Pool {
    child: Child,
    path: PathBuf,
}

impl Pool {
    fn start(name: &str, extents: u64) -> Pool {
        let dir = scratch(&format!("pool-{name}"));
        let nvml = dir.join("nvml.json");
        std::fs::write(
            &nvml,
            r#"{"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5a1e0000-0000-4000-8000-000000000001",
                "memory_total_mib": 81559, "pci_bus_id": "00000000:01:00.0"}]}"#,
        )
        .unwrap();
        let socket = dir.join("gpuvisord.sock");
        let mib = ((extents * EXTENT) >> 20).to_string();
        let (child, _) = spawn_gpuvisord(&socket, &dir.join("state"), &nvml, &["--no-auth", "--swap-pool-mib", &mib]);
        Pool { child, path: protocol::swap_pool::pool_socket_path(&socket) }
    }

    fn lender(&self) -> Lender {
        Lender::new(self.path.clone(), EXTENT)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shared writable mapping of a leased extent.
struct Mapped {
    addr: *mut u8,
}

impl Mapped {
    fn of(lease: &Lease) -> Mapped {
        // SAFETY: a new shared mapping of the extent's EXTENT bytes.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                EXTENT as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                lease.file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        Mapped { addr: addr.cast() }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is EXTENT bytes long and lives until drop.
        unsafe { std::slice::from_raw_parts(self.addr, EXTENT as usize) }
    }

    fn fill(&self, byte: u8) {
        // SAFETY: as above; the test writes through no other reference.
        unsafe { std::ptr::write_bytes(self.addr, byte, EXTENT as usize) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`.
        unsafe { libc::munmap(self.addr.cast(), EXTENT as usize) };
    }
}

/// Leases until `want` extents come, or panics after a few seconds.
fn lease_eventually(lender: &mut Lender, want: usize) -> Vec<Lease> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < want {
        got.extend(lender.lease(want - got.len()));
        assert!(Instant::now() < deadline, "only {} of {want} extents came", got.len());
        std::thread::sleep(Duration::from_millis(20));
    }
    got
}

#[test]
fn a_returned_extent_comes_to_the_next_backend_made_and_zeroed() {
    let pool = Pool::start("zeroed", 2);
    let mut a = pool.lender();
    let leases = a.lease(3);
    assert_eq!(leases.len(), 2, "the cap is two extents");
    assert!(leases.iter().all(|l| !l.made));
    for l in &leases {
        Mapped::of(l).fill(0xA5);
    }
    let ids: Vec<u32> = leases.iter().map(|l| l.id).collect();
    let generation = leases[0].generation;
    drop(leases); // descriptors closed, mappings gone: nothing of them held
    a.returner().give_back(generation, &ids);

    let mut b = pool.lender();
    let got = lease_eventually(&mut b, 2);
    let mut got_ids: Vec<u32> = got.iter().map(|l| l.id).collect();
    got_ids.sort();
    assert_eq!(got_ids, ids, "the same extents, no new ones");
    for l in &got {
        assert!(l.made, "its pages exist");
        assert!(Mapped::of(l).bytes().iter().all(|&b| b == 0), "no byte of the other backend's data");
    }
}

#[test]
fn an_extent_still_mapped_by_the_backend_that_gave_it_back_goes_to_nobody_else() {
    let pool = Pool::start("held", 1);
    let mut a = pool.lender();
    let lease = a.lease(1).pop().expect("one extent");
    let map = Mapped::of(&lease);
    map.fill(0x5A);
    let (id, generation) = (lease.id, lease.generation);
    drop(lease); // the descriptor is closed, but the mapping stays
    a.returner().give_back(generation, &[id]);

    let mut b = pool.lender();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        assert!(b.lease(1).is_empty(), "the extent went to another backend while still mapped");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(map.bytes().iter().all(|&b| b == 0x5A), "nobody zeroed it under its holder either");

    drop(map);
    let got = lease_eventually(&mut b, 1);
    assert_eq!(got[0].id, id);
    assert!(Mapped::of(&got[0]).bytes().iter().all(|&b| b == 0), "zeroed once let go");
}

#[test]
fn an_extent_whose_descriptor_is_kept_goes_to_nobody_else() {
    let pool = Pool::start("fd", 1);
    let mut a = pool.lender();
    let lease = a.lease(1).pop().expect("one extent");
    Mapped::of(&lease).fill(0x11);
    let kept = lease.file.try_clone().unwrap();
    let (id, generation) = (lease.id, lease.generation);
    drop(lease);
    a.returner().give_back(generation, &[id]);

    let mut b = pool.lender();
    std::thread::sleep(Duration::from_millis(300));
    assert!(b.lease(1).is_empty(), "the extent went to another backend while its descriptor was open");
    drop(kept);
    let got = lease_eventually(&mut b, 1);
    assert!(Mapped::of(&got[0]).bytes().iter().all(|&b| b == 0));
}

#[test]
fn a_backend_that_goes_away_leaves_its_extents_to_the_others() {
    let pool = Pool::start("gone", 1);
    let mut a = pool.lender();
    let lease = a.lease(1).pop().expect("one extent");
    Mapped::of(&lease).fill(0x77);
    let id = lease.id;
    drop(lease);
    drop(a); // connection closed without a give-back

    let mut b = pool.lender();
    let got = lease_eventually(&mut b, 1);
    assert_eq!(got[0].id, id);
    assert!(Mapped::of(&got[0]).bytes().iter().all(|&b| b == 0));
}

#[test]
fn a_backend_cannot_give_back_what_another_leases() {
    let pool = Pool::start("foreign", 1);
    let mut a = pool.lender();
    let lease = a.lease(1).pop().expect("one extent");
    let map = Mapped::of(&lease);
    map.fill(0x33);

    let mut b = pool.lender();
    assert!(b.lease(1).is_empty());
    b.returner().give_back(lease.generation, &[lease.id]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(b.lease(1).is_empty(), "b freed a's extent");
    assert!(map.bytes().iter().all(|&b| b == 0x33), "a's data was not touched");
}
