//! `cargo xtask fuzz [--seconds N] [--target NAME]`: builds the cargo-fuzz targets in `fuzz/`
//! (nightly) and runs each for a bounded time, one after the other (one fuzzer process, one
//! job), after replaying the saved reproducers of past findings. docs/fuzzing.md describes
//! the targets and how to run one longer.
//!
//! The committed seeds in `fuzz/corpus/<target>` are only read; what a run finds goes to
//! `target/fuzz-corpus/<target>`, which the next run starts from too (keep `target/` between
//! CI runs and the corpora carry over). A crash, panic, time-out or out-of-memory fails the
//! task; libFuzzer writes the input to `fuzz/artifacts/<target>/`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::build::{run, step, workspace_root};

/// A fuzz target and the longest input it is given.
struct Target {
    name: &'static str,
    max_len: u32,
}

const TARGETS: [Target; 6] = [
    Target {
        name: "definition_api_json",
        max_len: 65_536,
    },
    Target {
        name: "definition_kubernetes",
        max_len: 65_536,
    },
    Target {
        name: "definition_cloudformation",
        max_len: 65_536,
    },
    Target {
        name: "agent_config",
        max_len: 8_192,
    },
    Target {
        name: "xds_plan",
        max_len: 65_536,
    },
    Target {
        name: "http_route",
        max_len: 16_384,
    },
];

/// How the targets are built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Build {
    /// Optimised, with AddressSanitizer: for long runs (`cargo xtask fuzz`).
    Thorough,
    /// Unoptimised, no sanitizer: builds in about a quarter of the time, for the short run
    /// every check makes (Rust's own checks still turn memory errors into panics).
    Quick,
}

impl Build {
    /// `cargo fuzz` flags; build and run must get the same, or run rebuilds.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Self::Thorough => &[],
            Self::Quick => &["--dev", "--sanitizer", "none"],
        }
    }
}

/// Memory one run may use (RSS), and per-input time before it counts as a hang.
const RSS_LIMIT_MB: u32 = 2_048;
const INPUT_TIMEOUT_SECONDS: u32 = 10;

pub fn run_fuzz(seconds: u32, only: Option<&str>, build: Build) -> anyhow::Result<()> {
    let targets: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| only.is_none_or(|name| t.name == name))
        .collect();
    if targets.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        bail!(
            "no fuzz target {:?}; the targets: {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    step(&format!(
        "building the fuzz targets (nightly, cargo-fuzz, {build:?})"
    ));
    run(cargo_fuzz().arg("build").args(build.flags()))
        .context("building the fuzz targets (cargo-fuzz comes from scripts/install-prereqs.sh)")?;
    let root = workspace_root();
    let mut summaries = Vec::new();
    for target in targets {
        replay_regressions(&root, target, build)?;
        step(&format!("fuzzing {} for {seconds} s", target.name));
        summaries.push((target.name, fuzz_one(&root, target, seconds, build)?));
    }
    step("fuzzing summary");
    for (name, summary) in summaries {
        println!("{name:<28} {summary}");
    }
    Ok(())
}

/// `cargo fuzz` on the nightly toolchain, in `fuzz/`. The variables cargo set for this
/// process (its own toolchain's cargo and rustc) are not passed on.
fn cargo_fuzz() -> Command {
    let nightly = std::env::var("MESH_NIGHTLY").unwrap_or_else(|_| "nightly".into());
    let mut command = Command::new("rustup");
    command
        .current_dir(workspace_root().join("fuzz"))
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["run", &nightly, "cargo", "fuzz"]);
    command
}

/// Saved reproducers of past findings (`fuzz/artifacts-regressions/<target>/`) run once each:
/// they must pass.
fn replay_regressions(root: &Path, target: &Target, build: Build) -> anyhow::Result<()> {
    let dir = root.join("fuzz/artifacts-regressions").join(target.name);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut inputs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    inputs.retain(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"));
    if inputs.is_empty() {
        return Ok(());
    }
    inputs.sort();
    step(&format!(
        "{}: {} saved reproducers",
        target.name,
        inputs.len()
    ));
    run(cargo_fuzz()
        .args(["run", target.name])
        .args(build.flags())
        .args(&inputs)
        .arg("--")
        .args(limits(target)))
}

fn limits(target: &Target) -> Vec<String> {
    vec![
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-timeout={INPUT_TIMEOUT_SECONDS}"),
        format!("-max_len={}", target.max_len),
    ]
}

/// One bounded run; its libFuzzer log goes to `target/fuzz-logs/<target>.log`. Returns the
/// final figures (runs, coverage, corpus, exec/s).
fn fuzz_one(root: &Path, target: &Target, seconds: u32, build: Build) -> anyhow::Result<String> {
    let corpus = root.join("target/fuzz-corpus").join(target.name);
    let seeds = root.join("fuzz/corpus").join(target.name);
    let logs = root.join("target/fuzz-logs");
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join(format!("{}.log", target.name));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = cargo_fuzz();
    command
        .args(["run", target.name])
        .args(build.flags())
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .args(limits(target))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .stdout(Stdio::null())
        .stderr(log);
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
        bail!(
            "fuzz target {} failed ({status}); the input is under fuzz/artifacts/{}/, the log in {}",
            target.name,
            target.name,
            log_path.display()
        );
    }
    Ok(summary(&text))
}

/// The figures of libFuzzer's last status line (`#N DONE cov: .. ft: .. corp: .. exec/s: ..`).
fn summary(log: &str) -> String {
    log.lines()
        .rev()
        .find(|line| line.starts_with('#') && line.contains("cov:"))
        .map(|line| {
            format!(
                "runs: {}",
                line.trim_start_matches('#').replace(['\t'], " ")
            )
        })
        .unwrap_or_else(|| "no status line in the log".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_the_last_status_line() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 40Mb\n\
                   #3000\tDONE cov: 812 ft: 2011 corp: 90/4Kb lim: 4096 exec/s: 300 rss: 90Mb\n\
                   Done 3000 runs in 10 second(s)\n";
        assert_eq!(
            summary(log),
            "runs: 3000 DONE cov: 812 ft: 2011 corp: 90/4Kb lim: 4096 exec/s: 300 rss: 90Mb"
        );
    }
}
