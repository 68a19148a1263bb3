//! A throwaway mesh "node" on this machine, for the sandbox, the end-to-end tests and the
//! benchmarks.
//!
//! The node is a network namespace of its own with a bridge; each pod is a network namespace
//! on a veth pair off that bridge; every process started in a pod joins a cgroup made for this
//! node, to which the agent attaches its programs. Nothing touches the machine's own
//! interfaces or root cgroup. Everything is removed on drop, and leftovers of a run that
//! crashed are removed when the next one starts.
//!
//! Two nodes (numbered, [`Node::create_numbered`]) can be wired together by a [`NodeLink`],
//! on which a [`Capture`] shows what crosses between them; [`certs`] makes the certificates
//! of a test's mesh.
pub mod agent;
pub mod capture;
pub mod certs;
pub mod cgroup;
pub mod dnsmasq;
pub mod kube_api;
pub mod link;
pub mod mesh;
pub mod netns;
pub mod node;
pub mod pattern;
pub mod process;

pub use agent::Agent;
pub use capture::{Capture, Captured};
pub use link::NodeLink;
pub use node::{Node, Pod};
pub use process::Proc;
