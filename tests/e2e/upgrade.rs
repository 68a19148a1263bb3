//! The redirect across agent restarts, under load: curl in the enrolled client pod opens a
//! new connection through the mesh every 10 ms (`--rate 100/s`, `Connection: close`, to
//! `api.m.local`, served by pod s1, whose inbound traffic the agent captures too), and a
//! second curl every 50 ms one to a destination the mesh forbids (egress DROP_ALL: the
//! `outside` pod). A request that reaches `outside`, or that s1 sees from anywhere but the
//! inbound proxy (127.0.0.1), went around the mesh: a bypass. Requests from the `outside`
//! pod (not enrolled) straight to s1's port show whether s1's inbound capture holds while no
//! agent runs.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tests::{Agent, Proc, agent::metric_value};

use super::{
    TIMEOUT, bpftool_cgroup_show,
    l7::{MeshNode, MeshSpec, PORT, SERVICE, SERVICE_VIP, all_to_v1},
    pins_of,
};

/// Bounds the load whatever happens to the test: 30 s of requests at most.
const MAX_REQUESTS: u32 = 3_000;
/// curl's --rate interval for the mesh requests.
const INTERVAL: f64 = 0.01;

/// The load generator: two curls, each making its requests one after the other.
struct Load {
    proc: Proc,
    dir: tempfile::TempDir,
}

/// What the load saw.
#[derive(Debug, Default)]
struct Figures {
    /// Requests to the mesh service.
    sent: usize,
    /// Their start times (Unix seconds) where they did not get a 200 through the mesh.
    failed: Vec<f64>,
    /// What those got: status (0: no response) and body.
    failures: Vec<(u16, String)>,
    /// Answered by s1 but not through the inbound proxy.
    bypassed: usize,
    /// Requests to the forbidden destination, and how many reached it.
    forbidden_sent: usize,
    forbidden_reached: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests sent, {} failed, {} bypassed; {} to a forbidden destination, {} reached it",
            self.sent,
            self.failed.len(),
            self.bypassed,
            self.forbidden_sent,
            self.forbidden_reached
        )
    }
}

/// Both agents' logs, for a failure message.
fn logs(old: &Agent, new: &Agent) -> String {
    format!("old agent:\n{}\nnew agent:\n{}", old.log(), new.log())
}

/// One transfer of a curl: its body, how long it took, its status (0: no response).
struct Transfer {
    body: String,
    seconds: f64,
    status: u16,
}

impl Load {
    fn start(mesh: &MeshNode) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let outside = format!("http://{}:7000/", mesh.node.pod("outside").unwrap().ip);
        let service = format!("http://{SERVICE}:{PORT}/");
        let resolve = format!("{SERVICE}:{PORT}:{SERVICE_VIP}");
        let script = r#"
trap 'kill $(jobs -p) 2>/dev/null' TERM
common=(-s --max-time 10 -H 'Connection: close' -w '\nEND %{time_total} %{http_code}\n')
echo "$EPOCHREALTIME" > "$DIR/start"
curl "${common[@]}" --rate 100/s --resolve "$RESOLVE" "$SERVICE[1-$MAX]" > "$DIR/mesh" &
curl "${common[@]}" --rate 20/s "$OUTSIDE[1-$MAX]" > "$DIR/forbidden" &
wait
"#;
        let mut command = mesh.node.pod_command("client", "bash").unwrap();
        command
            .args(["-c", script])
            .env("DIR", dir.path())
            .env("MAX", MAX_REQUESTS.to_string())
            .env("RESOLVE", resolve)
            .env("SERVICE", service)
            .env("OUTSIDE", outside);
        let proc = Proc::spawn("load", command).unwrap();
        Self { proc, dir }
    }

    fn finish(mut self) -> Figures {
        self.proc.signal(libc::SIGTERM).unwrap();
        let status = self.proc.wait_timeout(Duration::from_secs(30)).unwrap();
        assert!(status.is_some(), "the load did not end");
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap();
        let mut figures = Figures::default();
        // curl --rate starts a transfer 10 ms after the previous one started, or when it
        // ended if it took longer: the start times follow from the durations.
        let mut start: f64 = read("start").trim().parse().unwrap();
        for transfer in transfers(&read("mesh")) {
            figures.sent += 1;
            if transfer.status != 200 {
                figures.failed.push(start);
                figures.failures.push((transfer.status, transfer.body));
            } else if !transfer.body.contains("(client 127.0.0.1:") {
                figures.bypassed += 1;
            }
            start += transfer.seconds.max(INTERVAL);
        }
        for transfer in transfers(&read("forbidden")) {
            figures.forbidden_sent += 1;
            if transfer.body.contains("hello from outside") {
                figures.forbidden_reached += 1;
            }
        }
        figures
    }
}

