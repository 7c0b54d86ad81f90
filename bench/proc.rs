//! A process's CPU time, from `/proc`. Shared by the load client
//! (`bench/load`), the benchmarks (`host/server/benches`) and the
//! end-to-end tests, which include this file with `#[path]`: three crates
//! that share nothing else, and a dependency of one on another would drag
//! wasmtime into the client.

/// The CPU time (user + system) of process `pid` (an id, or `self`) so
/// far, in seconds; 0 when it cannot be read.
pub fn cpu_seconds(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the whole line, in clock ticks (100 per second on
    // Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}
