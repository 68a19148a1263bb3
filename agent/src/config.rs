//! The agent's configuration file (YAML). Every key is documented in docs/config.md; unknown
//! keys are rejected with their name and position.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::{MAX_ENROLLED_NETNS, MAX_EXCLUSIONS};
use ipnet::Ipv4Net;
use mesh_xds::channel::{ControlPlaneTls, NodeCertificate, check_address};
use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The underlying error is part of the message and not a `source`: error chains
    // (`{:#}`) would print it twice.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {error}")]
    Parse {
        path: PathBuf,
        error: serde_yaml::Error,
    },
    #[error("config file {path}: environment variable {name} (used as ${{{name}}}) is not set")]
    UnsetVariable { path: PathBuf, name: String },
    #[error("config file {path}: `{field}` {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// Why a namespace spec (`name`, `/path`, either with `=mesh/node` or `=mesh/gateway/name`)
/// is not usable; the
/// config error and the admin API name the key or parameter before this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetnsSpecError {
    #[error(
        "{spec:?}: after `=` comes a virtual node, mesh/name, or a virtual gateway, mesh/gateway/name"
    )]
    VirtualNode { spec: String },
    #[error("contains an empty name")]
    EmptyName,
    #[error("contains {spec:?}: give a namespace name under {} or an absolute path", netns_dir.display())]
    NotAName { spec: String, netns_dir: PathBuf },
}

/// A `${NAME}` in the config file whose environment variable is not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {0} is not set")]
struct UnsetVariable(String);

/// A duration that is not a sequence of `<number><ms|s|m|h|d>` (`250ms`, `1m30s`, `1h`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration {0:?} needs a unit after each number: ms, s, m, h or d (e.g. 1m30s)")]
    NoUnit(String),
    #[error("duration {0:?}: expected a number (e.g. 500ms, 5s, 1m30s, 1h)")]
    NoNumber(String),
    #[error("duration {text:?} has unit {unit:?}; use ms, s, m, h or d")]
    Unit { text: String, unit: String },
    #[error("duration {0:?} is too long")]
    TooLong(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// cgroup v2 directory the redirect programs attach to. Absent: the host's cgroup v2 mount,
    /// found in /proc/self/mountinfo (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
    #[serde(default)]
    pub cgroup_path: Option<PathBuf>,
    /// The BPF filesystem the redirect is pinned in (mounted there if it is not), under
    /// `mesh-agent/cgroup-<inode of cgroup_path>/` (docs/data-plane.md).
    #[serde(default = "default_bpffs_path")]
    pub bpffs_path: PathBuf,
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub redirect: RedirectExclusions,
    #[serde(default)]
    pub enrollment: EnrollmentConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// The control plane to take the mesh from (xDS); absent: no mesh configuration, unless
    /// `run --mesh` embeds a control plane.
    #[serde(default)]
    pub xds: Option<XdsConfig>,
    /// Spans of proxied requests, exported over OTLP (docs/tracing.md); absent: none.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// The DNS server for enrolled pods (mesh names answered, the rest forwarded).
    #[serde(default)]
    pub dns: dns::DnsConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsConfig {
    /// The ADS server, `http://host:port`.
    pub address: String,
    /// The node id presented to the control plane; default: the host name.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Virtual nodes (`mesh/name`) of this node's workloads, sent as node metadata so the
    /// control plane sends only what they need; empty: everything.
    #[serde(default)]
    pub virtual_nodes: Vec<String>,
    /// TLS toward the control plane (with an `https://` address).
    #[serde(default)]
    pub tls: Option<XdsTlsConfig>,
}

/// TLS toward the control plane; the files are read at each connect (rotation needs no
/// restart).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsTlsConfig {
    /// PEM: the CA certificates the control plane's certificate must chain to.
    pub ca_file: PathBuf,
    /// This node's certificate (PEM chain), for a control plane that authenticates nodes: it
    /// names the node id (`spiffe://<trust domain>/node/<id>`, or a DNS name that is the id).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the control plane's certificate must carry; default: the address's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl XdsTlsConfig {
    /// The xDS client's settings (cert and key are checked to come together).
    pub fn settings(&self) -> ControlPlaneTls {
        let node_certificate = match (&self.cert_file, &self.key_file) {
            (Some(chain), Some(key)) => Some(NodeCertificate {
                chain: chain.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        ControlPlaneTls {
            ca: self.ca_file.clone(),
            node_certificate,
            server_name: self.server_name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where redirected connections arrive: an address of this node that enrolled pods reach.
    pub outbound_addr: SocketAddrV4,
    /// SO_MARK on the proxy's upstream sockets, so they are never redirected themselves.
    #[serde(default = "default_mark")]
    pub mark: u32,
    /// How long an upstream connect may take before the client is reset.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "connect_timeout"
    )]
    pub connect_timeout: Duration,
    /// How long live connections may finish after SIGTERM before they are cut.
    #[serde(default = "default_drain_timeout", deserialize_with = "drain_timeout")]
    pub drain_timeout: Duration,
    /// Proxy worker threads. One thread relays tens of thousands of connections; on a small
    /// node more threads cost more CPU in hand-offs than they gain (docs/config.md).
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
    /// Port the proxy listens on inside each enrolled pod for the pod's captured inbound
    /// connections; 0 turns inbound capture off.
    #[serde(default = "default_inbound_port")]
    pub inbound_port: u16,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Read-only endpoints: health (/healthz, /readyz) and metrics (/metrics).
    #[serde(default = "default_admin_addr")]
    pub addr: SocketAddr,
    /// A Unix socket (mode 0600) for everything else: enrollment changes and the
    /// configuration dump, which nothing reachable over the network may offer.
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
}

fn default_admin_socket() -> PathBuf {
    PathBuf::from("/run/mesh-agent/admin.sock")
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectExclusions {
    /// Destination IPv4 prefixes never redirected (loopback always is excluded).
    #[serde(default)]
    pub exclude_cidrs: Vec<Ipv4Net>,
    /// Destination ports never redirected.
    #[serde(default)]
    pub exclude_ports: Vec<u16>,
    /// Enrolled pods' native IPv6 TCP, which the proxy (IPv4) cannot take.
    #[serde(default)]
    pub ipv6: Ipv6Policy,
    /// Enrolled pods' UDP other than DNS, which the proxy does not take.
    #[serde(default)]
    pub udp: UdpPolicy,
}

/// What happens to enrolled pods' native IPv6 TCP (`redirect.ipv6`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ipv6Policy {
    /// Connects are refused (EPERM) and connections to captured ports dropped: a pod cannot
    /// go around the mesh over IPv6.
    #[default]
    Refuse,
    /// Both pass, around the mesh.
    Allow,
}

/// What happens to enrolled pods' UDP other than DNS (`redirect.udp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdpPolicy {
    /// It passes, around the mesh, counted.
    #[default]
    Allow,
    /// Connects and datagrams are refused (EPERM), but to the pod's own host and to
    /// excluded destinations.
    Refuse,
}

/// How DNS service discovery resolves names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Nameservers, search domains and options, in resolv.conf form.
    #[serde(default = "default_resolv_conf")]
    pub resolv_conf: PathBuf,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            resolv_conf: default_resolv_conf(),
        }
    }
}

