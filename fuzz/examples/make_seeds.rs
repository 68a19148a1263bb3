//! Writes the seed corpora (`fuzz/corpus/<target>/`) from real inputs: the repository's
//! example meshes and the App Mesh examples in a directory such as /work/shared/appmesh
//! (AWS's walkthroughs: API JSON, Kubernetes manifests, CloudFormation). Definition seeds are
//! those files with their `$VAR` placeholders filled in as the walkthroughs' envsubst would;
//! the xDS and routing seeds are what the control plane compiles from every example mesh
//! that validates, with requests that reach each of its routes.
//!
//!     cargo +nightly run --manifest-path fuzz/Cargo.toml --example make_seeds -- \
//!         /work/shared/appmesh
//!
//! Run from the repository root. Seeds are written next to what is there; `cargo fuzz cmin`
//! then keeps those that add coverage (docs/fuzzing.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    collections::{BTreeSet, HashMap, hash_map::DefaultHasher},
    fs,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use control_plane::{
    compile::{MeshIndex, Workloads, compile},
    registry::Registry,
};
use envoy_types::pb::envoy::{
    config::{
        listener::v3::{Listener, filter::ConfigType},
        route::v3::{RouteConfiguration, header_matcher, route_match::PathSpecifier},
    },
    extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_connection_manager::RouteSpecifier,
    },
    r#type::matcher::v3::string_matcher::MatchPattern,
};
use mesh_agent_fuzz::{encode_route_input, encode_xds_records};
use mesh_model::{
    report::Diagnostic,
    source::{self, LoadOptions, Placeholders},
    validate::{self, Options},
};
use mesh_xds::resources::{LISTENER, ROUTE, ResourceSet, TYPES};
use prost::Message;

/// Larger files are left out of the seeds (the committed corpus stays small).
const MAX_SEED: usize = 24 * 1024;

fn main() {
    let appmesh = std::env::args().nth(1).map(PathBuf::from);
    let corpus = PathBuf::from("fuzz/corpus");
    let mut files = files_under(Path::new("deploy/examples"));
    if let Some(dir) = &appmesh {
        files.extend(files_under(&dir.join("examples")));
        files.extend(files_under(&dir.join("corpus")));
    }
    let mut written = HashMap::<&str, usize>::new();
    for file in &files {
        let Ok(raw) = fs::read_to_string(file) else {
            continue;
        };
        if raw.len() > MAX_SEED || raw.contains("CustomResourceDefinition") {
            continue;
        }
        let json = file.extension().is_some_and(|e| e == "json");
        let text = fill_placeholders(&raw, json);
        let target = if text.contains("AWS::AppMesh::") {
            "definition_cloudformation"
        } else if text.contains("appmesh.k8s.aws") {
            "definition_kubernetes"
        } else if json && serde_json::from_str::<serde_json::Value>(&text).is_ok() {
            "definition_api_json"
        } else {
            continue;
        };
        write_seed(&corpus.join(target), text.as_bytes());
        *written.entry(target).or_default() += 1;
    }
    // API JSON meshes: a directory's files as one input (one JSON document each).
    let mut dirs = BTreeSet::new();
    for file in &files {
        if file.extension().is_some_and(|e| e == "json")
            && let Some(parent) = file.parent()
        {
            dirs.insert(parent.to_owned());
        }
    }
    for dir in &dirs {
        let mut joined = String::new();
        for file in files.iter().filter(|f| f.parent() == Some(dir.as_path())) {
            if file.extension().is_some_and(|e| e == "json")
                && let Ok(raw) = fs::read_to_string(file)
            {
                joined.push_str(&fill_placeholders(&raw, true));
                joined.push('\n');
            }
        }
        if joined.len() <= 4 * MAX_SEED {
            write_seed(&corpus.join("definition_api_json"), joined.as_bytes());
            *written.entry("definition_api_json").or_default() += 1;
        }
    }
    // Compiled meshes: every example directory that validates.
    let mut meshes = 0;
    let mut mesh_dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_owned))
        .collect();
    mesh_dirs.insert(PathBuf::from("deploy/examples/shop"));
    for dir in &mesh_dirs {
        let Some(resources) = compiled(dir) else {
            continue;
        };
        meshes += 1;
        xds_seeds(&corpus.join("xds_plan"), &resources, &mut written);
        route_seeds(&corpus.join("http_route"), &resources, &mut written);
    }
    config_seeds(&corpus.join("agent_config"), &mut written);
    println!("{meshes} example meshes compiled; seeds written: {written:?}");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            let name = path
                .to_string_lossy()
                .trim_end_matches(".template")
                .to_owned();
            if [".json", ".yaml", ".yml"].iter().any(|e| name.ends_with(e)) {
                out.push(path);
            }
        }
    }
    out
}

