//! The `mesh-agent` command line: argument structs, turned into the plain options of the
//! libraries (the agent, the control plane) before they are called.
pub mod control_plane;
pub mod gateway;
pub mod mesh;
pub mod xds_dump;
pub mod xds_tls;
