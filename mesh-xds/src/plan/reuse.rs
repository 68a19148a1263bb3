//! Planning what changed, not everything again. A node whose workloads reach every service
//! of a mesh of thousands gets a cluster and an assignment per service, and a route table
//! with a virtual host per service; a change to one service changes one of each, but a
//! state of the world repeats them all. So a resource byte for byte the same as in the last
//! state keeps its plan ([`Planner`]), and a changed route table keeps the plans of its
//! virtual hosts encoded byte for byte as before, and the check of one NACKs or accepts it
//! by its changed hosts alone ([`check_route_table`]).
//!
//! A route table is split at its virtual hosts without decoding them: each host's encoding
//! is compared with the last version's, the table's other fields are decoded on their own.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
};

use envoy_types::pb::{
    envoy::config::route::v3::{RouteConfiguration, VirtualHost as PbVirtualHost},
    google::protobuf::Any,
};
use prost::{
    DecodeError, Message,
    encoding::{self, DecodeContext, WireType},
};

use super::{
    ClusterPlan, NodePlan, Planned, ResourceError,
    route::{RouteTable, VirtualHost},
};
use crate::resources::{CLUSTER, ENDPOINT, ROUTE, ResourceSet};

/// The field number of `RouteConfiguration.virtual_hosts`.
const VIRTUAL_HOSTS: u32 = 2;

/// Plans the accepted states a node follows, each one from the one before.
#[derive(Default)]
pub struct Planner {
    /// The last state planned, and what its resources planned to (by name).
    last: ResourceSet,
    clusters: HashMap<String, Arc<ClusterPlan>>,
    endpoints: HashMap<String, Vec<SocketAddr>>,
    routes: HashMap<String, Arc<RouteTable>>,
}

impl Planner {
    /// The plan of an accepted state; resources that do not convert (the client NACKed
    /// them, so an accepted state has none) are skipped with their error returned.
    pub fn plan(&mut self, resources: &ResourceSet) -> (NodePlan, Vec<ResourceError>) {
        let mut plan = NodePlan::default();
        let mut errors = Vec::new();
        let mut next = Planner {
            last: resources.clone(),
            ..Planner::default()
        };
        for (type_url, of_type) in &resources.by_type {
            let last = self.last.of_type(type_url);
            for (name, any) in of_type.iter() {
                let last = last.and_then(|last| last.get(name));
                match self.planned(type_url, name, any, last) {
                    Ok(planned) => {
                        next.keep(name, &planned);
                        plan.add(name.clone(), planned);
                    }
                    Err(error) => errors.push(error),
                }
            }
        }
        *self = next;
        (plan, errors)
    }

    /// The plan of one resource: the last one if it did not change.
    fn planned(
        &self,
        type_url: &str,
        name: &str,
        any: &Any,
        last: Option<&Any>,
    ) -> Result<Planned, ResourceError> {
        let unchanged = last.is_some_and(|last| last.value == any.value);
        let reused = match type_url {
            CLUSTER if unchanged => self.clusters.get(name).cloned().map(Planned::Cluster),
            ENDPOINT if unchanged => self
                .endpoints
                .get(name)
                .map(|endpoints| Planned::Endpoints(name.to_owned(), endpoints.clone())),
            ROUTE => {
                let table = self.routes.get(name);
                if unchanged {
                    table.cloned().map(Planned::Routes)
                } else {
                    let previous = last.zip(table).map(|(any, table)| (&*any.value, &**table));
                    return route_table(any, previous).map(|t| Planned::Routes(Arc::new(t)));
                }
            }
            _ => None,
        };
        match reused {
            Some(planned) => Ok(planned),
            None => Planned::from_any(any).map(|(_, planned)| planned),
        }
    }

