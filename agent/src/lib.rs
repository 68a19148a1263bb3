//! mesh-agent's node agent: the eBPF redirect, the data plane, the node proxy and its
//! telemetry, put together by [`app`]. A library, so benchmarks and in-process tests reach
//! the proxy without a node to run on; the `mesh-agent` binary adds its command line.
//!
//! Dependencies point one way: `app` → `admin` → `proxy` → `redirect` → `dataplane` →
//! `tls` → `telemetry`; `config`, `heap`, `host` and `listen` are leaves anyone may use.
pub mod admin;
pub mod app;
pub mod config;
pub mod dataplane;
pub mod dns;
pub mod heap;
mod host;
pub mod listen;
pub mod privileges;
pub mod proxy;
pub mod redirect;
pub mod telemetry;
pub mod tls;
