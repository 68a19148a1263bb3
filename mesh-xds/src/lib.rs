//! App Mesh in Envoy's xDS: the compiler from a validated mesh to Listeners,
//! RouteConfigurations and Clusters ([`compile`]), and a state-of-the-world ADS server
//! ([`server`]) that serves them to node agents (or any xDS client).
pub mod client;
pub mod compile;
pub mod delta;
pub mod json;
pub mod names;
pub mod plan;
pub mod registry;
pub mod resources;
pub mod secrets;
pub mod server;
