//! `mesh-agent run`: start-up in an order that fails early and cleanly, the signal loop
//! (SIGHUP reloads, SIGTERM/SIGINT stop), and the shutdown sequence; and `mesh-agent
//! gateway`, a virtual gateway served standalone.
use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use mesh_xds::{
    client::{Settings, XdsState},
    resources,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    admin::{self, AdminState},
    config::{Config, XdsConfig, XdsTlsConfig},
    dataplane::{
        self, MeshState, UpstreamSettings, dns, identity,
        metrics::{EndpointCollector, XdsCollector, XdsWatch, XdsWatchPoisoned},
        workloads::{Workload, Workloads},
    },
    dns::{self as dns_server, DnsMetrics, DnsSockets},
    host,
    listen::{self, bind_listener},
    proxy::{ProxyInputs, ProxySettings, gateway, inbound, outbound::Outbound},
    redirect::{
        Enrollments, RedirectCounters, Redirector, cgroup,
        metrics::{PodConnectCollector, RedirectCollector},
        namespaces,
        pins::Pins,
        pod_netns, pods, preflight,
    },
    telemetry::{access_log::AccessLogWriters, metrics::Metrics, trace::Tracer},
    tls::{TlsMetrics, TlsStore},
};

/// How long a taking-over agent waits for its mesh before it listens: its predecessor serves
/// meanwhile, and connections this agent accepted without its mesh would fail.
const TAKEOVER_MESH_WAIT: Duration = Duration::from_secs(30);

/// The sockets the agent serves on, all shared with a predecessor or successor
/// (SO_REUSEPORT) during an upgrade.
struct Listeners {
    proxy: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    admin_socket: tokio::net::UnixListener,
    dns: Option<DnsSockets>,
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Self> {
        let proxy = bind_listener("proxy.outbound_addr", config.proxy.outbound_addr.into())?;
        let admin = bind_listener("admin.addr", config.admin.addr)?;
        let admin_socket = admin::bind_socket(&config.admin.socket).with_context(|| {
            format!(
                "cannot listen on admin.socket {}",
                config.admin.socket.display()
            )
        })?;
        let dns = match config.dns.enabled {
            true => {
                let addr = SocketAddrV4::new(*config.proxy.outbound_addr.ip(), config.dns.port);
                Some(DnsSockets::bind(addr).await?)
            }
            false => None,
        };
        Ok(Self {
            proxy,
            admin,
            admin_socket,
            dns,
        })
    }
}

/// Until the control plane's first mesh is received and applied (bounded): a taking-over
/// agent's listeners join its predecessor's only when it can serve what they accept.
async fn wait_for_mesh(xds: Option<&Xds>) {
    let Some(xds) = xds else {
        return;
    };
    let mut received = xds.state.clone();
    let wait = async {
        let _ = received
            .wait_for(|s| {
                [resources::LISTENER, resources::CLUSTER]
                    .iter()
                    .all(|t| s.versions.contains_key(*t))
            })
            .await;
        // Route tables and endpoints follow the listeners and clusters that name them; the
        // mesh is whole once nothing more arrives for a moment (and applied within it).
        while let Ok(Ok(())) = tokio::time::timeout(MESH_SETTLE, received.changed()).await {}
    };
    match tokio::time::timeout(TAKEOVER_MESH_WAIT, wait).await {
        Ok(()) => info!("mesh received; listening beside the previous agent"),
        Err(_) => {
            warn!(wait = ?TAKEOVER_MESH_WAIT, "no mesh from the control plane yet; listening anyway")
        }
    }
}

/// How long the xDS state must stay unchanged before a taking-over agent listens.
const MESH_SETTLE: Duration = Duration::from_millis(300);

