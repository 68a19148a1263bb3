//! `cargo xtask soak`: a long run of HTTP/1.1 requests through mesh-agent (the L7 benchmark's
//! node and mesh: wrk, keep-alive connections, the 80/20 route) in chunks, the agent's memory
//! and descriptors sampled after each; then the idle period after which the proxy's pooled
//! upstream connections must have closed. It fails when a request fails, when memory keeps
//! growing once warm, or when descriptors do not come back.
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{bench::status_kib, bench_l7::L7Bench, build::step};

/// How long until the proxy has closed its idle upstream connections: they are kept 60 s
/// (dataplane/upstream.rs), and the pool's reaper runs once per that period, so one idle
/// for 60 s goes at the next run, up to 60 s later; and margin. (A soak that waited 70 s
/// failed once with 31 pooled connections still open.)
const UPSTREAM_IDLE: Duration = Duration::from_secs(2 * 60 + 10);
/// Growth allowed between the first warm sample and the last (allocator noise).
const RSS_GROWTH_ALLOWED: f64 = 0.10;

pub fn run(requests: u64, chunk_seconds: u32) -> anyhow::Result<()> {
    let (bench, servers) = L7Bench::build_and_set_up("the soak")?;
    let pid = bench.agent.pid();
    let before = Sample::of(pid, 0)?;
    bench.enroll_client(true)?;
    step(&format!(
        "{requests} requests through mesh-agent in {chunk_seconds}s chunks (wrk, 1 thread, 32 keep-alive connections)"
    ));
    println!(
        "  {:>10} {:>10} {:>8} {:>10}",
        "requests", "RSS KiB", "fds", "failed"
    );
    println!(
        "  {:>10} {:>10} {:>8} {:>10}",
        0, before.rss_kib, before.fds, 0
    );
    let mut samples = Vec::new();
    let (mut sent, mut failed) = (0u64, 0u64);
    while sent < requests {
        let chunk = bench.soak_chunk(chunk_seconds)?;
        sent += chunk.requests;
        failed += chunk.failed;
        let sample = Sample::of(pid, sent)?;
        println!(
            "  {:>10} {:>10} {:>8} {:>10}",
            sent, sample.rss_kib, sample.fds, failed
        );
        samples.push(sample);
    }
    bench.enroll_client(false)?;
    step(&format!(
        "idle for {}s: pooled upstream connections close",
        UPSTREAM_IDLE.as_secs()
    ));
    std::thread::sleep(UPSTREAM_IDLE);
    let idle = Sample::of(pid, sent)?;
    println!(
        "  after idle: RSS {} KiB, fds {} (before the load: {} KiB, {} fds)",
        idle.rss_kib, idle.fds, before.rss_kib, before.fds
    );
    drop(servers);
    verdict(&before, &samples, &idle, failed)
}

fn verdict(before: &Sample, samples: &[Sample], idle: &Sample, failed: u64) -> anyhow::Result<()> {
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    // The first chunk warms pools and caches; from the second on memory must stay flat.
    if let (Some(warm), Some(last)) = (samples.get(1), samples.last()) {
        let growth = (last.rss_kib as f64 - warm.rss_kib as f64) / warm.rss_kib as f64;
        println!(
            "  RSS from {} requests to {}: {:+.1}%",
            warm.requests,
            last.requests,
            growth * 100.0
        );
        if growth > RSS_GROWTH_ALLOWED {
            bail!("memory keeps growing: {:+.1}%", growth * 100.0);
        }
    }
    if idle.fds > before.fds + 2 {
        bail!(
            "descriptors did not come back: {} before the load, {} after idling",
            before.fds,
            idle.fds
        );
    }
    println!("  soak passed");
    Ok(())
}

/// The agent's memory and open descriptors after `requests`.
struct Sample {
    requests: u64,
    rss_kib: u64,
    fds: usize,
}

impl Sample {
    fn of(pid: u32, requests: u64) -> anyhow::Result<Self> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .context("the agent's descriptors")?
            .count();
        Ok(Self {
            requests,
            rss_kib: status_kib(pid, "VmRSS:").context("the agent's RSS")?,
            fds,
        })
    }
}
