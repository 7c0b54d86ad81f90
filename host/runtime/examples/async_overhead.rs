//! What wasmtime's async calls would cost mailwit's policy calls: the same
//! warm instance of a real policy component (`check-sender` of
//! `components/sender`), called N times synchronously (`TypedFunc::call`,
//! today's path) and N times with `call_async` on a fiber, polled by a
//! current-thread tokio runtime with epoch yielding armed (the way
//! `wasmtime serve` runs guests), in alternating rounds.
//!
//!     cargo run --release -p mailwit-runtime --example async_overhead -- \
//!         <target>/wasm-components/.../mailwit_sender.wasm [calls]
//!
//! The host imports are stubs (no rules: the component refuses, with a
//! reply's strings coming back), so the figure is the call mechanism's,
//! not argon2's or the rules'. An experiment, not part of the runtime: it
//! has its own bindings of `wit/` for the stubs.

use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({ path: "../../wit", world: "policy" });

use mailwit::policy::types::{MailParams, Reply, Session};

struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl mailwit::policy::types::Host for Host {}

impl mailwit::policy::host::Host for Host {
    fn log(&mut self, _level: mailwit::policy::host::Level, _message: String) {}
    fn rule(&mut self, _key: String) -> Option<String> {
        None
    }
    fn rule_list(&mut self, _key: String) -> Vec<String> {
        Vec::new()
    }
    fn verify_secret(&mut self, _key: String, _secret: String) -> bool {
        false
    }
    fn now_ms(&mut self) -> u64 {
        0
    }
    fn current_session(&mut self) -> Option<Session> {
        None
    }
    fn current_usage(&mut self) -> Option<mailwit::policy::types::Usage> {
        None
    }
}

fn main() -> wasmtime::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: async_overhead <sender.wasm> [calls]");
    let calls: u32 = args.next().map_or(20_000, |n| n.parse().expect("calls"));

    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    let component = Component::from_file(&engine, &path)?;
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    mailwit::policy::host::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)?;
    mailwit::policy::types::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)?;
    let pre = linker.instantiate_pre(&component)?;

    // The ticker of the runtime (2 ms), so epoch checks really run.
    let ticker = engine.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(2));
            ticker.increment_epoch();
        }
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // One store and warm instance each: a store that once yields at its
    // epoch deadline accepts only `*_async` calls from then on.
    type CheckSender =
        wasmtime::component::TypedFunc<(&'static str, MailParams), (Result<(), Reply>,)>;
    let open = |yields: bool| -> wasmtime::Result<(Store<Host>, CheckSender)> {
        let mut store = Store::new(
            &engine,
            Host {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        match yields {
            // Yield to the executor at every tick, as `wasmtime serve` does.
            true => store.epoch_deadline_async_yield_and_update(1),
            false => store.set_epoch_deadline(1_000_000),
        }
        let instance = match yields {
            true => rt.block_on(pre.instantiate_async(&mut store))?,
            false => pre.instantiate(&mut store)?,
        };
        let iface = instance
            .get_export_index(&mut store, None, "mailwit:policy/check-sender@0.2.0")
            .expect("exports check-sender");
        let f = instance
            .get_export_index(&mut store, Some(&iface), "check-sender")
            .expect("check-sender func");
        let f = instance.get_typed_func(&mut store, f)?;
        Ok((store, f))
    };
    let (mut sync_store, sync_f) = open(false)?;
    let (mut async_store, async_f) = open(true)?;
    let params = MailParams {
        size: Some(4096),
        eight_bit: false,
    };

    let (mut sync_t, mut async_t) = (Duration::ZERO, Duration::ZERO);
    let rounds = 10;
    for round in 0..rounds {
        let per = calls / rounds;
        let mut sync_round = || -> wasmtime::Result<Duration> {
            let t = Instant::now();
            for _ in 0..per {
                let (r,) = sync_f.call(&mut sync_store, ("someone@example.com", params))?;
                assert!(r.is_err(), "stub rules refuse");
            }
            Ok(t.elapsed())
        };
        let mut async_round = || -> wasmtime::Result<Duration> {
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..per {
                    let (r,) = async_f
                        .call_async(&mut async_store, ("someone@example.com", params))
                        .await?;
                    assert!(r.is_err(), "stub rules refuse");
                }
                wasmtime::Result::<()>::Ok(())
            })?;
            Ok(t.elapsed())
        };
        // ABBA: alternate which goes first.
        if round % 2 == 0 {
            sync_t += sync_round()?;
            async_t += async_round()?;
        } else {
            async_t += async_round()?;
            sync_t += sync_round()?;
        }
    }
    let n = f64::from(calls / rounds * rounds);
    let (s, a) = (
        sync_t.as_secs_f64() * 1e6 / n,
        async_t.as_secs_f64() * 1e6 / n,
    );
    println!("check-sender on one warm instance, {n} calls each, {rounds} ABBA rounds");
    println!("sync  (TypedFunc::call):       {s:.2} µs per call");
    println!(
        "async (call_async on a fiber): {a:.2} µs per call ({:+.2} µs, x{:.2})",
        a - s,
        a / s
    );
    Ok(())
}