/// Runs the agent with `config`, read from `config_path` (re-read on SIGHUP), taking the mesh
/// from the control plane `config.xds` names (if any).
pub async fn run(config_path: &Path, mut config: Config) -> anyhow::Result<()> {
    preflight::check()?;
    raise_fd_limit();
    let cgroup = cgroup::resolve(config.cgroup_path.as_deref())?;
    let pins = Pins::for_cgroup(&config.bpffs_path, &cgroup)?;
    // An earlier agent's redirect is still attached: it may still be serving (an upgrade) or
    // be gone (killed); either way pods' connects go to the proxy address, so this agent only
    // listens once it has the mesh, and shares every port with the old one meanwhile.
    let takeover = pins.attached();
    listen::migrate_requests_on_close();
    // Listeners before programs: a port in use fails start-up before the kernel is touched.
    let mut listeners = match takeover {
        true => {
            info!(pins = %pins.dir().display(), "taking over the pinned redirect");
            None
        }
        false => Some(Listeners::bind(&config).await?),
    };

    let mut redirector = Redirector::load(&cgroup, config.proxy.outbound_addr, &pins)?;
    redirector.set_exclusions(&config.excluded_cidrs(), &config.redirect.exclude_ports)?;
    redirector.set_policy(config.redirect.ipv6, config.redirect.udp)?;
    let (inbound_pods, inbound_rx) = tokio::sync::mpsc::unbounded_channel();
    let (hooks, inbound_ports) = match config.proxy.inbound_port {
        0 => (None, None),
        port => {
            let (hooks, ports) = redirector.inbound_hooks(&pins, port, inbound_pods)?;
            (Some(hooks), Some(ports))
        }
    };
    let mut enrollments = redirector
        .take_enrollments(hooks)
        .context("enrollment map already taken")?;
    enrollments.set_dns_capture(config.dns.capture_policy());
    let mesh_state = MeshState::default();
    let xds_watch = XdsWatch::default();
    let workloads = enrollments.workloads();
    let mut metrics = Metrics::default();
    let tls = TlsStore::default();
    let dns_metrics = DnsMetrics::default();
    let sources = MetricSources {
        dns: dns_metrics.clone(),
        tls: tls.metrics.clone(),
        enrolled: enrollments.gauge(),
        redirect: Some(redirector.counters()),
        state: mesh_state.clone(),
        workloads: workloads.clone(),
        xds: Arc::clone(&xds_watch),
    };
    sources.register(&mut metrics);
    let metrics = Arc::new(metrics);
    let enrollments = Arc::new(Mutex::new(enrollments));
    sync_enrollment(&enrollments, &config);

    let settings = ProxySettings {
        mark: Some(config.proxy.mark),
        connect_timeout: config.proxy.connect_timeout,
    };
    let mut inputs = ProxyInputs::recording(mesh_state, workloads, &metrics, tls, settings);
    let trace_export = match &config.tracing {
        Some(tracing) => {
            let (tracer, export) = Tracer::spawn(tracing, metrics.traces.clone())?;
            inputs.tracer = Some(tracer);
            info!(endpoint = %tracing.endpoint, protocol = ?tracing.protocol, sampling_rate = tracing.sampling_rate, "exporting spans");
            Some(export)
        }
        None => None,
    };
    let xds = config.xds.as_ref().map(start_xds);
    if let Some(xds) = &xds {
        *xds_watch.lock().map_err(|_| XdsWatchPoisoned)? = Some(xds.state.clone());
        follow_mesh(
            xds,
            &inputs,
            &metrics,
            resolver(&config.discovery.resolv_conf),
        );
    }
    let listeners = match listeners.take() {
        Some(listeners) => listeners,
        None => {
            wait_for_mesh(xds.as_ref()).await;
            Listeners::bind(&config).await?
        }
    };
    let Listeners {
        proxy: proxy_listener,
        admin: admin_listener,
        admin_socket,
        dns: dns_sockets,
    } = listeners;
    let admin_socket_file = admin::SocketFile::of(&config.admin.socket);
    // Inbound first: during an upgrade the pods' ports then point at this agent's listeners
    // before its outbound side pools connections to them (not to the old agent's, which
    // close as it drains).
    let inbound_task =
        inbound_ports.map(|ports| tokio::spawn(inbound::run(inbound_rx, ports, inputs.clone())));
    tokio::task::yield_now().await;
    let outbound = Outbound::new(proxy_listener, redirector.orig_dst(), inputs.clone());
    let proxy_task = tokio::spawn(outbound.run(config.proxy.drain_timeout));
    redirector.start()?;
    if let Some(sockets) = dns_sockets {
        let addr = sockets.addr;
        let origins = dns_server::Origins {
            udp: redirector.dns_origins(),
            tcp: redirector.orig_dst(),
        };
        dns_server::start(
            sockets,
            &config.dns,
            origins,
            inputs.state.clone(),
            inputs.workloads.clone(),
            dns_metrics,
            inputs.metrics.accept_errors("dns"),
        );
        redirector.capture_dns(addr)?;
    }

    // Pods the control plane lists for this node (Kubernetes) are enrolled as it says; the
    // namespace files considered are those discovery would look at.
    let scanner = pod_netns::Scanner::new(
        config.enrollment.netns_dir.clone(),
        config
            .enrollment
            .discover
            .clone()
            .unwrap_or_else(|| "*".to_owned()),
        config.enrollment.find_pods_by_process,
    );
    tokio::spawn(pods::run(
        Arc::clone(&enrollments),
        inputs.state.clone(),
        scanner,
        inputs.drain.clone(),
    ));
    if let Some(pattern) = &config.enrollment.discover {
        tokio::spawn(namespaces::run(
            Arc::clone(&enrollments),
            inputs.state.clone(),
            config.enrollment.netns_dir.clone(),
            pattern.clone(),
            inputs.drain.clone(),
        ));
    }
    let ready = Arc::new(AtomicBool::new(true));
    let stop_admin = CancellationToken::new();
    let admin_state = Arc::new(AdminState {
        metrics,
        ready: Arc::clone(&ready),
        enrollments: Some(Arc::clone(&enrollments)),
        netns_dir: config.enrollment.netns_dir.clone(),
        xds: xds.as_ref().map(|x| x.state.clone()),
    });
    let admin_tasks = [
        tokio::spawn(admin::serve_tcp(
            admin_listener,
            Arc::clone(&admin_state),
            stop_admin.clone(),
        )),
        tokio::spawn(admin::serve_socket(
            admin_socket,
            admin_state,
            stop_admin.clone(),
        )),
    ];
    info!(
        cgroup = %cgroup.display(),
        proxy = %config.proxy.outbound_addr,
        admin = %config.admin.addr,
        admin_socket = %config.admin.socket.display(),
        "mesh-agent running"
    );

    let access_logs = inputs.access_logs.clone();
    wait_for_stop(
        config_path,
        &mut config,
        &mut redirector,
        &enrollments,
        &access_logs,
    )
    .await?;

    // The redirect stays on: a successor sharing the ports takes the new connections (and,
    // with tcp_migrate_req, those still queued here); without one, connects are refused
    // until an agent runs again.
    info!("stopping: closing listeners, draining connections; the redirect stays attached");
    ready.store(false, Ordering::Relaxed);
    // The pods' inbound lookups need no handover: a successor put its own listeners in the
    // shared map as it captured each pod; without one, this agent's go from the map as they
    // close, and connections to the captured ports are refused until an agent runs again.
    inputs.drain.cancel();
    // Inbound connections got the same drain period alongside; what is still open now (idle
    // keep-alive connections from callers' pools, too) is cut.
    let report = proxy_task.await.context("outbound proxy task")?;
    inputs.cut.cancel();
    if let Some(task) = inbound_task {
        let _ = task.await;
    }
    drop(redirector);
    if let Some(export) = trace_export {
        export.finish(TRACE_FLUSH).await;
    }
    if let Some(xds) = xds {
        xds.stop.cancel();
    }
    stop_admin.cancel();
    for task in admin_tasks {
        let _ = task.await;
    }
    // A stale socket file would only mislead; a successor's is left alone.
    admin_socket_file.remove_if_unchanged();
    info!(
        connections_cut = report.cut,
        pins = %pins.dir().display(),
        "mesh-agent stopped; the redirect stays attached (mesh-agent uninstall removes it)"
    );
    Ok(())
}

