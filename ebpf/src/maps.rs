//! Readers for per-CPU counters and log2 histograms, and the lost-event
//! counters every collector exports as `kotel.ebpf.events.lost`.

use std::sync::Arc;

use anyhow::Context as _;
use aya::Ebpf;
use aya::maps::{PerCpuArray, PerCpuHashMap};

/// Slots of a kernel log2 histogram (`HIST_SLOTS` in common.bpf.h); each
/// histogram occupies `HIST_LEN` entries: the slots, then the sum (ns).
pub const HIST_SLOTS: usize = 40;
pub const HIST_LEN: usize = HIST_SLOTS + 1;

/// Index of each loss reason in the `lost` map.
pub const LOST_REASONS: [&str; 2] = ["ringbuf_full", "rate_limited"];

/// Every entry of a per-CPU u64 array, summed over CPUs.
pub fn percpu_array_sums(bpf: &Ebpf, map: &str) -> anyhow::Result<Vec<u64>> {
    let m = bpf.map(map).with_context(|| format!("map {map} missing"))?;
    let arr = PerCpuArray::<_, u64>::try_from(m).with_context(|| format!("map {map}"))?;
    let mut out = Vec::with_capacity(arr.len() as usize);
    for v in arr.iter() {
        let v = v.with_context(|| format!("reading {map}"))?;
        out.push(v.iter().copied().fold(0u64, u64::wrapping_add));
    }
    Ok(out)
}

/// Every entry of a per-CPU u64 array, per CPU: `out[cpu][index]`
/// (CPUs in the order of the possible-CPU list).
pub fn percpu_array_by_cpu(bpf: &Ebpf, map: &str) -> anyhow::Result<Vec<Vec<u64>>> {
    let m = bpf.map(map).with_context(|| format!("map {map} missing"))?;
    let arr = PerCpuArray::<_, u64>::try_from(m).with_context(|| format!("map {map}"))?;
    let mut out: Vec<Vec<u64>> = Vec::new();
    for (i, v) in arr.iter().enumerate() {
        let v = v.with_context(|| format!("reading {map}"))?;
        if out.is_empty() {
            out = vec![vec![0; arr.len() as usize]; v.len()];
        }
        for (cpu, x) in v.iter().enumerate() {
            out[cpu][i] = *x;
        }
    }
    Ok(out)
}

/// Every (key, value) of a per-CPU u32 → u64 hash, summed over CPUs.
pub fn percpu_hash_sums(bpf: &Ebpf, map: &str) -> anyhow::Result<Vec<(u32, u64)>> {
    let m = bpf.map(map).with_context(|| format!("map {map} missing"))?;
    let h = PerCpuHashMap::<_, u32, u64>::try_from(m).with_context(|| format!("map {map}"))?;
    let mut out = Vec::new();
    for kv in h.iter() {
        let (k, v) = kv.with_context(|| format!("reading {map}"))?;
        out.push((k, v.iter().copied().fold(0u64, u64::wrapping_add)));
    }
    out.sort_unstable();
    Ok(out)
}

/// The lost-event counters of an object: `[ringbuf_full, rate_limited]`.
pub fn lost_counts(bpf: &Ebpf) -> anyhow::Result<[u64; 2]> {
    let v = percpu_array_sums(bpf, "lost")?;
    Ok([
        v.first().copied().unwrap_or(0),
        v.get(1).copied().unwrap_or(0),
    ])
}

/// One kernel log2 histogram of nanosecond values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Log2Hist {
    /// slot i: values v with floor(log2 v) == i (0 also in slot 0); the last
    /// slot takes everything larger.
    pub slots: Vec<u64>,
    pub sum_ns: u64,
}

impl Log2Hist {
    /// Split a summed per-CPU array of `n * HIST_LEN` entries into histograms.
    pub fn split(values: &[u64]) -> Vec<Log2Hist> {
        values
            .chunks_exact(HIST_LEN)
            .map(|c| Log2Hist {
                slots: c[..HIST_SLOTS].to_vec(),
                sum_ns: c[HIST_SLOTS],
            })
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.slots.iter().sum()
    }

    /// Explicit-bucket counts for [`log2_bounds`]`(min_slot)`: slots
    /// `0..=min_slot` fold into the first bucket (bound `2^(min_slot+1)` ns),
    /// then one bucket per slot; `len == bounds.len() + 1`.
    pub fn bucket_counts(&self, min_slot: usize) -> Vec<u64> {
        let n = HIST_SLOTS - min_slot;
        let mut counts = vec![0u64; n];
        for (i, &c) in self.slots.iter().enumerate() {
            counts[i.saturating_sub(min_slot).min(n - 1)] += c;
        }
        counts
    }

    /// Sum of the values in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

/// Bucket bounds (seconds) matching [`Log2Hist::to_point`] with `min_slot`.
pub fn log2_bounds(min_slot: usize) -> Arc<[f64]> {
    ((min_slot + 1)..HIST_SLOTS)
        .map(|i| (1u64 << i) as f64 / 1e9)
        .collect::<Vec<_>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_to_explicit() {
        let mut slots = vec![0u64; HIST_SLOTS];
        slots[0] = 1;
        slots[9] = 2; // 512..1023 ns -> first bucket with min_slot 9
        slots[10] = 3; // 1024..2047 ns -> bucket 1 (bound 2048 ns)
        slots[HIST_SLOTS - 1] = 4;
        let h = Log2Hist {
            slots,
            sum_ns: 2_000_000_000,
        };
        let bounds = log2_bounds(9);
        let c = h.bucket_counts(9);
        assert_eq!(c.len(), bounds.len() + 1);
        assert_eq!(c[0], 3);
        assert_eq!(c[1], 3);
        assert_eq!(bounds[0], 1024e-9);
        assert_eq!(bounds[1], 2048e-9);
        assert_eq!(*c.last().unwrap(), 4);
        assert_eq!(h.count(), 10);
        assert_eq!(h.sum_seconds(), 2.0);
    }
}
