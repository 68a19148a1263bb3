//! What a large route table costs the node: taking a new version of it (each time the
//! control plane sends one) and finding a request's virtual host and route in it (every
//! request). The table is the one a node gets when its workload has every service of the
//! mesh as a backend: a virtual host per service, with the service's name and `name:port`
//! as domains.
//!
//! `cargo bench -p mesh-xds --bench route_table` — prints, for tables of 100 and 10 000
//! virtual hosts: ms to decode and plan the table from scratch (the first version a node
//! gets); ms for the xDS client to check, and for the node to plan, a version in which one
//! host changed; ns per lookup (the first, middle and last host's names). Medians of 5
//! rounds.
// A benchmark's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    collections::BTreeMap,
    hint::black_box,
    time::{Duration, Instant},
};

use envoy_types::{
    pb::envoy::config::route::v3::{
        Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
        route_action::ClusterSpecifier, route_match::PathSpecifier,
    },
    pb::google::protobuf::Any,
    util::pack_any,
};
use mesh_xds::{
    client::check_resource,
    plan::{
        Planned, Planner,
        route::{RequestView, RouteTable},
    },
    resources::{ROUTE, ResourceSet},
};

const ROUNDS: usize = 5;
const LOOKUPS: usize = 100_000;
const NAME: &str = "shop/frontend/outbound/8080";

/// The table; `version` changes the middle host's cluster.
fn table(services: usize, version: usize) -> RouteConfiguration {
    let changed = services / 2;
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
                cluster_specifier: Some(ClusterSpecifier::Cluster(if n == changed {
                    format!("shop/svc{n}/8080/v{version}")
                } else {
                    format!("shop/svc{n}/8080")
                })),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    RouteConfiguration {
        name: NAME.into(),
        virtual_hosts: (0..services).map(host).collect(),
        ..Default::default()
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Decoding and planning the whole table, as a node does with the first version.
fn plan_from_scratch(table: &Any) -> Duration {
    median(
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                black_box(Planned::from_any(table).unwrap());
                started.elapsed()
            })
            .collect(),
    )
}

/// The xDS client's check of a version with one host changed.
fn check_changed(before: &Any, after: &Any) -> Duration {
    let accepted = BTreeMap::from([(NAME.to_owned(), before.clone())]);
    median(
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                black_box(check_resource(after, Some(&accepted)).unwrap());
                started.elapsed()
            })
            .collect(),
    )
}

/// The node's plan of a version with one host changed, from the one before: the versions
/// take turns.
fn plan_changed(before: &Any, after: &Any) -> Duration {
    let state = |table: &Any| {
        let mut state = ResourceSet::default();
        state.insert(ROUTE, NAME.to_owned(), table.clone());
        state
    };
    let states = [state(before), state(after)];
    let mut planner = Planner::default();
    planner.plan(&states[0]);
    median(
        (1..=ROUNDS)
            .map(|round| {
                let started = Instant::now();
                black_box(planner.plan(&states[round % 2]));
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
        "{:>14} {:>11} {:>11} {:>11} {:>10} {:>10} {:>10}",
        "virtual hosts", "first ms", "check ms", "plan ms", "first ns", "middle ns", "last ns"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for services in [100, 10_000] {
        let config = table(services, 1);
        let (before, after) = (pack_any(config.clone()), pack_any(table(services, 2)));
        let planned = RouteTable::from_proto(&config).unwrap();
        let ns = |n: usize| lookup(&planned, &format!("svc{n}:8080")).as_nanos();
        println!(
            "{services:>14} {:>11.2} {:>11.2} {:>11.2} {:>10} {:>10} {:>10}",
            ms(plan_from_scratch(&before)),
            ms(check_changed(&before, &after)),
            ms(plan_changed(&before, &after)),
            ns(0),
            ns(services / 2),
            ns(services - 1),
        );
    }
    println!(
        "first: decode and plan the whole table; check / plan: a version with one host \
         changed, checked by the xDS client / planned by the node from the last one; \
         ns: one request's virtual host and route (the first, middle and last host)"
    );
}