/// The value envsubst would put in for `name`, as the walkthroughs export them.
fn value_for(name: &str) -> &'static str {
    let upper = name.to_ascii_uppercase();
    if upper.contains("PORT") {
        "8080"
    } else if upper.contains("ARN") {
        "arn:aws:acm:us-west-2:123456789012:certificate/0d7c7a9f"
    } else if upper.contains("IMAGE") {
        "public.ecr.aws/appmesh/colorapp:latest"
    } else if upper.contains("NAMESPACE") {
        "howto"
    } else {
        "demo"
    }
}

/// `$NAME` and `${NAME}` replaced; in JSON a bare one (a value outside quotes) is quoted
/// unless it is a number.
fn fill_placeholders(text: &str, json: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            out.push('$');
            rest = after;
            continue;
        }
        let value = value_for(name);
        let bare =
            json && out.trim_end().ends_with([':', '[', ',']) && value.parse::<u32>().is_err();
        if bare {
            out.push('"');
            out.push_str(value);
            out.push('"');
        } else {
            out.push_str(value);
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

fn write_seed(dir: &Path, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    fs::write(dir.join(format!("seed-{:016x}", hasher.finish())), bytes).unwrap();
}

/// The resources the control plane serves for the mesh in `dir`, if it validates.
fn compiled(dir: &Path) -> Option<ResourceSet> {
    let names: BTreeSet<String> = files_under(dir)
        .iter()
        .filter(|f| f.parent() == Some(dir))
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|text| placeholder_names(&text))
        .collect();
    let table = names
        .into_iter()
        .map(|n| {
            let value = value_for(&n).to_owned();
            (n, value)
        })
        .collect();
    let options = LoadOptions {
        placeholders: Placeholders::From(table),
        ..LoadOptions::default()
    };
    // Only this directory's own files: the walkthroughs keep variants in subdirectories.
    let files: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|f| f.parent() == Some(dir))
        .collect();
    if files.is_empty() {
        return None;
    }
    let loaded = source::load(&files, &options);
    if loaded.resources.is_empty() || loaded.diagnostics.iter().any(Diagnostic::is_error) {
        return None;
    }
    let found = validate::validate(
        &loaded.resources,
        Options {
            check_references: true,
            lenient: true,
        },
    );
    if found.iter().any(Diagnostic::is_error) {
        return None;
    }
    let index = MeshIndex::new(&loaded.resources).ok()?;
    let compiled = compile(&index, &Registry::default(), &Workloads::All);
    (compiled.resources.count() > 0).then_some(compiled.resources)
}

fn placeholder_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        let after = rest[dollar + 1..].trim_start_matches('{');
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if end > 0 {
            names.push(after[..end].to_owned());
        }
        rest = &rest[dollar + 1..];
    }
    names
}

/// The whole set as one input, and each type's resources as one.
fn xds_seeds(dir: &Path, resources: &ResourceSet, written: &mut HashMap<&str, usize>) {
    let tag = |type_url: &str| TYPES.iter().position(|t| *t == type_url).map(|p| p as u8);
    let mut all = Vec::new();
    for (type_url, by_name) in &resources.by_type {
        let Some(tag) = tag(type_url) else { continue };
        let records: Vec<(u8, Vec<u8>)> = by_name
            .values()
            .map(|any| (tag, any.value.clone()))
            .collect();
        all.extend(records.iter().cloned());
        let bytes = encode_xds_records(&records);
        if bytes.len() <= 2 * MAX_SEED {
            write_seed(dir, &bytes);
            *written.entry("xds_plan").or_default() += 1;
        }
    }
    let bytes = encode_xds_records(&all);
    if bytes.len() <= 2 * MAX_SEED {
        write_seed(dir, &bytes);
        *written.entry("xds_plan").or_default() += 1;
    }
}

/// Each route configuration (RDS, or inline in a listener) with requests that reach its
/// routes and one that reaches none.
fn route_seeds(dir: &Path, resources: &ResourceSet, written: &mut HashMap<&str, usize>) {
    let mut configs = Vec::new();
    for any in resources
        .of_type(ROUTE)
        .into_iter()
        .flat_map(|m| m.values())
    {
        if let Ok(config) = RouteConfiguration::decode(any.value.as_slice()) {
            configs.push(config);
        }
    }
    for any in resources
        .of_type(LISTENER)
        .into_iter()
        .flat_map(|m| m.values())
    {
        let Ok(listener) = Listener::decode(any.value.as_slice()) else {
            continue;
        };
        for chain in &listener.filter_chains {
            for filter in &chain.filters {
                if let Some(ConfigType::TypedConfig(config)) = &filter.config_type
                    && let Ok(manager) = HttpConnectionManager::decode(config.value.as_slice())
                    && let Some(RouteSpecifier::RouteConfig(config)) = manager.route_specifier
                {
                    configs.push(config);
                }
            }
        }
    }
    for config in configs {
        let requests = requests_for(&config);
        let bytes = encode_route_input(&config.encode_to_vec(), &requests);
        if bytes.len() <= 2 * MAX_SEED {
            write_seed(dir, &bytes);
            *written.entry("http_route").or_default() += 1;
        }
    }
}

