//! The trace log file: size-based rotation like Python's RotatingFileHandler (which the
//! anchor tool uses), `imds-trace.log` -> `.1` -> ... -> `.N`, on a thread of its own so a
//! slow disk never stalls event intake. Lines reach it in batches ([`Lines`]) through a
//! queue bounded in lines; a batch that does not fit is counted, never waited for.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WriterError {
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
pub(crate) struct WriterConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub backups: u32,
    pub stdout: bool,
    pub queue: usize,
}

/// Counters the rest of the daemon reports.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub written: AtomicU64,
    /// Lines lost because the queue was full (writer slower than intake).
    pub dropped_backpressure: AtomicU64,
    /// Lines lost because the file could not be written (disk full, removed, ...).
    pub lost_io: AtomicU64,
}

/// Lines in one buffer, each ended by `\n`: a batch reaches the writer thread with one
/// wake-up, and the file with one write (a message and a write per line cost the daemon a
/// quarter of its CPU per event under load). A line must not hold a `\n` of its own (the
/// formats escape it).
#[derive(Debug, Default)]
pub(crate) struct Lines {
    text: String,
    count: usize,
}

impl Lines {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            count: 0,
        }
    }

    /// Appends a line that `build` writes to the end of the buffer.
    pub(crate) fn push_with(&mut self, build: impl FnOnce(&mut String)) {
        build(&mut self.text);
        self.text.push('\n');
        self.count += 1;
    }

    /// Lines held.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.text.len()
    }
}

/// What the writer thread is asked to do.
enum Msg {
    Lines(Lines),
    /// Close and reopen the log (SIGHUP: an external logrotate moved it away).
    Reopen,
}

/// The sending half; cheap to use from the async event loop.
pub(crate) struct LineSender {
    tx: Option<SyncSender<Msg>>,
    /// Lines sent and not yet taken by the writer thread, and their bound.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    stats: Arc<WriterStats>,
    thread: Option<JoinHandle<()>>,
}

impl LineSender {
    pub(crate) fn send(&self, mut line: String) {
        line.push('\n');
        self.send_lines(Lines {
            text: line,
            count: 1,
        });
    }

