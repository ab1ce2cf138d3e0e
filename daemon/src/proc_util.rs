//! Each VM's SM and memory-bandwidth utilisation as the NVIDIA driver sees
//! it. Backends are processes, and NVML keeps a short buffer of per-process
//! utilisation samples (`nvmlDeviceGetProcessUtilization`); every reading
//! takes the samples newer than the last one seen and averages each
//! process's over the last [`WINDOW_US`], the window the scheduler's shares
//! use, so the answer does not depend on how often it is asked.

use nvml_wrapper::error::NvmlError;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

/// The span a reading averages over, in microseconds (NVML's time stamps).
pub const WINDOW_US: u64 = 2_000_000;

/// A process's mean utilisation over the window, each 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcUtil {
    pub sm: f64,
    pub mem: f64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    ts_us: u64,
    pid: u32,
    sm: u32,
    mem: u32,
}

#[derive(Debug, Default)]
struct GpuSamples {
    last_seen_us: u64,
    samples: VecDeque<Sample>,
}

/// The samples of every NVML GPU, by UUID.
#[derive(Debug, Default)]
pub struct ProcessUtilBook {
    gpus: Mutex<HashMap<String, GpuSamples>>,
}

impl ProcessUtilBook {
    /// Takes `device`'s new samples and gives each process's mean over the
    /// window ending `now_us`. `None` when NVML cannot give samples for it
    /// (not supported, or an error: logged once at debug level per call).
    pub fn read(&self, uuid: &str, device: &nvml_wrapper::Device<'_>, now_us: u64) -> Option<BTreeMap<u32, ProcUtil>> {
        let mut gpus = self.gpus.lock().unwrap_or_else(|p| p.into_inner());
        let g = gpus.entry(uuid.to_owned()).or_default();
        let fresh = match device.process_utilization_stats(g.last_seen_us) {
            Ok(s) => s,
            // No samples newer than the last seen: nothing ran since.
            Err(NvmlError::NotFound) => Vec::new(),
            Err(e) => {
                tracing::debug!(gpu = uuid, "NVML process utilisation: {e}");
                return None;
            }
        };
        let fresh =
            fresh.into_iter().map(|s| Sample { ts_us: s.timestamp, pid: s.pid, sm: s.sm_util, mem: s.mem_util });
        Some(g.take(fresh, now_us))
    }
}

impl GpuSamples {
    fn take(&mut self, fresh: impl Iterator<Item = Sample>, now_us: u64) -> BTreeMap<u32, ProcUtil> {
        for s in fresh {
            // NVML hands back samples at or after the time stamp asked for.
            if s.ts_us > self.last_seen_us || self.samples.is_empty() {
                self.last_seen_us = self.last_seen_us.max(s.ts_us);
                self.samples.push_back(s);
            }
        }
        let start = now_us.saturating_sub(WINDOW_US);
        while self.samples.front().is_some_and(|s| s.ts_us < start) {
            self.samples.pop_front();
        }
        let mut sums: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
        for s in &self.samples {
            let e = sums.entry(s.pid).or_default();
            e.0 += u64::from(s.sm);
            e.1 += u64::from(s.mem);
            e.2 += 1;
        }
        sums.into_iter()
            .map(|(pid, (sm, mem, n))| {
                let n = n as f64 * 100.0;
                (pid, ProcUtil { sm: sm as f64 / n, mem: mem as f64 / n })
            })
            .collect()
    }
}

/// Now in microseconds since the epoch, NVML's clock for time stamps.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts_us: u64, pid: u32, sm: u32) -> Sample {
        Sample { ts_us, pid, sm, mem: sm / 2 }
    }

    #[test]
    fn each_process_gets_its_mean_over_the_window() {
        let mut g = GpuSamples::default();
        let now = 10_000_000;
        let got =
            g.take([s(now - 3_000_000, 1, 100), s(now - 1_500_000, 1, 40), s(now - 500_000, 1, 60)].into_iter(), now);
        // The sample older than the window is left out.
        assert_eq!(got[&1], ProcUtil { sm: 0.5, mem: 0.25 });
        let got = g.take([s(now + 100_000, 2, 30)].into_iter(), now + 100_000);
        assert_eq!(got[&2].sm, 0.3);
        assert_eq!(got[&1].sm, 0.5);
        // A sample already taken (same time stamp) is not counted twice.
        let got = g.take([s(now + 100_000, 2, 30)].into_iter(), now + 100_000);
        assert_eq!(g.samples.len(), 3);
        assert_eq!(got[&2].sm, 0.3);
        // Once every sample is older than the window, nobody has any.
        assert!(g.take(std::iter::empty(), now + 5_000_000).is_empty());
    }
}
