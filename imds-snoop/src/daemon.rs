//! The running tracer, wiring only: opens the log (and the metrics port), installs the
//! signal handlers, attaches (`capture`), says it is ready, then hands each ring-buffer
//! record to the `Pipeline` (decode -> http -> attribution -> outcome) and its records to
//! the formatter, the metrics and the writer, until SIGINT/SIGTERM.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use imds_snoop_common::{
    DROP_HOP_DROP, DROP_NO_SCRATCH, DROP_PROCESS_EVENT, DROP_RESPONSE, DROP_RINGBUF_FULL,
    HOP_DROP_DEDUPLICATED,
};
use imds_snoop_line::{Level, json, label};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracing::{debug, info, warn};

use crate::{
    capture::{self, Capture, CaptureOptions},
    cli::{Responses, RunArgs},
    losses::{DegradedEvents, Losses, Reported},
    metrics::{self, Metrics},
    output::{
        Format, LineFormatter, untraced,
        writer::{self, LineSender, Lines, WriterConfig},
    },
    pipeline::Pipeline,
    readiness::{ReadyFile, notify_ready},
    record::Record,
};

/// Lines queued for the writer thread before new ones are counted as dropped: 0.8 s of a
/// 20,000/s burst. The queue's slots are allocated up front (32 bytes each), so this is
/// also resident memory: 65,536 cost 2 MiB of the 25 MiB budget.
const WRITER_QUEUE: usize = 16_384;
/// After draining the ring, let events gather this long before waiting on it again: the
/// kernel wakes the reader for each event it submits once the reader has caught up, and at
/// thousands of calls a second a wake-up (epoll round, writer thread wake-up) per event is
/// most of the daemon's cost. 2 ms is a small part of what the default 4 MiB ring holds at
/// 20,000 calls a second (a send event is its header plus the bytes sent); still, 5 ms lost
/// events on this shared 2-vCPU machine under load where 2 ms did not. The lines are 2 ms
/// later. Not with a ring smaller than [`COALESCE_MIN_RING`] (a
/// deliberately small ring is for testing drops).
const RING_COALESCE: Duration = Duration::from_millis(2);
const COALESCE_MIN_RING: u32 = 1 << 20;
/// Lines of one drain handed to the writer at once, at most.
const FLUSH_LINES: usize = 256;
/// Room made for the next batch, at most (FLUSH_LINES of the usual 300-600 bytes).
const FLUSH_BYTES: usize = 192 << 10;

