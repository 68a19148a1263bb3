//! `mesh-agent validate`: check App Mesh definitions and print every problem found.
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use mesh_model::{
    report::Diagnostic,
    resource::Kind,
    source::{self, LoadOptions, Placeholders},
    validate::{self, Options},
};

#[derive(Args)]
pub struct ValidateArgs {
    /// Files or directories (walked recursively) of App Mesh definitions: App Mesh API JSON
    /// as `aws appmesh create-*/update-* --cli-input-json` takes it or `describe-*` prints it
    /// (*.json), Kubernetes appmesh.k8s.aws/v1beta2 manifests and CloudFormation templates
    /// (*.yaml, *.yml; envsubst templates *.template too).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Substitute `$VAR` / `${VAR}` placeholders from the environment, as envsubst would;
    /// without it each placeholder is reported with its position.
    #[arg(long)]
    env: bool,
    /// The kind of files that hold only a spec and cannot be told apart by it.
    #[arg(long, value_parser = parse_kind, value_name = "KIND")]
    kind: Option<Kind>,
    /// Mesh name for files that leave it to the command line (`--mesh-name` of the AWS CLI).
    #[arg(long, value_name = "NAME")]
    mesh_name: Option<String>,
    /// Resource name for files that leave it to the command line (`--virtual-node-name`, ...).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Router or gateway of route files that leave it to the command line.
    #[arg(long, value_name = "NAME")]
    parent: Option<String>,
    /// A CloudFormation parameter or pseudo parameter, `Name=value` (e.g.
    /// `AWS::StackName=shop`); overrides the template's Default. Repeatable.
    #[arg(long = "parameter", value_name = "NAME=VALUE", value_parser = parse_parameter)]
    parameters: Vec<(String, String)>,
    /// The input is part of a mesh defined elsewhere: do not require referenced meshes,
    /// nodes, services, routers and gateways to be among the inputs.
    #[arg(long)]
    partial: bool,
    /// Report unknown fields in Kubernetes resources as notes instead of errors (the CRDs
    /// accept and ignore them).
    #[arg(long)]
    lenient: bool,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn parse_parameter(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not Name=value"))
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    Kind::from_cli_name(text).ok_or_else(|| {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.cli_name()).collect();
        format!("unknown kind {text:?}; one of: {}", names.join(", "))
    })
}

/// Prints the report; Ok(true) when there is no error.
pub fn run(args: ValidateArgs) -> bool {
    let options = LoadOptions {
        placeholders: if args.env {
            Placeholders::FromEnv
        } else {
            Placeholders::Report
        },
        kind: args.kind,
        mesh_name: args.mesh_name,
        name: args.name,
        parent: args.parent,
        parameters: args.parameters,
    };
    let loaded = source::load(&args.paths, &options);
    let mut diagnostics = loaded.diagnostics;
    diagnostics.extend(validate::validate(
        &loaded.resources,
        Options {
            check_references: !args.partial,
            lenient: args.lenient,
        },
    ));
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    match args.output {
        Output::Text => print_text(&loaded.resources, &diagnostics, errors),
        Output::Json => print_json(&loaded.resources, &diagnostics, errors),
    }
    errors == 0
}

fn print_text(
    resources: &[mesh_model::resource::Resource],
    diagnostics: &[Diagnostic],
    errors: usize,
) {
    for diagnostic in diagnostics {
        println!("{diagnostic}");
    }
    println!(
        "{} resource{}, {errors} error{}",
        resources.len(),
        if resources.len() == 1 { "" } else { "s" },
        if errors == 1 { "" } else { "s" }
    );
}

fn print_json(
    resources: &[mesh_model::resource::Resource],
    diagnostics: &[Diagnostic],
    errors: usize,
) {
    let report = serde_json::json!({
        "valid": errors == 0,
        "errors": errors,
        "resources": resources.iter().map(|r| serde_json::json!({
            "kind": r.kind.name(),
            "mesh": r.mesh(),
            "name": r.name(),
            "parent": r.parent(),
            "file": r.origin.file.display().to_string(),
        })).collect::<Vec<_>>(),
        "diagnostics": diagnostics.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
    });
    println!("{report:#}");
}
