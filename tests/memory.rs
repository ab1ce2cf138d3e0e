//! Memory overcommit across VMs: real QEMU guests, real gpuvisor-backends (sim
//! engine) and a real gpuvisord started through `gpuvisor-vm fleet`. The admin
//! tells gpuvisord that the sim GPU has less memory than the VMs' quotas add
//! up to, so the broker must swap descheduled VMs out and back while each
//! guest keeps checking every byte of its data.

use std::time::{Duration, Instant};

use gpuvisor_tests::{after_go, alive, signal, sim_fleet_spec, AdminApi, Daemon, Fleet, Scratch};
use serde_json::{json, Value};

/// Time for every guest to boot (TCG on two host cores) and start its command.
const BOOT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;
/// Each VM's quota, and the sim GPU's memory as the admin sets it: the three
/// quotas add to twice the GPU.
const QUOTA_MIB: u64 = 24;
const GPU_MIB: u64 = 36;

/// A fleet of three sim VMs whose guests fill 16 MiB each with seeded data,
/// then burn GPU time for `secs`, checking all their data every 300 ms. The
/// guests start when the test writes share/go; c waits for share/`c_go`
/// instead.
fn overcommitted_fleet(dir: &Scratch, secs: u32, daemon_args: &[&str], c_go: &str) -> (Fleet, AdminApi) {
    std::fs::create_dir_all(dir.path("share")).unwrap();
    // Each VM's own seed, so that one VM's data showing up in another's
    // buffers would fail the check.
    let cmd = |seed: u32| {
        after_go(&format!(
            "/opt/gpuvisor/tests/gv_mem hold --mib 16 --chunk-mib 2 --seconds {secs} --verify-ms 300 \
             --iters 2000000 --blocks 1 --threads 1 --depth 2 --seed {seed}"
        ))
    };
    let args: Vec<String> = daemon_args.iter().map(|a| format!("{a:?}")).collect();
    let spec = sim_fleet_spec(&dir.0, &cmd(1), &[("a", 1), ("b", 1), ("c", 1)], "share_dir = \"share\"\n").unwrap();
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text = text
        .replace("quota_mib = 256", &format!("quota_mib = {QUOTA_MIB}"))
        .replace("slice_ms = 10\n", &format!("slice_ms = 100\nextra_args = [{}]\n", args.join(", ")));
    for (name, seed) in [("b", 2), ("c", 3)] {
        let mut run = cmd(seed);
        if name == "c" {
            run = run.replace("/mnt/host/go", &format!("/mnt/host/{c_go}"));
        }
        text = text.replace(&format!("name = \"{name}\"\n"), &format!("name = \"{name}\"\nrun = {run:?}\n"));
    }
    std::fs::write(&spec, text).unwrap();
    let fleet = Fleet::start(&spec, &dir.path("run")).unwrap();
    let daemon = fleet.daemon().unwrap();
    let api = AdminApi::new(&daemon.addr, daemon.token_file.as_deref()).unwrap();
    api.patch("/v1/gpus/sim", &json!({"memory_limit_bytes": GPU_MIB * MIB, "overcommit_ratio": 2.0})).unwrap();
    fleet.wait_until_running(&["a", "b", "c"], BOOT).unwrap();
    (fleet, api)
}

fn by_name<'a>(vms: &'a [Value], name: &str) -> &'a Value {
    vms.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no VM {name} in {vms:?}"))
}

/// Each guest's gv_mem result: its data intact at every check.
fn assert_intact(run: &gpuvisor_tests::FleetRun, names: &[&str]) {
    for n in names {
        let vm = run.vm(n);
        let r = vm.gvmem().unwrap_or_else(|e| panic!("{n}: {e}"));
        eprintln!("{n}: {r}");
        assert_eq!(r["ok"], true, "{n}: {r}");
        assert_eq!(r["bad_chunks"], 0, "{n}: {r}");
        assert!(r["verifies"].as_u64().unwrap() >= 5, "{n} checked its data only {r}");
        assert_eq!(vm.code, 0, "{n}: guest exit code");
    }
}

#[test]
fn three_vms_whose_quotas_add_to_twice_the_gpu_keep_all_their_data() {
    let dir = Scratch::new("overcommit");
    let (fleet, api) = overcommitted_fleet(&dir, 20, &["--min-residency-ms", "200"], "go");
    std::fs::write(dir.path("share/go"), "").unwrap();
    std::thread::sleep(Duration::from_secs(12));
    let vms = api.vms().unwrap();
    eprintln!("GET /v1/vms mid-run: {vms:#?}");
    let mut evictions = 0;
    for n in ["a", "b", "c"] {
        let v = by_name(&vms, n);
        assert_eq!(v["quota_bytes"], QUOTA_MIB * MIB, "{n}: {v}");
        evictions += v["evictions"].as_u64().unwrap();
    }
    let figures: Vec<String> = vms
        .iter()
        .map(|v| {
            format!(
                "{}: resident {} limit {} evicted {}",
                v["name"], v["resident_bytes"], v["limit_bytes"], v["evicted_bytes"]
            )
        })
        .collect();
    for v in &vms {
        let (resident, limit) = (v["resident_bytes"].as_u64().unwrap(), v["limit_bytes"].as_u64().unwrap());
        assert!(resident <= limit, "a VM holds more than its limit: {figures:?}");
    }
    let resident: u64 = vms.iter().map(|v| v["resident_bytes"].as_u64().unwrap()).sum();
    assert!(
        resident <= GPU_MIB * MIB,
        "resident bytes add to {resident}, more than the GPU's {GPU_MIB} MiB: {figures:?}"
    );
    assert!(evictions >= 3, "only {evictions} evictions: the VMs did not take turns with their memory");
    let run = fleet.wait(Duration::from_secs(90)).unwrap();
    assert_intact(&run, &["a", "b", "c"]);
    assert_eq!(run.code, 0, "fleet exit code");
}