    /// Queues a batch whole, or counts all its lines as dropped if the queue has not room
    /// for them all.
    pub(crate) fn send_lines(&self, lines: Lines) {
        let Some(tx) = &self.tx else { return };
        let n = lines.count;
        if n == 0 {
            return;
        }
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.capacity || tx.try_send(Msg::Lines(lines)).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.stats
                .dropped_backpressure
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Reopens the log file after the lines already queued (for SIGHUP).
    pub(crate) fn reopen(&self) {
        if let Some(tx) = &self.tx {
            // Blocking send: a reopen request must not be lost to a full queue.
            let _ = tx.send(Msg::Reopen);
        }
    }

    pub(crate) fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// Writes out everything queued and waits for the file to be flushed.
    pub(crate) fn close(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the log (so a bad path fails at start, not at the first call) and starts the
/// writer thread.
pub(crate) fn start(config: WriterConfig) -> Result<LineSender, WriterError> {
    let file = LogFile::open(&config)?;
    let stats = Arc::new(WriterStats::default());
    // Each message holds at least one line: a queue of `queue` lines never holds more
    // messages than that.
    let (tx, rx) = mpsc::sync_channel(config.queue);
    let queued = Arc::new(AtomicUsize::new(0));
    let thread_stats = stats.clone();
    let thread_queued = queued.clone();
    let thread = std::thread::Builder::new()
        .name("imds-writer".into())
        .spawn(move || run(file, rx, &thread_stats, &thread_queued))
        .map_err(|source| WriterError::Open {
            path: config.path.clone(),
            source,
        })?;
    Ok(LineSender {
        tx: Some(tx),
        queued,
        capacity: config.queue,
        stats,
        thread: Some(thread),
    })
}

/// How often the writer checks that its path still names the file it writes to (a log
/// file or directory deleted while we run is recreated).
const PATH_CHECK: Duration = Duration::from_secs(1);

/// Past this, the write buffer a stall grew is given back after use.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

fn run(mut file: LogFile, rx: Receiver<Msg>, stats: &WriterStats, queued: &AtomicUsize) {
    let mut stdout = io::stdout();
    let mut last_check = Instant::now();
    // Whatever is queued, written in one go: `tail -f` sees lines at once, and a busy node
    // costs one write per wake-up, not per line or per batch.
    let mut batch = Lines::default();
    loop {
        let first = match rx.recv_timeout(PATH_CHECK) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        for msg in first.into_iter().chain(rx.try_iter()) {
            match msg {
                Msg::Lines(lines) => {
                    queued.fetch_sub(lines.count, Ordering::AcqRel);
                    if file.config.stdout {
                        let _ = stdout.write_all(lines.text.as_bytes());
                    }
                    if batch.is_empty() {
                        // The common case, one batch per wake-up: taken as it is, no copy.
                        batch = lines;
                    } else {
                        batch.text.push_str(&lines.text);
                        batch.count += lines.count;
                    }
                }
                Msg::Reopen => {
                    file.write_lines(&batch, stats);
                    batch.text.clear();
                    batch.count = 0;
                    file.close();
                }
            }
        }
        file.write_lines(&batch, stats);
        batch.text.clear();
        batch.count = 0;
        if batch.text.capacity() > KEEP_BUFFER_BYTES {
            batch = Lines::default();
        }
        let _ = stdout.flush();
        if last_check.elapsed() >= PATH_CHECK {
            file.check_path();
            last_check = Instant::now();
        }
    }
}

struct LogFile {
    config: WriterConfig,
    out: Option<File>,
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
        self.out = Some(file);
        Ok(())
    }

    fn close(&mut self) {
        self.out = None;
    }

    /// Reopens when the path no longer names our file: deleted (with or without its
    /// directory) or replaced. Lines written meanwhile went to the unlinked file: nothing to
    /// be done about those, but no further ones do.
    fn check_path(&mut self) {
        let Some(out) = &self.out else { return };
        let same = match (out.metadata(), fs::metadata(&self.config.path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same {
            self.close();
            if let Err(e) = self.reopen() {
                self.warn(&e);
            }
        }
    }

    /// Appends `lines`, rotating by size between lines. Counts each line written or lost.
    fn write_lines(&mut self, lines: &Lines, stats: &WriterStats) {
        let text = lines.text.as_bytes();
        if self.size + text.len() as u64 <= self.config.max_bytes {
            // No rotation within: one write.
            self.write_chunk(text, lines.count as u64, stats);
            return;
        }
        let (mut start, mut end, mut in_chunk) = (0, 0, 0u64);
        for line in text.split_inclusive(|&b| b == b'\n') {
            let len = line.len() as u64;
            let chunk = (end - start) as u64;
            if self.size + chunk > 0 && self.size + chunk + len > self.config.max_bytes {
                self.write_chunk(&text[start..end], in_chunk, stats);
                start = end;
                in_chunk = 0;
                if self.size > 0 {
                    self.rotate();
                }
            }
            end += line.len();
            in_chunk += 1;
        }
        self.write_chunk(&text[start..end], in_chunk, stats);
    }

    /// One append of whole lines. On a failure (disk full, file gone) the file is cut back
    /// to where the chunk started, so no torn line is left, the chunk's lines are counted
    /// as lost, and the next chunk retries with a fresh open.
    fn write_chunk(&mut self, chunk: &[u8], lines: u64, stats: &WriterStats) {
        if chunk.is_empty() {
            return;
        }
        if self.out.is_none()
            && let Err(e) = self.reopen()
        {
            self.warn(&e);
            stats.lost_io.fetch_add(lines, Ordering::Relaxed);
            return;
        }
        let Some(out) = self.out.as_mut() else { return };
        match out.write_all(chunk) {
            Ok(()) => {
                self.size += chunk.len() as u64;
                stats.written.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = out.set_len(self.size);
                self.warn(&e);
                self.out = None;
                stats.lost_io.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }

    fn rotate(&mut self) {
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
        // 20,000 lines of 51 bytes through 64 KiB files: about 16 rotations.
        let cfg = config(&dir, 65536, 50);
        let w = start(cfg.clone()).unwrap();
        for i in 0..20_000 {
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
                text.len() as u64 <= 65536,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for l in text.lines() {
                assert!(l.starts_with("line ") && l.len() == 51, "torn line {l:?}");
                seen.push(l[5..10].parse::<u32>().unwrap());
            }
        }
        assert_eq!(seen, (0..20_000).collect::<Vec<_>>());
        assert!(files > 10, "it rotated ({files} files)");
        assert!(files <= 51);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Lines `from..to` as the daemon hands them over: one buffer.
    fn batch(from: u32, to: u32) -> Lines {
        let mut lines = Lines::default();
        for i in from..to {
            lines.push_with(|out| out.push_str(&format!("line {i:05} {}", "x".repeat(40))));
        }
        lines
    }

    /// Every file of the log, oldest first, as text.
    fn all_files(cfg: &WriterConfig) -> Vec<String> {
        (0..=cfg.backups)
            .rev()
            .filter_map(|i| {
                let p = if i == 0 {
                    cfg.path.clone()
                } else {
                    backup(&cfg.path, i)
                };
                fs::read_to_string(p).ok()
            })
            .collect()
    }

    #[test]
    fn batches_rotate_between_their_lines() {
        let dir = tempdir("batches");
        // Batches of 1 to 300 lines of 51 bytes through 16 KiB files: rotations fall inside
        // batches, and a batch can span more than one file.
        let cfg = config(&dir, 16384, 100);
        let w = start(cfg.clone()).unwrap();
        let mut next = 0;
        for size in (1..300).step_by(13).cycle().take(150) {
            w.send_lines(batch(next, next + size));
            next += size;
        }
        w.close();
        let mut seen = Vec::new();
        let files = all_files(&cfg);
        for text in &files {
            assert!(text.len() <= 16384, "a file of {} bytes", text.len());
            for l in text.lines() {
                assert!(l.starts_with("line ") && l.len() == 51, "torn line {l:?}");
                seen.push(l[5..10].parse::<u32>().unwrap());
            }
        }
        assert_eq!(seen, (0..next).collect::<Vec<_>>());
        assert!(files.len() > 50, "it rotated ({} files)", files.len());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn queue_is_bounded_in_lines_and_a_batch_that_does_not_fit_is_counted() {
        let dir = tempdir("bound");
        let cfg = WriterConfig {
            queue: 10,
            ..config(&dir, 1 << 20, 1)
        };
        let w = start(cfg.clone()).unwrap();
        // More lines than the queue holds, in one message: refused whole, counted.
        w.send_lines(batch(0, 11));
        assert_eq!(w.stats().dropped_backpressure.load(Ordering::Relaxed), 11);
        w.send_lines(batch(11, 14));
        let stats = w.stats().clone();
        w.close();
        assert_eq!(stats.written.load(Ordering::Relaxed), 3);
        assert_eq!(stats.dropped_backpressure.load(Ordering::Relaxed), 11);
        let text = fs::read_to_string(&cfg.path).unwrap();
        let numbers: Vec<&str> = text.lines().map(|l| &l[5..10]).collect();
        assert_eq!(numbers, ["00011", "00012", "00013"]);
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
    fn reopen_follows_an_external_rename_and_a_deleted_directory() {
        let dir = tempdir("reopen");
        let cfg = config(&dir, 1 << 20, 1);
        let w = start(cfg.clone()).unwrap();
        w.send("before".into());
        wait_for(&cfg.path, "before");
        // logrotate's `create` mode: rename, then SIGHUP.
        let moved = dir.join("moved.log");
        fs::rename(&cfg.path, &moved).unwrap();
        w.reopen();
        w.send("after-hup".into());
        wait_for(&cfg.path, "after-hup");
        assert_eq!(fs::read_to_string(&moved).unwrap(), "before\n");
        // The whole directory removed: recreated within PATH_CHECK, no signal needed.
        fs::remove_dir_all(cfg.path.parent().unwrap()).unwrap();
        std::thread::sleep(PATH_CHECK * 2);
        w.send("after-rmdir".into());
        wait_for(&cfg.path, "after-rmdir");
        w.close();
        fs::remove_dir_all(&dir).unwrap();
    }

    fn wait_for(path: &Path, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l == line)) {
            assert!(
                Instant::now() < deadline,
                "{line:?} never reached {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
