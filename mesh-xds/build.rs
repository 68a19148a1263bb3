//! Points the crate at the protobuf descriptor set envoy-types ships
//! (src/generated/types.bin), so `compile` output can be printed as proto3 JSON: the version
//! comes from the workspace's Cargo.lock, the sources from cargo's registry.
// A build script's panic is a build error that says what failed.
#![allow(clippy::expect_used, clippy::unwrap_used)]
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let lock = manifest
        .parent()
        .expect("workspace root")
        .join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).expect("Cargo.lock");
    let version = text
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .expect("envoy-types in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = cargo_home.join("registry/src");
    let descriptors = std::fs::read_dir(&registry)
        .expect("cargo registry sources")
        .flatten()
        .map(|index| {
            index
                .path()
                .join(format!("envoy-types-{version}/src/generated/types.bin"))
        })
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "envoy-types-{version} sources not found under {}",
                registry.display()
            )
        });
    println!(
        "cargo:rustc-env=ENVOY_DESCRIPTORS={}",
        descriptors.display()
    );
}
