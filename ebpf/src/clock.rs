//! Kernel clock domains to wall-clock time.

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_BOOTTIME now (what `bpf_ktime_get_boot_ns` returns).
pub fn boot_ns() -> u64 {
    now(libc::CLOCK_BOOTTIME)
}

/// CLOCK_MONOTONIC now (what `bpf_ktime_get_ns` returns).
pub fn mono_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC)
}

/// Convert a CLOCK_BOOTTIME timestamp to Unix nanoseconds.
pub fn boot_to_unix_ns(boot: u64) -> u64 {
    let real = now(libc::CLOCK_REALTIME);
    let b = boot_ns();
    real.saturating_sub(b.saturating_sub(boot))
}

/// Convert a CLOCK_MONOTONIC timestamp (`bpf_ktime_get_ns`) to Unix nanoseconds.
pub fn mono_to_unix_ns(mono: u64) -> u64 {
    let real = now(libc::CLOCK_REALTIME);
    let m = mono_ns();
    real.saturating_sub(m.saturating_sub(mono))
}

/// Unix nanoseconds now.
pub fn unix_now_ns() -> u64 {
    now(libc::CLOCK_REALTIME)
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_now_is_wall_now() {
        let unix = super::boot_to_unix_ns(super::boot_ns());
        let real = super::unix_now_ns();
        assert!(unix.abs_diff(real) < 50_000_000, "{unix} vs {real}");
    }
}
