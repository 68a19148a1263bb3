//! Processes started inside a pod (its cgroup and network namespace) or on the node.
use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Child, Command, ExitStatus, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Where a process runs: a network namespace, and optionally a cgroup to join first.
pub struct Placement<'a> {
    pub netns: &'a Path,
    pub cgroup_procs: Option<&'a Path>,
}

impl Placement<'_> {
    /// Makes `command` join the cgroup, then the network namespace, between fork and exec.
    /// (`ip netns exec` would remount /sys and hide the cgroup mount; this does not.)
    pub fn apply(&self, command: &mut Command) -> anyhow::Result<()> {
        let netns = File::open(self.netns)
            .with_context(|| format!("open netns {}", self.netns.display()))?;
        let procs = match self.cgroup_procs {
            Some(path) => Some(
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("open {}", path.display()))?,
            ),
            None => None,
        };
        // SAFETY: the closure only makes async-signal-safe syscalls on fds opened above.
        unsafe {
            command.pre_exec(move || {
                if let Some(procs) = &procs
                    && libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// A long-running process, ended on drop (SIGTERM, then SIGKILL after a grace period).
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command) -> anyhow::Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&mut self, signal: i32) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!("{} is not running", self.name);
        }
        // SAFETY: kill(2) on the pid of our own child, which try_wait shows is not reaped.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            bail!("kill {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.signal(libc::SIGTERM).is_ok() && matches!(self.wait_timeout(grace), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Runs a short command to completion, killing it after `timeout`. Its output is read while
/// it runs, so a command printing more than a pipe holds does not stall.
pub fn output_within(mut command: Command, timeout: Duration) -> anyhow::Result<Output> {
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let collect = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "{command:?} did not finish within {timeout:?}; stderr: {}",
            String::from_utf8_lossy(&stderr)
        ),
    }
}
