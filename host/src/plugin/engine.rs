//! The one wasmtime [`Engine`] of a runtime, and the thread that drives its
//! epoch (the wall-clock deadline's clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Advances the engine's epoch every `tick` on a thread of its own, so that a
/// store's epoch deadline (in ticks) measures wall-clock time. Stops when
/// dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine, tick: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        // A weak reference: the ticker must not keep the engine alive.
        let engine = engine.weak();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("karta-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
