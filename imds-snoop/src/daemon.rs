//! The running tracer: opens the log (and the metrics port), attaches, then moves each
//! ring-buffer record through decode -> http -> process/container -> outcome (a request
//! waits for its response's status) -> output until SIGINT/SIGTERM.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use imds_snoop_common::{DROP_NO_SCRATCH, DROP_PROCESS_EVENT, DROP_RESPONSE, DROP_RINGBUF_FULL};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use crate::{
    attribution::Attribution,
    capture::{Capture, CaptureOptions},
    cli::{Responses, RunArgs},
    clock::BootClock,
    decode::{self, Event, Send},
    http::{Reassembler, Request},
    losses::{DegradedEvents, Losses, Reported},
    metrics::{self, Metrics},
    outcome::Outcomes,
    output::{
        Format, LineFormatter,
        writer::{self, LineSender, Lines, WriterConfig},
    },
    readiness::{ReadyFile, notify_ready},
    record::{Outcome, Record},
};

/// A request whose headers have not ended after this long is logged as it is (truncated).
const REASSEMBLY_TTL: Duration = Duration::from_secs(2);
/// Bytes of one request kept while waiting for the end of its headers.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Lines queued for the writer thread before new ones are counted as dropped: 0.8 s of a
/// 20,000/s burst. The queue's slots are allocated up front (32 bytes each), so this is
/// also resident memory: 65,536 cost 2 MiB of the 25 MiB budget.
const WRITER_QUEUE: usize = 16_384;
/// Requests waiting for their response (each a few hundred bytes); more are logged at once.
const MAX_WAITING_FOR_RESPONSE: usize = 8192;
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
        empty: args.empty_program,
        targets: &targets,
        payload_bytes: args.payload_bytes,
        ring_bytes: args.ring_bytes,
        btf_path: &args.btf,
    })?;
    // The outcome of each call. Not fatal: without it lines are written at once, as before.
    // With --empty-program an empty program takes the same hook (the benchmark floor), and
    // nothing waits for responses that it never reports.
    let responses = args.responses == Responses::Auto && {
        match capture.attach_responses(&args.cgroup_root) {
            Ok(cgroup) => {
                info!(
                    "response status: cgroup_skb/ingress on {}",
                    cgroup.display()
                );
                !args.empty_program
            }
            Err(e) => {
                warn!("{e}: logging calls without their response status");
                false
            }
        }
    };
    let ring = capture.take_events()?;
    metrics.set_attached(capture.attached, true);
    // SAFETY: the AsyncFd owns the RingBuf, so the fd stays open for as long as it is
    // registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let target_list: Vec<String> = targets
        .iter()
        .map(|&(ip, port)| std::net::SocketAddr::new(ip, port).to_string())
        .collect();
    info!(
        "attached {}{}{}; tracing {}; writing {}",
        capture.attached,
        if responses {
            " and cgroup_skb/ingress (responses)"
        } else {
            ""
        },
        if args.empty_program {
            " [empty benchmark program: traces nothing]"
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

    let coalesce = (args.ring_bytes >= COALESCE_MIN_RING).then_some(RING_COALESCE);
    let mut pipeline = Pipeline::new(&args, responses, metrics);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut losses = Reported::default();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                pipeline.drain_ring(guard.get_inner_mut(), &writer);
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
                pipeline.expire(Instant::now(), &writer);
                report_losses(&capture, &writer, &mut losses, pipeline.format, &pipeline.node, &pipeline.metrics);
            }
        }
    }

    // Whatever reached the ring before the signal is still logged.
    pipeline.drain_ring(ring.get_mut(), &writer);
    pipeline.finish(&writer);
    report_losses(
        &capture,
        &writer,
        &mut losses,
        pipeline.format,
        &pipeline.node,
        &pipeline.metrics,
    );
    drop(ring);
    drop(capture); // detaches
    let stats = writer.stats().clone();
    writer.close();
    info!(
        lines = stats.written.load(Ordering::Relaxed),
        dropped_kernel = losses.losses.ring_full + losses.losses.no_scratch,
        lost_process_events = losses.degraded.process_events,
        lost_responses = losses.degraded.responses,
        dropped_backpressure = stats.dropped_backpressure.load(Ordering::Relaxed),
        lost_io = stats.lost_io.load(Ordering::Relaxed),
        decode_errors = pipeline.decode_errors,
        responses_unmatched = pipeline.outcomes.unmatched,
        logged_without_waiting = pipeline.outcomes.overflowed,
        "detached, log flushed"
    );
    Ok(())
}

/// Reads the loss totals (kernel drop counters, writer stats) into the metrics, and writes
/// a line for each kind that grew since the last call (see [`Reported::update`]).
fn report_losses(
    capture: &Capture,
    writer: &LineSender,
    seen: &mut Reported,
    format: Format,
    node: &str,
    metrics: &Metrics,
) {
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
        responses: drops[DROP_RESPONSE as usize],
    };
    metrics.set_totals(&now, &degraded, stats.written.load(Ordering::Relaxed));
    for line in seen.update(now, degraded, format, node) {
        writer.send(line);
    }
}