/// Traces until SIGINT or SIGTERM, then detaches and returns `Ok(())` with the log flushed.
///
/// In order: opens the trace log (`--log-file`, with rotation) and the metrics port
/// (`--metrics-addr`), installs the signal handlers, loads and attaches the kernel program
/// (`capture`: the send hook by `--attach`, then the response hook unless `--responses
/// off`; a response hook that fails to attach is a warning, not an error), writes the ready
/// file and tells systemd (`NOTIFY_SOCKET`), then runs the loop: ring records through the
/// `Pipeline` to lines (drains 2 ms apart on rings of 1 MiB or more: `RING_COALESCE`),
/// SIGHUP reopens the log (logrotate), and a 1 s tick drains the ring (process events do
/// not wake the reader), expires waits and writes loss lines.
/// Records still in the ring or the pipeline at the stop are written before it returns.
///
/// Errors (all before the first line is written, so the daemon never runs half-way): the
/// log cannot be opened, the metrics address cannot be bound, a signal handler cannot be
/// installed, the kernel program cannot be loaded or attached (no BTF, no privileges, an
/// unsupported kernel: see `capture`), the ready file cannot be written; and later only a
/// failure of the ring buffer's poll. Must run on a tokio runtime with IO and time enabled.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // The log first: a bad path is reported before anything is attached.
    let writer = writer::start(WriterConfig {
        path: args.log_file.clone(),
        max_bytes: args.max_bytes,
        backups: args.backups,
        stdout: args.stdout,
        queue: WRITER_QUEUE,
    })?;

    // The metrics port too: a taken port is a start-up error, not a silent lack of metrics.
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            let metrics = Metrics::new();
            metrics::serve(listener, &metrics);
            info!("serving metrics at http://{addr}/metrics");
            metrics
        }
        None => Metrics::disabled(),
    };

    // Handlers first: a SIGTERM right after we say "attached" must still stop us cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;

    let targets = args.targets();
    let mut capture = Capture::start(&CaptureOptions {
        attach: args.attach,
        targets: &targets,
        payload_bytes: args.payload_bytes,
        ring_bytes: args.ring_bytes,
        btf_path: &args.btf,
    })?;
    // The outcome of each call. Not fatal: without it lines are written at once, as before.
    // Why statuses are not traced, when they are not: said on stderr and in the trace log.
    let mut statuses_off = (args.responses == Responses::Off).then(|| "--responses off".into());
    let responses = args.responses == Responses::Auto && {
        match capture.attach_responses(&args.cgroup_root) {
            Ok(cgroup) => {
                info!(
                    "response status: cgroup_skb/ingress on {}",
                    cgroup.display()
                );
                true
            }
            Err(e) => {
                let why = capture::own_responses_diagnosis().unwrap_or_else(|| e.to_string());
                warn!(
                    "response statuses are not traced: {why} ({e}); logging calls without \
                     their status, and no hop-limit warning"
                );
                statuses_off = Some(why);
                false
            }
        }
    };
    match &capture.hop_drops {
        Ok(how) => info!("hop-limit drops: {how}"),
        Err(why) => warn!(
            "hop-limit drops are not traced: {why}; an unanswered token PUT is still the \
             silence-based warning"
        ),
    }
    let ring = capture.take_events()?;
    metrics.set_attached(capture.attached, true);
    metrics.set_statuses_traced(responses);
    metrics.set_window_start(std::time::SystemTime::now());
    // SAFETY: the AsyncFd owns the RingBuf, so the fd stays open for as long as it is
    // registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let target_list: Vec<String> = targets
        .iter()
        .map(|&(ip, port)| std::net::SocketAddr::new(ip, port).to_string())
        .collect();
    info!(
        "attached {}{}; tracing {}; writing {}",
        capture.attached,
        if responses {
            " and cgroup_skb/ingress (responses)"
        } else {
            ""
        },
        target_list.join(" "),
        args.log_file.display()
    );
    let _ready = match &args.ready_file {
        Some(path) => Some(
            ReadyFile::create(path)
                .with_context(|| format!("writing ready file {}", path.display()))?,
        ),
        None => None,
    };
    if let Err(e) = notify_ready() {
        warn!("could not tell systemd we are ready (NOTIFY_SOCKET): {e}");
    }

    let host_netns = host_netns(args.host_netns.as_deref());
    let coalesce = (args.ring_bytes >= COALESCE_MIN_RING).then_some(RING_COALESCE);
    let mut tracer = Tracer::new(
        &args,
        responses,
        metrics,
        host_netns.as_ref().map(|(inode, _)| *inode),
    );
    // The markers a reader of the log judges its completeness by (`imds-snoop report`): a
    // start not preceded by a stop is a gap; statuses not traced from here on.
    writer.send(marker_line(
        tracer.format,
        &tracer.node,
        json::STARTED_CLASS,
        Some(&format!(
            "version {}, attached {}, {}, statuses {}traced{}",
            env!("CARGO_PKG_VERSION"),
            capture.attached,
            // Before the statuses: deploy checks read `statuses ..., host network namespace
            // ...` as the marker's end.
            match &capture.hop_drops {
                Ok(how) => format!("drop hook {how}"),
                Err(why) => format!("no drop hook ({why}): hop-limit warnings rest on silence"),
            },
            if responses { "" } else { "not " },
            match &host_netns {
                Some((inode, path)) => format!(", host network namespace {inode} ({path})"),
                None => ", host network namespace unknown".into(),
            }
        )),
    ));
    if let Some(why) = &statuses_off {
        writer.send(marker_line(
            tracer.format,
            &tracer.node,
            json::STATUSES_OFF_CLASS,
            Some(why),
        ));
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut losses = Reported::default();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                tracer.drain_ring(guard.get_inner_mut(), &writer);
                guard.clear_ready();
                if let Some(pause) = coalesce {
                    tokio::time::sleep(pause).await;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            // logrotate (`create` mode) renamed the file away: write to a new one.
            _ = sighup.recv() => writer.reopen(),
            _ = tick.tick() => {
                // Process events (exec, fork, exit) do not wake us (the kernel program's
                // `quiet_flags`): the next send or response does, and this drain bounds
                // how long they wait when none comes.
                tracer.drain_ring(ring.get_mut(), &writer);
                tracer.expire(Instant::now(), &writer);
                if tracer.pipeline.take_blind() {
                    tracer.metrics.set_statuses_traced(false);
                    writer.send(marker_line(
                        tracer.format,
                        &tracer.node,
                        json::STATUSES_OFF_CLASS,
                        Some(
                            "the response program saw no reply to any IMDS call (cgroup v1 \
                             net_cls/net_prio in use?)",
                        ),
                    ));
                }
                report_losses(&capture, &writer, &mut losses, &tracer);
            }
        }
    }

    // Whatever reached the ring before the signal is still logged.
    tracer.drain_ring(ring.get_mut(), &writer);
    tracer.finish(&writer);
    report_losses(&capture, &writer, &mut losses, &tracer);
    drop(ring);
    drop(capture); // detaches
    writer.send(marker_line(
        tracer.format,
        &tracer.node,
        json::STOPPED_CLASS,
        Some(&format!("version {}", env!("CARGO_PKG_VERSION"))),
    ));
    let stats = writer.stats().clone();
    writer.close();
    info!(
        lines = stats.written.load(Ordering::Relaxed),
        dropped_kernel = losses.losses.ring_full + losses.losses.no_scratch,
        lost_process_events = losses.degraded.process_events,
        lost_responses = losses.degraded.responses,
        dropped_backpressure = stats.dropped_backpressure.load(Ordering::Relaxed),
        lost_io = stats.lost_io.load(Ordering::Relaxed),
        decode_errors = tracer.pipeline.decode_errors(),
        responses_unmatched = tracer.pipeline.responses_unmatched(),
        responses_untraced = tracer.pipeline.responses_untraced(),
        logged_without_waiting = tracer.pipeline.logged_without_waiting(),
        "detached, log flushed"
    );
    Ok(())
}

