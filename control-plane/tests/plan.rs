//! What the compiler emits, the node proxy's plan accepts: every resource of the example
//! mesh converts, and the plan routes the way the mesh says.
// A test's (or benchmark's) panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::PathBuf;

use control_plane::{
    compile::{MeshIndex, Workloads, compile},
    registry::Registry,
};
use mesh_model::{
    source::{self, LoadOptions},
    validate::{self, Options},
};
use mesh_xds::plan::{HttpPlan, NodePlan, PortPlan, route::RequestView};

fn shop_plan() -> NodePlan {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
    let loaded = source::load(&[dir], &LoadOptions::default());
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let options = Options {
        check_references: true,
        lenient: false,
    };
    assert!(validate::validate(&loaded.resources, options).is_empty());
    let index = MeshIndex::new(&loaded.resources).unwrap();
    let output = compile(&index, &Registry::default(), &Workloads::All);
    let (plan, errors) = NodePlan::from_resources(&output.resources);
    assert!(errors.is_empty(), "{errors:#?}");
    plan
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
