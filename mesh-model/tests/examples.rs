//! Every App Mesh API JSON file among the shared examples (real files from AWS's repositories,
//! copied verbatim into tests/fixtures) loads as the right kind and validates, after the
//! placeholder substitution their walkthroughs do with envsubst.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{collections::HashMap, path::PathBuf};

use mesh_model::{
    resource::{Format, Kind},
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
                lenient: false,
            },
        );
        // Valid App Mesh; ACM's only note says it does not exist off AWS.
        let text: Vec<String> = found
            .iter()
            .map(ToString::to_string)
            .filter(|d| !(d.contains("note:") && d.contains("ACM certificates")))
            .collect();
        assert!(text.is_empty(), "{file}:\n{}", text.join("\n"));
        let acm = found
            .iter()
            .filter(|d| d.path.as_deref().is_some_and(|p| p.ends_with(".acm")));
        let body = serde_json::Value::Object(loaded.resources[0].body.clone()).to_string();
        assert_eq!(
            acm.count() > 0,
            body.contains("\"acm\""),
            "{file}: an ACM note where ACM is used"
        );
    }
    // And nothing in the examples is a JSON file this table forgot.
    let all = source::load(&[examples()], &options);
    let json = all
        .resources
        .iter()
        .filter(|r| r.format == Format::ApiJson)
        .count();
    assert_eq!(json, expected.len());
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