/// How long the spans of the last requests may take to reach the collector at shutdown.
const TRACE_FLUSH: Duration = Duration::from_secs(2);

/// The xDS client, running.
struct Xds {
    state: watch::Receiver<Arc<XdsState>>,
    /// Where workload certificates are signed (the same control plane).
    signer: identity::Signer,
    stop: CancellationToken,
}

/// What `mesh-agent gateway` serves, and where.
pub struct GatewayOptions {
    /// The virtual gateway, `mesh/gateway/name`.
    pub gateway: String,
    /// The address its listener ports are bound on.
    pub listen: IpAddr,
    /// /metrics, /healthz, /readyz.
    pub admin: SocketAddr,
    pub xds: XdsConfig,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
}

/// Serves one virtual gateway on this host — no redirect, no privileges: its listener ports
/// bound on `options.listen`, the mesh from `options.xds`. SIGTERM or SIGINT drain it.
pub async fn run_gateway(options: GatewayOptions) -> anyhow::Result<()> {
    raise_fd_limit();
    let admin_listener = bind_listener("--admin", options.admin)?;
    let mesh_state = MeshState::default();
    let workloads = Workloads::default();
    // The gateway is this process's one workload: its automatic mTLS certificate is made here.
    workloads.insert(
        1,
        Workload {
            netns: "standalone gateway".into(),
            virtual_node: Some(options.gateway.clone()),
            addresses: Vec::new(),
        },
    );
    let xds_watch = XdsWatch::default();
    let tls = TlsStore::default();
    let mut metrics = Metrics::default();
    MetricSources {
        dns: DnsMetrics::default(),
        enrolled: Arc::default(),
        tls: tls.metrics.clone(),
        redirect: None,
        state: mesh_state.clone(),
        workloads: workloads.clone(),
        xds: Arc::clone(&xds_watch),
    }
    .register(&mut metrics);
    let metrics = Arc::new(metrics);
    let settings = ProxySettings {
        mark: None,
        connect_timeout: options.connect_timeout,
    };
    let inputs = ProxyInputs::recording(mesh_state, workloads, &metrics, tls, settings);
    let xds = start_xds(&options.xds);
    *xds_watch.lock().map_err(|_| XdsWatchPoisoned)? = Some(xds.state.clone());
    follow_mesh(
        &xds,
        &inputs,
        &metrics,
        resolver(Path::new("/etc/resolv.conf")),
    );
    let gateway_task = tokio::spawn(gateway::run(
        options.gateway.clone(),
        options.listen,
        inputs.clone(),
    ));
    let ready = Arc::new(AtomicBool::new(true));
    let stop_admin = CancellationToken::new();
    let admin_state = Arc::new(AdminState {
        metrics,
        ready: Arc::clone(&ready),
        enrollments: None,
        netns_dir: PathBuf::new(),
        xds: Some(xds.state.clone()),
    });
    let admin_task = tokio::spawn(admin::serve_tcp(
        admin_listener,
        admin_state,
        stop_admin.clone(),
    ));
    info!(gateway = %options.gateway, listen = %options.listen, admin = %options.admin, "mesh-agent gateway running");
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    info!("stopping: draining connections");
    ready.store(false, Ordering::Relaxed);
    inputs.drain.cancel();
    if tokio::time::timeout(options.drain_timeout, gateway_task)
        .await
        .is_err()
    {
        info!("drain period over; cutting what is still open");
    }
    inputs.cut.cancel();
    xds.stop.cancel();
    stop_admin.cancel();
    let _ = admin_task.await;
    info!("mesh-agent gateway stopped");
    Ok(())
}

