//! What the fuzz targets share: the path a mesh definition takes once read (validation,
//! indexing, compiling to xDS, the node's plan of the result), the input framings of the
//! binary targets (xDS resources, a route table with requests), and the agent's config module.
//!
//! Nothing here touches the filesystem or the network: every input is bytes in memory.
use std::path::PathBuf;

use control_plane::{
    compile::{MeshIndex, Workloads, compile},
    registry::Registry,
};
use mesh_model::{
    convert,
    report::Diagnostic,
    resource::{Origin, Resource},
    validate::{self, Options},
};
use mesh_xds::{plan::NodePlan, resources::TYPES};

/// agent/src/config.rs itself, compiled here: the agent crate's build script builds the eBPF
/// object, which the config parser does not need. The module is a leaf (std, serde,
/// serde_yaml, ipnet, thiserror, agent-common's constants); if it grows a `crate::` import,
/// this crate stops building and `cargo xtask fuzz` says so.
#[allow(dead_code, unused_imports)]
#[path = "../../agent/src/config.rs"]
pub mod agent_config;

/// Where diagnostics say a fuzz input came from.
pub fn origin(file: &str, line: Option<usize>) -> Origin {
    Origin {
        file: PathBuf::from(file),
        line,
    }
}

/// What the control plane does with the resources read from a mesh definition: validate
/// them, and when they are valid, index and compile them for every node, then plan the
/// compiled resources as a node's proxy would. Also renders the diagnostics and the two
/// conversions the command line offers (Kubernetes manifests, API JSON).
///
/// Panics if the node rejects anything the compiler emitted for a valid mesh: the control
/// plane must never serve what its agents NACK.
pub fn definitions(resources: &[Resource], mut diagnostics: Vec<Diagnostic>, lenient: bool) {
    diagnostics.extend(validate::validate(
        resources,
        Options {
            check_references: true,
            lenient,
        },
    ));
    for diagnostic in &diagnostics {
        let _ = diagnostic.to_string();
        let _ = diagnostic.to_json();
    }
    let _ = convert::to_kubernetes(resources, "fuzz");
    let _ = convert::to_api_json(resources);
    if diagnostics.iter().any(Diagnostic::is_error) {
        return;
    }
    let Ok(index) = MeshIndex::new(resources) else {
        return;
    };
    let compiled = compile(&index, &Registry::default(), &Workloads::All);
    let (_plan, errors) = NodePlan::from_resources(&compiled.resources);
    assert!(
        errors.is_empty(),
        "the node rejects what the control plane compiled from a valid mesh: {errors:#?}"
    );
}

/// The type URL of an xDS record's tag: the five types the node subscribes to, and (tag 5)
/// one it does not know.
pub fn type_url(tag: u8) -> &'static str {
    const UNKNOWN: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
    TYPES.get(usize::from(tag % 6)).copied().unwrap_or(UNKNOWN)
}

/// The xDS target's input: records of `[tag: u8][length: u16 LE][protobuf bytes]`, each one
/// resource of [`type_url`]`(tag)`; a short last record takes what is left.
pub fn xds_records(mut data: &[u8]) -> Vec<(&'static str, &[u8])> {
    let mut records = Vec::new();
    while let [tag, rest @ ..] = data {
        let (len, rest) = match rest {
            [lo, hi, rest @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), rest),
            _ => (rest.len(), &[][..]),
        };
        let len = len.min(rest.len());
        records.push((type_url(*tag), &rest[..len]));
        data = &rest[len..];
    }
    records
}

/// Encodes records for [`xds_records`] (seed corpora).
pub fn encode_xds_records(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, bytes) in records {
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        out.push(*tag);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&bytes[..usize::from(len)]);
    }
    out
}

/// The HTTP routing target's input: `[length: u32 LE][RouteConfiguration protobuf]`, then
/// requests as text (see [`requests`]).
pub fn split_route_input(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len))
        .ok()?
        .min(rest.len());
    Some(rest.split_at(len))
}

/// Encodes a route configuration and requests for [`split_route_input`] (seed corpora).
pub fn encode_route_input(route_config: &[u8], requests: &str) -> Vec<u8> {
    let len = u32::try_from(route_config.len()).unwrap_or(u32::MAX);
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(route_config);
    out.extend_from_slice(requests.as_bytes());
    out
}

/// One request as the proxy hands it to the router.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    /// The random draw for the weighted cluster pick.
    pub draw: u32,
}

/// Requests written as text, separated by blank lines: a request line
/// `METHOD SCHEME AUTHORITY PATH[?QUERY] [DRAW]`, then `name: value` header lines. Header
/// lines that are not valid HTTP are skipped (the proxy's HTTP parser never passes them on);
/// the authority is lowercased as the proxy does.
pub fn requests(text: &str) -> Vec<Request> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut lines = block.lines();
        let Some(first) = lines.next() else { continue };
        let mut words = first.split(' ');
        let mut request = Request {
            method: words.next().unwrap_or_default().to_owned(),
            scheme: words.next().unwrap_or_default().to_owned(),
            authority: words.next().unwrap_or_default().to_ascii_lowercase(),
            ..Request::default()
        };
        let target = words.next().unwrap_or_default();
        match target.split_once('?') {
            Some((path, query)) => {
                request.path = path.to_owned();
                request.query = Some(query.to_owned());
            }
            None => request.path = target.to_owned(),
        }
        request.draw = words.next().and_then(|d| d.parse().ok()).unwrap_or(0);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            ) {
                request.headers.append(name, value);
            }
        }
        out.push(request);
    }
    out
}