/// Where the agent reads its nameservers by default.
fn default_bpffs_path() -> PathBuf {
    PathBuf::from("/sys/fs/bpf")
}

fn default_resolv_conf() -> PathBuf {
    PathBuf::from("/etc/resolv.conf")
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// Directory of named network namespaces (`ip netns add` puts them in /run/netns).
    #[serde(default = "default_netns_dir")]
    pub netns_dir: PathBuf,
    /// Pod network namespaces to enroll: a name under `netns_dir`, or an absolute path such
    /// as /proc/PID/ns/net.
    #[serde(default)]
    pub netns: Vec<String>,
    /// Enroll, by themselves, the namespaces under `netns_dir` whose names match this pattern
    /// (`*` matches any run of characters) and whose addresses are endpoints of a virtual node
    /// of the mesh; unenroll them when that stops. `netns` entries are kept regardless.
    #[serde(default)]
    pub discover: Option<String>,
    /// Also look for the pods the control plane lists for this node (Kubernetes) in the
    /// network namespaces of the node's processes (/proc/PID/ns/net), for runtimes that keep
    /// no namespace files. Costs CAP_SYS_PTRACE, which the kernel requires to open another
    /// process's namespace.
    #[serde(default)]
    pub find_pods_by_process: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: default_admin_addr(),
            socket: default_admin_socket(),
        }
    }
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        Self {
            netns_dir: default_netns_dir(),
            netns: Vec::new(),
            discover: None,
            find_pods_by_process: false,
        }
    }
}

/// Loopback never leaves a pod: redirecting it would send a pod's own local traffic away.
pub const ALWAYS_EXCLUDED: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8) {
    Ok(net) => net,
    Err(_) => panic!("127.0.0.0/8 is a valid prefix"),
};