/// Applies what the control plane sends to the proxy's inputs: the data plane, TLS files
/// re-read as they change, workload certificates (automatic mTLS), until `xds.stop`.
fn follow_mesh(xds: &Xds, inputs: &ProxyInputs, metrics: &Metrics, resolver: dns::Resolver) {
    tokio::spawn(dataplane::follow(
        xds.state.clone(),
        inputs.state.clone(),
        UpstreamSettings {
            mark: inputs.settings.mark,
            metrics: metrics.mesh.clone(),
            resolver,
            tls: inputs.tls.clone(),
        },
        xds.stop.clone(),
    ));
    tokio::spawn(inputs.tls.clone().follow_files(xds.stop.clone()));
    // Automatic mTLS: workload keys made here, signed by the control plane.
    tokio::spawn(identity::keep_certificates(
        inputs.state.clone(),
        inputs.workloads.clone(),
        inputs.tls.clone(),
        xds.signer.clone(),
        xds.stop.clone(),
    ));
}

/// Starts the xDS client toward the control plane `xds` names.
fn start_xds(xds: &XdsConfig) -> Xds {
    let address = xds.address.clone();
    let node_id = xds
        .node_id
        .clone()
        .unwrap_or_else(|| host::hostname().unwrap_or("mesh-agent").to_owned());
    let virtual_nodes = xds.virtual_nodes.clone();
    let (sender, state) = watch::channel(Arc::new(XdsState::default()));
    let stop = CancellationToken::new();
    let tls = xds.tls.as_ref().map(XdsTlsConfig::settings);
    let settings = Settings {
        endpoint: address.clone(),
        tls: tls.clone(),
        node: mesh_xds::client::node(&node_id, &virtual_nodes),
    };
    tokio::spawn(mesh_xds::client::run(settings, sender, stop.clone()));
    info!(%address, node = %node_id, tls = tls.is_some(), "taking the mesh from xDS");
    let signer = identity::Signer {
        endpoint: address,
        tls,
        node_id,
    };
    Xds {
        state,
        signer,
        stop,
    }
}

