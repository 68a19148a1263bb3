//! The checks across resources: names defined twice, references to resources that do not
//! exist, a route against its router's listeners and its targets' ports. [`validate_across`]
//! checks a whole set; [`Across`] keeps the checks of a set whose groups of resources (a
//! file's) change one at a time, each change costing what it touches.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use serde_json::Value;

use super::{GATEWAY_ROUTE_TYPES, Options, ROUTE_TYPES, get};
use crate::{
    report::Diagnostic,
    resource::{Kind, Origin, Resource},
};

/// What [`validate`] finds across resources: names defined twice, and (unless
/// `check_references` is off) references to resources not in the set.
pub fn validate_across(resources: &[&Links], options: Options, out: &mut Vec<Diagnostic>) {
    duplicates(resources, out);
    if options.check_references {
        references(resources, out);
    }
}

/// What the checks across resources read of one resource: who it is, the names it refers
/// to, its listeners and (a route) its targets. Small beside the resource: what keeps
/// resources to check them again as they change one at a time keeps these instead.
#[derive(Clone, Debug)]
pub struct Links {
    kind: Kind,
    mesh: Option<String>,
    parent: Option<String>,
    name: Option<String>,
    origin: Origin,
    label: String,
    /// (kind, name, field, required): what it refers to, in the order checked.
    refers: Vec<(Kind, String, String, bool)>,
    /// (port, protocol) of each listener that has both.
    listeners: Vec<(i64, String)>,
    /// A route's types, each with its weighted targets: (index, virtual node, port).
    route_types: Vec<(&'static str, Vec<Target>)>,
}

/// A route's weighted target: its index, virtual node and port.
type Target = (usize, Option<String>, Option<i64>);

impl Links {
    pub fn of(resource: &Resource) -> Self {
        let spec = resource.spec();
        let text = |path: &[&str]| spec.and_then(|s| get(s, path)).and_then(Value::as_str);
        let mut refers = Vec::new();
        let mut refer = |kind: Kind, name: Option<&str>, path: String, required: bool| {
            if let Some(name) = name {
                refers.push((kind, name.to_owned(), path, required));
            }
        };
        if resource.kind != Kind::Mesh {
            refer(Kind::Mesh, resource.mesh(), "meshName".into(), true);
        }
        if let Some(parent) = resource.kind.parent() {
            refer(parent, resource.parent(), parent.name_field().into(), true);
        }
        match resource.kind {
            Kind::VirtualService => {
                refer(
                    Kind::VirtualNode,
                    text(&["provider", "virtualNode", "virtualNodeName"]),
                    "spec.provider.virtualNode.virtualNodeName".into(),
                    true,
                );
                refer(
                    Kind::VirtualRouter,
                    text(&["provider", "virtualRouter", "virtualRouterName"]),
                    "spec.provider.virtualRouter.virtualRouterName".into(),
                    true,
                );
            }
            Kind::VirtualNode => {
                for (index, backend) in spec
                    .and_then(|s| get(s, &["backends"]))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    refer(
                        Kind::VirtualService,
                        get(backend, &["virtualService", "virtualServiceName"])
                            .and_then(Value::as_str),
                        format!("spec.backends[{index}].virtualService.virtualServiceName"),
                        false,
                    );
                }
            }
            Kind::Route => {
                for route_type in ROUTE_TYPES {
                    for (index, target) in spec
                        .and_then(|s| get(s, &[route_type, "action", "weightedTargets"]))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        let path = format!("spec.{route_type}.action.weightedTargets[{index}]");
                        let node = target.get("virtualNode").and_then(Value::as_str);
                        refer(Kind::VirtualNode, node, format!("{path}.virtualNode"), true);
                    }
                }
            }
            Kind::GatewayRoute => {
                for route_type in GATEWAY_ROUTE_TYPES {
                    refer(
                        Kind::VirtualService,
                        text(&[
                            route_type,
                            "action",
                            "target",
                            "virtualService",
                            "virtualServiceName",
                        ]),
                        format!(
                            "spec.{route_type}.action.target.virtualService.virtualServiceName"
                        ),
                        true,
                    );
                }
            }
            _ => {}
        }
        Self {
            kind: resource.kind,
            mesh: resource.mesh().map(str::to_owned),
            parent: resource.parent().map(str::to_owned),
            name: resource.name().map(str::to_owned),
            origin: resource.origin.clone(),
            label: resource.label(),
            refers,
            listeners: listener_ports(spec),
            route_types: route_types(resource.kind, spec),
        }
    }

    /// `diagnostic` about this resource, as [`Diagnostic::on`] says it.
    fn about(&self, diagnostic: Diagnostic) -> Diagnostic {
        diagnostic.at(&self.origin).resource(self.label.clone())
    }
}

