//! DNS service discovery for STRICT_DNS / LOGICAL_DNS clusters, with a real DNS client
//! (hickory): the nameservers, search domains and options of a resolv.conf, /etc/hosts first.
//! A cluster is re-resolved when the shortest TTL of its answers runs out, and at least every
//! refresh period (`dns_refresh_rate`), never more often than once a second; answers are
//! cached for their TTL, so a refresh before it ends costs nothing. A failed lookup keeps the
//! last endpoints, as Envoy does.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    system_conf::parse_resolv_conf,
};
use mesh_xds::plan::cluster::{AddressFamily, Discovery};
use tracing::{debug, warn};

use super::upstream::Upstream;

/// The shortest time between two lookups of a cluster (a TTL of 0 does not spin).
const MIN_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: hickory_resolver::ResolveError,
    },
}

/// The agent's DNS client, shared by every DNS cluster.
#[derive(Clone)]
pub struct Resolver(Arc<TokioResolver>);

impl Resolver {
    /// A resolver with the nameservers of `resolv_conf`, looking in /etc/hosts first.
    pub fn from_resolv_conf(resolv_conf: &Path) -> Result<Self, ResolverError> {
        let text = std::fs::read(resolv_conf).map_err(|source| ResolverError::Read {
            path: resolv_conf.to_owned(),
            source,
        })?;
        let (config, options) = parse_resolv_conf(text).map_err(|source| ResolverError::Parse {
            path: resolv_conf.to_owned(),
            source,
        })?;
        Ok(Self::with(config, options))
    }

    /// No nameservers: host files and address literals only (when resolv.conf is unusable).
    pub fn hosts_only() -> Self {
        Self::with(ResolverConfig::new(), ResolverOpts::default())
    }

    fn with(config: ResolverConfig, mut options: ResolverOpts) -> Self {
        // Both families: the cluster's lookup family chooses among them.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.use_hosts_file = ResolveHosts::Always;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(options)
                .build();
        Self(Arc::new(resolver))
    }

    /// The addresses of `host` at `port`, and until when they are valid.
    async fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<SocketAddr>, Instant), hickory_resolver::ResolveError> {
        let found = self.0.lookup_ip(host).await?;
        let addrs = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        Ok((addrs, found.valid_until()))
    }
}

/// Resolves the cluster's host names until the cluster goes away.
pub async fn resolve_cluster(upstream: Weak<Upstream>, resolver: Resolver) {
    loop {
        let Some(cluster) = upstream.upgrade() else {
            return;
        };
        let Discovery::Dns {
            hosts,
            every_address,
            family,
            refresh,
        } = cluster.plan.discovery.clone()
        else {
            return;
        };
        let stop = cluster.tasks.clone();
        let mut endpoints = Vec::new();
        let mut failed = false;
        let mut next = refresh;
        for (host, port) in &hosts {
            match resolver.lookup(host, *port).await {
                Ok((found, valid_until)) => {
                    let mut addrs = choose(found, family);
                    if !every_address {
                        addrs.truncate(1);
                    }
                    let ttl = valid_until.saturating_duration_since(Instant::now());
                    debug!(cluster = %cluster.name(), %host, ?addrs, ?ttl, "resolved");
                    next = next.min(ttl);
                    endpoints.extend(addrs);
                }
                Err(error) => {
                    warn!(cluster = %cluster.name(), %host, %error, "DNS lookup failed; keeping the last endpoints");
                    failed = true;
                }
            }
        }
        if !failed {
            cluster.set_endpoints(endpoints);
        }
        drop(cluster);
        tokio::select! {
            () = tokio::time::sleep(next.max(MIN_REFRESH)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The addresses a lookup family keeps, in the preferred order.
fn choose(found: Vec<SocketAddr>, family: AddressFamily) -> Vec<SocketAddr> {
    let (v4, v6): (Vec<_>, Vec<_>) = found.into_iter().partition(|a| a.ip().is_ipv4());
    match family {
        AddressFamily::V4Only => v4,
        AddressFamily::V6Only => v6,
        AddressFamily::V4Preferred if !v4.is_empty() => v4,
        AddressFamily::V4Preferred => v6,
        AddressFamily::V6Preferred if !v6.is_empty() => v6,
        AddressFamily::V6Preferred => v4,
        AddressFamily::All => v4.into_iter().chain(v6).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_keep_and_prefer() {
        let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(choose(vec![v6, v4], AddressFamily::V4Only), [v4]);
        assert_eq!(choose(vec![v6, v4], AddressFamily::V6Only), [v6]);
        assert_eq!(choose(vec![v6], AddressFamily::V4Preferred), [v6]);
        assert_eq!(choose(vec![v6, v4], AddressFamily::V6Preferred), [v6]);
        assert_eq!(choose(vec![v4], AddressFamily::V6Preferred), [v4]);
        assert!(
            choose(vec![v6, v4], AddressFamily::All)
                .iter()
                .any(|a| a.ip().is_ipv4())
        );
    }

    #[tokio::test]
    async fn literal_addresses_resolve_to_themselves() {
        let (found, _) = Resolver::hosts_only()
            .lookup("10.77.0.5", 80)
            .await
            .unwrap();
        assert_eq!(found, ["10.77.0.5:80".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn a_resolv_conf_that_cannot_be_read_is_named() {
        let error = Resolver::from_resolv_conf(Path::new("/nonexistent/resolv.conf"))
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("reading /nonexistent/resolv.conf")
        );
    }
}
