//! The App Mesh examples' walkthrough scripts (`walkthroughs/*/mesh/mesh.sh`), run as their
//! READMEs run them — bash, jq and the real AWS CLI — against a stand-in for the App Mesh API
//! (tests/interop/appmesh_api.py) that takes each change only when `mesh-agent validate`
//! accepts the whole mesh it makes, as App Mesh refuses a change that would leave the mesh
//! invalid, and compiles each state. Every step of every script must be accepted and compile
//! (each mesh state the scripts build, step by step), and `down` must leave nothing behind.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

include!("../../control-plane/tests/corpus/locate.rs");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The stand-in App Mesh API with an empty mesh state.
struct AppMeshApi {
    child: Child,
    endpoint: String,
    log: PathBuf,
    state: PathBuf,
}

impl AppMeshApi {
    fn start(scratch: &Path) -> Self {
        let state = scratch.join("state");
        std::fs::create_dir(&state).unwrap();
        let log = scratch.join("changes.jsonl");
        let mut child = Command::new("python3")
            .arg(repo("tests/interop/appmesh_api.py"))
            .arg("--model")
            .arg(repo("mesh-model/appmesh/service-2.json"))
            .args(["--mesh-agent", env!("CARGO_BIN_EXE_mesh-agent"), "--state"])
            .arg(&state)
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("listening on ").expect("a port");
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            state,
        }
    }

    /// The changes taken so far, one JSON object each.
    fn changes(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

impl Drop for AppMeshApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The actions a script's `main` takes (its `case` arms), in the order a reader runs them:
/// `up`, the updates in the order written, `down` last. A generic `update RESOURCE NAME` arm
/// (the circuit-breakers walkthrough) is run for each of its `NAME-vn-update.json` (`vnode`)
/// and `NAME-vg-update.json` (`vgateway`) files.
fn actions(dir: &Path) -> Vec<Vec<String>> {
    let script = std::fs::read_to_string(dir.join("mesh.sh")).unwrap();
    let arms: Vec<&str> = script
        .lines()
        .filter_map(|line| line.trim().strip_suffix(')'))
        .filter(|arm| !arm.is_empty() && arm.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    assert!(arms.contains(&"up") && arms.contains(&"down"), "{arms:?}");
    let generic = arms.contains(&"update");
    let mut ordered = vec![vec!["up".to_owned()]];
    for arm in &arms {
        match *arm {
            "up" | "down" => {}
            "update" | "vnode" | "vgateway" if generic => {}
            other => ordered.push(vec![other.to_owned()]),
        }
    }
    if generic {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for file in files {
            for (suffix, resource) in [
                ("-vn-update.json", "vnode"),
                ("-vg-update.json", "vgateway"),
            ] {
                if let Some(name) = file.strip_suffix(suffix) {
                    ordered.push(vec!["update".into(), resource.into(), name.into()]);
                }
            }
        }
    }
    ordered.push(vec!["down".into()]);
    ordered
}

/// `bash mesh.sh ACTION...` in `dir` with the variables the walkthrough's README exports.
fn run(dir: &Path, action: &[String], api: &AppMeshApi) {
    let output = Command::new("bash")
        .arg("mesh.sh")
        .args(action)
        .current_dir(dir)
        .env("MESH_NAME", "walkthrough")
        .env("SERVICES_DOMAIN", "walkthrough.local")
        .env(
            "CERTIFICATE_ARN",
            "arn:aws:acm:us-east-1:123456789012:certificate/0d7c7a9f",
        )
        .env(
            "ROOT_CA_ARN",
            "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/1d2c3b4a",
        )
        .env("AWS_ENDPOINT_URL", &api.endpoint)
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "walkthrough")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} {action:?}: {}\n{}\nchanges: {:#?}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        api.changes()
    );
}

#[test]
fn every_step_of_every_walkthrough_script_is_accepted_and_compiles() {
    let Some(corpus) = corpus() else {
        return;
    };
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(corpus.join("walkthroughs"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("mesh"))
        .filter(|dir| {
            // Those that deploy CloudFormation stacks are read as templates by the corpus test.
            std::fs::read_to_string(dir.join("mesh.sh"))
                .is_ok_and(|s| s.contains("aws appmesh") && !s.contains("cloudformation"))
        })
        .collect();
    scripts.sort();
    assert_eq!(scripts.len(), 6, "{scripts:?}");
    let mut steps = 0;
    for original in &scripts {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("mesh");
        std::fs::create_dir(&dir).unwrap();
        for entry in walk(original) {
            let to = dir.join(entry.strip_prefix(original).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&entry, &to).unwrap();
        }
        // Two walkthroughs' mesh.json (`{}`: no App Mesh resource in it) is not in the
        // corpus; their scripts create the mesh from it.
        if !dir.join("mesh.json").exists() {
            std::fs::write(dir.join("mesh.json"), r#"{"spec": {}}"#).unwrap();
        }
        let api = AppMeshApi::start(scratch.path());
        for action in actions(&dir) {
            run(&dir, &action, &api);
        }
        let changes = api.changes();
        assert!(changes.len() >= 8, "{}: {changes:#?}", original.display());
        for change in &changes {
            assert_eq!(change["valid"], true, "{}: {change}", original.display());
            assert_eq!(change["compiled"], true, "{}: {change}", original.display());
        }
        let left: Vec<_> = std::fs::read_dir(&api.state).unwrap().collect();
        assert!(
            left.is_empty(),
            "{}: down left {left:?}",
            original.display()
        );
        steps += changes.len();
    }
    eprintln!("{} walkthrough scripts, {steps} mesh states", scripts.len());
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