/// (port, protocol) of each listener of a spec that has both.
fn listener_ports(spec: Option<&Value>) -> Vec<(i64, String)> {
    spec.and_then(|s| s.get("listeners"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let port = get(l, &["portMapping", "port"])?.as_i64()?;
            let protocol = get(l, &["portMapping", "protocol"])?.as_str()?.to_owned();
            Some((port, protocol))
        })
        .collect()
}

/// A route's types, each with its weighted targets.
fn route_types(kind: Kind, spec: Option<&Value>) -> Vec<(&'static str, Vec<Target>)> {
    let Some(spec) = spec.filter(|_| kind == Kind::Route) else {
        return Vec::new();
    };
    ROUTE_TYPES
        .into_iter()
        .filter_map(|route_type| {
            let body = spec.get(route_type)?;
            let targets = get(body, &["action", "weightedTargets"])
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(index, target)| {
                    (
                        index,
                        target
                            .get("virtualNode")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        target.get("port").and_then(Value::as_i64),
                    )
                })
                .collect();
            Some((route_type, targets))
        })
        .collect()
}

/// (kind, mesh, parent, name) — what must be unique.
type Identity<'a> = (Kind, Option<&'a str>, Option<&'a str>, &'a str);

/// (kind, mesh, name) — what a reference names; no mesh for a mesh.
type Name<'a> = (Kind, Option<&'a str>, &'a str);

/// The resource a name is defined by, if any.
type Defined<'a> = dyn Fn(&Name<'_>) -> Option<&'a Links> + 'a;

impl Links {
    fn identity(&self) -> Option<Identity<'_>> {
        Some((
            self.kind,
            self.mesh.as_deref(),
            self.parent.as_deref(),
            self.name.as_deref()?,
        ))
    }

    /// The name references to it give.
    fn name(&self) -> Option<Name<'_>> {
        Some((
            self.kind,
            scope(self.kind, self.mesh.as_deref()),
            self.name.as_deref()?,
        ))
    }

    /// The names it refers to that must be defined: what its errors across resources
    /// depend on (a route's checks read its router and its targets, both required).
    fn required(&self) -> impl Iterator<Item = Name<'_>> {
        self.refers
            .iter()
            .filter(|(_, _, _, required)| *required)
            .map(|(kind, name, _, _)| (*kind, scope(*kind, self.mesh.as_deref()), name.as_str()))
    }
}

/// The mesh a reference to a `kind` resource is looked up in: none for a mesh itself.
fn scope(kind: Kind, mesh: Option<&str>) -> Option<&str> {
    if kind == Kind::Mesh { None } else { mesh }
}

fn duplicates(resources: &[&Links], out: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<Identity<'_>, &Links> = HashMap::with_capacity(resources.len());
    for &resource in resources {
        let Some(identity) = resource.identity() else {
            continue;
        };
        if let Some(first) = seen.insert(identity, resource) {
            out.push(
                resource
                    .about(Diagnostic::error(format!(
                        "defined twice; first at {}",
                        first.origin
                    )))
                    .path(resource.kind.name_field()),
            );
        }
    }
}

fn references(resources: &[&Links], out: &mut Vec<Diagnostic>) {
    let by_name: HashMap<Name<'_>, &Links> = resources
        .iter()
        .filter_map(|&r| Some((r.name()?, r)))
        .collect();
    let defined = |name: &Name<'_>| by_name.get(name).copied();
    for &resource in resources {
        missing_references(resource, &defined, out);
    }
    for &resource in resources.iter().filter(|r| r.kind == Kind::Route) {
        route_against_router_and_targets(resource, &defined, out);
    }
}

