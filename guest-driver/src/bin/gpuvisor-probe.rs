//! gpuvisor-probe: talks to the backend through the guest driver's session
//! to check what no CUDA program can reach: malformed command buffers,
//! lengths past the end of buffers, unknown handles, and a process killed in
//! the middle of its work. Runs inside a VM (virtio transport) or on the host
//! (GPUVISOR_TRANSPORT=direct:<socket>).
//!
//!   gpuvisor-probe bad-input        malformed requests each get a CUDA error
//!   gpuvisor-probe hog <MiB>        allocate, then keep the GPU busy until killed
//!   gpuvisor-probe meminfo [--expect-all-free]
//!   gpuvisor-probe unsupported -- <program> [args]
//!                                   run a program, then list the entry points
//!                                   gpuvisor does not implement that it called

use ::cuda::client::{self, Client};
use protocol::cuda::*;
use protocol::*;
use zerocopy::little_endian::{U32, U64};
use zerocopy::FromBytes;

fn check(name: &str, ok: bool, detail: String) -> bool {
    println!("CHECK probe.{name}: {} {detail}", if ok { "PASS" } else { "FAIL" });
    ok
}

fn name(code: CuResult) -> &'static str {
    error_name(code).unwrap_or("unknown")
}

fn meminfo(c: &Client) -> Result<(u64, u64), CuResult> {
    let r = c.call(Opcode::MemGetInfo, 0, PRIMARY_CTX, &[0u8; 0], &[])?;
    let m = MemGetInfoReply::read_from_prefix(&r).map_err(|_| CUDA_ERROR_UNKNOWN)?.0;
    Ok((m.free.get(), m.total.get()))
}

/// A healthy request after a bad one: the backend must still serve.
fn still_serves(c: &Client, after: &str) -> bool {
    let r = meminfo(c);
    check(&format!("serves_after_{after}"), r.is_ok(), format!("MemGetInfo -> {}", name(r.err().unwrap_or(0))))
}

fn raw_batch(c: &Client, build: impl FnOnce(&mut BatchWriter)) -> Vec<u8> {
    let _ = c.flush();
    let mut w = BatchWriter::new();
    // The sequence number is filled in by the position the batch takes.
    w.begin(0);
    build(&mut w);
    w.finish().to_vec()
}

fn expect(c: &Client, what: &str, bytes: &[u8], want: CuResult, seq_fix: bool) -> bool {
    let mut b = bytes.to_vec();
    if seq_fix && b.len() >= 16 {
        // Take the next sequence number, as a real batch would.
        let next = c.next_seq();
        b[8..16].copy_from_slice(&next.to_le_bytes());
    }
    let got = c.submit_raw(&b);
    let ok = got == Ok(want);
    check(what, ok, format!("-> {}", got.map(name).unwrap_or_else(name))) & still_serves(c, what)
}

