//! The agent's configuration file: `${VAR}` expansion, YAML with unknown keys rejected,
//! durations, addresses, CIDRs, namespace specs, and the checks start-up and reload make.
//! A config that parses must also answer what the agent asks of it next.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mesh_agent_fuzz::agent_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("/etc/mesh-agent/config.yaml")) {
        Ok(config) => {
            let _ = config.netns_refs();
            let _ = config.excluded_cidrs();
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
