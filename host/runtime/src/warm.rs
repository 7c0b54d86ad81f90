//! Warm instances: a policy instance kept after its call to serve the next
//! call of the same function version, rules version, tenant and memory
//! limit, from any thread.
//!
//! Instantiation is most of a small call's cost. An instance serves at most
//! `RuntimeConfig::warm_calls` calls (1: always fresh) and never again
//! after any failure (trap, deadline, memory limit, a future dropped
//! mid-call); the pool keeps at most [`WARM_INSTANCES`] (least recently
//! used dropped first; a replaced version's instances linger until then).
//! The price is that a component's globals may survive from one call to the
//! next of the same tenant and version, never across tenants or versions.

use std::sync::{Arc, Mutex};

use wasmtime::Store;
use wasmtime::component::Instance;

use crate::rules::Rules;
use crate::state::State;

/// Most warm instances the runtime keeps (each holds a pool slot).
pub const WARM_INSTANCES: usize = 32;

/// A reused instance. Its store's `State` says what it may serve (rules,
/// tenant, memory limit); `function` is the version's unique id (never
/// reused, unlike an address).
pub(crate) struct Warm {
    pub function: u64,
    pub store: Store<State>,
    pub instance: Instance,
    pub calls: u32,
}

/// What a call needs of a warm instance.
pub(crate) struct Key<'a> {
    pub function: u64,
    pub rules: &'a Arc<Rules>,
    pub tenant: &'a Arc<str>,
    pub memory_bytes: usize,
}

impl Warm {
    fn serves(&self, k: &Key<'_>) -> bool {
        let st = self.store.data();
        self.function == k.function
            && Arc::ptr_eq(&st.rules, k.rules)
            && Arc::ptr_eq(&st.tenant, k.tenant)
            && st.limiter.max == k.memory_bytes
    }
}

/// The runtime's warm instances, most recently used last. A call takes its
/// instance out for the call's length (the lock is never held across one).
#[derive(Default)]
pub(crate) struct Pool {
    slots: Mutex<Vec<Warm>>,
}

impl Pool {
    /// An instance that serves `k`, taken out of the pool.
    pub fn take(&self, k: &Key<'_>) -> Option<Warm> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let i = slots.iter().rposition(|w| w.serves(k))?;
        Some(slots.remove(i))
    }

    /// Keeps `w` for a later call, dropping the least recently used
    /// instance when full.
    pub fn put(&self, w: Warm) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let evicted = (slots.len() >= WARM_INSTANCES).then(|| slots.remove(0));
        slots.push(w);
        drop(slots);
        // Its store is freed outside the lock.
        drop(evicted);
    }
}
