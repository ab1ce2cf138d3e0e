//! One simulated GPU shared by several `sim` backends: a file every backend
//! naming it maps, holding the time (CLOCK_MONOTONIC, which all processes
//! share) until which the simulated GPU is busy. A kernel starts no earlier
//! than that and pushes it on, so kernels of different processes take turns
//! as on one real GPU, and time slicing between VMs shows in their
//! throughput, as it does on hardware. Without it each backend simulates a
//! GPU of its own.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The mapped busy-until word and the clock it is kept in.
pub struct SharedTimeline {
    word: *const AtomicU64,
    /// An instant and the same moment in CLOCK_MONOTONIC nanoseconds, to
    /// convert between the two.
    anchor: (Instant, u64),
}

// SAFETY: the mapping stays valid for the value's life and is only touched
// through the atomic, which is Sync.
unsafe impl Send for SharedTimeline {}
// SAFETY: as above.
unsafe impl Sync for SharedTimeline {}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

impl SharedTimeline {
    /// Maps `path` (created, 8 bytes, if missing).
    pub fn open(path: &Path) -> std::io::Result<SharedTimeline> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if file.metadata()?.len() < 8 {
            file.set_len(8)?;
        }
        // SAFETY: a fresh shared mapping of 8 bytes of a file we opened for
        // reading and writing; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // The mapping outlives the descriptor, which closes here.
        let anchor = (Instant::now(), monotonic_ns());
        Ok(SharedTimeline { word: p.cast(), anchor })
    }

    fn to_ns(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.anchor.0) {
            Some(d) => self.anchor.1.saturating_add(d.as_nanos() as u64),
            None => self.anchor.1.saturating_sub(self.anchor.0.duration_since(t).as_nanos() as u64),
        }
    }

    fn to_instant(&self, ns: u64) -> Instant {
        if ns >= self.anchor.1 {
            self.anchor.0 + Duration::from_nanos(ns - self.anchor.1)
        } else {
            self.anchor.0.checked_sub(Duration::from_nanos(self.anchor.1 - ns)).unwrap_or(self.anchor.0)
        }
    }

    /// Books `busy` of the simulated GPU starting no earlier than
    /// `earliest`; returns when it starts.
    pub fn book(&self, earliest: Instant, busy: Duration) -> Instant {
        // SAFETY: `word` points into a live shared mapping of 8 aligned bytes.
        let word = unsafe { &*self.word };
        let want = self.to_ns(earliest);
        let busy = busy.as_nanos() as u64;
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let start = want.max(cur);
            match word.compare_exchange_weak(cur, start.saturating_add(busy), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return self.to_instant(start),
                Err(seen) => cur = seen,
            }
        }
    }
}

impl Drop for SharedTimeline {
    fn drop(&mut self) {
        // SAFETY: the mapping `open` made, unmapped once.
        unsafe { libc::munmap(self.word as *mut libc::c_void, 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_users_of_one_file_take_turns() {
        let path = std::env::temp_dir().join(format!("gpuvisor-sim-timeline-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (a, b) = (SharedTimeline::open(&path).unwrap(), SharedTimeline::open(&path).unwrap());
        let now = Instant::now();
        let ms = Duration::from_millis(10);
        let sa = a.book(now, ms);
        let sb = b.book(now, ms);
        // The second starts when the first ends, to within the clocks' rounding.
        let gap = sb.duration_since(sa);
        assert!(gap >= ms - Duration::from_micros(1) && gap <= ms + Duration::from_micros(1), "{gap:?}");
        // Work asked for after the GPU is free again starts when asked.
        let later = now + Duration::from_secs(1);
        let sc = a.book(later, ms);
        assert!(sc.duration_since(later) <= Duration::from_micros(1));
        let _ = std::fs::remove_file(&path);
    }
}