/// The DNS client of service discovery; without a usable resolv.conf, host files and address
/// literals still resolve (and the log says why names do not).
fn resolver(resolv_conf: &Path) -> dns::Resolver {
    dns::Resolver::from_resolv_conf(resolv_conf).unwrap_or_else(|error| {
        warn!(%error, "DNS service discovery has no nameservers; only /etc/hosts and addresses resolve");
        dns::Resolver::hosts_only()
    })
}

/// What /metrics reads at scrape time from the other subsystems.
struct MetricSources {
    /// The DNS server's counters (registered even where it does not run: always zero there).
    dns: DnsMetrics,
    enrolled: Arc<AtomicI64>,
    tls: TlsMetrics,
    /// None where no programs are loaded (the in-process test of the documented names).
    redirect: Option<Arc<RedirectCounters>>,
    state: MeshState,
    workloads: Workloads,
    xds: XdsWatch,
}

impl MetricSources {
    fn register(self, metrics: &mut Metrics) {
        self.dns.register(metrics);
        self.tls.register(metrics);
        if let Some(counters) = &self.redirect {
            metrics.register_collector(Box::new(PodConnectCollector::new(
                Arc::clone(counters),
                self.workloads,
                self.state.clone(),
            )));
        }
        metrics.register_collector(Box::new(RedirectCollector {
            enrolled: self.enrolled,
            counters: self.redirect,
        }));
        metrics.register_collector(Box::new(EndpointCollector(self.state)));
        metrics.register_collector(Box::new(XdsCollector(self.xds)));
    }
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads the config file and reopens access logs.
async fn wait_for_stop(
    config_path: &Path,
    config: &mut Config,
    redirector: &mut Redirector,
    enrollments: &Mutex<Enrollments>,
    access_logs: &AccessLogWriters,
) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = hangup.recv() => {
                access_logs.reopen();
                reload(config_path, config, redirector, enrollments);
            }
        }
    }
}