fn default_mark() -> u32 {
    0x4d41_0001
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_inbound_port() -> u16 {
    15006
}

fn default_worker_threads() -> usize {
    1
}
fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15020))
}
fn default_netns_dir() -> PathBuf {
    PathBuf::from("/run/netns")
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Expands `${VAR}` from the environment, then parses and validates `text`; `path` only
    /// names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let text =
            expand_env(text, |name| std::env::var(name).ok()).map_err(|UnsetVariable(name)| {
                ConfigError::UnsetVariable {
                    path: path.to_owned(),
                    name,
                }
            })?;
        let config: Config = serde_yaml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error,
        })?;
        config
            .validate()
            .map_err(|(field, reason)| ConfigError::Invalid {
                path: path.to_owned(),
                field,
                reason,
            })?;
        Ok(config)
    }

    /// Everything start-up or a reload would reject, so that `check-config` (which only runs
    /// [`Config::load`]) says so first: a reload that fails half way through the kernel maps
    /// is worse than one refused up front.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.validate_proxy()?;
        self.validate_admin()?;
        self.validate_redirect()?;
        self.validate_enrollment()?;
        self.dns
            .validate(self.proxy.outbound_addr.port(), &self.excluded_cidrs())?;
        if let Some(xds) = &self.xds {
            validate_xds(xds)?;
        }
        if let Some(tracing) = &self.tracing {
            validate_tracing(tracing)?;
        }
        if let Some(path) = &self.cgroup_path {
            validate_cgroup_path(path)?;
        }
        if !self.bpffs_path.is_absolute() {
            return Err((
                "bpffs_path",
                format!("{} is not an absolute path", self.bpffs_path.display()),
            ));
        }
        Ok(())
    }

    fn validate_proxy(&self) -> Result<(), (&'static str, String)> {
        let outbound = self.proxy.outbound_addr;
        let ip = outbound.ip();
        // Connects of enrolled pods are rewritten to this address *inside the pod's network
        // namespace*, so it must be one the pods can route to and the proxy can listen on.
        let unusable = if ip.octets()[0] == 0 || ip.is_broadcast() {
            Some("connects are rewritten to it, so it must be one address of this node")
        } else if ip.is_loopback() {
            Some(
                "connects are rewritten to it inside each pod's network namespace, where \
                 loopback is the pod's own; use an address of this node that pods reach, \
                 e.g. ${NODE_IP}",
            )
        } else if ip.is_multicast() {
            Some("a TCP listener cannot take connections on a multicast address")
        } else {
            None
        };
        if let Some(why) = unusable {
            return Err(("proxy.outbound_addr", format!("is {outbound}: {why}")));
        }
        if outbound.port() == 0 {
            return Err(("proxy.outbound_addr", "needs a port other than 0".into()));
        }
        if self.proxy.mark == 0 {
            return Err((
                "proxy.mark",
                "must not be 0: unmarked sockets carry mark 0".into(),
            ));
        }
        if !(1..=64).contains(&self.proxy.worker_threads) {
            return Err(("proxy.worker_threads", "must be between 1 and 64".into()));
        }
        if self.proxy.connect_timeout.is_zero() {
            return Err(("proxy.connect_timeout", "must be greater than 0".into()));
        }
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), (&'static str, String)> {
        let outbound = self.proxy.outbound_addr;
        let admin = self.admin.addr;
        if admin == SocketAddr::V4(outbound) {
            return Err((
                "admin.addr",
                format!("is the same as proxy.outbound_addr ({outbound})"),
            ));
        }
        // A wildcard listener on the proxy's port (IPv6 `[::]` is dual-stack by default)
        // conflicts with the proxy's listener: start-up would fail with "address in use".
        let same_ip = match admin.ip() {
            IpAddr::V4(ip) => ip == *outbound.ip(),
            IpAddr::V6(ip) => ip.to_ipv4_mapped() == Some(*outbound.ip()),
        };
        if admin.port() == outbound.port() && (admin.ip().is_unspecified() || same_ip) {
            return Err((
                "admin.addr",
                format!(
                    "{admin} takes port {} on the address of proxy.outbound_addr ({outbound}); \
                     use another port",
                    admin.port()
                ),
            ));
        }
        Ok(())
    }

    fn validate_redirect(&self) -> Result<(), (&'static str, String)> {
        // Each list goes into a kernel map of MAX_EXCLUSIONS entries; one more and the map
        // update would fail part way through (agent-ebpf declares the maps).
        let max = MAX_EXCLUSIONS as usize;
        let cidrs = self.excluded_cidrs().len();
        if cidrs > max {
            return Err((
                "redirect.exclude_cidrs",
                format!(
                    "has {cidrs} distinct prefixes counting {ALWAYS_EXCLUDED}, which is always \
                     excluded; the kernel's exclusion map holds at most {max}"
                ),
            ));
        }
        if let Some(port) = self.redirect.exclude_ports.iter().find(|p| **p == 0) {
            return Err((
                "redirect.exclude_ports",
                format!("contains {port}, not a port"),
            ));
        }
        let ports = distinct(&self.redirect.exclude_ports);
        if ports > max {
            return Err((
                "redirect.exclude_ports",
                format!(
                    "has {ports} distinct ports; the kernel's exclusion map holds at most {max}"
                ),
            ));
        }
        Ok(())
    }

    fn validate_enrollment(&self) -> Result<(), (&'static str, String)> {
        let mut specs = Vec::with_capacity(self.enrollment.netns.len());
        for spec in &self.enrollment.netns {
            let ns = NetnsRef::parse(spec, &self.enrollment.netns_dir)
                .map_err(|reason| ("enrollment.netns", reason.to_string()))?;
            specs.push(ns.spec);
        }
        // The enrollment map holds MAX_ENROLLED_NETNS pods; the ones past it would each fail
        // to enroll at every start and reload.
        let max = MAX_ENROLLED_NETNS as usize;
        let count = distinct(&specs);
        if count > max {
            return Err((
                "enrollment.netns",
                format!("has {count} namespaces; the kernel's enrollment map holds at most {max}"),
            ));
        }
        if let Some(pattern) = &self.enrollment.discover
            && (pattern.is_empty() || pattern.contains('/'))
        {
            return Err((
                "enrollment.discover",
                format!("{pattern:?} is not a namespace name pattern (no `/`, `*` for any run)"),
            ));
        }
        Ok(())
    }

    /// Enrolled namespaces, resolved to paths.
    pub fn netns_refs(&self) -> Vec<NetnsRef> {
        self.enrollment
            .netns
            .iter()
            .filter_map(|spec| NetnsRef::parse(spec, &self.enrollment.netns_dir).ok())
            .collect()
    }

    /// Destination prefixes never redirected: the configured ones plus loopback.
    pub fn excluded_cidrs(&self) -> Vec<Ipv4Net> {
        let mut cidrs = vec![ALWAYS_EXCLUDED];
        cidrs.extend(self.redirect.exclude_cidrs.iter().map(Ipv4Net::trunc));
        cidrs.sort();
        cidrs.dedup();
        cidrs
    }
}

/// How many different values `items` holds.
fn distinct<T: Ord + Clone>(items: &[T]) -> usize {
    let mut sorted = items.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted.len()
}

fn validate_xds(xds: &XdsConfig) -> Result<(), (&'static str, String)> {
    check_address(&xds.address, xds.tls.is_some())
        .map_err(|error| ("xds.address", error.to_string()))?;
    if let Some(tls) = &xds.tls
        && tls.cert_file.is_some() != tls.key_file.is_some()
    {
        return Err((
            "xds.tls",
            "cert_file and key_file go together (the node's certificate and its key)".to_owned(),
        ));
    }
    // The control plane splits each at its first `/` and matches both halves exactly
    // (control-plane/src/ads), so anything but `mesh/name` would match no virtual node.
    let is_mesh_name = |v: &str| {
        v.split_once('/')
            .is_some_and(|(mesh, name)| !mesh.is_empty() && !name.is_empty() && !name.contains('/'))
    };
    if let Some(bad) = xds.virtual_nodes.iter().find(|v| !is_mesh_name(v)) {
        return Err(("xds.virtual_nodes", format!("{bad:?} is not mesh/name")));
    }
    Ok(())
}

