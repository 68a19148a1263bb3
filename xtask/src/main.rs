//! Project tasks: `cargo xtask build | check | test | fuzz | imports | sandbox | bench | bench-l7 | bench-memory | bench-mtls | bench-xds | bench-dns`.
mod bench;
mod bench_dns;
mod bench_l7;
mod bench_memory;
mod bench_mtls;
mod bench_xds;
mod build;
mod check;
mod fuzz;
mod imports;
mod sandbox;
mod soak;
mod test;

use clap::Parser;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "mesh-agent project tasks")]
enum Task {
    /// Install missing prerequisites (nightly rust-src, LLVM 22, bpf-linker, test tools), then
    /// build the eBPF object and the agent.
    Build {
        /// Optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Everything that needs no root: formatting, clippy (host crates and the eBPF crate),
    /// the import graph (no loops), unit and in-process tests.
    Check,
    /// Everything CI checks: formatting, clippy (warnings denied), unit tests, and the
    /// end-to-end tests with real eBPF (root). Fails if any end-to-end test did not run.
    Test,
    /// Build the cargo-fuzz targets (nightly) and run each for a bounded time, one at a time;
    /// fails on a crash, panic, hang or out-of-memory (docs/fuzzing.md).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Only this target (e.g. `http_route`).
        #[arg(long)]
        target: Option<String>,
        /// Build unoptimised without AddressSanitizer (what `check` runs): quicker to build.
        #[arg(long)]
        quick: bool,
    },
    /// The file-level import graph of every crate: fails if files import each other in a loop.
    Imports {
        /// Another checkout to look at (e.g. an older commit's worktree); default: this one.
        #[arg(long)]
        root: Option<std::path::PathBuf>,
    },
    /// Run a throwaway mesh node on this machine: an App Mesh mesh (client, products, prices
    /// with a v1/v2 canary) in pod network namespaces, real servers, the agent routing their
    /// traffic; print per-service counts; keep serving until Ctrl-C, then clean up.
    Sandbox {
        /// Clean up after the demo traffic instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Benchmark direct vs redirected-through-the-proxy connections and print ratios.
    Bench {
        /// Rounds per measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per load-generator run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Only scenarios whose name contains this text (e.g. `iperf3`, `1 connection`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Benchmark L7: HTTP/1.1 and HTTP/2 through mesh-agent with a weighted route vs direct vs
    /// HAProxy with the same routing: max req/s, req/s per proxy core, p50/p99 at 1000 req/s.
    BenchL7 {
        /// Rounds per measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per load-generator run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Only scenarios whose name contains this text (e.g. `HTTP/2 max`, `1000 req/s`).
        #[arg(long)]
        only: Option<String>,
        /// Another mesh-agent binary (say, a copy of the build before a change) measured
        /// beside this build in every round, for a before/after ratio from one run.
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
    },
    /// Benchmark mutual TLS between node proxies: two nodes with an agent each, a client pod
    /// on node 1 reaching a server pod on node 2 directly, through both proxies in plain text,
    /// and through both with mTLS between them: single-stream throughput, 1 KiB round trip,
    /// new connections/s, proxy CPU per GB; ratios against direct and the peer bar.
    BenchMtls {
        /// Rounds per measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per load-generator run.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Only scenarios whose name contains this text (e.g. `iperf3`, `req/resp`, `new connection`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Benchmark the agent's DNS server with dnsperf: queries/s answered for a mesh name, and
    /// a forwarded query vs asking the pod's resolver directly (queries/s, added latency).
    BenchDns {
        /// Rounds per measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per dnsperf run.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// Benchmark memory: RSS per idle keep-alive connection through mesh-agent and through
    /// HAProxy in the same run, and mesh-agent's idle RSS with a mesh of many services.
    BenchMemory {
        /// Idle connections held through mesh-agent (HAProxy: at most its maxconn, 4000).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Virtual services in the mesh the idle agent is measured with.
        #[arg(long, default_value_t = 100)]
        services: usize,
    },
    /// Soak: a million requests (by default) through mesh-agent in chunks, its memory and
    /// descriptors after each; then idle until pooled upstream connections close. Fails on
    /// a failed request, memory that keeps growing, or descriptors that do not come back.
    Soak {
        /// Requests to send in all.
        #[arg(long, default_value_t = 1_000_000)]
        requests: u64,
        /// Seconds per chunk (one wrk run); a sample after each.
        #[arg(long, default_value_t = 10)]
        chunk_seconds: u32,
    },
    /// Benchmark the control plane and a node's xDS client (separate processes, gRPC) on a
    /// generated mesh: start-up, first sync, change propagation, memory.
    BenchXds {
        /// Virtual services in the generated mesh.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Task::parse() {
        Task::Build { release } => build::build(build::Profile::from_release(release)).map(drop),
        Task::Test => test::run(),
        Task::Check => check::run_checks(),
        Task::Fuzz {
            seconds,
            target,
            quick,
        } => {
            build::install_prerequisites()?;
            let build = if quick {
                fuzz::Build::Quick
            } else {
                fuzz::Build::Thorough
            };
            fuzz::run_fuzz(seconds, target.as_deref(), build)
        }
        Task::Imports { root } => imports::run(root.as_deref()),
        Task::Sandbox { once } => sandbox::run(once),
        Task::Bench {
            rounds,
            seconds,
            only,
        } => bench::run(rounds, seconds, only.as_deref()),
        Task::BenchL7 {
            rounds,
            seconds,
            only,
            baseline,
        } => bench_l7::run(rounds, seconds, only.as_deref(), baseline),
        Task::BenchMtls {
            rounds,
            seconds,
            only,
        } => bench_mtls::run(rounds, seconds, only.as_deref()),
        Task::BenchXds { services } => bench_xds::run(services),
        Task::Soak {
            requests,
            chunk_seconds,
        } => soak::run(requests, chunk_seconds),
        Task::BenchDns { rounds, seconds } => bench_dns::run(rounds, seconds),
        Task::BenchMemory {
            connections,
            services,
        } => bench_memory::run(connections, services),
    }
}
