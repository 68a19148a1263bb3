//! What the agent reports, as leaves the rest records into: the metrics registry and the
//! recording handles the proxy is given, the process's own series, and access logs.
pub mod access_log;
pub mod metrics;
pub mod process;
