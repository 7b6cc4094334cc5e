//! Storage failures a test asks for (feature `fault-injection`): the next
//! N flushes, event writes or transcript writes fail.

use std::sync::atomic::{AtomicU32, Ordering};

#[cfg(feature = "fault-injection")]
use super::Store;

/// Failures a test asked for: the next N flushes / event writes /
/// transcript writes fail.
#[derive(Default)]
pub(super) struct Faults {
    pub(super) flushes: AtomicU32,
    pub(super) event_writes: AtomicU32,
    pub(super) message_writes: AtomicU32,
    /// How long a failing flush takes before it fails (ms), so that a test
    /// can see what a turn does while its message's flush is running.
    pub(super) failing_flush_ms: AtomicU32,
}

impl Faults {
    pub(super) fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[cfg(feature = "fault-injection")]
impl Store {
    /// Makes the next `flushes` flushes and the next `event_writes` event
    /// writes fail, for tests of what the host does when storage fails.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_failures(&self, flushes: u32, event_writes: u32) {
        self.faults.flushes.store(flushes, Ordering::SeqCst);
        self.faults
            .event_writes
            .store(event_writes, Ordering::SeqCst);
        self.faults.failing_flush_ms.store(0, Ordering::SeqCst);
    }

    /// Makes the next `writes` transcript writes fail.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_message_write_failures(&self, writes: u32) {
        self.faults.message_writes.store(writes, Ordering::SeqCst);
    }

    /// Makes the next flush fail after `delay` (it runs as long as that).
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_slow_flush_failure(&self, delay: std::time::Duration) {
        let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        self.faults.failing_flush_ms.store(ms, Ordering::SeqCst);
        self.faults.flushes.store(1, Ordering::SeqCst);
    }
}
