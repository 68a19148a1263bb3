//! What both ends of the mesh's xDS share: resource type URLs and sets ([`resources`]), the
//! names of App Mesh objects in xDS, built and parsed in one place ([`names`]), SDS references
//! ([`sds`]) and what a resource names of other types ([`references`]), and resources as proto3 JSON ([`json`]); and the
//! node's end: its ADS client ([`client`]) and the plan its proxy evaluates ([`plan`]). The
//! control plane's end (compiler, ADS server) is the `control-plane` crate.
pub mod certificate;
pub mod channel;
pub mod client;
pub mod identity;
pub mod json;
pub mod metadata;
pub mod names;
pub mod plan;
pub mod references;
pub mod resources;
pub mod sds;