/// The checks of the configured cgroup directory that do not depend on the host it runs
/// on; start-up then also requires it to exist on a cgroup v2 filesystem (redirect::cgroup).
fn validate_cgroup_path(path: &Path) -> Result<(), (&'static str, String)> {
    if !path.is_absolute() {
        return Err((
            "cgroup_path",
            format!("{} is not an absolute path", path.display()),
        ));
    }
    // A file inside a cgroup (e.g. cgroup.procs) is on the cgroup2 filesystem too, so only
    // the attach, after the programs are loaded, would fail on it.
    if let Ok(metadata) = std::fs::metadata(path)
        && !metadata.is_dir()
    {
        return Err((
            "cgroup_path",
            format!(
                "{} is not a directory: the programs attach to a cgroup directory",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// A pod network namespace as configured: `name` (under the netns directory) or a path,
/// optionally `=mesh/virtual-node` to fix the virtual node its workload is (otherwise the
/// mesh's endpoints decide, by the namespace's addresses).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsRef {
    /// The namespace as the user wrote it; the key for enroll/unenroll.
    pub spec: String,
    pub path: PathBuf,
    pub virtual_node: Option<String>,
}

impl NetnsRef {
    pub fn parse(spec: &str, netns_dir: &Path) -> Result<Self, NetnsSpecError> {
        let (spec, virtual_node) = match spec.split_once('=') {
            Some((ns, node)) => {
                // `mesh/name` (a virtual node) or `mesh/gateway/name` (a virtual gateway).
                let parts: Vec<&str> = node.split('/').collect();
                let valid = match parts.as_slice() {
                    [mesh, name] => !mesh.is_empty() && !name.is_empty(),
                    [mesh, "gateway", name] => !mesh.is_empty() && !name.is_empty(),
                    _ => false,
                };
                if !valid {
                    return Err(NetnsSpecError::VirtualNode {
                        spec: spec.to_owned(),
                    });
                }
                (ns, Some(node.to_owned()))
            }
            None => (spec, None),
        };
        if spec.is_empty() {
            return Err(NetnsSpecError::EmptyName);
        }
        let path = if spec.starts_with('/') {
            PathBuf::from(spec)
        } else if spec.contains('/') || spec == "." || spec == ".." {
            return Err(NetnsSpecError::NotAName {
                spec: spec.to_owned(),
                netns_dir: netns_dir.to_owned(),
            });
        } else {
            netns_dir.join(spec)
        };
        Ok(Self {
            spec: spec.to_owned(),
            path,
            virtual_node,
        })
    }
}

impl fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// Replaces each `${NAME}` with `lookup(NAME)` (a DaemonSet passes the node's address as
/// `${NODE_IP}`); the first unset one is the error. `$` not followed by `{` stays as is.
fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, UnsetVariable> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(&lookup(name).ok_or_else(|| UnsetVariable(name.to_owned()))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the proxy's spans go and how traces are sampled and propagated (docs/tracing.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP collector: `http://host:4317` for gRPC, `http://host:4318` for HTTP (the
    /// path `/v1/traces` is added unless the URL has a path).
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The share of traces started here that are recorded, 0 to 1 (App Mesh's
    /// `XRAY_SAMPLING_RATE`). A request that arrives with a sampling decision keeps it.
    #[serde(default = "default_sampling_rate")]
    pub sampling_rate: f64,
    /// The context headers written on requests the proxy forwards, so the applications'
    /// own spans join the trace; formats that arrived on the request are rewritten too.
    #[serde(default = "default_propagation")]
    pub propagation: Vec<Propagation>,
    /// Spans waiting for export at most; more are dropped (counted), never waited for.
    #[serde(default = "default_max_queue_spans")]
    pub max_queue_spans: usize,
    /// Spans per export request at most.
    #[serde(default = "default_max_batch_spans")]
    pub max_batch_spans: usize,
    /// How long a span may wait for a batch to fill.
    #[serde(default = "default_batch_delay", deserialize_with = "batch_delay")]
    pub batch_delay: Duration,
    /// How long one export may take before its spans are dropped.
    #[serde(
        default = "default_export_timeout",
        deserialize_with = "export_timeout"
    )]
    pub export_timeout: Duration,
    /// Resource attributes added to every span (e.g. `deployment.environment: prod`).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
}

/// OTLP's transports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
    Http,
}

/// Trace context header formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// W3C Trace Context: `traceparent`, `tracestate`.
    W3c,
    /// AWS X-Ray: `X-Amzn-Trace-Id`.
    Xray,
    /// Zipkin B3, one header: `b3`.
    B3,
    /// Zipkin B3, several headers: `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, ...
    B3multi,
}

fn default_sampling_rate() -> f64 {
    1.0
}
fn default_propagation() -> Vec<Propagation> {
    vec![Propagation::W3c]
}
fn default_max_queue_spans() -> usize {
    2048
}
fn default_max_batch_spans() -> usize {
    512
}
fn default_batch_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(5)
}

fn batch_delay<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration(deserializer, "batch_delay")
}

fn export_timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration(deserializer, "export_timeout")
}

/// The most spans the export queue may hold: about 1 KiB each, so at most 64 MiB.
const MAX_QUEUE_SPANS: usize = 65_536;

