//! The host's plain types that components are told about, below every
//! module that converts them (a leaf).

use std::net::IpAddr;

/// The client, as the policy sees it.
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: IpAddr,
    pub port: u16,
    pub listener: String,
    pub tls: bool,
    pub server_name: Option<String>,
}

/// An authenticated session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub client: Client,
    pub tenant: String,
    pub login: String,
    pub helo: String,
    /// Where `host.current-usage` reads the tenant's counters (none: it answers
    /// none).
    pub usage: Option<std::sync::Arc<dyn UsageSource>>,
}

/// What a tenant has used, as `host.current-usage` tells a component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages_this_second: u64,
    pub messages_today: u64,
    pub sessions: u32,
}

/// The host's counters of one tenant, read when a component asks.
pub trait UsageSource: Send + Sync + std::fmt::Debug {
    fn usage(&self) -> Usage;
}

/// How a client authenticated (RFC 4954's mechanisms that mailwit offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}
