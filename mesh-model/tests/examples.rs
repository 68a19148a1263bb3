//! Every App Mesh API JSON file among the shared examples (real files from AWS's repositories,
//! copied verbatim into tests/fixtures) loads as the right kind and validates, after the
//! placeholder substitution their walkthroughs do with envsubst.
use std::{collections::HashMap, path::PathBuf};

use mesh_model::{
    resource::Kind,
    source::{self, LoadOptions, Placeholders},
    validate::{self, Options},
};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/appmesh-examples/aws-app-mesh-examples")
}

/// What the walkthroughs export before running envsubst (quoted where the file leaves the
/// value bare, as their scripts do).
fn walkthrough_environment() -> Placeholders {
    let values = [
        ("DNS_HOSTNAME", "\"colorteller.default.svc.cluster.local\""),
        ("SERVICES_DOMAIN", "\"howto-mtls.local\""),
        ("NAMESPACE_NAME", "\"howto-outlier-detection.local\""),
        ("VIRTUALSERVICE_NAME", "\"color.howto-match.local\""),
        (
            "CERTIFICATE_ARN",
            "\"arn:aws:acm:us-west-2:123456789012:certificate/0d7c7a9f\"",
        ),
        (
            "ROOT_CA_ARN",
            "\"arn:aws:acm-pca:us-west-2:123456789012:certificate-authority/6c3a\"",
        ),
        ("GATEWAY_SAN", "\"gateway.howto-mtls.local\""),
        ("COLOR_TELLER_SAN", "\"colorteller.howto-mtls.local\""),
    ];
    Placeholders::From(
        values
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<HashMap<_, _>>(),
    )
}

#[test]
fn every_api_json_example_is_valid_and_of_the_right_kind() {
    let expected = [
        (
            "walkthroughs/howto-http2/mesh/route-red-retries.json",
            Kind::Route,
        ),
        (
            "walkthroughs/howto-grpc/mesh/route-retries.json",
            Kind::Route,
        ),
        (
            "walkthroughs/howto-http-headers/color-route.json",
            Kind::Route,
        ),
        (
            "walkthroughs/howto-multiple-listeners/mesh/fruit-route.json",
            Kind::Route,
        ),
        (
            "walkthroughs/howto-match-and-rewrite-at-ingress/mesh/colorgateway-route-updated-rewrite.json",
            Kind::GatewayRoute,
        ),
        (
            "walkthroughs/howto-match-and-rewrite-at-ingress/mesh/colorgateway-route-updated-hostname-match.json",
            Kind::GatewayRoute,
        ),
        (
            "walkthroughs/howto-mutual-tls-file-provided/mesh/updates/colorteller-vn-strict-validation.json",
            Kind::VirtualNode,
        ),
        (
            "walkthroughs/howto-mutual-tls-file-provided/mesh/updates/gateway-vgw-client-cert.json",
            Kind::VirtualGateway,
        ),
        (
            "walkthroughs/howto-ingress-gateway/mesh/colorgateway-vg-backendDefaults.json",
            Kind::VirtualGateway,
        ),
        (
            "walkthroughs/howto-outlier-detection/mesh/color-vn-with-outlier-detection.json",
            Kind::VirtualNode,
        ),
        (
            "walkthroughs/howto-circuit-breakers/mesh/colorteller-black-vn-update.json",
            Kind::VirtualNode,
        ),
        (
            "walkthroughs/howto-timeout-policy/mesh/colorteller-vn-timeout20s.json",
            Kind::VirtualNode,
        ),
    ];
    let options = LoadOptions {
        placeholders: walkthrough_environment(),
        // The walkthroughs pass these with --mesh-name / --virtual-*-name.
        mesh_name: Some("howto".into()),
        name: Some("from-command-line".into()),
        parent: Some("from-command-line".into()),
        ..Default::default()
    };
    for (file, kind) in expected {
        let loaded = source::load(&[examples().join(file)], &options);
        assert_eq!(loaded.diagnostics, vec![], "{file}");
        assert_eq!(loaded.resources.len(), 1, "{file}");
        assert_eq!(loaded.resources[0].kind, kind, "{file}");
        // Update files for meshes created elsewhere: references are not in the input.
        let found = validate::validate(
            &loaded.resources,
            Options {
                check_references: false,
            },
        );
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert!(text.is_empty(), "{file}:\n{}", text.join("\n"));
    }
    // And nothing in the examples is a JSON file this table forgot.
    let all = source::load(&[examples()], &options);
    assert_eq!(all.resources.len(), expected.len());
}

#[test]
fn examples_without_substitution_report_each_placeholder() {
    let file =
        examples().join("walkthroughs/howto-timeout-policy/mesh/colorteller-vn-timeout20s.json");
    let loaded = source::load(&[file], &LoadOptions::default());
    assert!(loaded.resources.is_empty());
    let messages: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].contains("line 29, column 29: placeholder $DNS_HOSTNAME"),
        "{messages:?}"
    );
}
