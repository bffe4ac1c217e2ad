//! The clock the L1's hot path reads.
//!
//! An L1 hit checks its entry's expiry against the precise wall clock
//! (`SystemTime::now`). The kernel's coarse clock (`CLOCK_REALTIME_COARSE`)
//! is four times cheaper to read, and its reading plus its stated
//! resolution was meant to be never earlier than the precise clock; under
//! load it was found running more than that resolution behind (a test saw
//! it 1 ms behind with a 4 ms resolution added), which would serve an
//! entry after its expiry. So the L1 keeps the precise clock.

/// Unix ms, never earlier than the precise wall clock.
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
