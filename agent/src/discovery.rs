//! DNS service discovery for STRICT_DNS / LOGICAL_DNS clusters: the system resolver
//! (getaddrinfo: /etc/hosts, then DNS), re-resolved every refresh period. A failed lookup
//! keeps the last endpoints, as Envoy does.
use std::{net::SocketAddr, sync::Weak};

use mesh_xds::plan::cluster::{AddressFamily, Discovery};
use tracing::{debug, warn};

use crate::proxy::upstream::Upstream;

/// Resolves the cluster's host names until the cluster goes away.
pub async fn resolve_cluster(upstream: Weak<Upstream>) {
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
        for (host, port) in &hosts {
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(found) => {
                    let mut addrs = choose(found.collect(), family);
                    if !every_address {
                        addrs.truncate(1);
                    }
                    debug!(cluster = %cluster.name(), %host, ?addrs, "resolved");
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
            () = tokio::time::sleep(refresh) => {}
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
        let found: Vec<SocketAddr> = tokio::net::lookup_host(("10.77.0.5", 80))
            .await
            .unwrap()
            .collect();
        assert_eq!(found, ["10.77.0.5:80".parse::<SocketAddr>().unwrap()]);
    }
}