    /// Keeps what can be reused for the next state.
    fn keep(&mut self, name: &str, planned: &Planned) {
        match planned {
            Planned::Cluster(cluster) => {
                self.clusters.insert(name.to_owned(), Arc::clone(cluster));
            }
            Planned::Endpoints(_, endpoints) => {
                self.endpoints.insert(name.to_owned(), endpoints.clone());
            }
            Planned::Routes(table) => {
                self.routes.insert(name.to_owned(), Arc::clone(table));
            }
            Planned::Listener(_) | Planned::Secret(_) | Planned::NodePods(_) => {}
        }
    }
}

/// A RouteConfiguration's encoding split at its virtual hosts: each host's encoding, in
/// order, and the other fields' encodings one after the other (a message of its own).
struct Split<'a> {
    hosts: Vec<&'a [u8]>,
    rest: Vec<u8>,
}

impl<'a> Split<'a> {
    fn of(mut buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut split = Split {
            hosts: Vec::new(),
            rest: Vec::new(),
        };
        while !buf.is_empty() {
            let field = buf;
            let (tag, wire_type) = encoding::decode_key(&mut buf)?;
            let mut body = buf;
            let length = if wire_type == WireType::LengthDelimited {
                encoding::decode_varint(&mut body)?
            } else {
                0
            };
            // Checks the field's framing (and that `length` fits) as it steps over it.
            encoding::skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
            match body.get(..usize::try_from(length).unwrap_or(usize::MAX)) {
                Some(host) if tag == VIRTUAL_HOSTS && wire_type == WireType::LengthDelimited => {
                    split.hosts.push(host)
                }
                // Anything else, a field 2 of the wrong wire type too, is decoded with the rest.
                _ => split
                    .rest
                    .extend_from_slice(&field[..field.len() - buf.len()]),
            }
        }
        Ok(split)
    }

    /// A route table resource split, and its name: the table's fields other than its
    /// virtual hosts are decoded (and so checked) here.
    fn of_table(any: &'a Any) -> Result<(Self, String), ResourceError> {
        let split = Self::of(&any.value).map_err(|source| decode_error(any, source))?;
        let rest = RouteConfiguration::decode(split.rest.as_slice())
            .map_err(|source| decode_error(any, source))?;
        Ok((split, rest.name))
    }
}