/// Reads the loss totals (kernel drop counters, writer stats) into the metrics, and writes
/// a line for each kind that grew since the last call (see [`Reported::update`]).
fn report_losses(capture: &Capture, writer: &LineSender, seen: &mut Reported, tracer: &Tracer) {
    let (format, node, metrics) = (tracer.format, tracer.node.as_str(), &tracer.metrics);
    let hop_drops = tracer.pipeline.hop_drops();
    let stats = writer.stats();
    let drops = capture.drops().unwrap_or_default();
    let now = Losses {
        ring_full: drops[DROP_RINGBUF_FULL as usize],
        no_scratch: drops[DROP_NO_SCRATCH as usize],
        writer_queue_full: stats.dropped_backpressure.load(Ordering::Relaxed),
        log_write_failed: stats.lost_io.load(Ordering::Relaxed),
    };
    let degraded = DegradedEvents {
        process_events: drops[DROP_PROCESS_EVENT as usize],
        responses: drops[DROP_RESPONSE as usize] + drops[DROP_HOP_DROP as usize],
    };
    metrics.set_totals(&now, &degraded, stats.written.load(Ordering::Relaxed));
    let (matched, unmatched, repeated) = hop_drops;
    metrics.set_hop_drops([
        matched,
        unmatched,
        repeated,
        drops[HOP_DROP_DEDUPLICATED as usize],
    ]);
    for line in seen.update(now, degraded, format, node) {
        writer.send(line);
    }
}

/// The pipeline's records on their way out: formats them, counts them in the metrics, and
/// hands their lines to the writer in batches.
struct Tracer {
    pipeline: Pipeline,
    format: Format,
    node: String,
    metrics: Metrics,
    /// When the ring-buffer record (or expiry tick) being processed was read: the start of
    /// the `processing` latency. A request emitted later (expired, or after waiting for
    /// something) counts from the read that let it out, so waiting is never measured.
    read_at: Instant,
    /// Records the pipeline let out of the current ring record or tick (kept for its buffer).
    records: Vec<Record>,
    /// Lines of the current drain, handed to the writer together at its end: the writer
    /// thread then wakes once and writes them in one go, instead of racing us line by line.
    pending: Lines,
    formatter: LineFormatter,
}

impl Tracer {
    fn new(args: &RunArgs, responses: bool, metrics: Metrics, host_netns: Option<u32>) -> Self {
        let node = args.node_name.clone().unwrap_or_else(hostname);
        let formatter = LineFormatter::new(args.format, &node);
        Self {
            pipeline: Pipeline::new(
                args.container_paths(),
                responses.then_some(args.response_timeout),
            )
            .with_host_netns(host_netns),
            format: args.format,
            node,
            metrics,
            read_at: Instant::now(),
            records: Vec::new(),
            pending: Lines::default(),
            formatter,
        }
    }

