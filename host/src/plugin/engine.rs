//! The one wasmtime [`Engine`] of a runtime, and the thread that drives its
//! epoch (the wall-clock deadline's clock) while some store needs it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::RuntimeConfig;
use super::error::RuntimeError;

/// Builds the engine every plugin of a runtime shares.
///
/// Fuel and epochs are always on, so every artifact compiled by this engine
/// carries the checks, and the cache key (see [`super::cache`]) stays the same
/// whatever limits a call uses.
pub(crate) fn build_engine(config: &RuntimeConfig) -> Result<Engine, RuntimeError> {
    let mut wasm = Config::new();
    wasm.consume_fuel(true)
        .epoch_interruption(true)
        // A guest's own stack: deep recursion traps cleanly at this depth.
        .max_wasm_stack(config.max_wasm_stack_bytes)
        // Host frames run on the same fiber stack, so it must be larger.
        .async_stack_size(config.max_wasm_stack_bytes + 1024 * 1024);

    if config.pooling {
        // The pooling allocator pre-reserves slots so that instantiating is a
        // few page-table operations instead of mmap/munmap per call. Keeping
        // a little of each slot resident avoids re-faulting the same pages.
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(config.max_concurrent_instances)
            .total_core_instances(config.max_concurrent_instances * 4)
            .total_memories(config.max_concurrent_instances * 2)
            .total_tables(config.max_concurrent_instances * 4)
            .total_stacks(config.max_concurrent_instances)
            .max_memory_size(config.max_memory_bytes)
            .linear_memory_keep_resident(4 * 1024 * 1024)
            .table_keep_resident(64 * 1024)
            .async_stack_keep_resident(1024 * 1024)
            // Without PAGEMAP_SCAN (Linux 6.7+) a slot is reset by memset of
            // its whole kept-resident prefix; with it, only the pages the
            // call dirtied. Auto falls back where the kernel lacks it.
            .pagemap_scan(Enabled::Auto);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&wasm).map_err(RuntimeError::Engine)
}

/// How many ticks in a row with no store alive before the ticker sleeps
/// (a second at the default 5 ms tick): calls in quick succession never
/// wake it, an idle host stops waking up 200 times a second.
const IDLE_TICKS_BEFORE_SLEEP: u32 = 200;

/// Advances the engine's epoch every `tick` on a thread of its own, so that a
/// store's epoch deadline (in ticks) measures wall-clock time — while some
/// store holds a [`TickHold`]. After [`IDLE_TICKS_BEFORE_SLEEP`] ticks with
/// none it sleeps until one is taken: on this kind of machine every wake-up
/// costs ~20 µs of CPU (BENCHMARKS.md), 4 ms a second of a host that runs
/// no wasm. Stops when dropped.
pub(crate) struct EpochTicker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

/// What the ticker and the stores share.
#[derive(Default)]
struct TickerShared {
    stop: AtomicBool,
    /// Stores alive that need the epoch to move.
    holds: AtomicUsize,
    /// The ticker is asleep (or about to be) waiting for a hold.
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl TickerShared {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps the epoch moving while it lives: a store with an epoch deadline
/// holds one (in its data), so its deadline cannot pass unnoticed.
pub(crate) struct TickHold(Arc<TickerShared>);

impl Drop for TickHold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine, tick: Duration) -> Self {
        let shared = Arc::new(TickerShared::default());
        // A weak reference: the ticker must not keep the engine alive.
        let engine = engine.weak();
        let ticker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("karta-epoch".into())
            .spawn(move || {
                let mut idle = 0u32;
                while !ticker.stop.load(Ordering::Relaxed) {
                    if ticker.holds.load(Ordering::SeqCst) > 0 {
                        idle = 0;
                    } else if idle >= IDLE_TICKS_BEFORE_SLEEP {
                        ticker.sleep_until_held();
                        idle = 0;
                        continue;
                    } else {
                        idle += 1;
                    }
                    std::thread::sleep(tick);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .ok();
        Self { shared, thread }
    }

    /// A hold for a store about to run: the ticker ticks until it drops.
    pub(crate) fn hold(&self) -> TickHold {
        self.shared.holds.fetch_add(1, Ordering::SeqCst);
        // Both sides are SeqCst: either the ticker sees this hold before
        // it waits, or this sees it asleep and wakes it (under the lock it
        // keeps until it waits, so the wake-up cannot come too early).
        if self.shared.sleeping.load(Ordering::SeqCst) {
            let _guard = self.shared.lock();
            self.shared.wake.notify_one();
        }
        TickHold(self.shared.clone())
    }

    /// Whether the ticker is asleep for want of holds.
    pub(crate) fn is_asleep(&self) -> bool {
        self.shared.sleeping.load(Ordering::SeqCst)
    }
}

impl TickerShared {
    /// Waits (not ticking) until a hold is taken or the ticker stops.
    fn sleep_until_held(&self) {
        let mut guard = self.lock();
        self.sleeping.store(true, Ordering::SeqCst);
        while self.holds.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::SeqCst) {
            guard = self.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock();
            self.shared.wake.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
