//! `cargo xtask test`: what CI runs — `cargo xtask check`, then the end-to-end tests as root.
use anyhow::{Context as _, bail};

use crate::{
    build::{self, cargo, run as run_command, step},
    check,
};

/// End-to-end tests are a separate test target of the testbed crate.
const E2E: [&str; 4] = ["test", "--package", "tests", "--test"];

pub fn run() -> anyhow::Result<()> {
    build::require_root("the end-to-end tests")?;
    check::run_checks()?;
    step("end-to-end tests (real eBPF, network namespaces)");
    let expected = count_e2e_tests()?;
    // Build the agent first: the tests run the binary, they do not build it.
    run_command(cargo().args(["build", "--package", "mesh-agent"]))?;
    let output = cargo()
        .args(E2E)
        .args(["e2e", "--", "--test-threads=1"])
        .output()
        .context("running the end-to-end tests")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("end-to-end tests failed");
    }
    let passed = passed_count(&stdout).context("no test summary in the end-to-end output")?;
    if expected == 0 || passed != expected {
        bail!("end-to-end tests: {passed} passed of {expected}: some did not run");
    }
    println!("\nall checks passed ({passed} end-to-end tests)");
    Ok(())
}

fn count_e2e_tests() -> anyhow::Result<usize> {
    let output = cargo()
        .args(E2E)
        .args(["e2e", "--", "--list"])
        .output()
        .context("listing the end-to-end tests")?;
    if !output.status.success() {
        bail!(
            "listing the end-to-end tests failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.ends_with(": test"))
        .count())
}

/// N from libtest's `test result: ok. N passed; ...`.
fn passed_count(stdout: &str) -> Option<usize> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("test result: ok. "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passed_count() {
        let out =
            "running 6 tests\ntest a ... ok\n\ntest result: ok. 6 passed; 0 failed; 0 ignored";
        assert_eq!(passed_count(out), Some(6));
        assert_eq!(
            passed_count("test result: FAILED. 5 passed; 1 failed"),
            None
        );
    }
}