/// The YAML examples: Kubernetes manifests and CloudFormation templates, with the flags their
/// situation needs (a mesh defined elsewhere, a template parameter without default).
#[test]
fn every_yaml_example_gets_its_verdict() {
    let environment = [
        ("APP_NAMESPACE", "howto-k8s"),
        ("MESH_NAME", "howto-mesh"),
        ("FRONT_APP_IMAGE", "front:v1"),
        ("COLOR_APP_IMAGE", "color:v1"),
        (
            "FRONTEND_APP_SVID",
            "spiffe://howto-k8s-mtls-sds-based.aws/front",
        ),
        ("SVID_CA_TRUST_DOMAIN", "howto-k8s-mtls-sds-based.aws"),
        (
            "COLORAPP_BLUE_SVID",
            "spiffe://howto-k8s-mtls-sds-based.aws/colorblue",
        ),
        (
            "COLORAPP_RED_SVID",
            "spiffe://howto-k8s-mtls-sds-based.aws/colorred",
        ),
        (
            "COLORAPP_GREEN_SVID",
            "spiffe://howto-k8s-mtls-sds-based.aws/colorgreen",
        ),
        ("ENVOY_IMAGE", "envoy:v1"),
        ("AWS_ACCOUNT_ID", "123456789012"),
        ("AWS_DEFAULT_REGION", "us-west-2"),
    ];
    let placeholders = || {
        Placeholders::From(
            environment
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    struct Case {
        file: &'static str,
        mesh: Option<&'static str>,
        gateway: Option<&'static str>,
        parameters: &'static [(&'static str, &'static str)],
        lenient: bool,
        resources: usize,
        /// (path, message) of the one expected error, if any.
        error: Option<(&'static str, &'static str)>,
    }
    let case = |file, resources| Case {
        file,
        mesh: None,
        gateway: None,
        parameters: &[],
        lenient: false,
        resources,
        error: None,
    };
    let cases = [
        case(
            "walkthroughs/howto-k8s-http-headers/v1beta2/manifest.yaml.template",
            14,
        ),
        case("walkthroughs/howto-k8s-multiple-listeners/manifest.yaml", 9),
        case(
            "walkthroughs/howto-k8s-envoy-logging-custom-format/manifest.yaml.template",
            4,
        ),
        // The known misspelling (API.md §11.3): `mode` under backendDefaults.clientPolicy.tls.
        Case {
            error: Some((
                "spec.backendDefaults.clientPolicy.tls.mode",
                "unknown field",
            )),
            ..case(
                "walkthroughs/howto-k8s-mtls-sds-based/v1beta2/manifest.yaml.template",
                10,
            )
        },
        Case {
            lenient: true,
            ..case(
                "walkthroughs/howto-k8s-mtls-sds-based/v1beta2/manifest.yaml.template",
                10,
            )
        },
        // Manifests for a mesh (and gateway) created by another file.
        Case {
            mesh: Some("yelb"),
            ..case(
                "../aws-app-mesh-examples/blogs/eks-appmesh-connectivity/deployments/yaml/mesh/appmesh/yelb-db-mesh.yaml",
                4,
            )
        },
        Case {
            mesh: Some("dj-app"),
            ..case("examples/apps/djapp/3_canary_new_version/v2_app.yaml", 6)
        },
        Case {
            mesh: Some("howto-mesh"),
            gateway: Some("ingress-gw"),
            ..case(
                "walkthroughs/howto-k8s-http-ingress-v2/v1beta2/gatewayroutes/rewrite-prefix.yaml.template",
                1,
            )
        },
        // CloudFormation: pseudo parameters and parameters without default are given.
        Case {
            parameters: &[("AWS::StackName", "howto-cloudmap")],
            ..case("walkthroughs/howto-servicediscovery-cloudmap/mesh.yaml", 8)
        },
        Case {
            parameters: &[
                ("MeshName", "howto-external"),
                ("ServicesDomain", "howto-external.local"),
            ],
            ..case("walkthroughs/howto-external-traffic/mesh/mesh.yaml", 11)
        },
    ];
    for case in cases {
        let options = LoadOptions {
            placeholders: placeholders(),
            mesh_name: case.mesh.map(Into::into),
            parent: case.gateway.map(Into::into),
            parameters: case
                .parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let loaded = source::load(&[examples().join(case.file)], &options);
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", case.file);
        assert_eq!(loaded.resources.len(), case.resources, "{}", case.file);
        let found = validate::validate(
            &loaded.resources,
            Options {
                check_references: case.mesh.is_none(),
                lenient: case.lenient,
            },
        );
        let errors: Vec<&mesh_model::report::Diagnostic> =
            found.iter().filter(|d| d.is_error()).collect();
        match case.error {
            None => assert!(errors.is_empty(), "{}: {errors:#?}", case.file),
            Some((path, message)) => {
                assert_eq!(errors.len(), 1, "{}: {errors:#?}", case.file);
                assert_eq!(errors[0].path.as_deref(), Some(path));
                assert!(errors[0].message.contains(message), "{}", errors[0]);
            }
        }
    }
}

#[test]
fn crd_schemas_and_other_objects_are_skipped_with_a_note() {
    let crds = examples().join("../aws-app-mesh-controller-for-k8s/config/crd/bases");
    let loaded = source::load(&[crds], &LoadOptions::default());
    assert!(loaded.resources.is_empty());
    // Each CRD skipped with a note; then, since nothing else is there, an error.
    let (notes, errors): (Vec<_>, Vec<_>) = loaded.diagnostics.iter().partition(|d| !d.is_error());
    assert_eq!(notes.len(), 7);
    assert!(
        notes
            .iter()
            .all(|d| d.message.contains("skipped CustomResourceDefinition"))
    );
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .message
            .starts_with("no App Mesh resource in the input")
    );
}

/// Every example resource fits the generated types, and they give back the same JSON: the
/// types cover every field the examples use.
#[test]
fn every_example_round_trips_through_the_typed_model() {
    let options = LoadOptions {
        placeholders: walkthrough_environment(),
        mesh_name: Some("howto".into()),
        name: Some("n".into()),
        parent: Some("p".into()),
        parameters: vec![
            ("AWS::StackName".into(), "stack".into()),
            ("MeshName".into(), "m".into()),
            ("ServicesDomain".into(), "d.local".into()),
        ],
        ..Default::default()
    };
    let loaded = source::load(&[examples()], &options);
    assert!(loaded.resources.len() > 40, "{}", loaded.resources.len());
    for resource in &loaded.resources {
        if resource.body.contains_key("spec")
            && resource.spec().is_some_and(|s| {
                s.get("backendDefaults")
                    .is_some_and(|b| b.pointer("/clientPolicy/tls/mode").is_some())
            })
        {
            continue; // the known misspelled field (API.md §11.3) has no place in the types
        }
        let typed = resource
            .typed()
            .unwrap_or_else(|e| panic!("{} ({}): {e}", resource.label(), resource.origin));
        assert_eq!(
            typed.to_json().unwrap(),
            serde_json::Value::Object(resource.body.clone()),
            "{}",
            resource.label()
        );
    }
}