fn validate_tracing(tracing: &TracingConfig) -> Result<(), (&'static str, String)> {
    let endpoint = &tracing.endpoint;
    let uri: http::Uri = endpoint.parse().map_err(|error| {
        (
            "tracing.endpoint",
            format!("{endpoint:?} is not a URL: {error}"),
        )
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err((
                "tracing.endpoint",
                format!(
                    "{endpoint:?}: https:// is not supported yet; run the collector on the node \
                     (or beside it) and give its http:// address"
                ),
            ));
        }
        _ => {
            return Err((
                "tracing.endpoint",
                format!("{endpoint:?} must be an http:// URL"),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16() == Some(0) {
        return Err((
            "tracing.endpoint",
            format!("{endpoint:?} needs a host and a port other than 0"),
        ));
    }
    if !(0.0..=1.0).contains(&tracing.sampling_rate) {
        return Err((
            "tracing.sampling_rate",
            format!("is {}; give a share from 0 to 1", tracing.sampling_rate),
        ));
    }
    if !(1..=MAX_QUEUE_SPANS).contains(&tracing.max_queue_spans) {
        return Err((
            "tracing.max_queue_spans",
            format!("must be between 1 and {MAX_QUEUE_SPANS}"),
        ));
    }
    if !(1..=tracing.max_queue_spans).contains(&tracing.max_batch_spans) {
        return Err((
            "tracing.max_batch_spans",
            "must be between 1 and max_queue_spans".into(),
        ));
    }
    if tracing.batch_delay.is_zero() {
        return Err(("tracing.batch_delay", "must be greater than 0".into()));
    }
    if tracing.export_timeout.is_zero() {
        return Err(("tracing.export_timeout", "must be greater than 0".into()));
    }
    Ok(())
}

// serde_yaml locates errors raised inside a value at the enclosing mapping, so each duration
// field names itself in its error.
fn connect_timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration(deserializer, "connect_timeout")
}

fn drain_timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration(deserializer, "drain_timeout")
}

/// Accepts what [`parse_duration`] does.
pub(crate) fn duration<'de, D: Deserializer<'de>>(
    deserializer: D,
    field: &str,
) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(|reason| serde::de::Error::custom(format!("{field}: {reason}")))
}

/// `250ms`, `5s`, `2m`, `24h`, and sums of them as humantime writes them: `1m30s`,
/// `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(DurationError::NoNumber(text.to_owned()));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::NoNumber(text.to_owned()));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLong(text.to_owned()))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let seconds_per = match unit {
            "" => return Err(DurationError::NoUnit(text.to_owned())),
            "ms" => {
                total = total
                    .checked_add(Duration::from_millis(value))
                    .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => {
                return Err(DurationError::Unit {
                    text: text.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        total = value
            .checked_mul(seconds_per)
            .and_then(|seconds| total.checked_add(Duration::from_secs(seconds)))
            .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "proxy:\n  outbound_addr: 10.0.0.1:15001\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.admin.addr, "127.0.0.1:15020".parse().unwrap());
        assert_eq!(config.proxy.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.enrollment.netns_dir, PathBuf::from("/run/netns"));
        assert_eq!(config.excluded_cidrs(), vec![ALWAYS_EXCLUDED]);
        assert!(config.cgroup_path.is_none());
    }

    #[test]
    fn full_config_parses() {
        let text = "cgroup_path: /sys/fs/cgroup/node\nproxy:\n  outbound_addr: 10.0.0.1:15001\n  mark: 7\n  connect_timeout: 250ms\n  drain_timeout: 1m\nadmin:\n  addr: 0.0.0.0:9000\nredirect:\n  exclude_cidrs: [10.9.0.0/16, 10.9.3.4/16]\n  exclude_ports: [22]\nenrollment:\n  netns_dir: /var/run/netns\n  netns: [pod-a, /proc/1/ns/net]\n";
        let config = parse(text).unwrap();
        assert_eq!(config.proxy.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.proxy.drain_timeout, Duration::from_secs(60));
        assert_eq!(
            config.excluded_cidrs(),
            vec!["10.9.0.0/16".parse().unwrap(), ALWAYS_EXCLUDED]
        );
        let refs = config.netns_refs();
        assert_eq!(refs[0].path, PathBuf::from("/var/run/netns/pod-a"));
        assert_eq!(refs[1].path, PathBuf::from("/proc/1/ns/net"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("proxy:\n  outbound_addr: 10.0.0.1:15001\n  outbond: 1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown field `outbond`"), "{text}");
        assert!(text.contains("proxy"), "{text}");
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let err = parse(&format!("{MINIMAL}enrolment: {{}}\n")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `enrolment`"),
            "{err}"
        );
    }

    #[test]
    fn ipv6_and_udp_policies_default_to_refuse_and_allow_and_name_a_bad_value() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(
            (config.redirect.ipv6, config.redirect.udp),
            (Ipv6Policy::Refuse, UdpPolicy::Allow)
        );
        let config = parse(&format!(
            "{MINIMAL}redirect:\n  ipv6: allow\n  udp: refuse\n"
        ))
        .unwrap();
        assert_eq!(
            (config.redirect.ipv6, config.redirect.udp),
            (Ipv6Policy::Allow, UdpPolicy::Refuse)
        );
        for (field, text) in [("ipv6", "ipv6: block"), ("udp", "udp: yes")] {
            let err = parse(&format!("{MINIMAL}redirect:\n  {text}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("redirect.{field}")) && err.contains("unknown variant"),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_proxy_section_is_named() {
        let err = parse("admin:\n  addr: 127.0.0.1:1\n").unwrap_err();
        assert!(err.to_string().contains("missing field `proxy`"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                "proxy:\n  outbound_addr: 0.0.0.0:15001\n",
                "proxy.outbound_addr",
            ),
            (
                "proxy:\n  outbound_addr: 10.0.0.1:0\n",
                "proxy.outbound_addr",
            ),
            (&format!("{MINIMAL}  mark: 0\n"), "proxy.mark"),
            (
                &format!("{MINIMAL}  worker_threads: 0\n"),
                "proxy.worker_threads",
            ),
            (
                &format!("{MINIMAL}  connect_timeout: 0s\n"),
                "proxy.connect_timeout",
            ),
            (
                &format!("{MINIMAL}admin:\n  addr: 10.0.0.1:15001\n"),
                "admin.addr",
            ),
            (
                &format!("{MINIMAL}redirect:\n  exclude_ports: [0]\n"),
                "redirect.exclude_ports",
            ),
            (
                &format!("{MINIMAL}enrollment:\n  netns: [a/b]\n"),
                "enrollment.netns",
            ),
            (&format!("{MINIMAL}cgroup_path: relative\n"), "cgroup_path"),
            (
                &format!("{MINIMAL}xds:\n  address: 127.0.0.1:15010\n"),
                "xds.address",
            ),
            (
                &format!("{MINIMAL}xds:\n  address: http://cp:15010\n  virtual_nodes: [web]\n"),
                "xds.virtual_nodes",
            ),
        ];
        for (text, field) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    /// `n` distinct /32 prefixes in 10.0.0.0/8, as a YAML flow list.
    fn prefixes(n: u32) -> String {
        let list: Vec<String> = (0..n)
            .map(|i| format!("{}/32", Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        format!("[{}]", list.join(", "))
    }

    fn rejected_field(text: &str, field: &str) -> String {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        err
    }

    #[test]
    fn exclusions_beyond_the_kernel_maps_are_rejected() {
        let max = MAX_EXCLUSIONS;
        // Loopback takes one entry of the map.
        let cidrs = |list: String| format!("{MINIMAL}redirect:\n  exclude_cidrs: {list}\n");
        parse(&cidrs(prefixes(max - 1))).unwrap();
        let err = rejected_field(&cidrs(prefixes(max)), "redirect.exclude_cidrs");
        assert!(err.contains("1025 distinct prefixes"), "{err}");
        assert!(err.contains("at most 1024"), "{err}");
        rejected_field(&cidrs(prefixes(max + 1)), "redirect.exclude_cidrs");
        // Listing loopback itself, or one prefix twice, takes no more room.
        let with_loopback = prefixes(max - 1).replace('[', "[127.0.0.0/8, 10.0.0.0/32, ");
        parse(&cidrs(with_loopback)).unwrap();

        let ports = |n: u32| {
            let list: Vec<String> = (1..=n).map(|p| p.to_string()).collect();
            format!(
                "{MINIMAL}redirect:\n  exclude_ports: [{}, 1, 2]\n",
                list.join(", ")
            )
        };
        parse(&ports(max)).unwrap();
        let err = rejected_field(&ports(max + 1), "redirect.exclude_ports");
        assert!(err.contains("1025 distinct ports"), "{err}");
    }

    #[test]
    fn outbound_address_pods_cannot_reach_is_rejected() {
        for addr in [
            "127.0.0.1:15001",
            "127.1.2.3:15001",
            "224.0.0.1:15001",
            "239.255.255.250:15001",
            "0.0.0.0:15001",
            "0.1.2.3:15001",
            "255.255.255.255:15001",
        ] {
            let err = rejected_field(
                &format!("proxy:\n  outbound_addr: {addr}\n"),
                "proxy.outbound_addr",
            );
            assert!(err.contains(addr), "{err}");
        }
        let err = rejected_field(
            "proxy:\n  outbound_addr: 127.0.0.1:15001\n",
            "proxy.outbound_addr",
        );
        assert!(err.contains("loopback"), "{err}");
        let err = rejected_field(
            "proxy:\n  outbound_addr: 224.0.0.1:15001\n",
            "proxy.outbound_addr",
        );
        assert!(err.contains("multicast"), "{err}");
    }

    #[test]
    fn admin_on_the_proxy_port_of_every_address_is_rejected() {
        for admin in ["0.0.0.0:15001", "[::]:15001", "[::ffff:10.0.0.1]:15001"] {
            rejected_field(
                &format!("{MINIMAL}admin:\n  addr: \"{admin}\"\n"),
                "admin.addr",
            );
        }
        // Another address on the same port, or the wildcard on another port, binds.
        for admin in ["127.0.0.1:15001", "0.0.0.0:15020", "[::]:15020"] {
            parse(&format!("{MINIMAL}admin:\n  addr: \"{admin}\"\n")).unwrap();
        }
    }

    #[test]
    fn cgroup_path_that_is_a_file_is_rejected() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = rejected_field(
            &format!("{MINIMAL}cgroup_path: {}\n", file.path().display()),
            "cgroup_path",
        );
        assert!(err.contains("is not a directory"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        parse(&format!("{MINIMAL}cgroup_path: {}\n", dir.path().display())).unwrap();
        // Whether it exists (and is a cgroup) is checked on the node at start-up.
        parse(&format!("{MINIMAL}cgroup_path: /nonexistent/cgroup\n")).unwrap();
    }

    #[test]
    fn tracing_gets_defaults_and_reads_every_key() {
        let config = parse(&format!(
            "{MINIMAL}tracing:\n  endpoint: http://collector:4317\n"
        ))
        .unwrap();
        let tracing = config.tracing.unwrap();
        assert_eq!(tracing.protocol, OtlpProtocol::Grpc);
        assert_eq!(tracing.sampling_rate, 1.0);
        assert_eq!(tracing.propagation, [Propagation::W3c]);
        assert_eq!(tracing.batch_delay, Duration::from_secs(1));
        let config = parse(&format!(
            "{MINIMAL}tracing:\n  endpoint: http://collector:4318\n  protocol: http\n  sampling_rate: 0.05\n  propagation: [xray, b3, b3multi, w3c]\n  max_queue_spans: 100\n  max_batch_spans: 10\n  batch_delay: 200ms\n  export_timeout: 2s\n  resource: {{deployment.environment: prod}}\n"
        ))
        .unwrap();
        let tracing = config.tracing.unwrap();
        assert_eq!(tracing.protocol, OtlpProtocol::Http);
        assert_eq!(tracing.propagation.len(), 4);
        assert_eq!(tracing.export_timeout, Duration::from_secs(2));
        assert_eq!(tracing.resource["deployment.environment"], "prod");
    }

    #[test]
    fn bad_tracing_settings_are_named() {
        for (settings, field, why) in [
            (
                "endpoint: collector:4317",
                "tracing.endpoint",
                "must be an http:// URL",
            ),
            (
                "endpoint: https://c:4317",
                "tracing.endpoint",
                "https:// is not supported",
            ),
            (
                "endpoint: http://c:0",
                "tracing.endpoint",
                "port other than 0",
            ),
            (
                "endpoint: http://c:4317\n  sampling_rate: 1.5",
                "tracing.sampling_rate",
                "from 0 to 1",
            ),
            (
                "endpoint: http://c:4317\n  max_queue_spans: 0",
                "tracing.max_queue_spans",
                "between 1",
            ),
            (
                "endpoint: http://c:4317\n  max_queue_spans: 10\n  max_batch_spans: 20",
                "tracing.max_batch_spans",
                "max_queue_spans",
            ),
            (
                "endpoint: http://c:4317\n  batch_delay: 0s",
                "tracing.batch_delay",
                "greater than 0",
            ),
        ] {
            let err = rejected_field(&format!("{MINIMAL}tracing:\n  {settings}\n"), field);
            assert!(err.contains(why), "{settings}: {err}");
        }
        let err = parse(&format!(
            "{MINIMAL}tracing:\n  endpoint: http://c:4317\n  propagation: [jaeger]\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `jaeger`"),
            "{err}"
        );
        let err = parse(&format!(
            "{MINIMAL}tracing:\n  endpoint: http://c:4317\n  export_timeout: 5 s\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("export_timeout"), "{err}");
    }

    #[test]
    fn xds_address_that_is_not_a_url_is_rejected() {
        for (address, why) in [
            ("http://[::1:15010", "is not a URL"),
            ("http://cp:15010 x", "is not a URL"),
            ("http://", "is not a URL"),
            ("ftp://cp:15010", "must be an http:// or https:// URL"),
            ("cp:15010", "must be an http:// or https:// URL"),
            ("http://cp:0", "port other than 0"),
            ("https://cp:15010", "no TLS settings"),
        ] {
            let err = rejected_field(
                &format!("{MINIMAL}xds:\n  address: \"{address}\"\n"),
                "xds.address",
            );
            assert!(err.contains(why), "{address}: {err}");
        }
        for address in [
            "http://[::1]:15010",
            "http://cp.mesh.svc:15010",
            "http://cp",
        ] {
            parse(&format!("{MINIMAL}xds:\n  address: \"{address}\"\n")).unwrap();
        }
    }

    #[test]
    fn tls_toward_the_control_plane_goes_with_https() {
        let tls = "  tls:\n    ca_file: /etc/mesh/cp-ca.pem\n    cert_file: /etc/mesh/node.pem\n    key_file: /etc/mesh/node.key\n";
        let config = parse(&format!(
            "{MINIMAL}xds:\n  address: https://cp.mesh.svc:15010\n{tls}"
        ))
        .unwrap();
        let settings = config.xds.unwrap().tls.unwrap().settings();
        assert_eq!(settings.ca, PathBuf::from("/etc/mesh/cp-ca.pem"));
        assert_eq!(
            settings.node_certificate.map(|n| n.key),
            Some(PathBuf::from("/etc/mesh/node.key"))
        );
        let err = rejected_field(
            &format!("{MINIMAL}xds:\n  address: http://cp:15010\n{tls}"),
            "xds.address",
        );
        assert!(err.contains("use https://"), "{err}");
        let err = rejected_field(
            &format!(
                "{MINIMAL}xds:\n  address: https://cp:15010\n  tls:\n    ca_file: /ca.pem\n    cert_file: /node.pem\n"
            ),
            "xds.tls",
        );
        assert!(err.contains("go together"), "{err}");
    }

    #[test]
    fn virtual_nodes_that_match_nothing_are_rejected() {
        for node in ["shop//web", "/web", "shop/", "shop/web/x", "web"] {
            rejected_field(
                &format!(
                    "{MINIMAL}xds:\n  address: http://cp:15010\n  virtual_nodes: [\"{node}\"]\n"
                ),
                "xds.virtual_nodes",
            );
        }
    }

    #[test]
    fn more_namespaces_than_the_enrollment_map_are_rejected() {
        let netns = |n: u32| {
            let list: Vec<String> = (0..n).map(|i| format!("pod-{i}")).collect();
            format!(
                "{MINIMAL}enrollment:\n  netns: [{}, pod-0]\n",
                list.join(", ")
            )
        };
        parse(&netns(MAX_ENROLLED_NETNS)).unwrap();
        let err = rejected_field(&netns(MAX_ENROLLED_NETNS + 1), "enrollment.netns");
        assert!(err.contains("at most 4096"), "{err}");
    }

    #[test]
    fn bad_syntax_names_the_field() {
        let err = parse(&format!(
            "{MINIMAL}redirect:\n  exclude_cidrs: [10.0.0.0/33]\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("exclude_cidrs"), "{err}");
        let err = parse(&format!("{MINIMAL}  connect_timeout: 5 seconds\n")).unwrap_err();
        assert!(err.to_string().contains("connect_timeout"), "{err}");
    }

    #[test]
    fn expands_environment_placeholders() {
        let lookup = |name: &str| (name == "NODE_IP").then(|| "10.1.2.3".to_owned());
        assert_eq!(
            expand_env("a: ${NODE_IP}:15001 $HOME ${", lookup),
            Ok("a: 10.1.2.3:15001 $HOME ${".to_owned())
        );
        assert_eq!(
            expand_env("${MISSING}", lookup),
            Err(UnsetVariable("MISSING".to_owned()))
        );
        let err =
            parse("proxy:\n  outbound_addr: ${MESH_AGENT_TEST_SURELY_UNSET}:1\n").unwrap_err();
        assert!(
            err.to_string().contains("MESH_AGENT_TEST_SURELY_UNSET"),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15ms"), Ok(Duration::from_millis(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(
            parse_duration("1m30"),
            Err(DurationError::NoUnit("1m30".into()))
        );
        assert!(matches!(
            parse_duration("5w"),
            Err(DurationError::Unit { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::TooLong(_))
        ));
        assert!(parse_duration("").is_err());
    }
}

/// The `dns` section of the agent's configuration file (docs/config.md).
/// Here, not beside the DNS server, so that this file stays a leaf (the fuzz crate compiles it alone).
pub mod dns {
    use std::{collections::BTreeSet, time::Duration};

    use ipnet::Ipv4Net;
    use serde::{Deserialize, Deserializer};

    /// How the agent answers the DNS queries of enrolled pods.
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DnsConfig {
        /// Capture enrolled pods' DNS queries (UDP and TCP port 53) and answer mesh names.
        #[serde(default = "default_enabled")]
        pub enabled: bool,
        /// Port of the agent's DNS server (UDP and TCP) on `proxy.outbound_addr`'s address.
        #[serde(default = "default_port")]
        pub port: u16,
        /// Where the addresses of virtual services come from: never routed anywhere, since
        /// connects to them are redirected into the proxy before routing.
        #[serde(default = "default_vip_cidr")]
        pub vip_cidr: Ipv4Net,
        /// TTL of the answers for mesh names.
        #[serde(default = "default_ttl", deserialize_with = "ttl")]
        pub ttl: Duration,
        /// How long a forwarded query may wait for the pod's resolver.
        #[serde(
            default = "default_forward_timeout",
            deserialize_with = "forward_timeout"
        )]
        pub forward_timeout: Duration,
        /// Forwarded queries in flight at once, node-wide; more are answered SERVFAIL.
        #[serde(default = "default_max_in_flight")]
        pub max_in_flight: usize,
        /// Forwarded queries in flight at once per pod, so one pod cannot take them all.
        #[serde(default = "default_max_in_flight_per_pod")]
        pub max_in_flight_per_pod: usize,
        /// TCP connections to the DNS server at once.
        #[serde(default = "default_max_tcp_connections")]
        pub max_tcp_connections: usize,
        /// TCP connections to the DNS server at once per pod.
        #[serde(default = "default_max_tcp_connections_per_pod")]
        pub max_tcp_connections_per_pod: usize,
        /// Enrolled pods whose DNS is not captured, as enrolled (name under `netns_dir`, or path).
        #[serde(default)]
        pub opt_out: BTreeSet<String>,
    }

    impl Default for DnsConfig {
        fn default() -> Self {
            Self {
                enabled: default_enabled(),
                port: default_port(),
                vip_cidr: default_vip_cidr(),
                ttl: default_ttl(),
                forward_timeout: default_forward_timeout(),
                max_in_flight: default_max_in_flight(),
                max_in_flight_per_pod: default_max_in_flight_per_pod(),
                max_tcp_connections: default_max_tcp_connections(),
                max_tcp_connections_per_pod: default_max_tcp_connections_per_pod(),
                opt_out: BTreeSet::new(),
            }
        }
    }

    fn default_enabled() -> bool {
        true
    }

    fn default_port() -> u16 {
        15053
    }

    /// Class E (RFC 1112 §4): reserved, never routed — the range Istio's DNS proxy allocates from.
    fn default_vip_cidr() -> Ipv4Net {
        Ipv4Net::new(std::net::Ipv4Addr::new(240, 240, 0, 0), 16).unwrap_or_default()
    }

    fn default_ttl() -> Duration {
        Duration::from_secs(5)
    }

    fn default_forward_timeout() -> Duration {
        Duration::from_secs(5)
    }

    fn default_max_in_flight() -> usize {
        1024
    }

    fn default_max_in_flight_per_pod() -> usize {
        128
    }

    fn default_max_tcp_connections() -> usize {
        256
    }

    fn default_max_tcp_connections_per_pod() -> usize {
        32
    }

    fn ttl<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        super::duration(deserializer, "ttl")
    }

    fn forward_timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        super::duration(deserializer, "forward_timeout")
    }

    /// The smallest VIP range: a /30 leaves two usable addresses, less is not worth a server.
    const MIN_VIP_PREFIX_ROOM: u8 = 2;

    impl DnsConfig {
        /// Checks what the file alone decides; `excluded` are the redirect's excluded prefixes
        /// (a VIP there would never reach the proxy).
        pub fn validate(
            &self,
            proxy_port: u16,
            excluded: &[Ipv4Net],
        ) -> Result<(), (&'static str, String)> {
            if !self.enabled {
                return Ok(());
            }
            if self.port == 0 || self.port == proxy_port {
                return Err((
                    "dns.port",
                    format!(
                        "is {}: needs a port of its own (not 0, not proxy.outbound_addr's {proxy_port})",
                        self.port
                    ),
                ));
            }
            let vips = self.vip_cidr;
            if vips.prefix_len() > 32 - MIN_VIP_PREFIX_ROOM {
                return Err((
                    "dns.vip_cidr",
                    format!("{vips} is too small; use a /30 or larger"),
                ));
            }
            let first = vips.network().octets()[0];
            if first == 0 || first == 127 || vips.network().is_multicast() {
                return Err((
                    "dns.vip_cidr",
                    format!(
                        "{vips}: connects to \"this host\", loopback or multicast are never redirected"
                    ),
                ));
            }
            if let Some(net) = excluded
                .iter()
                .find(|net| net.contains(&vips.network()) || vips.contains(&net.network()))
            {
                return Err((
                    "dns.vip_cidr",
                    format!(
                        "{vips} overlaps redirect.exclude_cidrs {net}: connects to those VIPs would not reach the proxy"
                    ),
                ));
            }
            if self.ttl > Duration::from_secs(86_400) {
                return Err(("dns.ttl", "is above a day".into()));
            }
            if self.forward_timeout.is_zero() || self.forward_timeout > Duration::from_secs(60) {
                return Err(("dns.forward_timeout", "must be between 1ms and 60s".into()));
            }
            for (field, value) in [
                ("dns.max_in_flight", self.max_in_flight),
                ("dns.max_in_flight_per_pod", self.max_in_flight_per_pod),
                ("dns.max_tcp_connections", self.max_tcp_connections),
                (
                    "dns.max_tcp_connections_per_pod",
                    self.max_tcp_connections_per_pod,
                ),
            ] {
                if !(1..=65_536).contains(&value) {
                    return Err((field, format!("is {value}; use 1 to 65536")));
                }
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn excluded() -> Vec<Ipv4Net> {
            vec!["127.0.0.0/8".parse().unwrap()]
        }

        #[test]
        fn defaults_are_valid() {
            DnsConfig::default().validate(15001, &excluded()).unwrap();
        }

        #[test]
        fn vip_range_must_reach_the_proxy() {
            let config = DnsConfig {
                vip_cidr: "10.96.0.0/12".parse().unwrap(),
                ..Default::default()
            };
            let excluded = vec!["10.0.0.0/8".parse().unwrap()];
            let (field, reason) = config.validate(15001, &excluded).unwrap_err();
            assert_eq!(field, "dns.vip_cidr");
            assert!(
                reason.contains("overlaps redirect.exclude_cidrs 10.0.0.0/8"),
                "{reason}"
            );
            let loopback = DnsConfig {
                vip_cidr: "127.1.0.0/16".parse().unwrap(),
                ..Default::default()
            };
            assert_eq!(loopback.validate(15001, &[]).unwrap_err().0, "dns.vip_cidr");
        }

        #[test]
        fn port_and_limits_are_checked() {
            let same = DnsConfig {
                port: 15001,
                ..Default::default()
            };
            assert_eq!(same.validate(15001, &[]).unwrap_err().0, "dns.port");
            let none = DnsConfig {
                max_in_flight: 0,
                ..Default::default()
            };
            assert_eq!(
                none.validate(15001, &[]).unwrap_err().0,
                "dns.max_in_flight"
            );
            let off = DnsConfig {
                enabled: false,
                port: 0,
                ..Default::default()
            };
            off.validate(15001, &[]).unwrap();
        }
    }
}
