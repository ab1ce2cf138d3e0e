//! The range check every copy and memset passes: a sequence of inserts,
//! checks, frees and context teardowns on an `AllocationTable`, against a
//! plain list of the same allocations. The table must give the list's
//! answer to every check (a range inside one allocation, a zero-length
//! range at an address inside one) and never panic.
#![no_main]

use gpuvisor_backend::handles::{Allocation, AllocationTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut table = AllocationTable::default();
    let mut model: Vec<(u64, Allocation)> = Vec::new();
    for op in data.chunks_exact(17) {
        let a = u64::from_le_bytes(op[1..9].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(op[9..17].try_into().expect("8 bytes"));
        match op[0] % 4 {
            0 => {
                // Allocations never overlap (the engine hands them out).
                let size = b % (1 << 40) + 1;
                let Some(end) = a.checked_add(size) else { continue };
                if model.iter().any(|(base, x)| a < base + x.size && *base < end) {
                    continue;
                }
                let alloc = Allocation { size, ctx: b & 3, freeable: b & 4 == 0, charged: size };
                table.insert(a, alloc);
                model.push((a, alloc));
            }
            1 => {
                let want = model.iter().any(|(base, x)| {
                    let end = base + x.size;
                    *base <= a && a.checked_add(b).is_some_and(|e| e <= end) && (b > 0 || a < end)
                });
                assert_eq!(table.check(a, b).is_ok(), want, "check({a:#x}, {b:#x}) with {model:?}");
            }
            2 => {
                let i = model.iter().position(|(base, x)| *base == a && x.freeable);
                assert_eq!(table.remove_freeable(a).is_ok(), i.is_some());
                if let Some(i) = i {
                    model.remove(i);
                }
            }
            _ => {
                let ctx = b & 3;
                let mut got: Vec<u64> = table.drain_ctx(ctx).into_iter().map(|(base, _)| base).collect();
                let mut want: Vec<u64> = model.iter().filter(|(_, x)| x.ctx == ctx).map(|(base, _)| *base).collect();
                model.retain(|(_, x)| x.ctx != ctx);
                got.sort_unstable();
                want.sort_unstable();
                assert_eq!(got, want);
            }
        }
        assert_eq!(table.len(), model.len());
    }
});
