//! HTTP components (the status API): WASI 0.2 `wasi:http/proxy`
//! components, as Spin runs them, served in-process with
//! `wasmtime-wasi-http` on the process's one engine.
//!
//! Besides WASI and `wasi:http/types`, such a component gets exactly two
//! imports, both in Spin's shape (`wit/deps/fermyon-spin-2.0.0/spin.wit`):
//! `fermyon:spin/key-value@2.0.0` (read-only, answered by the embedder's
//! [`HostData`]) and `fermyon:spin/variables@2.0.0`. It cannot make
//! outgoing requests (`outgoing-handler` is refused at deploy, and the
//! hook that would send denies), open files or sockets.
//!
//! Each request runs on a fresh instance under the same kind of
//! [`Limits`] as a policy call: an epoch deadline and a memory limit.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::sync::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::engine::{LoadError, Runtime};
use crate::limits::{FailureKind, Limiter, Limits, arm_deadline, classify};

pub use crate::bindings::spin::StoreHandle;
use crate::bindings::spin::fermyon::spin::{key_value as kv, variables};

/// What the embedder gives one request: the data behind the key-value
/// store and the variables.
pub trait HostData: Send + Sync {
    /// Whether a store with this label exists.
    fn has_store(&self, label: &str) -> bool;
    /// A key's value, `Ok(None)` when there is none (or it is not this
    /// request's to see).
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// The keys this request may list.
    fn keys(&self) -> Result<Vec<String>, String>;
    /// A variable's value.
    fn variable(&self, name: &str) -> Option<String>;
}

/// The response, or why there is none.
pub type HttpResponse = hyper::Response<HyperOutgoingBody>;

/// One compiled, linked version of an HTTP component.
pub struct HttpFunction {
    pub version: u64,
    /// Hex SHA-256 of the component's bytes.
    pub digest: String,
    pre: ProxyPre<HttpState>,
}

/// The store's data for one request.
pub struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutgoing,
    limiter: Limiter,
    data: Arc<dyn HostData>,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// `wasi:http` hooks that refuse every outgoing request.
struct DenyOutgoing;

impl WasiHttpHooks for DenyOutgoing {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl kv::Host for HttpState {}

impl kv::HostStore for HttpState {
    fn open(&mut self, label: String) -> Result<Resource<StoreHandle>, kv::Error> {
        if !self.data.has_store(&label) {
            return Err(kv::Error::NoSuchStore);
        }
        self.table
            .push(StoreHandle)
            .map_err(|_| kv::Error::StoreTableFull)
    }

    fn get(
        &mut self,
        _store: Resource<StoreHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, kv::Error> {
        self.data.get(&key).map_err(kv::Error::Other)
    }

    fn set(
        &mut self,
        _store: Resource<StoreHandle>,
        _key: String,
        _value: Vec<u8>,
    ) -> Result<(), kv::Error> {
        Err(kv::Error::AccessDenied)
    }

    fn delete(&mut self, _store: Resource<StoreHandle>, _key: String) -> Result<(), kv::Error> {
        Err(kv::Error::AccessDenied)
    }

    fn exists(&mut self, _store: Resource<StoreHandle>, key: String) -> Result<bool, kv::Error> {
        Ok(self.data.get(&key).map_err(kv::Error::Other)?.is_some())
    }

    fn get_keys(&mut self, _store: Resource<StoreHandle>) -> Result<Vec<String>, kv::Error> {
        self.data.keys().map_err(kv::Error::Other)
    }

    fn drop(&mut self, store: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl variables::Host for HttpState {
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        self.data
            .variable(&name)
            .ok_or(variables::Error::Undefined(name))
    }
}

/// The linker for HTTP components.
pub(crate) fn linker(engine: &wasmtime::Engine) -> anyhow::Result<Linker<HttpState>> {
    let mut linker = Linker::<HttpState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // `wasi:http/types` only: no `outgoing-handler`.
    wasmtime_wasi_http::p2::bindings::sync::http::types::add_to_linker::<
        _,
        wasmtime_wasi_http::WasiHttp,
    >(&mut linker, &Default::default(), HttpState::http)?;
    kv::add_to_linker::<HttpState, HasSelf<HttpState>>(&mut linker, |s| s)?;
    variables::add_to_linker::<HttpState, HasSelf<HttpState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Why a request got no response from the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFailure {
    /// The deadline passed (`503`).
    Deadline,
    /// The memory limit was hit (`503`).
    Memory,
    /// It trapped, or ended without responding (`500`).
    Failed(String),
}

impl HttpFailure {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpFailure::Deadline | HttpFailure::Memory => 503,
            HttpFailure::Failed(_) => 500,
        }
    }

    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            HttpFailure::Deadline => "deadline",
            HttpFailure::Memory => "memory",
            HttpFailure::Failed(_) => "trap",
        }
    }
}

impl Runtime {
    /// Compiles (or reuses) and links an HTTP component; refuses one that
    /// does not export `wasi:http/incoming-handler@0.2.x` or imports
    /// anything the host does not give.
    pub fn load_http(&self, version: u64, bytes: &[u8]) -> Result<HttpFunction, LoadError> {
        let digest = crate::engine::hex(&Sha256::digest(bytes));
        let component = self.compile_cached(&digest, bytes)?;
        // Linked per load (deploys are rare), so the engine does not hold a
        // linker of this module's type.
        let linker = linker(&self.engine).map_err(|e| LoadError::HttpLink(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::HttpLink(format!("{e:#}")))?;
        let pre = ProxyPre::new(pre).map_err(|e| LoadError::HttpLink(format!("{e:#}")))?;
        Ok(HttpFunction {
            version,
            digest,
            pre,
        })
    }

    /// Runs one request on a fresh instance of `f`. Blocks: call it from a
    /// blocking thread inside a tokio runtime. The response is sent on
    /// `respond` as soon as the component sets it (its body may still be
    /// streaming); the result says how the call ended.
    pub fn serve_http<B>(
        &self,
        f: &HttpFunction,
        limits: Limits,
        data: Arc<dyn HostData>,
        request: hyper::Request<B>,
        respond: tokio::sync::oneshot::Sender<Result<HttpResponse, ErrorCode>>,
    ) -> Result<(), HttpFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let state = HttpState {
            // Nothing: no preopens, environment, arguments or sockets.
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: DenyOutgoing,
            limiter: Limiter::new(limits.memory_bytes.min(self.config().max_memory_bytes)),
            data,
        };
        let _awake = self.ticker.enter();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        arm_deadline(&mut store, limits.deadline);
        let fail = |e: wasmtime::Error, hit: bool| match classify(&e, hit) {
            Some(FailureKind::Deadline) => HttpFailure::Deadline,
            Some(FailureKind::Memory) => HttpFailure::Memory,
            _ => HttpFailure::Failed(format!("{e:#}")),
        };
        let (req, out) = {
            let mut http = store.data_mut().http();
            let req = http.new_incoming_request(Scheme::Http, request);
            let out = http.new_response_outparam(respond);
            match (req, out) {
                (Ok(r), Ok(o)) => (r, o),
                (Err(e), _) | (_, Err(e)) => return Err(HttpFailure::Failed(format!("{e:#}"))),
            }
        };
        let proxy = f
            .pre
            .instantiate(&mut store)
            .map_err(|e| fail(e, store.data().limiter.hit))?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .map_err(|e| fail(e, store.data().limiter.hit))
    }
}

/// A plain response of the host's own (an error page, say), in the body
/// type component responses have.
pub fn plain_response(status: u16, body: impl Into<Bytes>) -> HttpResponse {
    let body = http_body_util::Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = hyper::Response::new(body);
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
