//! `cargo xtask bench`: placeholder replaced below.
pub fn run(_rounds: usize, _seconds: u32) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
