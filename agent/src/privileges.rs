//! The capabilities the agent keeps, and dropping every other one. Started as root (or with a
//! container's capability set), the agent gives up what it never uses before its first thread
//! starts — capability sets are per thread and threads inherit them, so that one moment covers
//! the whole process — and sets `no_new_privs`, so nothing it could execute regains them. A
//! bug in a parser then cannot load a kernel module, change user, kill or trace processes,
//! or write files it does not own.
use caps::{CapSet, Capability, CapsHashSet};
use tracing::{debug, info};

/// A capability kept, and what for (docs/security.md lists the same).
pub struct Needed {
    pub capability: Capability,
    pub why: &'static str,
}

/// The node agent (`run`): the redirect programs are loaded at start, but pods are enrolled
/// (namespaces entered, programs attached, maps updated) for as long as it runs.
pub const NODE_AGENT: &[Needed] = &[
    Needed {
        capability: Capability::CAP_BPF,
        why: "load the redirect programs, create and update their maps",
    },
    Needed {
        capability: Capability::CAP_NET_ADMIN,
        why: "attach the cgroup socket hooks and each pod's sk_lookup program; SO_MARK on the proxy's sockets",
    },
    Needed {
        capability: Capability::CAP_SYS_ADMIN,
        why: "enter pod network namespaces (setns) to open the inbound listener in each",
    },
];

/// What the node agent keeps besides [`NODE_AGENT`] with `enrollment.find_pods_by_process`.
pub const FIND_PODS_BY_PROCESS: Needed = Needed {
    capability: Capability::CAP_SYS_PTRACE,
    why: "open other processes' network namespaces (/proc/PID/ns/net) to find listed pods by address (enrollment.find_pods_by_process)",
};

/// A standalone virtual gateway (`gateway`): no eBPF, only its listener ports.
pub const GATEWAY: &[Needed] = &[Needed {
    capability: Capability::CAP_NET_BIND_SERVICE,
    why: "listener ports below 1024 (80, 443)",
}];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("reading the process's capabilities: {0}")]
    Read(#[source] caps::errors::CapsError),
    #[error("lowering the {set:?} capabilities: {source}")]
    Lower {
        set: CapSet,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(#[source] nix::Error),
}

/// Keeps only `needed` (of what the process has) and drops everything else from every set.
/// Must run before the process starts its second thread.
pub fn keep_only<'a>(
    needed: impl IntoIterator<Item = &'a Needed>,
) -> Result<CapsHashSet, PrivilegeError> {
    let wanted: CapsHashSet = needed.into_iter().map(|n| n.capability).collect();
    let permitted = caps::read(None, CapSet::Permitted).map_err(PrivilegeError::Read)?;
    let kept: CapsHashSet = permitted.intersection(&wanted).copied().collect();
    drop_from_bounding_set(&wanted)?;
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|source| PrivilegeError::Lower { set, source })?;
    }
    // Effective first: the permitted set may only shrink to what is no longer in use.
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &kept).map_err(|source| PrivilegeError::Lower { set, source })?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    let mut names: Vec<String> = kept.iter().map(ToString::to_string).collect();
    names.sort();
    info!(kept = ?names, "capabilities dropped but these");
    Ok(kept)
}

/// The bounding set limits what an executed program could ever gain. Lowering it needs
/// CAP_SETPCAP; without it (a container that dropped it) the runtime has bounded it already.
fn drop_from_bounding_set(wanted: &CapsHashSet) -> Result<(), PrivilegeError> {
    let effective = caps::read(None, CapSet::Effective).map_err(PrivilegeError::Read)?;
    if !effective.contains(&Capability::CAP_SETPCAP) {
        debug!("no CAP_SETPCAP: the bounding set stays as the process was given it");
        return Ok(());
    }
    let bounding = caps::read(None, CapSet::Bounding).map_err(PrivilegeError::Read)?;
    for capability in bounding.difference(wanted) {
        caps::drop(None, CapSet::Bounding, *capability).map_err(|source| {
            PrivilegeError::Lower {
                set: CapSet::Bounding,
                source,
            }
        })?;
    }
    Ok(())
}

/// The capabilities of `needed` the process does not have in effect.
pub fn missing(needed: &[Needed]) -> Result<Vec<Capability>, PrivilegeError> {
    let effective = caps::read(None, CapSet::Effective).map_err(PrivilegeError::Read)?;
    Ok(missing_from(needed, &effective))
}

fn missing_from(needed: &[Needed], effective: &CapsHashSet) -> Vec<Capability> {
    needed
        .iter()
        .map(|n| n.capability)
        .filter(|c| !effective.contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_what_is_missing() {
        let all: CapsHashSet = caps::all();
        assert!(missing_from(NODE_AGENT, &all).is_empty());
        assert_eq!(
            missing_from(NODE_AGENT, &CapsHashSet::new()).len(),
            NODE_AGENT.len()
        );
        let without_bpf: CapsHashSet = all
            .into_iter()
            .filter(|c| *c != Capability::CAP_BPF)
            .collect();
        assert_eq!(
            missing_from(NODE_AGENT, &without_bpf),
            [Capability::CAP_BPF]
        );
    }
}