/// Applies what can change without a restart (exclusions, enrollment); a bad file keeps the
/// running configuration.
fn reload(
    config_path: &Path,
    config: &mut Config,
    redirector: &mut Redirector,
    enrollments: &Mutex<Enrollments>,
) {
    let new = match Config::load(config_path) {
        Ok(new) => new,
        Err(error) => {
            error!(%error, "config reload rejected; keeping the running configuration");
            return;
        }
    };
    for (changed, key) in [
        (new.proxy != config.proxy, "proxy"),
        (new.admin != config.admin, "admin"),
        (new.cgroup_path != config.cgroup_path, "cgroup_path"),
        (new.bpffs_path != config.bpffs_path, "bpffs_path"),
        (new.discovery != config.discovery, "discovery"),
        (new.tracing != config.tracing, "tracing"),
        (new.dns != config.dns, "dns"),
    ] {
        if changed {
            warn!(
                key,
                "changed in the config file; takes effect after a restart"
            );
        }
    }
    if let Err(error) =
        redirector.set_exclusions(&new.excluded_cidrs(), &new.redirect.exclude_ports)
    {
        // Only claim the running configuration was kept when the maps really hold it again;
        // otherwise say what they hold, so the operator knows a retry is needed.
        if error.kept_previous() {
            error!(%error, "config reload rejected: applying exclusions failed; keeping the running configuration");
        } else {
            error!(%error, "config reload failed part way: the exclusion maps hold part of the new lists, enrollment is unchanged; fix the cause and send SIGHUP again");
        }
        return;
    }
    if let Err(error) = redirector.set_policy(new.redirect.ipv6, new.redirect.udp) {
        error!(%error, "config reload failed part way: the exclusions are the new ones, redirect.ipv6 and redirect.udp the previous ones, enrollment is unchanged; fix the cause and send SIGHUP again");
        return;
    }
    config.redirect = new.redirect;
    config.enrollment = new.enrollment;
    sync_enrollment(enrollments, config);
    info!(path = %config_path.display(), "config reloaded");
}

/// Each relayed connection holds six descriptors (two sockets, two splice pipes): lift the
/// soft limit to the hard one so the default 1024 does not cap the proxy at ~170 connections.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!(%error, soft, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(error) => warn!(%error, "cannot read the open-file limit"),
    }
}

fn sync_enrollment(enrollments: &Mutex<Enrollments>, config: &Config) {
    let Ok(mut enrollments) = enrollments.lock() else {
        error!("enrollment table poisoned; enrollment unchanged");
        return;
    };
    for error in enrollments.sync(&config.netns_refs()) {
        error!(%error, "enrollment");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The metric names (without suffixes) docs/metrics.md documents; the eBPF-backed ones
    /// apart, since an in-process test has no kernel maps.
    fn documented() -> (BTreeSet<String>, BTreeSet<String>) {
        let doc = include_str!("../../docs/metrics.md");
        let mut plain = BTreeSet::new();
        let mut ebpf = BTreeSet::new();
        for row in doc.lines().filter(|l| l.starts_with("| `")) {
            let name = row.split('`').nth(1).unwrap_or_default().to_owned();
            if row.contains("(eBPF)") {
                ebpf.insert(name);
            } else {
                plain.insert(name);
            }
        }
        (plain, ebpf)
    }

    /// Names of the series families in an exposition, as users query them.
    fn served(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let mut words = l.split_whitespace();
                let name = words.next().unwrap_or_default();
                match words.next() {
                    Some("counter") => format!("{name}_total"),
                    _ => name.to_owned(),
                }
            })
            .collect()
    }

    #[test]
    fn docs_list_exactly_what_is_served() {
        let mut metrics = Metrics::default();
        MetricSources {
            dns: DnsMetrics::default(),
            enrolled: Arc::default(),
            tls: TlsMetrics::default(),
            redirect: None,
            state: MeshState::default(),
            workloads: Workloads::default(),
            xds: XdsWatch::default(),
        }
        .register(&mut metrics);
        let text = metrics.encode().unwrap();
        let (plain, ebpf) = documented();
        assert!(!ebpf.is_empty());
        assert_eq!(served(&text), plain, "docs/metrics.md vs /metrics:\n{text}");
    }
}
