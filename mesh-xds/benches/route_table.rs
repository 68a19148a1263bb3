//! What a large route table costs the node: applying it (decode and plan, each time the
//! control plane sends it) and finding a request's virtual host and route in it (every
//! request). The table is the one a node gets when its workload has every service of the
//! mesh as a backend: a virtual host per service, with the service's name and `name:port`
//! as domains.
//!
//! `cargo bench -p mesh-xds --bench route_table` — prints, for tables of 100 and 10 000
//! virtual hosts, ms per apply and ns per lookup (the first, middle and last host's
//! names). Medians of 5 rounds.
// A benchmark's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use envoy_types::{
    pb::envoy::config::route::v3::{
        Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
        route_action::ClusterSpecifier, route_match::PathSpecifier,
    },
    util::pack_any,
};
use mesh_xds::plan::{
    Planned,
    route::{RequestView, RouteTable},
};

const ROUNDS: usize = 5;
const LOOKUPS: usize = 100_000;

fn table(services: usize) -> RouteConfiguration {
    let host = |n: usize| VirtualHost {
        name: format!("svc{n}:8080"),
        domains: vec![format!("svc{n}"), format!("svc{n}:8080")],
        routes: vec![Route {
            name: format!("svc{n}"),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(format!("shop/svc{n}/8080"))),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    RouteConfiguration {
        name: "shop/frontend/outbound/8080".into(),
        virtual_hosts: (0..services).map(host).collect(),
        ..Default::default()
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Decoding and planning the table as the xDS client does with each new version.
fn apply(config: &RouteConfiguration) -> Duration {
    let any = pack_any(config.clone());
    median(
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                black_box(Planned::from_any(&any).unwrap());
                started.elapsed()
            })
            .collect(),
    )
}

/// One request's virtual host and route, by authority.
fn lookup(table: &RouteTable, authority: &str) -> Duration {
    let headers = http::HeaderMap::new();
    let request = RequestView {
        method: "GET",
        scheme: "http",
        authority,
        path: "/items",
        query: None,
        headers: &headers,
    };
    median(
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..LOOKUPS {
                    let host = table.virtual_host(black_box(request.authority)).unwrap();
                    black_box(host.route(&request).unwrap());
                }
                started.elapsed() / LOOKUPS as u32
            })
            .collect(),
    )
}

fn main() {
    println!(
        "{:>14} {:>12} {:>16} {:>16} {:>16}",
        "virtual hosts", "apply ms", "first host ns", "middle host ns", "last host ns"
    );
    for services in [100, 10_000] {
        let config = table(services);
        let planned = RouteTable::from_proto(&config).unwrap();
        let ns = |n: usize| lookup(&planned, &format!("svc{n}:8080")).as_nanos();
        println!(
            "{services:>14} {:>12.2} {:>16} {:>16} {:>16}",
            apply(&config).as_secs_f64() * 1e3,
            ns(0),
            ns(services / 2),
            ns(services - 1),
        );
    }
}
