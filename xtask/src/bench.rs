//! `cargo xtask bench`: direct vs redirected-through-the-proxy, in one run, on a test node.
//!
//! The client pod is toggled between not enrolled (direct) and enrolled (through the proxy)
//! through the agent's admin endpoint, so both paths share the same node, servers and agent
//! process. Each round measures direct first, then proxied; medians over rounds are reported
//! with ratios against direct. Load generators are closed-loop (wrk), so latency figures are
//! what a client in such a loop sees, not open-loop latency at a fixed rate.
use std::{net::SocketAddr, process::Output, time::Duration};

use ::tests::{Agent, Node, Proc, agent::config_for};
use anyhow::{Context as _, bail};

use crate::build::{self, Profile, step};

struct Mode {
    name: &'static str,
    enrolled: bool,
}

const MODES: [Mode; 2] = [
    Mode {
        name: "direct",
        enrolled: false,
    },
    Mode {
        name: "proxied",
        enrolled: true,
    },
];

/// How long a proxy is left alone before its RSS is read: the agent's allocator gives back
/// what start-up freed about a second after it was freed.
pub(crate) const SETTLE: Duration = Duration::from_secs(5);

/// Named values of one run, e.g. `("requests/s", 8000.0)`.
pub(crate) type Measurement = Vec<(&'static str, f64)>;

/// One load scenario and how to read its result.
struct Scenario {
    name: &'static str,
    run: fn(&Bench, Run) -> anyhow::Result<Measurement>,
}

/// One load-generator run.
#[derive(Clone, Copy)]
struct Run {
    seconds: u32,
    /// Each run talks to its own server port: new-connection runs leave thousands of
    /// TIME_WAIT sockets behind, and the next run reusing the same 4-tuples would stall on
    /// them (SYN retransmits) — a cost of the test order, not of the path measured.
    http_port: u16,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "iperf3 single stream",
        run: Bench::iperf3,
    },
    Scenario {
        name: "wrk 1 connection, keep-alive",
        run: |b, s| b.wrk(s, 1, 1, false),
    },
    Scenario {
        name: "wrk 64 connections, keep-alive",
        run: |b, s| b.wrk(s, 2, 64, false),
    },
    Scenario {
        name: "wrk new connection per request, 8 concurrent",
        run: |b, s| b.wrk(s, 2, 8, true),
    },
];

const FIRST_HTTP_PORT: u16 = 8100;

struct Bench {
    node: Node,
    agent: Agent,
    server: std::net::Ipv4Addr,
}

/// Whether `--only` leaves the scenario `name` in: it contains the text, or no text was given.
pub(crate) fn chosen(name: &str, only: Option<&str>) -> bool {
    only.is_none_or(|only| name.contains(only))
}

