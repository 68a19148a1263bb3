//! Facts about the node the agent runs on.
use std::sync::OnceLock;

/// The node's host name (read once), or `None` when the kernel does not say.
pub fn hostname() -> Option<&'static str> {
    static HOSTNAME: OnceLock<Option<String>> = OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .as_deref()
}
