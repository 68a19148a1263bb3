//! `mesh-agent validate`, `convert` and `compile`: App Mesh definitions read, checked and
//! reported (every problem found), converted between formats, or compiled to xDS.
use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use control_plane::{
    InputOptions,
    compile::{MeshIndex, Workloads},
    load,
    registry::Registry,
};
use mesh_model::{
    convert,
    load_options::{LoadOptions, Placeholders},
    report::Diagnostic,
    resource::Kind,
};

/// How to read App Mesh definitions.
#[derive(Args)]
pub struct InputArgs {
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
    /// Another stack's export for CloudFormation's `!ImportValue`, `Name=value`. Repeatable.
    #[arg(long = "import", value_name = "NAME=VALUE", value_parser = parse_parameter)]
    imports: Vec<(String, String)>,
    /// The input is part of a mesh defined elsewhere: do not require referenced meshes,
    /// nodes, services, routers and gateways to be among the inputs.
    #[arg(long)]
    partial: bool,
    /// Report unknown fields in Kubernetes resources as notes instead of errors (the CRDs
    /// accept and ignore them).
    #[arg(long)]
    lenient: bool,
}

#[derive(Args)]
pub struct ValidateArgs {
    /// Files or directories (walked recursively) of App Mesh definitions: App Mesh API JSON
    /// as `aws appmesh create-*/update-* --cli-input-json` takes it or `describe-*` prints it
    /// (*.json), Kubernetes appmesh.k8s.aws/v1beta2 manifests and CloudFormation templates
    /// (*.yaml, *.yml; envsubst templates *.template too).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    input: InputArgs,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Files or directories of App Mesh definitions, as for `validate`.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    input: InputArgs,
    /// The format to write.
    #[arg(long, value_enum)]
    to: Target,
    /// Kubernetes namespace of the converted objects.
    #[arg(long, default_value = "default", value_name = "NAMESPACE")]
    namespace: String,
    /// For api-json: write one request file per resource into this directory (otherwise a
    /// JSON list of the requests goes to standard output).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct CompileArgs {
    /// Files or directories of App Mesh definitions, as for `validate`.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    input: InputArgs,
    /// Compile for these virtual nodes or gateways (`mesh/name`, repeatable), as a node agent
    /// serving them would get it; without any, for every one.
    #[arg(long = "node", value_name = "MESH/NAME")]
    nodes: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    /// appmesh.k8s.aws/v1beta2 manifest (YAML, multi-document).
    Kubernetes,
    /// App Mesh API JSON, as `aws appmesh create-* --cli-input-json` takes it.
    ApiJson,
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

impl InputArgs {
    /// The options the control plane's loader takes.
    pub fn options(&self) -> InputOptions {
        InputOptions {
            source: LoadOptions {
                placeholders: if self.env {
                    Placeholders::FromEnv
                } else {
                    Placeholders::Report
                },
                kind: self.kind,
                mesh_name: self.mesh_name.clone(),
                name: self.name.clone(),
                parent: self.parent.clone(),
                parameters: self.parameters.clone(),
                imports: self.imports.clone(),
            },
            partial: self.partial,
            lenient: self.lenient,
        }
    }
}

/// Prints the report; true when there is no error.
pub fn validate(args: ValidateArgs) -> bool {
    let (resources, diagnostics) = load(&args.paths, &args.input.options());
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    match args.output {
        Output::Text => print_text(&resources, &diagnostics, errors),
        Output::Json => print_json(&resources, &diagnostics, errors),
    }
    errors == 0
}

/// The status of a command whose reader went away (`mesh-agent compile | head`): what a
/// shell reports for a process ended by SIGPIPE (128 + 13), which is what the reader expects
/// of a writer it stopped reading; Rust ignores SIGPIPE, so the write fails with EPIPE instead.
const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes `text` to standard output. A reader that went away ends the command quietly (no
/// panic, nothing more to say to anyone); another write error is reported once.
fn out(text: &str) {
    let mut stdout = io::stdout().lock();
    if let Err(error) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if error.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        err(&format!("cannot write to standard output: {error}"));
        std::process::exit(1);
    }
}

/// Writes a line to standard error; if that fails too there is nowhere left to say so, so
/// the error is dropped (`eprintln!` would panic).
fn err(line: &str) {
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

/// Converts valid inputs; invalid ones are reported as by `validate` and nothing is written.
pub fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    let (resources, diagnostics) = load(&args.paths, &args.input.options());
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        for diagnostic in &diagnostics {
            err(&diagnostic.to_string());
        }
        anyhow::bail!("{errors} error(s): nothing converted");
    }
    match args.to {
        Target::Kubernetes => {
            out(&convert::to_kubernetes(&resources, &args.namespace).map_err(anyhow::Error::msg)?);
        }
        Target::ApiJson => {
            let files = convert::to_api_json(&resources);
            match args.out {
                Some(dir) => write_files(&dir, files)?,
                None => {
                    let bodies: Vec<serde_json::Value> = resources
                        .iter()
                        .map(|r| serde_json::Value::Object(r.body.clone()))
                        .collect();
                    out(&format!("{}\n", serde_json::to_string_pretty(&bodies)?));
                }
            }
        }
    }
    Ok(())
}

