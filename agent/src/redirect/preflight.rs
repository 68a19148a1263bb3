//! Checks that turn "the kernel said EPERM" into an error a person can act on.
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "mesh-agent needs the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN \
         (run it as root); missing: {}", .0.join(", ")
    )]
    MissingCapabilities(Vec<&'static str>),
    #[error(
        "the kernel has no BTF ({0} is missing): mesh-agent needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (Linux 5.7 or newer)"
    )]
    NoBtf(&'static str),
}

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

const REQUIRED_CAPS: [(u32, &str); 3] = [
    (21, "CAP_SYS_ADMIN"), // setns into pod namespaces
    (12, "CAP_NET_ADMIN"), // cgroup socket hooks, SO_MARK
    (39, "CAP_BPF"),       // loading programs and maps
];

pub fn check() -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let missing = missing_capabilities(&status);
    if !missing.is_empty() {
        return Err(PreflightError::MissingCapabilities(missing));
    }
    if !Path::new(KERNEL_BTF).exists() {
        return Err(PreflightError::NoBtf(KERNEL_BTF));
    }
    Ok(())
}

/// Required capabilities absent from the `CapEff` line of a /proc/PID/status text.
fn missing_capabilities(status: &str) -> Vec<&'static str> {
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    REQUIRED_CAPS
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert!(missing_capabilities("Name:\tx\nCapEff:\t000001ffffffffff\n").is_empty());
    }

    #[test]
    fn unprivileged_misses_all() {
        assert_eq!(
            missing_capabilities("CapEff:\t0000000000000000\n"),
            vec!["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_BPF"]
        );
    }

    #[test]
    fn names_only_the_missing_one() {
        let without_bpf = format!("CapEff:\t{:016x}\n", (1u64 << 21) | (1 << 12));
        assert_eq!(missing_capabilities(&without_bpf), vec!["CAP_BPF"]);
    }
}