#[test]
fn a_daemon_killed_mid_overcommit_loses_no_vm_data() {
    let dir = Scratch::new("overcommit-kill");
    let (fleet, api) = overcommitted_fleet(&dir, 25, &["--min-residency-ms", "200"], "go");
    let daemon = fleet.daemon().unwrap();
    std::fs::write(dir.path("share/go"), "").unwrap();
    // Kill it while the VMs are swapping in turns (some hold data in host RAM).
    let t = Instant::now();
    loop {
        let vms = api.vms().unwrap();
        if vms.iter().any(|v| v["evicted_bytes"].as_u64().unwrap_or(0) > 0) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no VM was ever evicted: {vms:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(daemon.pid, libc::SIGKILL);
    while alive(daemon.pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Started again the way the fleet started it; the backends come back.
    let restarted = Daemon::start(&daemon.socket, &daemon.addr, &dir.path("state"), &dir.path("daemon2.log")).unwrap();
    let t = Instant::now();
    loop {
        match api.vms() {
            Ok(vms) if vms.iter().filter(|v| v["connected"] == true).count() == 3 => break,
            _ => assert!(t.elapsed() < Duration::from_secs(20), "the backends did not come back"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = fleet.wait(Duration::from_secs(90)).unwrap();
    assert_intact(&run, &["a", "b", "c"]);
    drop(restarted);
}

#[test]
fn a_backend_killed_while_its_vm_is_swapped_out_leaves_the_other_vms_data_intact() {
    let dir = Scratch::new("overcommit-killvm");
    let (fleet, api) = overcommitted_fleet(&dir, 20, &["--min-residency-ms", "200"], "go");
    std::fs::write(dir.path("share/go"), "").unwrap();
    // Wait until c has memory in host RAM, then kill its backend.
    let t = Instant::now();
    let pid = loop {
        let vms = api.vms().unwrap();
        let c = by_name(&vms, "c");
        if c["evicted_bytes"].as_u64().unwrap_or(0) > 0 {
            break c["pid"].as_i64().expect("c's backend pid") as i32;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "c was never evicted: {vms:#?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(pid, libc::SIGKILL);
    let run = fleet.wait(Duration::from_secs(120)).unwrap();
    assert_intact(&run, &["a", "b"]);
    // c lost its GPU: whatever its guest saw, it was not its data changed.
    let c = run.vm("c");
    if let Ok(r) = c.gvmem() {
        assert_eq!(r["bad_chunks"].as_u64().unwrap_or(0), 0, "c: {r}");
        assert_ne!(r["ok"], true, "c finished as if its backend had not died: {r}");
    }
}

#[test]
fn with_host_ram_for_evicted_memory_used_up_only_the_vm_that_asks_gets_out_of_memory() {
    let dir = Scratch::new("overcommit-noram");
    // No host RAM for evicted memory: no VM can be swapped out, so once a and
    // b hold their 16 MiB each the GPU has 4 MiB left and c's allocations
    // must fail. (Started together, the three would split the GPU and more
    // than one could be refused: each asked for memory nobody could free.)
    let (fleet, api) = overcommitted_fleet(&dir, 8, &["--swap-limit-mib", "0"], "go-c");
    std::fs::write(dir.path("share/go"), "").unwrap();
    let t = Instant::now();
    loop {
        let vms = api.vms().unwrap();
        if ["a", "b"].iter().all(|n| by_name(&vms, n)["resident_bytes"].as_u64().unwrap_or(0) >= 16 * MIB) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "a and b never held their memory: {vms:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(dir.path("share/go-c"), "").unwrap();
    let run = fleet.wait(Duration::from_secs(120)).unwrap();
    let mut denied = Vec::new();
    for n in ["a", "b", "c"] {
        let vm = run.vm(n);
        let r = vm.gvmem().unwrap_or_else(|e| panic!("{n}: {e}"));
        eprintln!("{n}: {r}");
        if r["ok"] == true {
            assert_eq!(r["bad_chunks"], 0, "{n}: {r}");
            assert_eq!(vm.code, 0, "{n}: guest exit code");
        } else {
            assert_eq!(r["error"], "CUDA_ERROR_OUT_OF_MEMORY", "{n}: {r}");
            assert_eq!(r["call"], "cuMemAlloc", "{n}: {r}");
            denied.push(n);
        }
    }
    assert_eq!(denied, ["c"], "only the VM that asked last finds no memory");
}
