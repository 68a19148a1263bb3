//! What the compiler emits, the node proxy's plan accepts: every resource of the example
//! mesh converts, and the plan routes the way the mesh says.
// A test's (or benchmark's) panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::PathBuf;

use std::sync::Arc;

use control_plane::{
    compile::{MeshIndex, Reuse, ServiceEndpoints, Serving, Workloads, compile, compile_served},
    identity::{AutoMtls, AutoMtlsOptions},
    registry::Registry,
};
use mesh_model::{
    source::{self, LoadOptions},
    validate::{self, Options},
};
use mesh_xds::{
    plan::{
        HttpPlan, NodePlan, PortPlan,
        cluster::Discovery,
        route::RequestView,
        tls::{CertificateSource, SanKind, TrustSource},
    },
    resources::SECRET,
};

fn shop_index() -> MeshIndex {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
    let loaded = source::load(&[dir], &LoadOptions::default());
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let options = Options {
        check_references: true,
        lenient: false,
    };
    assert!(validate::validate(&loaded.resources, options).is_empty());
    MeshIndex::new(&loaded.resources).unwrap()
}

fn plan_of(resources: &mesh_xds::resources::ResourceSet) -> NodePlan {
    let (plan, errors) = NodePlan::from_resources(resources);
    assert!(errors.is_empty(), "{errors:#?}");
    plan
}

fn shop_plan() -> NodePlan {
    plan_of(&compile(&shop_index(), &Registry::default(), &Workloads::All).resources)
}

/// The shop mesh compiled for every node with what `serving` adds.
fn shop_served(serving: Serving) -> control_plane::compile::Compiled {
    compile_served(
        &shop_index(),
        &Registry::default(),
        &serving,
        &Reuse::default(),
        &Workloads::All,
    )
}

/// The shop mesh under automatic mTLS (trust domain `td`, `permissive` meshes PERMISSIVE).
fn auto_mtls_plan(permissive: &[&str]) -> NodePlan {
    let ca_dir = tempfile::tempdir().unwrap();
    let mtls = AutoMtls::load(AutoMtlsOptions {
        trust_domain: "td".into(),
        permissive_meshes: permissive.iter().map(|m| (*m).to_owned()).collect(),
        ca_dir: ca_dir.path().join("ca"),
        lifetime: std::time::Duration::from_secs(3600),
    })
    .unwrap();
    let compiled = shop_served(Serving {
        mtls: Some(Arc::new(mtls)),
        ..Serving::default()
    });
    assert!(
        !compiled.issues.iter().any(|i| i.contains("SDS secret")),
        "identity and trust secrets are not missing: {:?}",
        compiled.issues
    );
    let bundle = compiled
        .resources
        .of_type(SECRET)
        .and_then(|secrets| secrets.get("mesh-agent/trust/td"));
    assert!(bundle.is_some(), "the trust bundle is served");
    plan_of(&compiled.resources)
}

#[test]
fn automatic_mtls_terminates_every_listener_and_checks_each_destination() {
    let plan = auto_mtls_plan(&[]);
    // api-v1 takes TLS only (STRICT), with a certificate its agent makes, callers of the
    // same mesh required.
    let port = &plan.inbound["shop/api-v1"].ports[&9090];
    assert!(port.plain.is_none(), "STRICT: no plain-text chain");
    let server = &port.tls.as_ref().expect("a TLS chain").tls;
    assert!(server.require_client_certificate);
    assert_eq!(
        server.certificate,
        CertificateSource::Sds(
            "mesh-agent/identity/spiffe://td/mesh/shop/virtualNode/api-v1".into()
        )
    );
    let validation = server.validation.as_ref().unwrap();
    assert_eq!(
        validation.trust,
        TrustSource::Sds("mesh-agent/trust/td".into())
    );
    assert!(validation.sans[0].matches(SanKind::Uri, "spiffe://td/mesh/shop/virtualNode/web"));
    assert!(!validation.sans[0].matches(SanKind::Uri, "spiffe://td/mesh/other/virtualNode/web"));

    // web reaches each api version through its own copy, checking that version's identity.
    for version in ["api-v1", "api-v2"] {
        let cluster = &plan.clusters[&format!("shop/{version}/9090/from/web")];
        let client = cluster
            .upstream_tls
            .as_ref()
            .expect("TLS toward the destination");
        assert_eq!(
            client.certificate,
            Some(CertificateSource::Sds(
                "mesh-agent/identity/spiffe://td/mesh/shop/virtualNode/web".into()
            ))
        );
        let sans = &client.validation.as_ref().unwrap().sans;
        let expected = format!("spiffe://td/mesh/shop/virtualNode/{version}");
        assert!(
            sans.len() == 1 && sans[0].matches(SanKind::Uri, &expected),
            "{sans:?}"
        );
    }
}

#[test]
fn a_permissive_mesh_keeps_a_plain_text_chain_beside_tls() {
    let plan = auto_mtls_plan(&["shop"]);
    let port = &plan.inbound["shop/api-v1"].ports[&9090];
    assert!(port.plain.is_some() && port.tls.is_some());
}

