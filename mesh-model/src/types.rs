//! The App Mesh resource model as Rust types, generated at build time from the official API
//! model (appmesh/service-2.json) by build.rs: every structure, union and enumeration the
//! seven `Create*Input` requests reach, with the API's exact member names. Deserialize a
//! resource body (see [`crate::resource::Resource`]) into `CreateVirtualNodeInput` and the
//! like once [`crate::validate`] has passed it.
#![allow(clippy::large_enum_variant, clippy::enum_variant_names)]

include!(concat!(env!("OUT_DIR"), "/types.rs"));
