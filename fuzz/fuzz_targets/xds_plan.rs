//! xDS resources as a node receives them over ADS: each record is one resource (a Listener,
//! RouteConfiguration, Cluster, ClusterLoadAssignment, Secret, or a type the node does not
//! know) as protobuf bytes. Each is checked as the ADS client checks a response's resources,
//! the names the client subscribes to next are derived, and each accepted state is planned
//! from the one before as the proxy applies it, and the last from scratch too.
#![no_main]
use envoy_types::pb::google::protobuf::Any;
use libfuzzer_sys::fuzz_target;
use mesh_agent_fuzz::xds_records;
use mesh_xds::{
    client::check_resource,
    plan::{NodePlan, Planner},
    references::References,
    resources::ResourceSet,
};

fuzz_target!(|data: &[u8]| {
    let mut accepted = ResourceSet::default();
    let mut all = ResourceSet::default();
    let mut planner = Planner::default();
    for (index, (type_url, bytes)) in xds_records(data).into_iter().enumerate() {
        let any = Any {
            type_url: type_url.to_owned(),
            value: bytes.to_vec(),
        };
        if let Ok(name) = check_resource(&any, accepted.of_type(type_url)) {
            accepted.insert(type_url, name, any.clone());
            let (_plan, errors) = planner.plan(&accepted);
            assert!(
                errors.is_empty(),
                "resources the client accepted do not plan from the last state: {errors:#?}"
            );
        }
        let _ = References::of(&any);
        all.insert(type_url, index.to_string(), any);
    }
    let (_plan, errors) = NodePlan::from_resources(&accepted);
    assert!(
        errors.is_empty(),
        "resources the client accepted do not plan: {errors:#?}"
    );
    let _ = NodePlan::from_resources(&all);
});
