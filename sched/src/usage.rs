//! GPU time charged over a sliding window. Charges are kept in fixed-width
//! buckets, so memory stays bounded however often a backend reports.

use std::collections::VecDeque;

use crate::Nanos;

/// Buckets per window: the window's edge is resolved to 1/512 of its length.
const BUCKETS_PER_WINDOW: u64 = 512;

#[derive(Debug, Clone)]
pub(crate) struct UsageWindow {
    bucket_ns: Nanos,
    /// (bucket index, GPU time charged in that bucket), oldest first, indices
    /// strictly increasing.
    buckets: VecDeque<(u64, Nanos)>,
}

impl UsageWindow {
    pub(crate) fn new(window_ns: Nanos) -> Self {
        UsageWindow { bucket_ns: bucket_len(window_ns), buckets: VecDeque::new() }
    }

    /// Records `used_ns` of GPU time that ended at `end`, spread evenly over
    /// `[end - used_ns, end]`: the work ran during that interval as far as the
    /// scheduler can tell.
    pub(crate) fn add(&mut self, end: Nanos, used_ns: Nanos, window_ns: Nanos) {
        self.prune(end, window_ns);
        if used_ns == 0 {
            return;
        }
        let start = end.saturating_sub(used_ns);
        let span = end - start;
        if span == 0 {
            self.put(end / self.bucket_ns, used_ns);
            return;
        }
        // Time older than one window is never read again; skipping it also
        // bounds this loop whatever `used_ns` a backend reports.
        let mut t = start.max(end.saturating_sub(window_ns));
        while t < end {
            let idx = t / self.bucket_ns;
            let seg_end = idx.saturating_add(1).saturating_mul(self.bucket_ns).min(end);
            let part = (u128::from(used_ns) * u128::from(seg_end - t) / u128::from(span)) as Nanos;
            self.put(idx, part);
            t = seg_end;
        }
    }

    /// GPU time charged within `(now - window_ns, now]`. The oldest bucket
    /// counts in proportion to the part of it inside the window.
    pub(crate) fn sum(&self, now: Nanos, window_ns: Nanos) -> Nanos {
        let from = now.saturating_sub(window_ns);
        let mut total: u128 = 0;
        for &(idx, ns) in self.buckets.iter().rev() {
            let b_start = idx.saturating_mul(self.bucket_ns);
            let b_end = b_start.saturating_add(self.bucket_ns);
            if b_end <= from {
                break;
            }
            if b_start >= from {
                total += u128::from(ns);
            } else {
                total += u128::from(ns) * u128::from(b_end - from) / u128::from(self.bucket_ns);
            }
        }
        total.min(u128::from(Nanos::MAX)) as Nanos
    }

    /// Re-buckets for a new window length, keeping what was charged.
    pub(crate) fn set_window(&mut self, window_ns: Nanos) {
        let new_len = bucket_len(window_ns);
        if new_len == self.bucket_ns {
            return;
        }
        let old = std::mem::take(&mut self.buckets);
        let old_len = self.bucket_ns;
        self.bucket_ns = new_len;
        for (idx, ns) in old {
            let t = idx.saturating_mul(old_len);
            self.put(t / new_len, ns);
        }
    }

    fn put(&mut self, idx: u64, ns: Nanos) {
        // Charges end at the latest time seen, so the bucket is nearly always
        // the newest or close to it: search from the back.
        let mut pos = self.buckets.len();
        while pos > 0 {
            let (i, total) = self.buckets[pos - 1];
            if i == idx {
                self.buckets[pos - 1].1 = total.saturating_add(ns);
                return;
            }
            if i < idx {
                break;
            }
            pos -= 1;
        }
        self.buckets.insert(pos, (idx, ns));
    }

    fn prune(&mut self, now: Nanos, window_ns: Nanos) {
        let from = now.saturating_sub(window_ns);
        while let Some(&(idx, _)) = self.buckets.front() {
            if idx.saturating_add(1).saturating_mul(self.bucket_ns) <= from {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }
}

fn bucket_len(window_ns: Nanos) -> Nanos {
    (window_ns / BUCKETS_PER_WINDOW).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const S: Nanos = 1_000_000_000;

    #[test]
    fn charges_inside_the_window_are_counted_and_older_ones_drop_out() {
        let w = 5 * S;
        let mut u = UsageWindow::new(w);
        for i in 1..=1000u64 {
            // 5 ms of every 10 ms, for 10 s.
            u.add(i * 10 * MS, 5 * MS, w);
        }
        let got = u.sum(10 * S, w);
        assert!((got as i64 - (2500 * MS) as i64).abs() < (20 * MS) as i64, "{got}");
        assert_eq!(u.sum(20 * S, w), 0);
        assert!(u.buckets.len() as u64 <= BUCKETS_PER_WINDOW + 2);
    }

    #[test]
    fn a_long_charge_is_spread_over_its_interval() {
        let w = 5 * S;
        let mut u = UsageWindow::new(w);
        u.add(10 * S, 10 * S, w);
        // Only the last 5 s of the 10 s charge are inside the window.
        let got = u.sum(10 * S, w);
        assert!((got as i64 - (5 * S) as i64).abs() < (20 * MS) as i64, "{got}");
        // Absurd charges neither overflow nor loop for long.
        u.add(11 * S, Nanos::MAX, w);
        assert!(u.sum(11 * S, w) > 0);
    }

    #[test]
    fn rebucketing_keeps_the_total() {
        let w = 5 * S;
        let mut u = UsageWindow::new(w);
        for i in 1..=100u64 {
            u.add(i * 10 * MS, 10 * MS, w);
        }
        let before = u.sum(S, w);
        u.set_window(10 * S);
        let after = u.sum(S, 10 * S);
        assert!((before as i64 - after as i64).abs() < (40 * MS) as i64, "{before} {after}");
    }
}