/// `crds`: the CustomResourceDefinitions, on standard output or one file each in `out`.
pub fn crds(out_dir: Option<&Path>) -> anyhow::Result<()> {
    let files = mesh_model::crd::manifests().context("writing the CRDs as YAML")?;
    match out_dir {
        Some(dir) => write_files(dir, files),
        None => {
            for (_, text) in files {
                out(&format!("---\n{text}"));
            }
            Ok(())
        }
    }
}

/// Writes each (file name, text) into `dir`, printing the paths written.
fn write_files(dir: &Path, files: Vec<(String, String)>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        out(&format!("{}\n", path.display()));
    }
    Ok(())
}

fn print_text(
    resources: &[mesh_model::resource::Resource],
    diagnostics: &[Diagnostic],
    errors: usize,
) {
    let mut text = String::new();
    for diagnostic in diagnostics {
        text.push_str(&format!("{diagnostic}\n"));
    }
    text.push_str(&format!(
        "{} resource{}, {errors} error{}\n",
        resources.len(),
        if resources.len() == 1 { "" } else { "s" },
        if errors == 1 { "" } else { "s" }
    ));
    out(&text);
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
    out(&format!("{report:#}\n"));
}

/// Prints the xDS resources valid inputs compile to, as proto3 JSON; compile issues go to
/// standard error.
pub fn compile(args: CompileArgs) -> anyhow::Result<()> {
    let (resources, diagnostics) = load(&args.paths, &args.input.options());
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        for diagnostic in &diagnostics {
            err(&diagnostic.to_string());
        }
        anyhow::bail!("{errors} error(s): nothing compiled");
    }
    let index = MeshIndex::new(&resources)?;
    let workloads = if args.nodes.is_empty() {
        Workloads::All
    } else {
        let mut selected = std::collections::BTreeSet::new();
        for node in &args.nodes {
            let (mesh, name) = node
                .split_once('/')
                .filter(|(m, n)| !m.is_empty() && !n.is_empty())
                .with_context(|| format!("--node {node:?} is not mesh/name"))?;
            anyhow::ensure!(
                index.has_node_or_gateway(mesh, name),
                "--node {node}: mesh {mesh:?} has no virtual node or virtual gateway {name:?} in the input"
            );
            selected.insert((mesh.to_owned(), name.to_owned()));
        }
        Workloads::Only(selected)
    };
    let compiled = control_plane::compile::compile(&index, &Registry::default(), &workloads);
    for issue in &compiled.issues {
        err(&format!("note: {issue}"));
    }
    let json = mesh_xds::json::resources(&compiled.resources)?;
    out(&format!("{json:#}\n"));
    Ok(())
}