/// Requests in the target's text form: per virtual host domain and route, one whose path,
/// headers and query parameters the route's match asks for.
fn requests_for(config: &RouteConfiguration) -> String {
    let mut out = Vec::new();
    for host in &config.virtual_hosts {
        let Some(domain) = host.domains.first() else {
            continue;
        };
        let authority = domain.replace('*', "x");
        for (index, route) in host.routes.iter().enumerate() {
            let Some(matcher) = &route.r#match else {
                continue;
            };
            let path = match &matcher.path_specifier {
                Some(PathSpecifier::Prefix(p)) => p.clone(),
                Some(PathSpecifier::Path(p)) => p.clone(),
                Some(PathSpecifier::PathSeparatedPrefix(p)) => format!("{p}/x"),
                _ => "/".into(),
            };
            let query: Vec<String> = matcher
                .query_parameters
                .iter()
                .map(|q| format!("{}=v", q.name))
                .collect();
            let target = if query.is_empty() {
                path
            } else {
                format!("{path}?{}", query.join("&"))
            };
            let mut lines = vec![format!("GET http {authority} {target} {index}")];
            for header in &matcher.headers {
                let value = match &header.header_match_specifier {
                    Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)) => {
                        match &m.match_pattern {
                            Some(MatchPattern::Exact(v)) => v.clone(),
                            Some(MatchPattern::Prefix(v)) => format!("{v}x"),
                            Some(MatchPattern::Suffix(v)) => format!("x{v}"),
                            _ => "v".into(),
                        }
                    }
                    Some(header_matcher::HeaderMatchSpecifier::RangeMatch(r)) => {
                        r.start.to_string()
                    }
                    _ => "v".into(),
                };
                lines.push(format!("{}: {value}", header.name));
            }
            out.push(lines.join("\n"));
        }
        out.push(format!(
            "POST https {authority} /no/such/route?x=1 7\nx-test: 1"
        ));
    }
    out.join("\n\n")
}

fn config_seeds(dir: &Path, written: &mut HashMap<&str, usize>) {
    let seeds = [
        "proxy:\n  outbound_addr: 10.0.0.5:15001\n",
        "proxy:\n  outbound_addr: 10.0.0.5:15001\n  drain_timeout: 20s\nadmin:\n  addr: 0.0.0.0:15020\nredirect:\n  exclude_cidrs: [169.254.0.0/16]\n  exclude_ports: [22]\nenrollment:\n  netns: [pod-a, /proc/4242/ns/net]\n",
        "cgroup_path: /sys/fs/cgroup\nproxy:\n  outbound_addr: 10.0.0.5:15001\n  drain_timeout: 20s\nadmin:\n  addr: 0.0.0.0:15020\nredirect:\n  exclude_cidrs: [169.254.0.0/16]\n  exclude_ports: [22]\nenrollment:\n  discover: \"cni-*\"\n  netns: []\n",
        "proxy:\n  outbound_addr: 192.168.1.2:15001\n  mark: 0x4d410001\n  connect_timeout: 250ms\n  drain_timeout: 2m\n  worker_threads: 2\n  inbound_port: 15006\nadmin:\n  addr: 127.0.0.1:15020\n  socket: /run/mesh-agent/admin.sock\nredirect:\n  exclude_cidrs: [10.96.0.0/12, 169.254.169.254/32]\n  exclude_ports: [22, 53]\nenrollment:\n  netns_dir: /run/netns\n  netns: [pod-a=shop/web, /proc/1/ns/net=shop/api-v1]\ndiscovery:\n  resolv_conf: /etc/resolv.conf\nxds:\n  address: http://[fd00::1]:15010\n  node_id: node-1\n  virtual_nodes: [shop/web, shop/api-v1]\n",
        "proxy: {outbound_addr: \"10.1.2.3:15001\", worker_threads: 64}\nxds: {address: \"https://cp.mesh-system.svc:15010\"}\nenrollment: {netns: [\"${HOME}\"]}\n",
    ];
    for seed in seeds {
        write_seed(dir, seed.as_bytes());
        *written.entry("agent_config").or_default() += 1;
    }
}