/// Decodes and plans a route table; with the table planned from the last version of it
/// (and that version's encoding), the virtual hosts encoded as before keep their plans.
pub(super) fn route_table(
    any: &Any,
    previous: Option<(&[u8], &RouteTable)>,
) -> Result<RouteTable, ResourceError> {
    let (split, name) = Split::of_table(any)?;
    let previous: Vec<(&[u8], &Arc<VirtualHost>)> = previous
        .and_then(|(encoded, table)| {
            let hosts = Split::of(encoded).ok()?.hosts;
            // The table was planned from this encoding: its hosts are in the same order.
            (hosts.len() == table.virtual_hosts.len())
                .then(|| hosts.into_iter().zip(&table.virtual_hosts).collect())
        })
        .unwrap_or_default();
    // As many hosts as before: most likely in their places, one or two changed, compared
    // in place. Else hosts came or went: each is looked for among all of the last ones.
    let moved: HashMap<&[u8], &Arc<VirtualHost>> = if previous.len() == split.hosts.len() {
        HashMap::new()
    } else {
        previous.iter().copied().collect()
    };
    let hosts = split
        .hosts
        .iter()
        .enumerate()
        .map(|(index, encoded)| {
            let in_place = previous.get(index).filter(|(last, _)| last == encoded);
            match in_place
                .map(|(_, host)| host)
                .or_else(|| moved.get(encoded))
            {
                Some(host) => Ok(Arc::clone(host)),
                None => plan_host(any, &name, encoded),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(RouteTable::new(name, hosts))
}

/// Checks a route table as [`route_table`] would plan it, without planning the virtual
/// hosts encoded byte for byte as in the version of it accepted last (among `accepted`,
/// by name): they were checked then. Its name, or why it cannot be applied.
pub fn check_route_table(
    any: &Any,
    accepted: Option<&BTreeMap<String, Any>>,
) -> Result<String, ResourceError> {
    let (split, name) = Split::of_table(any)?;
    let checked: HashSet<&[u8]> = accepted
        .and_then(|accepted| accepted.get(&name))
        .and_then(|last| Split::of(&last.value).ok())
        .map(|last| last.hosts.into_iter().collect())
        .unwrap_or_default();
    for encoded in split.hosts.iter().filter(|host| !checked.contains(*host)) {
        plan_host(any, &name, encoded)?;
    }
    Ok(name)
}

fn plan_host(any: &Any, table: &str, encoded: &[u8]) -> Result<Arc<VirtualHost>, ResourceError> {
    let host = PbVirtualHost::decode(encoded).map_err(|mut source| {
        // Where a decode of the whole table would say it failed.
        source.push("RouteConfiguration", "virtual_hosts");
        decode_error(any, source)
    })?;
    VirtualHost::planned(&host).map_err(|source| ResourceError::Routes {
        name: table.to_owned(),
        source,
    })
}

fn decode_error(any: &Any, source: DecodeError) -> ResourceError {
    ResourceError::Decode {
        type_url: any.type_url.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::{
        cluster::v3::{
            Cluster,
            cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
        },
        route::v3::{
            Route, RouteAction, RouteMatch, route::Action, route_action::ClusterSpecifier,
            route_match::PathSpecifier,
        },
    };

    use super::*;

    fn host(service: &str, cluster: &str) -> PbVirtualHost {
        PbVirtualHost {
            name: service.into(),
            domains: vec![service.into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn table(hosts: Vec<PbVirtualHost>) -> Any {
        any(
            ROUTE,
            &RouteConfiguration {
                name: "out/8080".into(),
                virtual_hosts: hosts,
                ..Default::default()
            },
        )
    }

    fn any(type_url: &str, message: &impl Message) -> Any {
        Any {
            type_url: type_url.into(),
            value: message.encode_to_vec(),
        }
    }

    fn cluster_of(table: &RouteTable, authority: &str) -> String {
        let host = table.virtual_host(authority).expect("a virtual host");
        format!(
            "{:?}",
            host.routes[0].action.clusters.names().collect::<Vec<_>>()
        )
    }

    #[test]
    fn a_changed_table_keeps_the_plans_of_its_unchanged_hosts() {
        let v1 = table(vec![
            host("a", "a-v1"),
            host("b", "b-v1"),
            host("c", "c-v1"),
        ]);
        let first = route_table(&v1, None).unwrap();
        // b changes, c goes, d and e come, and a moves behind them.
        let v2 = table(vec![
            host("b", "b-v2"),
            host("d", "d-v1"),
            host("a", "a-v1"),
            host("e", "e-v1"),
        ]);
        let second = route_table(&v2, Some((&v1.value, &first))).unwrap();

        assert_eq!(second.name, "out/8080");
        let names: Vec<&str> = second
            .virtual_hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["b", "d", "a", "e"]);
        assert!(
            Arc::ptr_eq(&second.virtual_hosts[2], &first.virtual_hosts[0]),
            "a kept"
        );
        assert!(!Arc::ptr_eq(
            &second.virtual_hosts[0],
            &first.virtual_hosts[1]
        ));
        assert_eq!(cluster_of(&second, "b"), r#"["b-v2"]"#);
        assert_eq!(cluster_of(&second, "a"), r#"["a-v1"]"#);
        assert!(second.virtual_host("c").is_none());

        // As many hosts: d changes in place, the others are kept in theirs.
        let v3 = table(vec![
            host("b", "b-v2"),
            host("d", "d-v2"),
            host("a", "a-v1"),
            host("e", "e-v1"),
        ]);
        let third = route_table(&v3, Some((&v2.value, &second))).unwrap();
        let kept: Vec<bool> = (third.virtual_hosts.iter().zip(&second.virtual_hosts))
            .map(|(now, before)| Arc::ptr_eq(now, before))
            .collect();
        assert_eq!(kept, [true, false, true, true]);
        assert_eq!(cluster_of(&third, "d"), r#"["d-v2"]"#);
    }

    #[test]
    fn a_split_table_plans_as_the_whole_one_decoded() {
        // Two encodings one after the other merge: the second name wins, hosts add up, and
        // the hosts need not be next to each other.
        let mut value = table(vec![host("a", "a")]).value;
        value.extend(
            RouteConfiguration {
                name: "second".into(),
                virtual_hosts: vec![host("b", "b")],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let merged = Any {
            type_url: ROUTE.into(),
            value,
        };
        let split = route_table(&merged, None).unwrap();
        let whole =
            RouteTable::from_proto(&RouteConfiguration::decode(&*merged.value).unwrap()).unwrap();
        assert_eq!(split.name, whole.name);
        assert_eq!(split.name, "second");
        assert_eq!(
            format!("{:?}", split.virtual_hosts),
            format!("{:?}", whole.virtual_hosts)
        );
    }

    #[test]
    fn a_check_names_the_changed_host_that_does_not_plan() {
        let v1 = table(vec![host("a", "a"), host("b", "b")]);
        let accepted = BTreeMap::from([("out/8080".to_owned(), v1)]);
        let mut broken = host("b", "b");
        broken.routes[0].action = None;
        let v2 = table(vec![host("a", "a"), broken]);
        let error = check_route_table(&v2, Some(&accepted))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "route configuration out/8080: virtual_hosts[b].routes[].action: missing"
        );

        // The table's other fields are decoded and checked as ever: a name that is not UTF-8.
        let mut bad_name = table(vec![host("a", "a")]);
        bad_name.value.extend([0x0a, 0x01, 0xff]);
        let error = check_route_table(&bad_name, Some(&accepted)).unwrap_err();
        assert!(matches!(error, ResourceError::Decode { .. }), "{error}");
        // A host that does not decode, named as a decode of the whole table names it.
        let mut bad_host = table(vec![host("a", "a")]);
        bad_host.value.extend([0x12, 0x03, 0x0a, 0x01, 0xff]);
        let whole = RouteConfiguration::decode(bad_host.value.as_slice()).unwrap_err();
        let error = check_route_table(&bad_host, Some(&accepted)).unwrap_err();
        assert_eq!(
            error.to_string(),
            decode_error(&bad_host, whole).to_string()
        );
        assert!(
            error
                .to_string()
                .contains("RouteConfiguration.virtual_hosts"),
            "{error}"
        );
        // And a host whose length runs past the end.
        let truncated = Any {
            type_url: ROUTE.into(),
            value: vec![0x12, 0x05, 0x0a],
        };
        assert!(matches!(
            check_route_table(&truncated, None),
            Err(ResourceError::Decode { .. })
        ));
    }

    #[test]
    fn the_planner_keeps_what_did_not_change() {
        let cluster = |name: &str, service: &str| {
            any(
                CLUSTER,
                &Cluster {
                    name: name.into(),
                    cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                        DiscoveryType::Eds as i32,
                    )),
                    eds_cluster_config: Some(EdsClusterConfig {
                        service_name: service.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        };
        let mut state = ResourceSet::default();
        state.insert(CLUSTER, "a".into(), cluster("a", "a"));
        state.insert(CLUSTER, "b".into(), cluster("b", "b"));
        state.insert(ROUTE, "out/8080".into(), table(vec![host("a", "a")]));
        let mut planner = Planner::default();
        let (first, errors) = planner.plan(&state);
        assert!(errors.is_empty(), "{errors:?}");

        state.insert(CLUSTER, "b".into(), cluster("b", "b-v2"));
        let (second, errors) = planner.plan(&state);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(Arc::ptr_eq(&first.clusters["a"], &second.clusters["a"]));
        assert!(!Arc::ptr_eq(&first.clusters["b"], &second.clusters["b"]));
        assert!(Arc::ptr_eq(
            &first.routes["out/8080"],
            &second.routes["out/8080"]
        ));
        let from_scratch = NodePlan::from_resources(&state).0;
        assert_eq!(second.clusters, from_scratch.clusters);
    }
}