    fn drain_ring(&mut self, ring: &mut RingBuf<MapData>, writer: &LineSender) {
        let now = Instant::now();
        while let Some(item) = ring.next() {
            self.read_at = Instant::now();
            self.pipeline.push(&item, now, &mut self.records);
            self.write_records();
            for d in self.pipeline.take_unmatched_drops() {
                self.pending
                    .push_with(|out| out.push_str(&hop_drop_line(self.format, &self.node, &d)));
            }
            // A drain lasts as long as events keep coming faster than we take them (sends
            // and responses both let lines out): hand lines on as we go, or they would pile
            // up here unbounded.
            if self.pending.len() >= FLUSH_LINES {
                self.flush(writer);
            }
        }
        self.flush(writer);
    }

    fn flush(&mut self, writer: &LineSender) {
        if !self.pending.is_empty() {
            // The next batch is likely the size of this one: room for it, up to a full one.
            let next = Lines::with_capacity(self.pending.bytes().min(FLUSH_BYTES));
            writer.send_lines(std::mem::replace(&mut self.pending, next));
        }
    }

    fn expire(&mut self, now: Instant, writer: &LineSender) {
        self.read_at = now;
        self.pipeline.expire(now, &mut self.records);
        self.write_records();
        self.flush(writer);
    }

    fn finish(&mut self, writer: &LineSender) {
        let now = Instant::now();
        self.read_at = now;
        self.pipeline.finish(now, &mut self.records);
        self.write_records();
        self.flush(writer);
    }

    /// Queues the lines of the records let out (for [`Self::flush`]) and counts them in the
    /// metrics.
    fn write_records(&mut self) {
        for record in self.records.drain(..) {
            self.pending
                .push_with(|out| self.formatter.push_line(&record, out));
            self.metrics.observe(&record, self.read_at.elapsed());
        }
        for u in self.pipeline.take_untraced() {
            self.pending
                .push_with(|out| out.push_str(&untraced::line(&u, self.format, &self.node)));
            self.metrics.observe_untraced();
        }
    }
}

/// The node's network namespace: its inode (what the kernel program records as a socket's
/// `netns`) and the file it was read from. `--host-netns` when given; else pid 1's
/// (readable with CAP_SYS_PTRACE only), else our own.
fn host_netns(arg: Option<&std::path::Path>) -> Option<(u32, String)> {
    use std::os::unix::fs::MetadataExt as _;
    let candidates: Vec<&std::path::Path> = match arg {
        Some(p) => vec![p],
        None => vec!["/proc/1/ns/net".as_ref(), "/proc/self/ns/net".as_ref()],
    };
    for path in candidates {
        // A file holding the link text (`net:[4026531840]`, what `readlink /proc/1/ns/net`
        // prints: the unit writes it before dropping privileges), or a namespace file.
        let written = std::fs::read_to_string(path).ok().and_then(|t| {
            t.trim()
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse::<u32>()
                .ok()
        });
        match written
            .map(Ok)
            .unwrap_or_else(|| std::fs::metadata(path).map(|m| u32::try_from(m.ino()).unwrap_or(0)))
        {
            Ok(inode) => {
                info!(
                    "host network namespace: {inode} ({}): callers in it are net:host",
                    path.display()
                );
                return Some((inode, path.display().to_string()));
            }
            Err(e) if arg.is_some() => {
                warn!(
                    "--host-netns {}: {e}: lines will not say whether a caller is in the \
                     node's network namespace",
                    path.display()
                );
            }
            Err(e) => debug!("{}: {e}", path.display()),
        }
    }
    None
}

/// One of the daemon's markers in the trace log: `class` one of
/// [`json::MARKER_CLASSES`], with its reason (text: in parentheses after the label).
fn marker_line(format: Format, node: &str, class: &str, reason: Option<&str>) -> String {
    marker_line_with(format, node, class, reason, None)
}