/// The userspace stages, in order. Owns the per-socket reassembly state.
struct Pipeline {
    format: Format,
    node: String,
    reassembler: Reassembler<Send>,
    attribution: Attribution,
    outcomes: Outcomes,
    clock: BootClock,
    decode_errors: u64,
    metrics: Metrics,
    /// When the ring-buffer record (or expiry tick) being processed was read: the start of
    /// the `processing` latency. A request emitted later (expired, or after waiting for
    /// something) counts from the read that let it out, so waiting is never measured.
    read_at: Instant,
    /// Lines of the current drain, handed to the writer together at its end: the writer
    /// thread then wakes once and writes them in one go, instead of racing us line by line.
    pending: Lines,
    formatter: LineFormatter,
}

impl Pipeline {
    fn new(args: &RunArgs, responses: bool, metrics: Metrics) -> Self {
        let node = args.node_name.clone().unwrap_or_else(hostname);
        let formatter = LineFormatter::new(args.format, &node);
        Self {
            outcomes: Outcomes::new(
                responses.then_some(args.response_timeout),
                MAX_WAITING_FOR_RESPONSE,
            ),
            format: args.format,
            node,
            reassembler: Reassembler::new(MAX_REQUEST_BYTES, REASSEMBLY_TTL),
            attribution: Attribution::new(args.container_paths()),
            clock: BootClock::now(),
            decode_errors: 0,
            metrics,
            read_at: Instant::now(),
            pending: Lines::default(),
            formatter,
        }
    }

    fn drain_ring(&mut self, ring: &mut RingBuf<MapData>, writer: &LineSender) {
        let now = Instant::now();
        while let Some(item) = ring.next() {
            self.read_at = Instant::now();
            match decode::decode(&item) {
                Ok(Event::Send(send)) => self.on_send(send, now),
                Ok(Event::Exec(exec)) => self.attribution.on_exec(exec, now),
                Ok(Event::Exit { tgid }) => self.attribution.on_exit(tgid, now),
                Ok(Event::Response(response)) => {
                    if let Some(record) = self.outcomes.response(&response) {
                        self.write(&record);
                    }
                }
                Err(e) => {
                    self.decode_errors += 1;
                    if self.decode_errors.is_power_of_two() {
                        warn!(count = self.decode_errors, "undecodable kernel event: {e}");
                    }
                }
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

    fn on_send(&mut self, mut send: Send, now: Instant) {
        if send.payload.is_empty() && send.unreadable {
            // Still a call to IMDS by someone: log it, with what the kernel knows.
            let request = Request::unreadable();
            self.emit(send, request);
            return;
        }
        let payload = std::mem::take(&mut send.payload);
        let key = send.sock_id;
        let truncated = send.truncated;
        for (ctx, request) in self.reassembler.push(key, send, &payload, truncated, now) {
            self.emit(ctx, request);
        }
    }

    fn expire(&mut self, now: Instant, writer: &LineSender) {
        self.clock = BootClock::now();
        self.read_at = now;
        self.attribution.sweep(now);
        for (ctx, request) in self.reassembler.expire(now) {
            self.emit(ctx, request);
        }
        for record in self.outcomes.expire(now) {
            self.write(&record);
        }
        if self.outcomes.blind() {
            warn!(
                "the response program saw no reply to any IMDS call so far (cgroup v1 \
                 net_cls/net_prio in use?): statuses and hop-limit warnings are unreliable; \
                 consider --responses off"
            );
        }
        self.flush(writer);
    }

    fn finish(&mut self, writer: &LineSender) {
        let now = Instant::now();
        self.read_at = now;
        for (ctx, request) in self.reassembler.drain() {
            self.emit(ctx, request);
        }
        // Waits that are over count as unanswered; the rest were cut short by the stop.
        for record in self.outcomes.expire(now) {
            self.write(&record);
        }
        for record in self.outcomes.drain() {
            self.write(&record);
        }
        self.flush(writer);
    }

    /// Queues a finished record's line (for [`Self::flush`]) and counts it in the metrics.
    fn write(&mut self, record: &Record) {
        self.pending
            .push_with(|out| self.formatter.push_line(record, out));
        self.metrics.observe(record, self.read_at.elapsed());
    }

    fn emit(&mut self, send: Send, request: Request) {
        // One clock read serves attribution's caches and the response wait. Not the drain's
        // `now`: under sustained load a drain lasts long enough for it to go stale.
        let now = Instant::now();
        let who = self.attribution.attribute(&send, now);
        let record = Record {
            time: self.clock.wall(send.ts_ns),
            request,
            caller: who.caller,
            ancestors: who.ancestors,
            uid: send.uid,
            ns_pid: (send.ns_tgid != 0 && send.ns_tgid != send.tgid).then_some(send.ns_tgid),
            origin: who.origin,
            cgroup_id: send.cgroup_id,
            netns: send.netns,
            dst: send.dst,
            bytes: send.size,
            unreadable: send.unreadable,
            outcome: Outcome::Unknown,
        };
        // Attributed now (the caller may exit), written once its response is in.
        if let Some(record) = self.outcomes.request((send.src, send.dst), record, now) {
            self.write(&record);
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}
