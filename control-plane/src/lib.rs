//! The mesh's control plane: App Mesh definitions loaded ([`load`](mod@load)) and compiled to
//! Envoy xDS ([`compile`]), served over ADS to node agents ([`ads`]) with the service registry
//! ([`registry`], `registry_api`) and SDS secrets ([`secrets`]); [`runtime`] runs it all,
//! watching the files (`watch`) or reading a Kubernetes cluster ([`kubernetes`]), whose
//! pods decide which node runs which workload ([`placement`]).
#![forbid(unsafe_code)]

pub mod ads;
mod caller;
pub mod compile;
pub mod identity;
pub mod kubernetes;
pub mod load;
mod mesh_files;
pub mod placement;
pub mod registry;
mod registry_api;
pub mod runtime;
pub mod secrets;
mod watch;

pub use load::{InputOptions, load};
pub use runtime::{ControlPlane, Options, RegistryApiOptions, ServerTlsOptions};
