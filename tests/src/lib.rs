//! A throwaway mesh "node" on this machine, for the sandbox, the end-to-end tests and the
//! benchmarks.
//!
//! The node is a network namespace of its own with a bridge; each pod is a network namespace
//! on a veth pair off that bridge; every process started in a pod joins a cgroup made for this
//! node, to which the agent attaches its programs. Nothing touches the machine's own
//! interfaces or root cgroup. Everything is removed on drop, and leftovers of a run that
//! crashed are removed when the next one starts.
pub mod agent;
pub mod cgroup;
pub mod mesh;
pub mod netns;
pub mod node;
pub mod pattern;
pub mod process;

pub use agent::Agent;
pub use node::{Node, Pod};
pub use process::Proc;
