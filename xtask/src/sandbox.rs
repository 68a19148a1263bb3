//! `cargo xtask sandbox`: a throwaway mesh node with real servers and the real agent.
use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use mesh_testbed::{Agent, Node, Proc, agent::config_for};

use crate::build::{self, Profile, step};

const SHORT: Duration = Duration::from_secs(10);

pub fn run(keep: bool) -> anyhow::Result<()> {
    build::require_root("the sandbox")?;
    let binaries = build::build(Profile::Dev)?;
    // SAFETY: set before any thread that reads the environment exists.
    unsafe { std::env::set_var("MESH_AGENT_BIN", &binaries.agent) };
    let meshtb = binaries.meshtb.to_str().context("meshtb path")?.to_owned();

    // Ctrl-C reaches the whole foreground process group: the agent drains and exits, the
    // servers end, and this process stops between steps and tears the node down.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    step("creating the sandbox node (leftovers of earlier runs are removed first)");
    let mut node = Node::create("sandbox")?;
    for pod in ["frontend", "backend", "legacy"] {
        let ip = node.add_pod(pod)?.ip;
        println!(
            "  pod {pod:<9} {ip:<12} netns {}",
            node.pod(pod)?.netns_name()
        );
    }
    println!("  cgroup        {}", node.cgroup_path().display());
    let frontend = SocketAddr::from((node.pod("frontend")?.ip, 8000));
    let backend = SocketAddr::from((node.pod("backend")?.ip, 8080));

    let workdir = std::env::temp_dir().join(format!("mesh-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let access_log = workdir.join("frontend-access.log");

    step("starting servers: python3 http.server in frontend, meshtb http-server in backend");
    let mut python = node.pod_command("frontend", "python3")?;
    python
        .args([
            "-m",
            "http.server",
            "8000",
            "--bind",
            "0.0.0.0",
            "--directory",
            "/usr/share/doc",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&access_log)?);
    let _frontend_server = Proc::spawn("python3 http.server in frontend", python)?;
    let _backend_server = node.spawn_in_pod(
        "backend",
        &meshtb,
        &["http-server", "--port", "8080", "--name", "backend"],
    )?;
    node.wait_for_listener(frontend, SHORT)?;
    node.wait_for_listener(backend, SHORT)?;

    step(
        "starting mesh-agent: frontend and backend enrolled, legacy not; mesh from deploy/examples/shop",
    );
    let config = config_for(&node, &["frontend", "backend"], "")?;
    println!("{}", indent(&config));
    let shop = build::workspace_root().join("deploy/examples/shop");
    let shop = shop.to_str().context("example path")?;
    // The embedded control plane serves the example App Mesh definitions; the node proxy
    // takes them over xDS (it does not route by them yet: that is the L7 proxy's work).
    let mut agent = Agent::start_with_args(&node, &config, &workdir, &["--mesh", shop])?;
    println!(
        "  agent pid {} ready; log {}",
        agent.pid(),
        agent.log_path.display()
    );
    check(&interrupted)?;

    step("traffic between pods (curl's remote address comes from getpeername)");
    let flows: [(&str, String, &str); 4] = [
        (
            "frontend",
            format!("http://{backend}/"),
            "through the proxy",
        ),
        (
            "backend",
            format!("http://{frontend}/"),
            "through the proxy",
        ),
        (
            "legacy",
            format!("http://{backend}/"),
            "direct: legacy is not enrolled",
        ),
        (
            "frontend",
            format!("http://{}:9999/", backend.ip()),
            "refused: reset by the proxy",
        ),
    ];
    for (pod, url, expect) in &flows {
        let output = node.run_in_pod(
            pod,
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} from %{remote_ip}:%{remote_port} in %{time_total}s",
                url,
            ],
            SHORT,
        )?;
        let body = node.run_in_pod(pod, "curl", &["-sS", "--max-time", "5", url], SHORT)?;
        println!(
            "  {pod:>8} -> {url:<28} [{expect}]\n             {}{}\n             {}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim(),
            first_line(&String::from_utf8_lossy(&body.stdout)),
        );
        check(&interrupted)?;
    }

    step("frontend's access log (python http.server): the proxy, 10.77.0.1, is the client");
    let log = std::fs::read_to_string(&access_log).unwrap_or_default();
    println!("{}", indent(log.trim_end()));

    step("what went through the proxy (GET /metrics on the agent's admin port)");
    for line in agent
        .metrics(&node)?
        .lines()
        .filter(|l| l.starts_with("mesh_agent_"))
    {
        println!("  {line}");
    }
    step(
        "App Mesh configuration the agent holds, over xDS from its embedded control plane (GET /config_dump)",
    );
    let (_, dump) = node.http("GET", Agent::admin_addr(), "/config_dump")?;
    println!("  {}", dump.trim());
    step(&format!(
        "programs attached to {}",
        node.cgroup_path().display()
    ));
    print_attached(&node);

    if keep {
        println!(
            "\nThe sandbox keeps running. Try, in another shell:\n  \
             nsenter --net={} curl -s http://{backend}/\n  \
             nsenter --net={} curl -s http://127.0.0.1:15020/metrics\n\
             (a process must also join {}/cgroup.procs to be redirected)\nCtrl-C ends it.",
            node.pod("frontend")?.netns_path().display(),
            node.netns().path().display(),
            node.cgroup_path().display(),
        );
        while !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    step("stopping mesh-agent (SIGTERM): drain, detach, exit");
    let _ = agent.signal(libc::SIGTERM);
    match agent.wait_exit(Duration::from_secs(15))? {
        Some(status) => println!("  agent exited: {status}"),
        None => bail!("agent did not exit within 15s"),
    }
    print_attached(&node);
    step("removing the sandbox node");
    drop(node);
    let _ = std::fs::remove_dir_all(&workdir);
    println!("  done: namespaces, veths, cgroup and processes removed");
    Ok(())
}

fn check(interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted; the sandbox node was removed");
    }
    Ok(())
}

fn print_attached(node: &Node) {
    let output = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(node.cgroup_path())
        .output();
    match output {
        Ok(out) if out.stdout.is_empty() => println!("  (no programs attached)"),
        Ok(out) => println!("{}", indent(&String::from_utf8_lossy(&out.stdout))),
        Err(error) => println!("  bpftool: {error}"),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("(no body)")
}