/// The completed transfers in a curl's output (each ends with its `END` line; one cut short
/// by the end of the load has none).
fn transfers(output: &str) -> Vec<Transfer> {
    let mut all = Vec::new();
    let mut body = String::new();
    for line in output.lines() {
        match line.strip_prefix("END ") {
            Some(end) => {
                let mut words = end.split_whitespace();
                let seconds = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
                let status = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                all.push(Transfer {
                    body: std::mem::take(&mut body),
                    seconds,
                    status,
                });
            }
            None => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    all
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What a request from the `outside` pod (not enrolled) straight to s1's service port meets.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    /// s1's application answered through the inbound proxy (on its loopback).
    Proxied,
    /// s1's application answered the caller directly: around the proxy.
    Direct,
    /// No answer: curl's exit code (7: the connection was refused).
    Failed(i32),
}

fn from_outside_to_s1(mesh: &MeshNode) -> Inbound {
    let url = format!("http://{}:{PORT}/", mesh.node.pod("s1").unwrap().ip);
    let output = mesh
        .node
        .run_in_pod("outside", "curl", &["-s", "--max-time", "3", &url], TIMEOUT)
        .unwrap();
    let body = String::from_utf8_lossy(&output.stdout);
    match output.status.code() {
        Some(0) if body.contains("(client 127.0.0.1:") => Inbound::Proxied,
        Some(0) => Inbound::Direct,
        code => Inbound::Failed(code.unwrap_or(-1)),
    }
}

fn mesh(label: &str) -> MeshNode {
    MeshNode::start(
        label,
        MeshSpec {
            routes: all_to_v1(),
            enrolled: &["client", "s1"],
            ..Default::default()
        },
    )
}

/// Whether anything is still mounted at `path`.
fn mounted(path: &std::path::Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_string_lossy();
    mountinfo
        .lines()
        .any(|line| line.split_whitespace().nth(4) == Some(&*path))
}

#[test]
fn upgrade_under_load_fails_no_request_and_bypasses_nothing() {
    let mut mesh = mesh("upgrade");
    let load = Load::start(&mesh);
    std::thread::sleep(Duration::from_millis(1500));
    // The new agent takes the pinned redirect over while the old one serves...
    let next_started = now();
    let next = mesh.next_agent("next");
    let next_running = now();
    assert!(next.log().contains("taking over the pinned redirect"));
    std::thread::sleep(Duration::from_secs(1));
    // ...then the old one is told to go, as a DaemonSet rollout with surge does.
    let term = now();
    mesh.signal_agent(libc::SIGTERM);
    let status = mesh.agent.wait_exit(Duration::from_secs(15)).unwrap();
    let exited = now();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        mesh.agent.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let figures = load.finish();
    let old = std::mem::replace(&mut mesh.agent, next);
    eprintln!("upgrade: {figures}");
    let logs = || logs(&old, &mesh.agent);
    assert!(figures.sent >= 300, "{figures:?}");
    assert!(
        figures.failed.is_empty(),
        "failed at {:?} s ({:?}); new agent started at {:.3}, running at {:.3}, TERM at {:.3}, old exited at {:.3}\n{}",
        figures
            .failed
            .iter()
            .map(|t| t - next_started)
            .collect::<Vec<_>>(),
        figures.failures,
        0.0,
        next_running - next_started,
        term - next_started,
        exited - next_started,
        logs()
    );
    assert_eq!(figures.bypassed, 0, "{}", logs());
    assert!(figures.forbidden_sent >= 60, "{figures:?}");
    assert_eq!(figures.forbidden_reached, 0, "{}", logs());
    // The new agent alone serves now.
    let (status, body, _) = mesh.curl(
        "/",
        &["--resolve", &format!("{SERVICE}:{PORT}:{SERVICE_VIP}")],
    );
    assert_eq!(status, 200, "{body}\n{}", logs());

    assert_eq!(from_outside_to_s1(&mesh), Inbound::Proxied, "{}", logs());

    // The last agent stopped: s1's captured port stays captured and refuses connections.
    mesh.signal_agent(libc::SIGTERM);
    assert!(mesh.agent.wait_exit(TIMEOUT).unwrap().is_some());
    assert!(bpftool_cgroup_show(&mesh.node).contains("connect4"));
    assert_eq!(
        from_outside_to_s1(&mesh),
        Inbound::Failed(7),
        "{}",
        mesh.agent.log()
    );
    // Uninstall: nothing attached, nothing pinned — s1 is out of the mesh, reached directly.
    mesh.agent.uninstall(&mesh.node).unwrap();
    assert!(bpftool_cgroup_show(&mesh.node).trim().is_empty());
    assert!(pins_of(&mesh.node).is_empty());
    assert_eq!(from_outside_to_s1(&mesh), Inbound::Direct);
}

#[test]
fn killed_agent_bypasses_nothing_and_fails_only_until_the_next_one_runs() {
    let mut mesh = mesh("killed");
    let load = Load::start(&mesh);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        from_outside_to_s1(&mesh),
        Inbound::Proxied,
        "{}",
        mesh.agent.log()
    );
    let killed_at = now();
    mesh.signal_agent(libc::SIGKILL);
    assert!(mesh.agent.wait_exit(TIMEOUT).unwrap().is_some());
    // No agent for a second: connects are refused, nothing goes direct — neither out of the
    // client nor into s1 from outside the mesh.
    let without_agent = from_outside_to_s1(&mesh);
    std::thread::sleep(
        Duration::from_secs(1).saturating_sub(Duration::from_secs_f64(now() - killed_at)),
    );
    let next = mesh.next_agent("restarted");
    let running_at = now();
    std::thread::sleep(Duration::from_millis(1500));
    let figures = load.finish();
    let old = std::mem::replace(&mut mesh.agent, next);
    assert_eq!(
        without_agent,
        Inbound::Failed(7),
        "{}",
        logs(&old, &mesh.agent)
    );
    // The new agent took s1's capture over: through its inbound proxy again, and the refusal
    // is counted (the counters are pinned too).
    assert_eq!(
        from_outside_to_s1(&mesh),
        Inbound::Proxied,
        "{}",
        mesh.agent.log()
    );
    let refused = metric_value(
        &mesh.metrics(),
        r#"mesh_agent_inbound_refused_total{reason="no_listener"}"#,
    );
    assert!(refused >= 1.0, "{refused}");
    eprintln!(
        "SIGKILL and restart ({:.2} s without an agent): {figures}",
        running_at - killed_at
    );
    let logs = || logs(&old, &mesh.agent);
    assert!(figures.sent >= 300, "{figures:?}");
    assert_eq!(figures.bypassed, 0, "{}", logs());
    assert_eq!(figures.forbidden_reached, 0, "{}", logs());
    assert!(
        !figures.failed.is_empty(),
        "nothing failed without an agent?"
    );
    // Failures only in the restart window: started after the kill (or in flight at it,
    // within a second) and before the new agent listened.
    let outside: Vec<f64> = figures
        .failed
        .iter()
        .copied()
        .filter(|t| *t < killed_at - 1.0 || *t > running_at)
        .collect();
    assert!(
        outside.is_empty(),
        "failures outside [{killed_at}, {running_at}]: {outside:?}\n{}",
        logs()
    );
}

#[test]
fn a_test_node_leaves_no_pins_behind() {
    let bpffs = {
        let mesh = mesh("nopins");
        let bpffs = mesh.node.bpffs();
        assert!(mounted(&bpffs));
        assert!(!pins_of(&mesh.node).is_empty());
        bpffs
        // The agent is killed and the node dropped without an uninstall.
    };
    assert!(!mounted(&bpffs), "{} still mounted", bpffs.display());
    assert!(!bpffs.exists());
}
