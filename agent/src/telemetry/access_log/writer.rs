//! One access log file: lines are handed over a bounded queue to a thread that owns the file,
//! so a slow disk never blocks a request (a full queue drops the line and counts it). The
//! file is reopened on SIGHUP and when it was moved or deleted (logrotate's two styles), and
//! retried every second while it cannot be opened.
use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

/// Lines waiting for the writer; beyond this they are dropped.
const QUEUE_LINES: usize = 16 * 1024;
/// How often the writer checks whether its file was moved, and retries a failed open.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The handle requests write through.
pub struct LogWriter {
    queue: SyncSender<String>,
    dropped: Counter,
}

/// What the writer counts, per path.
#[derive(Clone, Default)]
pub struct WriterCounters {
    pub written: Counter,
    pub dropped: Counter,
}

impl LogWriter {
    /// Starts the writer thread for `path`; `reopen` is bumped to make every writer reopen.
    pub fn start(
        path: PathBuf,
        reopen: Arc<AtomicU64>,
        counters: WriterCounters,
    ) -> io::Result<Self> {
        let (queue, lines) = sync_channel(QUEUE_LINES);
        let dropped = counters.dropped.clone();
        let name = format!("access-log {}", path.display());
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                Sink {
                    path,
                    file: None,
                    reopen,
                    seen: 0,
                    checked: Instant::now(),
                    failed: false,
                    counters,
                }
                .run(lines)
            })?;
        Ok(Self { queue, dropped })
    }

    /// Queues a line (ending in a newline) without waiting.
    pub fn write(&self, line: String) {
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// The writer thread's side.
struct Sink {
    path: PathBuf,
    file: Option<Open>,
    reopen: Arc<AtomicU64>,
    seen: u64,
    /// When the file was last checked (moved, or reopen after a failed open).
    checked: Instant,
    /// The last open failed (logged once).
    failed: bool,
    counters: WriterCounters,
}

struct Open {
    out: BufWriter<File>,
    /// Device and inode at open time, for regular files: a different one at the path means
    /// the file was rotated away.
    identity: Option<(u64, u64)>,
}

impl Sink {
    fn run(mut self, lines: Receiver<String>) {
        self.open();
        loop {
            match lines.recv_timeout(CHECK_EVERY) {
                Ok(line) => {
                    self.check_reopen();
                    self.write(&line);
                    // Write whatever else is queued, then flush once.
                    while let Ok(line) = lines.try_recv() {
                        self.write(&line);
                    }
                    self.flush();
                }
                Err(RecvTimeoutError::Timeout) => self.check_reopen(),
                // Every handle is gone: the agent is stopping or the path left the config.
                Err(RecvTimeoutError::Disconnected) => return self.flush(),
            }
        }
    }

    fn open(&mut self) {
        let opened = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&self.path);
        self.file = match opened {
            Ok(file) => {
                self.failed = false;
                let identity = file
                    .metadata()
                    .ok()
                    .filter(|m| m.file_type().is_file())
                    .map(|m| (m.dev(), m.ino()));
                info!(path = %self.path.display(), "access log opened");
                Some(Open {
                    out: BufWriter::with_capacity(64 * 1024, file),
                    identity,
                })
            }
            Err(error) => {
                // Once per outage, not once per retry.
                if !self.failed {
                    warn!(path = %self.path.display(), %error, "cannot open access log; lines are dropped until it opens");
                }
                self.failed = true;
                None
            }
        };
    }

    /// Reopens after SIGHUP, when the file at the path is another one (or none), or when the
    /// last open failed.
    fn check_reopen(&mut self) {
        let generation = self.reopen.load(Ordering::Relaxed);
        let asked = generation != self.seen;
        self.seen = generation;
        if !asked && self.checked.elapsed() < CHECK_EVERY {
            return;
        }
        self.checked = Instant::now();
        let moved = match &self.file {
            None => true,
            Some(Open {
                identity: Some(identity),
                ..
            }) => std::fs::metadata(&self.path)
                .map(|m| (m.dev(), m.ino()) != *identity)
                .unwrap_or(true),
            Some(Open { identity: None, .. }) => false,
        };
        if asked || moved {
            self.flush();
            self.open();
        }
    }

    fn write(&mut self, line: &str) {
        let Some(file) = &mut self.file else {
            self.counters.dropped.inc();
            return;
        };
        match file.out.write_all(line.as_bytes()) {
            Ok(()) => {
                self.counters.written.inc();
            }
            Err(error) => {
                self.counters.dropped.inc();
                warn!(path = %self.path.display(), %error, "access log write failed; reopening");
                self.file = None;
            }
        }
    }

    fn flush(&mut self) {
        if let Some(file) = &mut self.file
            && let Err(error) = file.out.flush()
        {
            warn!(path = %self.path.display(), %error, "access log flush failed; reopening");
            self.file = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn lines_land_and_a_moved_file_or_sighup_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let reopen = Arc::new(AtomicU64::new(0));
        let counters = WriterCounters::default();
        let writer = LogWriter::start(path.clone(), Arc::clone(&reopen), counters.clone()).unwrap();
        writer.write("one\n".into());
        wait_for("first line", || {
            std::fs::read_to_string(&path).unwrap_or_default() == "one\n"
        });

        // logrotate's default: move the file away; the writer notices within a second.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        wait_for("reopened after the move", || path.exists());
        writer.write("two\n".into());
        wait_for("second line in the new file", || {
            std::fs::read_to_string(&path).unwrap_or_default() == "two\n"
        });
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\n");

        // copytruncate-free rotation with a signal: SIGHUP bumps the generation.
        std::fs::rename(&path, dir.path().join("access.log.2")).unwrap();
        std::fs::write(&path, "").unwrap();
        reopen.fetch_add(1, Ordering::Relaxed);
        writer.write("three\n".into());
        wait_for("third line after reopen", || {
            std::fs::read_to_string(&path).unwrap_or_default() == "three\n"
        });
        assert_eq!(counters.written.get(), 3);
        assert_eq!(counters.dropped.get(), 0);
    }

    #[test]
    fn an_unopenable_path_drops_and_counts_without_blocking() {
        let counters = WriterCounters::default();
        let writer = LogWriter::start(
            PathBuf::from("/nonexistent-dir/access.log"),
            Arc::new(AtomicU64::new(0)),
            counters.clone(),
        )
        .unwrap();
        let start = Instant::now();
        for _ in 0..(QUEUE_LINES + 100) {
            writer.write("x\n".into());
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "writes never wait"
        );
        wait_for("all counted as dropped", || {
            counters.dropped.get() == (QUEUE_LINES + 100) as u64
        });
    }
}
