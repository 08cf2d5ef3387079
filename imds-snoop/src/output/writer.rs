//! The trace log file: size-based rotation like Python's RotatingFileHandler (which the
//! anchor tool uses), `imds-trace.log` -> `.1` -> ... -> `.N`, on a thread of its own so a
//! slow disk never stalls event intake. Lines reach it through a bounded channel; a line that
//! does not fit is counted, never waited for.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("cannot create log directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open log file {path} for writing: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub backups: u32,
    pub stdout: bool,
    pub queue: usize,
}

/// Counters the rest of the daemon reports.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    /// Lines lost because the queue was full (writer slower than intake).
    pub dropped_backpressure: AtomicU64,
    /// Lines lost because the file could not be written (disk full, removed, ...).
    pub lost_io: AtomicU64,
}

/// The sending half; cheap to use from the async event loop.
pub struct LineSender {
    tx: Option<SyncSender<String>>,
    stats: Arc<WriterStats>,
    thread: Option<JoinHandle<()>>,
}

impl LineSender {
    pub fn send(&self, line: String) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats
                    .dropped_backpressure
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// Writes out everything queued and waits for the file to be flushed.
    pub fn close(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the log (so a bad path fails at start, not at the first call) and starts the
/// writer thread.
pub fn start(config: WriterConfig) -> Result<LineSender, WriterError> {
    let file = LogFile::open(&config)?;
    let stats = Arc::new(WriterStats::default());
    let (tx, rx) = mpsc::sync_channel(config.queue);
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("imds-writer".into())
        .spawn(move || run(file, rx, &thread_stats))
        .map_err(|source| WriterError::Open {
            path: config.path.clone(),
            source,
        })?;
    Ok(LineSender {
        tx: Some(tx),
        stats,
        thread: Some(thread),
    })
}

fn run(mut file: LogFile, rx: Receiver<String>, stats: &WriterStats) {
    let mut stdout = io::stdout();
    while let Ok(first) = rx.recv() {
        // Write whatever is queued, then flush once: `tail -f` sees lines at once without a
        // syscall per line under load.
        for line in std::iter::once(first).chain(rx.try_iter()) {
            if file.config.stdout {
                let _ = writeln!(stdout, "{line}");
            }
            if file.write_line(&line) {
                stats.written.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.lost_io.fetch_add(1, Ordering::Relaxed);
            }
        }
        file.flush();
        let _ = stdout.flush();
    }
    file.flush();
}

struct LogFile {
    config: WriterConfig,
    out: Option<BufWriter<File>>,
    size: u64,
    last_warning: Option<Instant>,
}

impl LogFile {
    fn open(config: &WriterConfig) -> Result<Self, WriterError> {
        let mut f = Self {
            config: config.clone(),
            out: None,
            size: 0,
            last_warning: None,
        };
        f.reopen()?;
        Ok(f)
    }

    fn reopen(&mut self) -> Result<(), WriterError> {
        let path = &self.config.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| WriterError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let file = open_log(path).map_err(|source| WriterError::Open {
            path: path.clone(),
            source,
        })?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.out = Some(BufWriter::new(file));
        Ok(())
    }

    /// Returns false when the line could not be written (counted by the caller).
    fn write_line(&mut self, line: &str) -> bool {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.config.max_bytes {
            self.rotate();
        }
        if self.out.is_none()
            && let Err(e) = self.reopen()
        {
            self.warn(&e);
            return false;
        }
        let Some(out) = self.out.as_mut() else {
            return false;
        };
        // One write_all of line + newline into the buffer: a line is never split by us.
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        match out.write_all(&buf) {
            Ok(()) => {
                self.size += len;
                true
            }
            Err(e) => {
                self.warn(&e);
                // Drop the handle: the next line retries with a fresh open.
                self.out = None;
                false
            }
        }
    }

    fn flush(&mut self) {
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.flush()
        {
            self.warn(&e);
            self.out = None;
        }
    }

    fn rotate(&mut self) {
        self.flush();
        self.out = None;
        let path = &self.config.path;
        let n = self.config.backups;
        if n == 0 {
            let _ = fs::remove_file(path);
        } else {
            let _ = fs::remove_file(backup(path, n));
            for i in (1..n).rev() {
                let _ = fs::rename(backup(path, i), backup(path, i + 1));
            }
            let _ = fs::rename(path, backup(path, 1));
        }
        self.size = 0;
    }

    /// Warns on stderr at most every 10 s, so a full disk does not flood the journal.
    fn warn(&mut self, e: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            self.last_warning = Some(now);
            warn!(path = %self.config.path.display(), "cannot write trace log, lines are being lost until it works again: {e}");
        }
    }
}

fn backup(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Opens for append, mode 0640, refusing to follow a symlink planted in the log directory.
fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, max_bytes: u64, backups: u32) -> WriterConfig {
        WriterConfig {
            path: dir.join("sub/imds-trace.log"),
            max_bytes,
            backups,
            stdout: false,
            queue: 100_000,
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("imds-writer-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rotation_keeps_every_line_exactly_once_within_backups() {
        let dir = tempdir("rotate");
        let cfg = config(&dir, 4096, 50);
        let w = start(cfg.clone()).unwrap();
        for i in 0..2000 {
            w.send(format!("line {i:05} {}", "x".repeat(40)));
        }
        w.close();
        let mut seen = Vec::new();
        let mut files = 0;
        for i in (0..=50).rev() {
            let p = if i == 0 {
                cfg.path.clone()
            } else {
                backup(&cfg.path, i)
            };
            let Ok(text) = fs::read_to_string(&p) else {
                continue;
            };
            files += 1;
            assert!(
                text.len() as u64 <= 4096,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for l in text.lines() {
                assert!(l.starts_with("line ") && l.len() == 51, "torn line {l:?}");
                seen.push(l[5..10].parse::<u32>().unwrap());
            }
        }
        assert_eq!(seen, (0..2000).collect::<Vec<_>>());
        assert!(files <= 51);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oldest_backup_is_removed() {
        let dir = tempdir("oldest");
        let cfg = config(&dir, 100, 2);
        let w = start(cfg.clone()).unwrap();
        for i in 0..50 {
            w.send(format!("{i:03} {}", "y".repeat(60)));
        }
        w.close();
        assert!(backup(&cfg.path, 2).exists());
        assert!(!backup(&cfg.path, 3).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinked_log_file_is_refused() {
        let dir = tempdir("symlink");
        let cfg = config(&dir, 1 << 20, 1);
        fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/etc/passwd-never", &cfg.path).unwrap();
        assert!(matches!(start(cfg), Err(WriterError::Open { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
