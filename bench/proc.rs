//! A process's CPU time, and the fields of its `stat`, from `/proc`.
//! Shared by the load client (`bench/load`), the benchmarks
//! (`host/server/benches`) and the end-to-end tests, which include this
//! file with `#[path]`: three crates that share nothing else, and a
//! dependency of one on another would drag wasmtime into the client.

/// The CPU time (user + system) of process `pid` (an id, or `self`) so
/// far, in seconds; 0 when it cannot be read.
pub fn cpu_seconds(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime are the 14th and 15th fields, in clock ticks (100
    // per second on Linux).
    let f: Vec<f64> = stat_fields(&stat)
        .skip(14 - 3)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// The fields of a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`
/// line after the parenthesised command name (which may hold spaces and
/// parentheses): the first is the 3rd field of proc(5), the state.
pub fn stat_fields(stat: &str) -> impl Iterator<Item = &str> {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
}