#[test]
fn compiled_mesh_converts_and_routes() {
    let plan = shop_plan();
    let web = &plan.outbound["shop/web"];
    let Some(PortPlan::Http(HttpPlan { routes, .. })) = web.ports.get(&9090) else {
        panic!("web reaches api over HTTP on 9090: {web:?}");
    };
    assert!(matches!(web.ports.get(&5432), Some(PortPlan::Tcp { .. })));
    assert!(web.other_ports.is_none(), "the shop mesh is DROP_ALL");
    let table = &plan.routes[routes];
    let headers = http::HeaderMap::new();
    let request = RequestView {
        method: "GET",
        scheme: "http",
        authority: "api.shop.local:9090",
        path: "/items",
        query: None,
        headers: &headers,
    };
    let host = table
        .virtual_host(request.authority)
        .expect("api's virtual host");
    let route = host.route(&request).expect("the canary route matches");
    assert_eq!(route.name, "canary");
    let names: Vec<&str> = route.action.clusters.names().collect();
    assert_eq!(names, ["shop/api-v1/9090", "shop/api-v2/9090"]);
    assert!(table.virtual_host("other.shop.local").is_none());
    // web's pods take HTTP in on 8080 through its inbound listener.
    let inbound = &plan.inbound["shop/web"];
    assert!(matches!(
        inbound
            .ports
            .get(&8080)
            .and_then(|port| port.plain.as_ref()),
        Some(PortPlan::Http(_))
    ));
}

/// App Mesh `sds` trust with subject alternative names (SPIRE's setup): both checks reach
/// the node, the trust by SDS and the names beside it (Envoy's combined validation context).
#[test]
fn sds_trust_keeps_its_subject_alternative_names() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
    let mut resources = source::load(&[dir], &LoadOptions::default()).resources;
    let validation = |san: &str| {
        serde_json::json!({"trust": {"sds": {"secretName": "spiffe://td"}},
                           "subjectAlternativeNames": {"match": {"exact": [san]}}})
    };
    for resource in &mut resources {
        let name = resource.name().map(str::to_owned);
        let spec = resource.body.get_mut("spec").unwrap();
        match name.as_deref() {
            Some("api-v1") => {
                spec["listeners"][0]["tls"] = serde_json::json!({"mode": "STRICT",
                    "certificate": {"sds": {"secretName": "spiffe://td/api-v1"}},
                    "validation": validation("spiffe://td/web")});
            }
            Some("web") => {
                spec["backendDefaults"] = serde_json::json!({"clientPolicy": {"tls": {
                    "validation": validation("spiffe://td/api-v1")}}});
            }
            _ => {}
        }
    }
    let options = Options {
        check_references: true,
        lenient: false,
    };
    let errors = validate::validate(&resources, options);
    assert!(!errors.iter().any(|d| d.is_error()), "{errors:?}");
    let index = MeshIndex::new(&resources).unwrap();
    let plan = plan_of(&compile(&index, &Registry::default(), &Workloads::All).resources);

    let server = &plan.inbound["shop/api-v1"].ports[&9090]
        .tls
        .as_ref()
        .expect("a TLS chain")
        .tls;
    let checked = server.validation.as_ref().unwrap();
    assert_eq!(checked.trust, TrustSource::Sds("spiffe://td".into()));
    assert!(checked.sans.len() == 1 && checked.sans[0].matches(SanKind::Uri, "spiffe://td/web"));

    let client = plan.clusters["shop/api-v1/9090/from/web"]
        .upstream_tls
        .as_ref()
        .expect("TLS toward api-v1");
    let checked = client.validation.as_ref().unwrap();
    assert_eq!(checked.trust, TrustSource::Sds("spiffe://td".into()));
    assert!(checked.sans.len() == 1 && checked.sans[0].matches(SanKind::Uri, "spiffe://td/api-v1"));
}

/// A node whose DNS hostname names a Kubernetes Service takes its endpoints from EDS (the
/// Service's pods); the others keep DNS.
#[test]
fn service_endpoints_replace_the_dns_name_of_their_node() {
    let pods: Vec<std::net::SocketAddr> = vec![
        "10.1.0.5:9090".parse().unwrap(),
        "10.1.0.6:9090".parse().unwrap(),
    ];
    let mut endpoints = ServiceEndpoints::default();
    endpoints.insert("shop", "api-v1", 9090, pods.clone());
    let compiled = shop_served(Serving {
        service_endpoints: Arc::new(endpoints),
        ..Serving::default()
    });
    let plan = plan_of(&compiled.resources);
    let v1 = &plan.clusters["shop/api-v1/9090"];
    assert_eq!(v1.discovery, Discovery::Eds("shop/api-v1/9090".into()));
    assert_eq!(plan.endpoints["shop/api-v1/9090"], pods);
    assert!(matches!(
        plan.clusters["shop/api-v2/9090"].discovery,
        Discovery::Dns { .. }
    ));
}