/// Every name a resource refers to must exist in its mesh — except a virtual node's backends:
/// App Mesh takes a node whose backend service is not created yet (walkthrough scripts create
/// nodes before their backends' services), which is noted, and not routed until it exists.
fn missing_references(resource: &Links, defined: &Defined<'_>, out: &mut Vec<Diagnostic>) {
    let mesh = resource.mesh.as_deref();
    for (kind, name, path, required) in &resource.refers {
        if defined(&(*kind, scope(*kind, mesh), name.as_str())).is_some() {
            continue;
        }
        let within = match (kind, mesh) {
            (Kind::Mesh, _) | (_, None) => String::new(),
            (_, Some(mesh)) => format!(" in mesh {mesh}"),
        };
        let diagnostic = if *required {
            Diagnostic::error(format!(
                "refers to {kind} {name}, which is not defined{within}"
            ))
        } else {
            Diagnostic::note(format!(
                "refers to {kind} {name}, which is not defined{within}: not routed until it is"
            ))
        };
        out.push(resource.about(diagnostic).path(path.clone()));
    }
}

/// A route's type must match a listener protocol of its router, and a weighted target's port
/// must name a listener of its virtual node (required when the node has several).
fn route_against_router_and_targets(
    route: &Links,
    defined: &Defined<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let mesh = route.mesh.as_deref();
    let router = route
        .parent
        .as_deref()
        .and_then(|r| defined(&(Kind::VirtualRouter, mesh, r)));
    for (route_type, targets) in &route.route_types {
        let protocol = route_type.trim_end_matches("Route");
        if let Some(router) = router {
            let protocols = &router.listeners;
            if !protocols.is_empty() && !protocols.iter().any(|(_, p)| p == protocol) {
                out.push(
                    route
                        .about(Diagnostic::error(format!(
                            "{route_type} needs a {protocol} listener on {}, which listens on {}",
                            router.label,
                            protocols
                                .iter()
                                .map(|(port, p)| format!("{port}/{p}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )))
                        .path(format!("spec.{route_type}")),
                );
            }
        }
        for (index, node, port) in targets {
            let Some(node) = node
                .as_deref()
                .and_then(|n| defined(&(Kind::VirtualNode, mesh, n)))
            else {
                continue;
            };
            let ports = &node.listeners;
            let path = format!("spec.{route_type}.action.weightedTargets[{index}].port");
            match port {
                Some(port) if !ports.iter().any(|(p, _)| p == port) => out.push(
                    route
                        .about(Diagnostic::error(format!(
                            "{} has no listener on port {port}",
                            node.label
                        )))
                        .path(path),
                ),
                None if ports.len() > 1 => out.push(
                    route
                        .about(Diagnostic::error(format!(
                            "is required: {} has {} listeners",
                            node.label,
                            ports.len()
                        )))
                        .path(path),
                ),
                _ => {}
            }
        }
    }
}

/// A resource of an [`Across`]: its group and its place in the group.
type Member = (u64, usize);

type OwnedIdentity = (Kind, Option<String>, Option<String>, String);
type OwnedName = (Kind, Option<String>, String);

fn owned((kind, scope, name): Name<'_>) -> OwnedName {
    (kind, scope.map(str::to_owned), name.to_owned())
}

/// The checks across resources kept for a set whose groups of resources (a file's) come, go
/// and change one at a time: a change costs its own resources and those that require the
/// names it defines or undefines, not a pass over the set. It tells whether the set has an
/// error across resources; what the errors are, [`validate_across`] over the whole set says
/// (in the order a whole read gives), needed only then.
pub struct Across {
    check_references: bool,
    groups: HashMap<u64, Arc<[Links]>>,
    /// How many resources have each identity, and how many identities more than one.
    identities: HashMap<OwnedIdentity, usize>,
    defined_twice: usize,
    /// The resources defined by each name (more than one only while defined twice).
    named: HashMap<OwnedName, Vec<Member>>,
    /// The resources requiring each name: checked again when what it names changes.
    required_by: HashMap<OwnedName, HashSet<Member>>,
    /// How many errors each resource that has some has, and their sum.
    errors: HashMap<Member, usize>,
    error_count: usize,
    /// Since the last check: names defined or undefined, resources added.
    changed_names: HashSet<OwnedName>,
    added: Vec<Member>,
}

impl Across {
    pub fn new(options: Options) -> Self {
        Self {
            check_references: options.check_references,
            groups: HashMap::new(),
            identities: HashMap::new(),
            defined_twice: 0,
            named: HashMap::new(),
            required_by: HashMap::new(),
            errors: HashMap::new(),
            error_count: 0,
            changed_names: HashSet::new(),
            added: Vec::new(),
        }
    }

    /// Adds `group`'s resources (replacing what the group had).
    pub fn insert(&mut self, group: u64, resources: Arc<[Links]>) {
        self.remove(group);
        for (index, resource) in resources.iter().enumerate() {
            let member = (group, index);
            if let Some((kind, mesh, parent, name)) = resource.identity() {
                let count = self
                    .identities
                    .entry((
                        kind,
                        mesh.map(str::to_owned),
                        parent.map(str::to_owned),
                        name.to_owned(),
                    ))
                    .or_default();
                *count += 1;
                if *count == 2 {
                    self.defined_twice += 1;
                }
            }
            if !self.check_references {
                continue;
            }
            if let Some(name) = resource.name() {
                let name = owned(name);
                self.named.entry(name.clone()).or_default().push(member);
                self.changed_names.insert(name);
            }
            for name in resource.required() {
                self.required_by
                    .entry(owned(name))
                    .or_default()
                    .insert(member);
            }
            self.added.push(member);
        }
        self.groups.insert(group, resources);
    }

    /// Takes `group`'s resources away.
    pub fn remove(&mut self, group: u64) {
        let Some(resources) = self.groups.remove(&group) else {
            return;
        };
        for (index, resource) in resources.iter().enumerate() {
            let member = (group, index);
            if let Some((kind, mesh, parent, name)) = resource.identity() {
                let identity = (
                    kind,
                    mesh.map(str::to_owned),
                    parent.map(str::to_owned),
                    name.to_owned(),
                );
                if let Some(count) = self.identities.get_mut(&identity) {
                    *count -= 1;
                    match *count {
                        0 => {
                            self.identities.remove(&identity);
                        }
                        1 => self.defined_twice -= 1,
                        _ => {}
                    }
                }
            }
            if !self.check_references {
                continue;
            }
            if let Some(name) = resource.name() {
                let name = owned(name);
                if let Some(members) = self.named.get_mut(&name) {
                    members.retain(|m| *m != member);
                    if members.is_empty() {
                        self.named.remove(&name);
                    }
                }
                self.changed_names.insert(name);
            }
            for name in resource.required() {
                let name = owned(name);
                if let Some(members) = self.required_by.get_mut(&name) {
                    members.remove(&member);
                    if members.is_empty() {
                        self.required_by.remove(&name);
                    }
                }
            }
            if let Some(errors) = self.errors.remove(&member) {
                self.error_count -= errors;
            }
        }
    }

    /// Whether the set has an error across resources, checking what changed since the last
    /// call: the resources added, and those requiring a name defined or undefined since.
    pub fn has_errors(&mut self) -> bool {
        let mut stale: HashSet<Member> = self.added.drain(..).collect();
        for name in self.changed_names.drain() {
            stale.extend(self.required_by.get(&name).into_iter().flatten());
        }
        for member in stale {
            // Gone if its group was removed since it was added.
            let Some(errors) = self.resource(member).map(|r| self.errors_of(r)) else {
                continue;
            };
            let before = if errors > 0 {
                self.errors.insert(member, errors)
            } else {
                self.errors.remove(&member)
            };
            self.error_count = self.error_count + errors - before.unwrap_or(0);
        }
        self.defined_twice > 0 || self.error_count > 0
    }

    fn resource(&self, (group, index): Member) -> Option<&Links> {
        self.groups.get(&group)?.get(index)
    }

    /// The resource `name` names: the one defined last, as [`validate_across`] takes it
    /// (more than one is an error of its own).
    fn defined(&self, (kind, scope, name): &Name<'_>) -> Option<&Links> {
        let members = self
            .named
            .get(&(*kind, scope.map(str::to_owned), (*name).to_owned()))?;
        self.resource(*members.last()?)
    }

    /// The errors across resources [`validate_across`] finds of `resource`, counted.
    fn errors_of(&self, resource: &Links) -> usize {
        let mut found = Vec::new();
        let defined = |name: &Name<'_>| self.defined(name);
        missing_references(resource, &defined, &mut found);
        if resource.kind == Kind::Route {
            route_against_router_and_targets(resource, &defined, &mut found);
        }
        found.iter().filter(|d| d.is_error()).count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::{Value, json};

    use super::*;
    use crate::resource::Format;

    fn links(kind: Kind, body: Value) -> Links {
        Links::of(&Resource {
            kind,
            body: body.as_object().unwrap().clone(),
            origin: Origin {
                file: "g.json".into(),
                line: None,
            },
            format: Format::ApiJson,
        })
    }

    fn node(name: &str, ports: &[i64]) -> Links {
        let listeners: Vec<Value> = ports
            .iter()
            .map(|port| json!({"portMapping": {"port": port, "protocol": "http"}}))
            .collect();
        links(
            Kind::VirtualNode,
            json!({"meshName": "m", "virtualNodeName": name, "spec": {"listeners": listeners}}),
        )
    }

    fn route(target: &str, port: Option<i64>) -> Links {
        let mut target = json!({"virtualNode": target, "weight": 1});
        if let Some(port) = port {
            target["port"] = json!(port);
        }
        links(
            Kind::Route,
            json!({"meshName": "m", "virtualRouterName": "r", "routeName": "rt", "spec": {"httpRoute": {"action": {"weightedTargets": [target]}}}}),
        )
    }

    fn across(groups: Vec<Vec<Links>>) -> Across {
        let mut across = Across::new(OPTIONS);
        for (group, resources) in (0..).zip(groups) {
            across.insert(group, resources.into());
        }
        across
    }

    const OPTIONS: Options = Options {
        check_references: true,
        lenient: false,
    };

    fn mesh() -> Links {
        links(Kind::Mesh, json!({"meshName": "m", "spec": {}}))
    }

    fn router() -> Links {
        links(
            Kind::VirtualRouter,
            json!({"meshName": "m", "virtualRouterName": "r", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
        )
    }

    #[test]
    fn a_route_is_checked_again_when_its_target_changes_in_another_group() {
        let mut across = across(vec![
            vec![mesh(), router()],
            vec![node("n", &[80])],
            vec![route("n", Some(80))],
        ]);
        assert!(!across.has_errors());
        // The node no longer listens on the route's port: only the node's group changed.
        across.insert(1, [node("n", &[81])].into());
        assert!(across.has_errors());
        across.insert(1, [node("n", &[80, 81])].into());
        assert!(!across.has_errors());
        // Gone, then back in another group.
        across.remove(1);
        assert!(across.has_errors());
        across.insert(7, [node("n", &[80])].into());
        assert!(!across.has_errors());
    }

    #[test]
    fn a_name_defined_twice_is_an_error_until_either_goes() {
        let mut across = across(vec![vec![mesh(), node("n", &[80])], vec![node("n", &[81])]]);
        assert!(across.has_errors());
        across.remove(0);
        // The mesh went with it: its references are the error now.
        assert!(across.has_errors());
        across.insert(2, [mesh()].into());
        assert!(!across.has_errors());
    }

    /// A small random generator, so that the sets checked are the same every run.
    struct Random(u64);

    impl Random {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// A resource of a small mesh whose names collide often: references that resolve or
    /// not, names defined twice, routes whose router or targets do not listen as they need.
    fn random_resource(random: &mut Random) -> Links {
        let mesh = random.pick(&["m", "m", "m", "other"]);
        let node = random.pick(&["n0", "n1", "n2"]);
        let service = random.pick(&["s0", "s1"]);
        let port = json!(random.pick(&["80", "81"]).parse::<i64>().unwrap());
        let protocol = random.pick(&["http", "grpc"]);
        let listeners = (0..random.below(3))
            .map(|n| json!({"portMapping": {"port": 80 + n, "protocol": protocol}}))
            .collect::<Vec<_>>();
        match random.below(7) {
            0 => links(Kind::Mesh, json!({"meshName": mesh, "spec": {}})),
            1 => links(
                Kind::VirtualNode,
                json!({"meshName": mesh, "virtualNodeName": node, "spec": {"listeners": listeners, "backends": [{"virtualService": {"virtualServiceName": service}}]}}),
            ),
            2 => {
                let provider = if random.below(2) == 0 {
                    json!({"virtualNode": {"virtualNodeName": node}})
                } else {
                    json!({"virtualRouter": {"virtualRouterName": "r"}})
                };
                links(
                    Kind::VirtualService,
                    json!({"meshName": mesh, "virtualServiceName": service, "spec": {"provider": provider}}),
                )
            }
            3 => links(
                Kind::VirtualRouter,
                json!({"meshName": mesh, "virtualRouterName": "r", "spec": {"listeners": listeners}}),
            ),
            4 => {
                let route_type = random.pick(&["httpRoute", "grpcRoute"]);
                let mut target = json!({"virtualNode": node, "weight": 1});
                if random.below(2) == 0 {
                    target["port"] = port;
                }
                links(
                    Kind::Route,
                    json!({"meshName": mesh, "virtualRouterName": "r", "routeName": random.pick(&["a", "b"]), "spec": {route_type: {"action": {"weightedTargets": [target]}}}}),
                )
            }
            5 => links(
                Kind::VirtualGateway,
                json!({"meshName": mesh, "virtualGatewayName": "g", "spec": {"listeners": listeners}}),
            ),
            _ => links(
                Kind::GatewayRoute,
                json!({"meshName": mesh, "virtualGatewayName": "g", "gatewayRouteName": "gr", "spec": {"httpRoute": {"action": {"target": {"virtualService": {"virtualServiceName": service}}}}}}),
            ),
        }
    }

    /// Whether the whole pass finds an error in the groups, taken in their order.
    fn whole_pass_errs(groups: &[(u64, Vec<Links>)], options: Options) -> bool {
        let all: Vec<&Links> = groups.iter().flat_map(|(_, g)| g).collect();
        let mut out = Vec::new();
        validate_across(&all, options, &mut out);
        out.iter().any(Diagnostic::is_error)
    }

    #[test]
    fn it_finds_an_error_exactly_when_the_whole_pass_does() {
        let mut errors_seen = 0;
        for seed in 1..=40_u64 {
            let options = Options {
                check_references: seed % 5 != 0,
                lenient: false,
            };
            let mut random = Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut across = Across::new(options);
            let mut groups: Vec<(u64, Vec<Links>)> = (0..6).map(|id| (id, Vec::new())).collect();
            let mut next_id = 6;
            for step in 0..200 {
                let slot = random.below(groups.len());
                let resources: Vec<Links> = (0..random.below(4))
                    .map(|_| random_resource(&mut random))
                    .collect();
                match random.below(3) {
                    // Removed, as a deleted file.
                    0 => {
                        across.remove(groups[slot].0);
                        groups[slot].1.clear();
                    }
                    // Replaced under its id.
                    1 => {
                        across.insert(groups[slot].0, resources.clone().into());
                        groups[slot].1 = resources;
                    }
                    // Replaced under a new id, as a file read again.
                    _ => {
                        across.remove(groups[slot].0);
                        across.insert(next_id, resources.clone().into());
                        groups[slot] = (next_id, resources);
                        next_id += 1;
                    }
                }
                let expected = whole_pass_errs(&groups, options);
                assert_eq!(
                    across.has_errors(),
                    expected,
                    "seed {seed}, step {step}: {groups:#?}"
                );
                errors_seen += usize::from(expected);
            }
        }
        // Both outcomes were exercised, often.
        assert!((1000..7000).contains(&errors_seen), "{errors_seen} of 8000");
    }
}
