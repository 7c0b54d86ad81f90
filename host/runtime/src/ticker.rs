//! The engine's epoch ticker: one thread that advances the epoch every
//! [`TICK`], by which every store's deadline is counted.
//!
//! It ticks only while WebAssembly may run. Each entry into a component
//! (an instantiation, a policy call, a status API request) holds an
//! [`Awake`] for its length; after [`IDLE_TICKS`] ticks with none, the
//! thread parks, and the next entry wakes it. An idle server would
//! otherwise wake 500 times a second for nothing (about 1% of a core
//! here, all of an idle server's CPU). Under load calls come every tick
//! and the thread never parks, so the only cost there is an atomic add and
//! subtract per entry, and a read of the `parked` flag.
//!
//! No deadline is lost: the thread parks only when no entry is running
//! (a store's deadline is a number of ticks from the epoch its call began
//! at, and ticks resume with the entry that wakes it). The order of the
//! two flags (the ticker's `parked` then its second look at `running`; an
//! entry's `running` then its look at `parked`, all `SeqCst`) means that
//! either the ticker sees the entry and stays up, or the entry sees it
//! parked and unparks it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use wasmtime::Engine;

use crate::limits::TICK;

/// Ticks with nothing running before the ticker parks (one second).
pub const IDLE_TICKS: u32 = 500;

#[derive(Default)]
pub(crate) struct Ticker {
    /// Entries running now.
    running: AtomicUsize,
    /// The thread is parked, or about to be.
    parked: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
}

/// An entry into WebAssembly, keeping the epoch advancing while it lives.
pub(crate) struct Awake<'a>(&'a Ticker);

impl Drop for Awake<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

impl Ticker {
    /// Starts the thread advancing `engine`'s epoch.
    pub fn start(engine: Engine) -> std::io::Result<Arc<Ticker>> {
        let ticker = Arc::new(Ticker::default());
        let t = ticker.clone();
        let handle = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || t.run(&engine))?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    fn run(&self, engine: &Engine) {
        let mut idle = 0;
        while !self.stop.load(SeqCst) {
            idle = match self.running.load(SeqCst) {
                0 => idle + 1,
                _ => 0,
            };
            if idle > IDLE_TICKS {
                self.parked.store(true, SeqCst);
                if self.running.load(SeqCst) == 0 && !self.stop.load(SeqCst) {
                    std::thread::park();
                }
                self.parked.store(false, SeqCst);
                idle = 0;
                continue;
            }
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    }

    /// Marks an entry into WebAssembly, waking the thread if it parked.
    pub fn enter(&self) -> Awake<'_> {
        self.running.fetch_add(1, SeqCst);
        // A load first: under load the flag is false at every call, and a
        // swap would write its cache line from both cores each time.
        if self.parked.load(SeqCst) && self.parked.swap(false, SeqCst) {
            self.wake();
        }
        Awake(self)
    }

    /// Whether the thread is parked (or about to park) for want of work.
    pub fn parked(&self) -> bool {
        self.parked.load(SeqCst)
    }

    /// Ends the thread (the runtime is dropped).
    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}
