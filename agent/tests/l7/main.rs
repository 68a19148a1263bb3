//! The in-process L7 tier: App Mesh definitions compiled by the control plane into xDS,
//! applied to the agent's data plane, the real outbound proxy on loopback with a fixed
//! original destination instead of the eBPF redirect, real loopback servers and clients.
//! No root, no kernel programs; tests/e2e keeps what needs them.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod harness;

mod drain;
mod egress;
mod framing;
mod health;
mod idle;
mod matches;
mod outlier;
mod pools;
mod retries;
mod shop;
mod tcp;
mod timeouts;
mod weights;
