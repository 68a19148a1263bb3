//! The `dns` section of the agent's configuration file (docs/config.md).
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
    crate::config::duration(deserializer, "ttl")
}

fn forward_timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    crate::config::duration(deserializer, "forward_timeout")
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

    /// The enrollment policy this configuration gives.
    pub fn capture_policy(&self) -> crate::redirect::DnsCapturePolicy {
        crate::redirect::DnsCapturePolicy {
            enabled: self.enabled,
            opt_out: self.opt_out.clone(),
        }
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
