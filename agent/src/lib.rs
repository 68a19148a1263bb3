//! mesh-agent's library: everything the `mesh-agent` binary runs, and what its benchmarks
//! measure (metrics recording, access log rendering) without a node to run on.
pub mod access_log;
mod admin;
pub mod app;
pub mod config;
pub mod control_plane;
mod discovery;
mod host;
mod memory;
pub mod mesh_cmd;
pub mod metrics;
mod pod_connects;
mod proxy;
mod redirect;
mod registry_api;
mod self_metrics;
mod state;
mod workload;
pub mod xds_dump;
