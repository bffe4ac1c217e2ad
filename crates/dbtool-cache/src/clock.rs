//! The clock the L1's hot path reads.
//!
//! An L1 hit checks its entry's expiry, and the precise wall clock
//! (`SystemTime::now`, `clock_gettime(CLOCK_REALTIME)`) costs 85-110 ns on
//! the benchmark machine (a VM), half of a whole hit. The kernel's coarse
//! clock is the time of its last tick, one read of shared memory (~20 ns);
//! it runs behind the precise clock by less than its resolution (one tick,
//! 1-10 ms). Adding that resolution gives a time never earlier than the
//! precise one, so an entry is never served after its expiry, at most one
//! tick before it.

/// Unix ms, never earlier than the precise wall clock and at most a few ms
/// later.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn upper_ms() -> u64 {
    use std::sync::OnceLock;
    static SLACK_MS: OnceLock<u64> = OnceLock::new();
    let slack = *SLACK_MS.get_or_init(|| {
        let mut res = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `res` is a valid, writable timespec that the call only
        // writes.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, &mut res) };
        if rc != 0 {
            return u64::MAX;
        }
        // The resolution rounded up to whole ms, plus the ms the reading
        // truncates.
        let ns = res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64;
        ns.div_ceil(1_000_000) + 1
    });
    if slack == u64::MAX {
        return precise_ms();
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return precise_ms();
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000 + slack
}

/// Unix ms, never earlier than the precise wall clock.
#[cfg(not(target_os = "linux"))]
pub(crate) fn upper_ms() -> u64 {
    precise_ms()
}

/// Unix ms from the precise wall clock.
pub(crate) fn precise_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upper_clock_is_never_behind_the_precise_one_nor_far_ahead() {
        for _ in 0..10_000 {
            let before = precise_ms();
            let upper = upper_ms();
            let after = precise_ms();
            assert!(upper >= before, "upper {upper} < precise {before}");
            assert!(upper <= after + 25, "upper {upper} far ahead of {after}");
        }
    }
}