/// The line for a hop-limit drop that matched no traced request: its details in text
/// (`to:`, `from:`, `ttl:`, `reason:`, `netns:` in the parentheses) and in JSON `hop_drop`.
fn hop_drop_line(format: Format, node: &str, d: &crate::decode::HopDrop) -> String {
    let to = std::net::SocketAddr::new(d.local.0, d.local.1).to_string();
    let from = std::net::SocketAddr::new(d.remote.0, d.remote.1).to_string();
    let reason = d.reason.map(|_| "IP_INHDR");
    let text = format!(
        "no traced request: to:{to} from:{from} ttl:{} reason:{} netns:{}",
        d.ttl,
        reason.unwrap_or("-"),
        d.netns
    );
    let hop = json::HopDrop {
        ttl: d.ttl,
        reason: reason.map(Into::into),
        netns: d.netns,
        to: Some(to.into()),
        from: Some(from.into()),
    };
    marker_line_with(format, node, json::HOP_DROP_CLASS, Some(&text), Some(hop))
}

fn marker_line_with(
    format: Format,
    node: &str,
    class: &str,
    reason: Option<&str>,
    hop_drop: Option<json::HopDrop<'_>>,
) -> String {
    let now = chrono::Local::now();
    let (text_label, level) = match class {
        json::STARTED_CLASS => (label::STARTED, Level::Info),
        json::STOPPED_CLASS => (label::STOPPED, Level::Info),
        json::HOP_DROP_CLASS => (label::HOP_DROP_UNMATCHED, Level::Warning),
        _ => (label::STATUSES_OFF, Level::Warning),
    };
    match format {
        Format::Text => {
            let mut s = format!(
                "[{}] [{}] {text_label}",
                now.format(imds_snoop_line::text::TIME_FORMAT),
                level.as_str()
            );
            if let Some(r) = reason {
                s.push_str(" (");
                s.push_str(&crate::escape::escape_controls(r));
                s.push(')');
            }
            s
        }
        Format::Json => serde_json::to_string(&json::MarkerLine {
            class: class.into(),
            hop_drop,
            level: level.as_str().into(),
            node: Some(node.into()),
            reason: reason.map(Into::into),
            schema: json::SCHEMA_VERSION,
            timestamp: Some(
                now.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
                    .into(),
            ),
        })
        .unwrap_or_default(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::parse::{DaemonEvent, Line, read_line};

    /// The markers as the daemon writes them, read back by `imds-snoop report`.
    #[test]
    fn markers_read_back() {
        let why = "this process lacks CAP_NET_ADMIN (CapEff 000000c000000004), which \
                   attaching a cgroup_skb program needs";
        for format in [Format::Text, Format::Json] {
            let event = |class: &str, reason: Option<&str>| {
                let line = marker_line(format, "node-1", class, reason);
                match read_line(&line).line {
                    Some(Line::Daemon {
                        event, time, node, ..
                    }) => {
                        assert!(time.is_some(), "{line}");
                        assert_eq!(
                            node.as_deref(),
                            (format == Format::Json).then_some("node-1"),
                            "{line}"
                        );
                        event
                    }
                    other => panic!("{line}: {other:?}"),
                }
            };
            assert_eq!(
                event(json::STARTED_CLASS, Some("version 0.1.0, attached fentry")),
                DaemonEvent::Start
            );
            assert_eq!(event(json::STOPPED_CLASS, None), DaemonEvent::Stop);
            assert_eq!(
                event(json::STATUSES_OFF_CLASS, Some(why)),
                DaemonEvent::StatusesOff(why.into())
            );
        }
        let text = marker_line(Format::Text, "n", json::STATUSES_OFF_CLASS, Some(why));
        assert!(
            text.ends_with(&format!(
                "] [WARNING] imds-snoop statuses not traced from now ({why})"
            )),
            "{text}"
        );
    }

    #[test]
    fn host_netns_from_a_file() {
        use std::os::unix::fs::MetadataExt as _;
        let (inode, path) = host_netns(Some("/proc/self/ns/net".as_ref())).unwrap();
        assert_eq!(path, "/proc/self/ns/net");
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(u64::from(inode), own);
        assert_eq!(host_netns(Some("/nonexistent/net".as_ref())), None);
        // The link text, as `readlink /proc/1/ns/net > FILE` writes it.
        let file = std::env::temp_dir().join(format!("imds-host-netns-{}", std::process::id()));
        std::fs::write(&file, "net:[4026531840]\n").unwrap();
        assert_eq!(host_netns(Some(&file)).unwrap().0, 4_026_531_840);
        std::fs::remove_file(&file).unwrap();
    }
}