pub fn run(rounds: usize, seconds: u32, only: Option<&str>) -> anyhow::Result<()> {
    build::require_root("the benchmark")?;
    let binaries = build::build(Profile::Release)?;
    // SAFETY: set before any thread that reads the environment exists.
    unsafe { std::env::set_var("MESH_AGENT_BIN", &binaries.agent) };
    let meshtb = binaries.meshtb.to_str().context("meshtb path")?;

    step("setting up the benchmark node");
    let mut node = Node::create("bench")?;
    node.add_pod("client")?;
    let server = node.add_pod("server")?.ip;
    let _iperf = quiet(&node, "server", "iperf3", &["-s", "-p", "5201"])?;
    let http_ports: Vec<u16> = (0..SCENARIOS.len() * MODES.len() * rounds)
        .map(|i| FIRST_HTTP_PORT + i as u16)
        .collect();
    let mut http_args = vec![
        "http-server".to_owned(),
        "--name".to_owned(),
        "server".to_owned(),
    ];
    for port in &http_ports {
        http_args.extend(["--port".to_owned(), port.to_string()]);
    }
    let http_args: Vec<&str> = http_args.iter().map(String::as_str).collect();
    let _http = quiet(&node, "server", meshtb, &http_args)?;
    node.wait_for_listener(SocketAddr::from((server, 5201)), Duration::from_secs(10))?;
    for port in &http_ports {
        node.wait_for_listener(SocketAddr::from((server, *port)), Duration::from_secs(10))?;
    }
    let workdir = std::env::temp_dir().join(format!("mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let config = config_for(&node, &[], "")?;
    let agent = Agent::start(&node, &config, &workdir)?;
    std::thread::sleep(SETTLE);
    let idle_rss = status_kib(agent.pid(), "VmRSS:").unwrap_or(0);
    let bench = Bench {
        node,
        agent,
        server,
    };

    println!(
        "  {rounds} rounds x {seconds}s per run; release build; everything shares the machine's {} cores, nothing pinned",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut table = Vec::new();
    let mut ports = http_ports.into_iter();
    for scenario in SCENARIOS.iter().filter(|s| chosen(s.name, only)) {
        step(scenario.name);
        // results[mode][metric] = samples
        let mut samples: Vec<Vec<(&'static str, Vec<f64>)>> = vec![Vec::new(), Vec::new()];
        let mut proxy_cpu = 0.0;
        for round in 0..rounds {
            for (index, mode) in MODES.iter().enumerate() {
                bench.enroll(mode.enrolled)?;
                let cpu_before = cpu_seconds(bench.agent.pid())?;
                let run = Run {
                    seconds,
                    http_port: ports.next().context("out of server ports")?,
                };
                let result = (scenario.run)(&bench, run)?;
                if mode.enrolled {
                    proxy_cpu += cpu_seconds(bench.agent.pid())? - cpu_before;
                }
                println!(
                    "  round {} {:<8} {}",
                    round + 1,
                    mode.name,
                    format_result(&result)
                );
                for (metric, value) in result {
                    match samples[index].iter_mut().find(|(m, _)| *m == metric) {
                        Some((_, values)) => values.push(value),
                        None => samples[index].push((metric, vec![value])),
                    }
                }
            }
        }
        for ((metric, direct), (_, proxied)) in samples[0].iter().zip(&samples[1]) {
            table.push((scenario.name, *metric, median(direct), median(proxied)));
        }
        if let (Some((_, direct)), Some((_, proxied))) = (samples[0].first(), samples[1].first()) {
            // A median hides a collapse in later rounds (connection churn once did that).
            let (direct, proxied) = worst_round(direct, proxied);
            table.push((scenario.name, "worst round, same unit", direct, proxied));
        }
        table.push((
            scenario.name,
            "proxy CPU s per run",
            0.0,
            proxy_cpu / rounds as f64,
        ));
    }
    bench.enroll(false)?;

    step("results (medians; ratio = proxied / direct)");
    println!(
        "  {:<46} {:<22} {:>12} {:>12} {:>8}",
        "scenario", "metric", "direct", "proxied", "ratio"
    );
    for (scenario, metric, direct, proxied) in &table {
        let ratio = if *direct > 0.0 {
            format!("{:.2}x", proxied / direct)
        } else {
            "-".into()
        };
        println!("  {scenario:<46} {metric:<22} {direct:>12.1} {proxied:>12.1} {ratio:>8}");
    }
    print_goals(&table);
    let pid = bench.agent.pid();
    println!(
        "  proxy RSS: idle {idle_rss} KiB, after the runs {} KiB, peak {} KiB (the peak is start-up: parsing the kernel's BTF)",
        status_kib(pid, "VmRSS:").unwrap_or(0),
        status_kib(pid, "VmHWM:").unwrap_or(0)
    );
    let metrics = bench.agent.metrics(&bench.node)?;
    let series_sum = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |sum, value| sum + value)
    };
    println!(
        "  connections through the proxy: {:.0}; of them without an original destination: {:.0}",
        series_sum("mesh_agent_proxy_connections_opened_total"),
        series_sum(
            "mesh_agent_proxy_connections_failed_total{destination=\"unknown\",reason=\"no_original_destination\"}"
        )
    );
    let failures: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("mesh_agent_proxy_connections_failed_total"))
        .collect();
    if !failures.is_empty() {
        println!(
            "  proxy connection failures during the runs:\n    {}",
            failures.join("\n    ")
        );
    }
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(())
}

/// The L4 goals (issue 19, docs/performance.md), each as this run's ratio proxied / direct:
/// the scenario's first metric's median, or for connection churn its worst round (no round
/// may collapse).
fn print_goals(table: &[(&str, &str, f64, f64)]) {
    const GOALS: [(&str, bool, f64); 4] = [
        ("iperf3 single stream", false, 0.90),
        ("wrk 1 connection, keep-alive", false, 0.85),
        ("wrk 64 connections, keep-alive", false, 0.60),
        ("wrk new connection per request, 8 concurrent", true, 0.60),
    ];
    step("goals (ratios from this run)");
    for (scenario, worst, goal) in GOALS {
        let rows: Vec<_> = table.iter().filter(|(s, ..)| *s == scenario).collect();
        let row = match worst {
            true => rows
                .iter()
                .find(|(_, m, ..)| *m == "worst round, same unit"),
            false => rows.first(),
        };
        if let Some((_, metric, direct, proxied)) = row {
            println!(
                "  {scenario} ({metric}): {:.2}x direct (goal >= {goal:.2}x)",
                proxied / direct.max(f64::EPSILON)
            );
        }
    }
}

impl Bench {
    fn enroll(&self, enrolled: bool) -> anyhow::Result<()> {
        set_client_enrolled(&self.node, enrolled)
    }

    fn client(&self, program: &str, args: &[&str], seconds: u32) -> anyhow::Result<Output> {
        run_client(&self.node, program, args, seconds)
    }

    fn iperf3(&self, run: Run) -> anyhow::Result<Measurement> {
        let seconds = run.seconds;
        let output = self.client(
            "iperf3",
            &[
                "-c",
                &self.server.to_string(),
                "-p",
                "5201",
                "-t",
                &seconds.to_string(),
                "-J",
            ],
            seconds,
        )?;
        let json = String::from_utf8_lossy(&output.stdout);
        let received = json
            .split("\"sum_received\"")
            .nth(1)
            .and_then(|rest| rest.split("\"bits_per_second\":").nth(1))
            .and_then(|rest| rest.split([',', '\n', '}']).next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("no sum_received.bits_per_second in iperf3 output")?;
        Ok(vec![("Gbit/s", received / 1e9)])
    }

    fn wrk(
        &self,
        run: Run,
        threads: u32,
        connections: u32,
        close: bool,
    ) -> anyhow::Result<Measurement> {
        let seconds = run.seconds;
        let url = format!("http://{}:{}/", self.server, run.http_port);
        let (threads, connections, duration) = (
            threads.to_string(),
            connections.to_string(),
            format!("{seconds}s"),
        );
        let mut args = vec![
            "-t",
            &threads,
            "-c",
            &connections,
            "-d",
            &duration,
            "--latency",
        ];
        if close {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&url);
        let output = self.client("wrk", &args, seconds)?;
        parse_wrk(&String::from_utf8_lossy(&output.stdout))
    }
}

/// The round in which proxied did worst against direct: (direct, proxied) of that round.
fn worst_round(direct: &[f64], proxied: &[f64]) -> (f64, f64) {
    direct
        .iter()
        .zip(proxied)
        .map(|(d, p)| (*d, *p))
        .filter(|(d, _)| *d > 0.0)
        .min_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)))
        .unwrap_or((0.0, 0.0))
}

