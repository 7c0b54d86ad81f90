//! Every world's host bindings, generated from `wit/` (the one source of
//! truth). Of the policy contract only the all-exports `policy` world is
//! generated: each function component is then probed per interface
//! (`GuestIndices::new`), so a component that exports a single interface
//! is as welcome as one that exports them all. [`spin`]: the two Spin
//! interfaces HTTP components (the status API) may import.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "policy",
    // Calls into a component are async (fibers, yielding at epoch ticks);
    // the host's imports answer at once and stay synchronous.
    exports: { default: async },
});

/// Spin's key-value and variables (`wit/deps/fermyon-spin-2.0.0`).
pub mod spin {
    /// An opened key-value store (the resource's host side).
    pub struct StoreHandle;

    wasmtime::component::bindgen!({
        path: "../../wit/deps/fermyon-spin-2.0.0",
        world: "host",
        with: { "fermyon:spin/key-value.store": StoreHandle },
    });
}
