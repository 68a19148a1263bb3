//! The agent's configuration file (YAML). Every key is documented in docs/config.md; unknown
//! keys are rejected with their name and position.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::{MAX_ENROLLED_NETNS, MAX_EXCLUSIONS};
use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
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

/// A duration that is not `<number><ms|s|m|h>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration {0:?} needs a unit: ms, s, m or h")]
    NoUnit(String),
    #[error("duration {0:?} does not start with a number")]
    NoNumber(String),
    #[error("duration {text:?} has unit {unit:?}; use ms, s, m or h")]
    Unit { text: String, unit: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// cgroup v2 directory the redirect programs attach to. Absent: the host's cgroup v2 mount,
    /// found in /proc/self/mountinfo (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
    #[serde(default)]
    pub cgroup_path: Option<PathBuf>,
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
    /// The DNS server for enrolled pods (mesh names answered, the rest forwarded).
    #[serde(default)]
    pub dns: crate::dns::DnsConfig,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
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
        let config: Config = serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
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
        if let Some(path) = &self.cgroup_path {
            validate_cgroup_path(path)?;
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

/// Why an address cannot be the control plane's; the one rule for `xds.address` and
/// `run --control-plane`.
#[derive(Debug, thiserror::Error)]
pub enum XdsAddressError {
    #[error("{0:?} is not a URL: {1}")]
    NotUrl(String, String),
    #[error("{0:?} must be an http:// URL")]
    Scheme(String),
    /// Fail closed: an https:// address that connected in plain text would send the mesh's
    /// configuration (and secrets) unencrypted while the operator believes otherwise.
    #[error(
        "{0:?}: https:// is not supported yet — the xDS client speaks plain text and would \
         send everything unencrypted; use http:// on a network you trust (docs/security.md)"
    )]
    Tls(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} needs a port other than 0")]
    PortZero(String),
}

/// Checks an xDS address. The xDS client would retry an unusable one forever, logging the
/// same error, so it is refused where the operator sees it once.
pub fn check_xds_address(address: &str) -> Result<(), XdsAddressError> {
    let uri: http::Uri = address.parse().map_err(|error: http::uri::InvalidUri| {
        XdsAddressError::NotUrl(address.to_owned(), error.to_string())
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(XdsAddressError::Tls(address.to_owned())),
        _ => return Err(XdsAddressError::Scheme(address.to_owned())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(XdsAddressError::NoHost(address.to_owned()));
    }
    if uri.port_u16() == Some(0) {
        return Err(XdsAddressError::PortZero(address.to_owned()));
    }
    Ok(())
}

fn validate_xds(xds: &XdsConfig) -> Result<(), (&'static str, String)> {
    check_xds_address(&xds.address).map_err(|error| ("xds.address", error.to_string()))?;
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

/// `250ms`, `5s`, `2m`, `24h`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit(text.to_owned()))?;
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| DurationError::NoNumber(text.to_owned()))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(value.saturating_mul(3600))),
        _ => Err(DurationError::Unit {
            text: text.to_owned(),
            unit: unit.to_owned(),
        }),
    }
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
    fn xds_address_that_is_not_a_url_is_rejected() {
        for (address, why) in [
            ("http://[::1:15010", "is not a URL"),
            ("http://cp:15010 x", "is not a URL"),
            ("http://", "is not a URL"),
            ("ftp://cp:15010", "must be an http:// URL"),
            ("cp:15010", "must be an http:// URL"),
            ("http://cp:0", "port other than 0"),
            ("https://cp:15010", "would send everything unencrypted"),
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
        assert!(parse_duration("5d").is_err());
    }
}
