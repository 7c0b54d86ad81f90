//! Host bindings generated from `wit/` (the one source of truth). Only the
//! all-exports `policy` world is generated: each function component is
//! then probed per interface (`GuestIndices::new`), so a component that
//! exports a single interface is as welcome as one that exports them all.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "policy",
});
