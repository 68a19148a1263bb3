//! What the agent reports, as leaves the rest records into: the metrics registry and the
//! recording handles the proxy is given, the process's own series, access logs and traces.
pub mod access_log;
pub mod metrics;
pub mod process;
pub mod trace;

use std::sync::atomic::{AtomicBool, Ordering};

/// Says that `lock` is poisoned (a thread panicked holding it) where the caller cannot
/// return an error (a connection, a task loop): once per `reported` flag, since a poisoned
/// lock stays poisoned. The caller then refuses what it was asked rather than guess.
pub fn lock_poisoned(reported: &AtomicBool, lock: &'static str) {
    if !reported.swap(true, Ordering::Relaxed) {
        tracing::error!(
            lock,
            "lock poisoned (a thread panicked holding it); refusing what needs it"
        );
    }
}
