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
}

/// How a client authenticated (RFC 4954's mechanisms that mailwit offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}
