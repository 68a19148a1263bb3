//! Checks that turn "the kernel said EPERM" into an error a person can act on.
use std::path::Path;

use crate::privileges::{self, PrivilegeError};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "mesh-agent needs the capabilities {} (run it as root); missing: {}",
        names(privileges::NODE_AGENT.iter().map(|n| n.capability)),
        names(.0.iter().copied())
    )]
    MissingCapabilities(Vec<caps::Capability>),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(
        "the kernel has no BTF ({0} is missing): mesh-agent needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (Linux 5.7 or newer)"
    )]
    NoBtf(&'static str),
}

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

fn names(capabilities: impl Iterator<Item = caps::Capability>) -> String {
    capabilities
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn check() -> Result<(), PreflightError> {
    let missing = privileges::missing(privileges::NODE_AGENT)?;
    if !missing.is_empty() {
        return Err(PreflightError::MissingCapabilities(missing));
    }
    if !Path::new(KERNEL_BTF).exists() {
        return Err(PreflightError::NoBtf(KERNEL_BTF));
    }
    Ok(())
}