/// Enrolls the `client` pod (its traffic goes through the proxy) or unenrolls it (direct),
/// through the agent's admin endpoint.
pub(crate) fn set_client_enrolled(node: &Node, enrolled: bool) -> anyhow::Result<()> {
    let method = if enrolled { "POST" } else { "DELETE" };
    let netns = node.pod("client")?.netns_name().to_owned();
    let (status, body) = node.admin(method, &format!("/enrollment?netns={netns}"))?;
    // Unenrolling a pod that is not enrolled is fine here.
    if enrolled && status != 200 {
        bail!("enrolling the client failed: {status} {body}");
    }
    Ok(())
}

/// Runs a load generator in the `client` pod for a run of `seconds`; fails if it does.
pub(crate) fn run_client(
    node: &Node,
    program: &str,
    args: &[&str],
    seconds: u32,
) -> anyhow::Result<Output> {
    let output = node.run_in_pod(
        "client",
        program,
        args,
        Duration::from_secs(u64::from(seconds) + 30),
    )?;
    if !output.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

pub(crate) fn quiet(node: &Node, pod: &str, program: &str, args: &[&str]) -> anyhow::Result<Proc> {
    let mut command = node.pod_command(pod, program)?;
    command
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Proc::spawn(&format!("{program} in {pod}"), command)
}

/// Requests/s and the p50/p99 latencies (µs) of a `wrk --latency` report.
pub(crate) fn parse_wrk(text: &str) -> anyhow::Result<Measurement> {
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .and_then(|v| parse_duration_us(v.trim()))
            .with_context(|| format!("no {p} latency in wrk output:\n{text}"))
    };
    Ok(vec![
        ("requests/s", rps),
        ("p50 latency us", percentile("50%")?),
        ("p99 latency us", percentile("99%")?),
    ])
}

fn parse_duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    match unit {
        "us" => Some(value),
        "ms" => Some(value * 1e3),
        "s" => Some(value * 1e6),
        _ => None,
    }
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub(crate) fn format_result(result: &[(&str, f64)]) -> String {
    result
        .iter()
        .map(|(metric, value)| format!("{metric}={value:.1}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// User + system CPU seconds of a process, from /proc/PID/stat.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("bad stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// A `kB` field of /proc/PID/status.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_report() {
        let text = "  Latency Distribution\n     50%   52.00us\n     75%   60.00us\n     90%    1.20ms\n     99%    2.50ms\n  1000 requests in 1.00s, 100.00KB read\nRequests/sec:  12345.67\nTransfer/sec:    100.00KB\n";
        let parsed = parse_wrk(text).unwrap();
        assert_eq!(
            parsed,
            vec![
                ("requests/s", 12345.67),
                ("p50 latency us", 52.0),
                ("p99 latency us", 2500.0)
            ]
        );
    }

    #[test]
    fn the_worst_round_is_the_lowest_ratio() {
        assert_eq!(
            worst_round(&[10.0, 20.0, 10.0], &[6.0, 2.0, 9.0]),
            (20.0, 2.0)
        );
        assert_eq!(worst_round(&[], &[]), (0.0, 0.0));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