fn bad_input(c: &Client) -> bool {
    let mut ok = true;
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let garbage: Vec<u8> = (0..512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    ok &= expect(c, "garbage_buffer", &garbage, CUDA_ERROR_INVALID_VALUE, false);
    // A valid header whose command claims more bytes than the batch holds.
    let mut b = raw_batch(c, |w| {
        w.push(Opcode::MemAlloc, 0, PRIMARY_CTX, &MemAlloc { size: U64::new(64) }, &[]);
    });
    let hdr = core::mem::size_of::<BatchHeader>();
    b[hdr + 4..hdr + 8].copy_from_slice(&4096u32.to_le_bytes());
    ok &= expect(c, "command_length_past_end", &b, CUDA_ERROR_INVALID_VALUE, true);
    // A copy reaching past the end of the control buffer.
    let (control, control_len) = c.control_buffer();
    let alloc = c.call(Opcode::MemAlloc, 0, PRIMARY_CTX, &MemAlloc { size: U64::new(4096) }, &[]);
    let dptr = alloc.ok().and_then(|r| MemAllocReply::read_from_prefix(&r).ok().map(|m| m.0.dptr.get()));
    ok &= check("alloc_for_probe", dptr.is_some(), String::new());
    let dptr = dptr.unwrap_or(0);
    let m = MemcpyDtoH {
        src: U64::new(dptr),
        len: U64::new(4096),
        stream: U64::new(0),
        dst: HostRef {
            kind: U32::new(HOST_RESOURCE),
            resource: U32::new(control),
            offset: U64::new(control_len as u64 - 100),
        },
    };
    let b = raw_batch(c, |w| w.push(Opcode::MemcpyDtoH, 0, PRIMARY_CTX, &m, &[]));
    ok &= expect(c, "buffer_length_past_end", &b, CUDA_ERROR_INVALID_VALUE, true);
    // A device range crossing the end of its allocation.
    let m = MemcpyDtoH {
        src: U64::new(dptr + 4000),
        len: U64::new(200),
        stream: U64::new(0),
        dst: HostRef { kind: U32::new(HOST_INLINE), ..Default::default() },
    };
    let b = raw_batch(c, |w| w.push(Opcode::MemcpyDtoH, 0, PRIMARY_CTX, &m, &[]));
    ok &= expect(c, "device_range_past_allocation", &b, CUDA_ERROR_INVALID_VALUE, true);
    // Unknown and freed handles.
    let b = raw_batch(c, |w| w.push(Opcode::StreamSynchronize, 0, PRIMARY_CTX, &Id { id: U64::new(0xdead_beef) }, &[]));
    ok &= expect(c, "unknown_stream", &b, CUDA_ERROR_INVALID_HANDLE, true);
    let b = raw_batch(c, |w| {
        w.push(
            Opcode::EventCreate,
            0,
            PRIMARY_CTX,
            &EventCreate { event_id: U64::new(0x7777), ..Default::default() },
            &[],
        );
        w.push(Opcode::EventDestroy, 0, PRIMARY_CTX, &Id { id: U64::new(0x7777) }, &[]);
        w.push(Opcode::EventQuery, 0, PRIMARY_CTX, &Id { id: U64::new(0x7777) }, &[]);
    });
    ok &= expect(c, "freed_event", &b, CUDA_ERROR_INVALID_HANDLE, true);
    // A resource that does not exist.
    let m = MemcpyDtoH {
        src: U64::new(dptr),
        len: U64::new(16),
        stream: U64::new(0),
        dst: HostRef { kind: U32::new(HOST_RESOURCE), resource: U32::new(0x00ff_fff0), offset: U64::new(0) },
    };
    let b = raw_batch(c, |w| w.push(Opcode::MemcpyDtoH, 0, PRIMARY_CTX, &m, &[]));
    ok &= expect(c, "unknown_resource", &b, CUDA_ERROR_INVALID_VALUE, true);
    // More memory than the quota.
    let (_, total) = meminfo(c).unwrap_or((0, 0));
    let r = c.call(Opcode::MemAlloc, 0, PRIMARY_CTX, &MemAlloc { size: U64::new(total + 1) }, &[]);
    let got = r.err().unwrap_or(CUDA_SUCCESS);
    ok &= check("alloc_past_quota", got == CUDA_ERROR_OUT_OF_MEMORY, format!("-> {}", name(got)));
    ok &= still_serves(c, "alloc_past_quota");
    ok
}

fn hog(c: &Client, mib: u64) -> Result<(), CuResult> {
    let r = c.call(Opcode::MemAlloc, 0, PRIMARY_CTX, &MemAlloc { size: U64::new(mib << 20) }, &[])?;
    let dptr = MemAllocReply::read_from_prefix(&r).map_err(|_| CUDA_ERROR_UNKNOWN)?.0.dptr.get();
    let s = StreamCreate { stream_id: U64::new(0x4000), ..Default::default() };
    c.enqueue(Opcode::StreamCreate, 0, PRIMARY_CTX, &s, &[])?;
    println!("hog: holding {mib} MiB at {dptr:#x}; working until killed");
    let mut i: u32 = 0;
    loop {
        let m = Memset {
            dst: U64::new(dptr),
            count: U64::new((mib << 20) / 4),
            stream: U64::new(0x4000),
            value: U32::new(i),
            elem_size: U32::new(4),
        };
        c.enqueue(Opcode::Memset, CMD_FLAG_ASYNC, PRIMARY_CTX, &m, &[])?;
        i = i.wrapping_add(1);
        if i & 63 == 0 {
            c.sync_call(Opcode::StreamSynchronize, 0, PRIMARY_CTX, &Id { id: U64::new(0x4000) })?;
        }
    }
}

/// Runs `cmd` with the guest driver's unsupported-call report switched on
/// (`GPUVISOR_UNSUPPORTED_REPORT`), then prints the entry points it called
/// that gpuvisor does not implement, most called first. Returns the
/// program's exit status.
fn unsupported(cmd: &[String]) -> i32 {
    use ::cuda::unsupported_calls::{from_json, REPORT_ENV};
    let Some((program, args)) = cmd.split_first() else {
        eprintln!("usage: gpuvisor-probe unsupported -- <program> [args]");
        return 2;
    };
    // This process links the driver too; only the program's report counts.
    std::env::remove_var(REPORT_ENV);
    let report = std::env::temp_dir().join(format!("gpuvisor-unsupported-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&report);
    let status = match std::process::Command::new(program).args(args).env(REPORT_ENV, &report).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gpuvisor-probe: cannot run {program}: {e}");
            return 127;
        }
    };
    let text = std::fs::read_to_string(&report);
    let _ = std::fs::remove_file(&report);
    let Some(mut entries) = text.ok().as_deref().and_then(from_json) else {
        eprintln!(
            "gpuvisor-probe: {program} left no report: it did not load gpuvisor's libcuda.so.1, \
             or it did not exit normally ({status})"
        );
        return status.code().unwrap_or(1).max(1);
    };
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    match entries.len() {
        0 => println!("gpuvisor-probe: {program} called no unimplemented entry point"),
        n => {
            println!("gpuvisor-probe: {program} called {n} unimplemented entry point(s) (calls, name):");
            for (name, calls) in &entries {
                println!("{calls:>8}  {name}");
            }
        }
    }
    status.code().unwrap_or(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("unsupported") {
        let rest = match args.get(2).map(String::as_str) {
            Some("--") => &args[3..],
            _ => &args[2..],
        };
        std::process::exit(unsupported(rest));
    }
    let c = match client::get() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpuvisor-probe: no gpuvisor device ({})", name(e));
            std::process::exit(2);
        }
    };
    let ok = match args.get(1).map(String::as_str) {
        Some("bad-input") => bad_input(c),
        Some("hog") => {
            let mib = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(256);
            hog(c, mib).is_ok()
        }
        Some("meminfo") => match meminfo(c) {
            Ok((free, total)) => {
                println!("INFO probe: free {} MiB of {} MiB", free >> 20, total >> 20);
                if args.iter().any(|a| a == "--expect-all-free") {
                    check("all_memory_free", free == total, format!("free {} of {} MiB", free >> 20, total >> 20))
                } else {
                    true
                }
            }
            Err(e) => check("meminfo", false, name(e).to_string()),
        },
        _ => {
            eprintln!(
                "usage: gpuvisor-probe bad-input | hog <MiB> | meminfo [--expect-all-free] \
                 | unsupported -- <program> [args]"
            );
            std::process::exit(2);
        }
    };
    std::process::exit(if ok { 0 } else { 1 });
}
