//! Prometheus metrics (`--metrics-addr`): who calls IMDS and how, what was lost, and how long
//! a call takes to get through the daemon.
//!
//! The exposition format is `prometheus-client`'s (the Prometheus project's own Rust client;
//! it escapes label values and writes OpenMetrics text, which Prometheus scrapes natively).
//! The HTTP server is hyper 1 with hyper-util's tokio glue, served on the daemon's existing
//! tokio runtime: one GET handler needs no router or middleware (axum would add tower and
//! its layers for nothing), and hyper is already the base of every larger Rust HTTP stack.
//!
//! All updates come from the event loop (one writer); a scrape only reads.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use crate::{
    attribution::Origin,
    capture::AttachMode,
    escape::escape_controls,
    losses::{DegradedEvents, Losses},
    record::{Outcome, Record},
};

/// Distinct caller label sets kept before new ones are counted under [`OVERFLOW`] (one
/// overflow set per class comes on top). A node
/// runs at most a few hundred pods, each with a handful of commands calling IMDS; this
/// leaves room for that and bounds what a caller that keeps renaming itself can cost.
pub(crate) const MAX_REQUEST_LABEL_SETS: usize = 1000;
/// The namespace, workload, container, image and comm of label sets past the bound (not a
/// valid pod or namespace name, so it cannot be confused with a real one).
pub(crate) const OVERFLOW: &str = "_overflow";
/// Scrapes served at once; more connections are closed at once.
const MAX_CONNECTIONS: usize = 8;
/// A scraper that does not send its request headers within this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub(crate) enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// The labels of `imds_snoop_requests_total`. Everything that labels a request is derived
/// in [`RequestLabels::of`] and [`RequestLabels::overflow`]: a new label (the response
/// status, say) is a field here and a line in each.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// The class table's metric label ([`imds_snoop_line::ClassInfo::metric`]): `v1`,
    /// `v2`, `v2_token`, `malformed`; a token PUT left unanswered counts as `v2_token` with
    /// status `none`.
    pub class: &'static str,
    /// The response's status (`200`, `401`, ...), `none` when none came within
    /// --response-timeout (a lost token PUT response: the hop limit), empty when responses
    /// are not traced. A handful of values: kept in the overflow set too.
    pub status: String,
    /// `true`: the socket is in the node's network namespace (`net:host`); `false`: in
    /// another (`net:other`, one routing hop away: hop limit 1 cuts its token responses
    /// off); empty when the daemon does not know the node's namespace. Kept in the overflow
    /// set too.
    pub host_network: &'static str,
    /// Empty for a caller outside a pod (a host process, or a container without a pod).
    pub namespace: String,
    /// The workload guessed from the pod's name (`web` for `web-7d9f8b6c5-x2k4p`). No `pod`
    /// label: a CronJob makes a new pod name every run, which would fill the label-set
    /// bound with one-off names and push every later caller into the overflow set; the
    /// workload stays the same across runs and rollouts.
    pub workload: String,
    pub container: String,
    /// The container's image (`pod.container_image`), empty when unknown.
    pub image: String,
    pub comm: String,
}

impl RequestLabels {
    pub(crate) fn of(record: &Record) -> Self {
        let (namespace, workload, container, image) = match &record.origin {
            Origin::Container(c) => match &c.pod {
                Some(p) => (
                    escape_controls(&p.namespace),
                    escape_controls(p.workload()),
                    p.container
                        .as_deref()
                        .map(escape_controls)
                        .unwrap_or_default(),
                    p.image.as_deref().map(escape_controls).unwrap_or_default(),
                ),
                None => Default::default(),
            },
            Origin::Host { .. } | Origin::Unknown => Default::default(),
        };
        Self {
            class: record.class().metric(),
            status: match record.outcome {
                Outcome::Status(code) => code.to_string(),
                Outcome::NoResponse => "none".into(),
                Outcome::Dropped(_) => imds_snoop_line::label::HOP_DROPPED.into(),
                Outcome::Reset | Outcome::Closed => {
                    record.connection_end().unwrap_or_default().into()
                }
                Outcome::Unknown => String::new(),
            },
            host_network: match record.host_network {
                Some(true) => "true",
                Some(false) => "false",
                None => "",
            },
            namespace,
            workload,
            container,
            image,
            // As the log prints it: a comm is whatever the caller set (prctl), newlines too.
            comm: escape_controls(&record.caller.comm),
        }
    }

    /// A pod's label set past the bound: its namespace, workload, container and image kept
    /// (from root-owned runtime state, bounded by the node's pods), only the comm (the
    /// caller's to choose) counted as [`OVERFLOW`]. `None` for a caller outside a pod.
    pub(crate) fn pod_overflow(&self) -> Option<Self> {
        (!self.workload.is_empty()).then(|| Self {
            comm: OVERFLOW.into(),
            ..self.clone()
        })
    }

    /// The one label set (per class, status and host_network) that counts requests past
    /// the bound: those are kept, so v1 totals and hop-limit sums stay exact however many
    /// callers there are.
    pub(crate) fn overflow(&self) -> Self {
        Self {
            class: self.class,
            status: self.status.clone(),
            host_network: self.host_network,
            namespace: OVERFLOW.into(),
            workload: OVERFLOW.into(),
            container: OVERFLOW.into(),
            image: OVERFLOW.into(),
            comm: OVERFLOW.into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: String,
}

/// The daemon's metrics. [`Metrics::disabled`] (no `--metrics-addr`) makes every update a
/// no-op, so the event loop calls them unconditionally.
pub(crate) struct Metrics(Option<Enabled>);

struct Enabled {
    registry: Arc<Registry>,
    max_label_sets: usize,
    /// Caller label sets in `requests`, overflow sets not included.
    label_sets: AtomicUsize,
    /// Pods' overflow sets (comm `_overflow`) in `requests`, bounded by `max_label_sets` too.
    pod_overflow_sets: AtomicUsize,
    requests: Family<RequestLabels, Counter>,
    kernel_drops: Family<ReasonLabels, Counter>,
    writer_queue_drops: Counter,
    lines_lost: Counter,
    lines_written: Counter,
    untraced_responses: Counter,
    processing: Histogram,
    attached: Family<ModeLabels, Gauge>,
    statuses_traced: Gauge,
    hop_drops: Family<ReasonLabels, Counter>,
    window_start: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    pub(crate) fn disabled() -> Self {
        Self(None)
    }

    pub(crate) fn new() -> Self {
        Self::with_limit(MAX_REQUEST_LABEL_SETS)
    }

    pub(crate) fn with_limit(max_label_sets: usize) -> Self {
        let mut registry = Registry::with_prefix("imds_snoop");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            format!(
                "IMDS requests seen, by class (v1, v2, v2_token, malformed), response status, \
                 network namespace (host_network) and caller (namespace, workload guessed from \
                 the pod name, container, image, comm). At most {max_label_sets} label sets; \
                 requests of later callers are counted with comm \"{OVERFLOW}\" (in a pod: its \
                 namespace, workload, container and image kept, for up to {max_label_sets} \
                 more), else namespace, workload, container, image and comm \"{OVERFLOW}\""
            ),
            requests.clone(),
        );
        let kernel_drops = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "kernel_drops",
            "Kernel events lost before reaching the daemon, by reason: ring_full and \
             no_scratch (IMDS calls missing from the log; raise --ring-bytes), process_event \
             (exec/fork/exit: argv may be missing) and response (a call's status)",
            kernel_drops.clone(),
        );
        let writer_queue_drops = Counter::default();
        registry.register(
            "writer_queue_drops",
            "Trace lines dropped because the log writer's queue was full",
            writer_queue_drops.clone(),
        );
        let lines_lost = Counter::default();
        registry.register(
            "log_lines_lost",
            "Trace lines that could not be written to the log file (disk full, ...)",
            lines_lost.clone(),
        );
        let lines_written = Counter::default();
        registry.register(
            "log_lines_written",
            "Lines written to the trace log (requests and loss reports), all rotations",
            lines_written.clone(),
        );
        let untraced_responses = Counter::default();
        registry.register(
            "untraced_responses",
            "Connections on which IMDS answered a call that no send hook traced (MPTCP, TCP \
             Fast Open with the tracepoint attach, a send the hooks miss): one per connection, \
             each an `IMDS answered a call it did not see traced` line in the trace log",
            untraced_responses.clone(),
        );
        // 10 us .. ~80 ms: the pipeline takes microseconds; the top buckets catch a stall
        // (a slow /proc read).
        let processing = Histogram::new(exponential_buckets(1e-5, 2.0, 14));
        registry.register_with_unit(
            "processing",
            "Time from reading a request's last send off the ring buffer to its line being \
             queued for the writer: decode, reassembly, process and pod lookup, formatting. \
             Time spent waiting (for more sends of a request, for a response) is not included",
            Unit::Seconds,
            processing.clone(),
        );
        let attached = Family::<ModeLabels, Gauge>::default();
        registry.register(
            "attached",
            "1 while the kernel program is attached, labelled by the attach mode in use",
            attached.clone(),
        );
        let statuses_traced = Gauge::default();
        registry.register(
            "statuses_traced",
            "1 while response statuses are traced (the cgroup_skb program is attached and sees \
             replies); 0 when they are not: lines then have no status and no token PUT can be \
             seen unanswered (the trace log says why, in a `statuses not traced` line)",
            statuses_traced.clone(),
        );
        let hop_drops = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "hop_limit_drops",
            "IMDS replies seen dropped in the node's forwarding path with their TTL run out \
             (the drop hook, tp_btf/kfree_skb), by what they joined: request (a token PUT \
             logged as dropped), none (no traced request: its own line), repeat (the same \
             connection again) and deduplicated (retransmissions counted in the kernel)",
            hop_drops.clone(),
        );
        let window_start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "window_start",
            "Unix time at which this daemon process started tracing: its counters cover \
             time() - this (a restart starts them again from 0)",
            Unit::Seconds,
            window_start.clone(),
        );
        Self(Some(Enabled {
            registry: Arc::new(registry),
            max_label_sets,
            label_sets: AtomicUsize::new(0),
            pod_overflow_sets: AtomicUsize::new(0),
            requests,
            kernel_drops,
            writer_queue_drops,
            lines_lost,
            lines_written,
            untraced_responses,
            processing,
            attached,
            statuses_traced,
            hop_drops,
            window_start,
        }))
    }

    /// Counts one request (its line was just queued) and how long it took to get there.
    pub(crate) fn observe(&self, record: &Record, processing: Duration) {
        let Some(m) = &self.0 else { return };
        let labels = RequestLabels::of(record);
        if let Some(counter) = m.requests.get(&labels) {
            counter.inc();
        } else if m.label_sets.load(Ordering::Relaxed) < m.max_label_sets {
            // One writer (the event loop), so checking then adding cannot overshoot.
            m.label_sets.fetch_add(1, Ordering::Relaxed);
            m.requests.get_or_create(&labels).inc();
        } else if let Some(pod) = labels.pod_overflow().filter(|pod| {
            // A local user renaming itself (prctl) fills the bound with host comms: pods stay
            // named, with their comms counted together (issue 16's attack round).
            m.requests.get(pod).is_some()
                || m.pod_overflow_sets.fetch_add(1, Ordering::Relaxed) < m.max_label_sets
        }) {
            m.requests.get_or_create(&pod).inc();
        } else {
            m.requests.get_or_create(&labels.overflow()).inc();
        }
        m.processing.observe(processing.as_secs_f64());
    }

    /// Sets the loss counters and lines written to the daemon's running totals (the ones
    /// `report_losses` logs).
    pub(crate) fn set_totals(
        &self,
        losses: &Losses,
        degraded: &DegradedEvents,
        lines_written: u64,
    ) {
        let Some(m) = &self.0 else { return };
        let set = |c: &Counter, v: u64| c.inner().store(v, Ordering::Relaxed);
        set(
            &m.kernel_drops.get_or_create(&ReasonLabels {
                reason: "ring_full",
            }),
            losses.ring_full,
        );
        set(
            &m.kernel_drops.get_or_create(&ReasonLabels {
                reason: "no_scratch",
            }),
            losses.no_scratch,
        );
        set(
            &m.kernel_drops.get_or_create(&ReasonLabels {
                reason: "process_event",
            }),
            degraded.process_events,
        );
        set(
            &m.kernel_drops
                .get_or_create(&ReasonLabels { reason: "response" }),
            degraded.responses,
        );
        set(&m.writer_queue_drops, losses.writer_queue_full);
        set(&m.lines_lost, losses.log_write_failed);
        set(&m.lines_written, lines_written);
    }

    /// The hop-limit drop totals: joined to a request, matching none, repeats, and
    /// retransmissions deduplicated in the kernel.
    pub(crate) fn set_hop_drops(&self, totals: [u64; 4]) {
        let Some(m) = &self.0 else { return };
        for (reason, v) in ["request", "none", "repeat", "deduplicated"]
            .into_iter()
            .zip(totals)
        {
            m.hop_drops
                .get_or_create(&ReasonLabels { reason })
                .inner()
                .store(v, Ordering::Relaxed);
        }
    }

    /// Counts one answer to an untraced call (its line was just queued).
    pub(crate) fn observe_untraced(&self) {
        let Some(m) = &self.0 else { return };
        m.untraced_responses.inc();
    }

    pub(crate) fn set_attached(&self, mode: AttachMode, attached: bool) {
        let Some(m) = &self.0 else { return };
        m.attached
            .get_or_create(&ModeLabels {
                // The flag's value (`tracepoint`), not the display text with the hook.
                mode: clap::ValueEnum::to_possible_value(&mode)
                    .map_or_else(|| mode.to_string(), |v| v.get_name().to_owned()),
            })
            .set(attached.into());
    }

    /// When tracing started (`imds_snoop_window_start_seconds`): the start of the window
    /// the counters cover.
    pub(crate) fn set_window_start(&self, at: std::time::SystemTime) {
        let Some(m) = &self.0 else { return };
        let secs = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.window_start.set(secs);
    }

    /// Whether response statuses are traced (`imds_snoop_statuses_traced`).
    pub(crate) fn set_statuses_traced(&self, traced: bool) {
        let Some(m) = &self.0 else { return };
        m.statuses_traced.set(traced.into());
    }

    /// The exposition text, as served at `/metrics`.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the server encodes its registry")
    )]
    pub(crate) fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        if let Some(m) = &self.0 {
            text::encode(&mut out, &m.registry)?;
        }
        Ok(out)
    }

    fn registry(&self) -> Option<Arc<Registry>> {
        self.0.as_ref().map(|m| Arc::clone(&m.registry))
    }
}

/// Binds the metrics port: done before attaching, so a taken port fails start-up.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` on `listener` until the runtime stops. A disabled `metrics` serves
/// nothing.
pub(crate) fn serve(listener: TcpListener, metrics: &Metrics) {
    let Some(registry) = metrics.registry() else {
        return;
    };
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and the like: wait rather than spin.
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                debug!(%peer, "metrics: too many connections, closing");
                continue;
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let registry = Arc::clone(&registry);
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &registry)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    debug!(%peer, "metrics: connection ended: {e}");
                }
                drop(slot);
            });
        }
    });
}

fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "metrics are at /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = reply(StatusCode::METHOD_NOT_ALLOWED, String::new());
        resp.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let mut body = String::new();
    match text::encode(&mut body, registry) {
        Ok(()) => {
            let mut resp = reply(StatusCode::OK, body);
            resp.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(OPENMETRICS),
            );
            resp
        }
        Err(e) => {
            warn!("metrics: {}", MetricsError::from(e));
            reply(StatusCode::INTERNAL_SERVER_ERROR, String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use chrono::Local;

    use super::*;
    use crate::{
        attribution::{Container, Pod, Proc},
        http::{Class, Request as HttpRequest},
    };

    fn record(class: Class, comm: &str, pod: Option<(&str, &str, &str)>) -> Record {
        let mut request = HttpRequest::unreadable();
        request.class = class;
        Record {
            time: Local::now(),
            request,
            caller: Proc {
                pid: 42,
                comm: comm.into(),
                argv: None,
            },
            ancestors: Vec::new(),
            uid: 0,
            ns_pid: None,
            origin: match pod {
                Some((namespace, name, container)) => Origin::Container(Container {
                    id: "0123456789abcdef".into(),
                    runtime: "containerd",
                    pod_uid: None,
                    pod: Some(Pod {
                        namespace: namespace.into(),
                        name: name.into(),
                        container: Some(container.into()),
                        image: Some("docker.io/library/app:1".into()),
                    }),
                }),
                None => Origin::Host { unit: None },
            },
            cgroup_id: 1,
            netns: 1,
            host_network: None,
            dst: (IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80),
            bytes: 0,
            unreadable: false,
            outcome: Outcome::Status(200),
        }
    }

    /// The value of the sample line that starts with `series` (name and labels, exactly).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    const US: Duration = Duration::from_micros(1);

    /// Issue 16's attack round: a local user renaming itself (prctl) 1,500 times filled the
    /// bound, and every pod's later calls were counted as `_overflow`: the dashboard's "which
    /// pods use IMDSv1" lost them. A pod keeps its namespace, pod and container then.
    #[test]
    fn a_renaming_host_caller_cannot_hide_pods_in_the_overflow() {
        let m = Metrics::with_limit(2);
        for comm in ["a", "b", "c", "d"] {
            m.observe(&record(Class::V1, comm, None), US);
        }
        m.observe(
            &record(Class::V1, "wget", Some(("shop", "web-0", "app"))),
            US,
        );
        m.observe(
            &record(Class::V1, "curl", Some(("shop", "web-1", "app"))),
            US,
        );
        m.observe(
            &record(Class::V1, "wget", Some(("shop", "api-0", "app"))),
            US,
        );
        // Past the pods' own bound too: the full overflow set.
        m.observe(
            &record(Class::V1, "wget", Some(("shop", "db-0", "app"))),
            US,
        );
        let text = m.encode().unwrap();
        let o = OVERFLOW;
        let series = |ns: &str, workload: &str, container: &str, image: &str, comm: &str| {
            sample(
                &text,
                &format!(
                    "imds_snoop_requests_total{{class=\"v1\",status=\"200\",host_network=\"\",\
                     namespace=\"{ns}\",workload=\"{workload}\",container=\"{container}\",\
                     image=\"{image}\",comm=\"{comm}\"}}"
                ),
            )
        };
        let image = "docker.io/library/app:1";
        assert_eq!(series("shop", "web", "app", image, o), Some(2.0), "{text}");
        assert_eq!(series("shop", "api", "app", image, o), Some(1.0), "{text}");
        assert_eq!(series(o, o, o, o, o), Some(3.0), "c, d and db: {text}");
        assert_eq!(series("shop", "db", "app", image, o), None, "{text}");
    }

    #[test]
    fn label_sets_past_the_bound_count_under_overflow_keeping_the_class() {
        let m = Metrics::with_limit(2);
        m.observe(&record(Class::V1, "curl", None), US);
        m.observe(
            &record(Class::V2, "aws", Some(("prod", "web-1", "app"))),
            US,
        );
        // Two sets admitted: new callers go to the overflow set of their class...
        m.observe(&record(Class::V1, "wget", None), US);
        m.observe(&record(Class::V1, "python3", None), US);
        m.observe(&record(Class::V2Token, "python3", None), US);
        // ... while admitted ones keep counting under their own labels.
        m.observe(&record(Class::V1, "curl", None), US);
        let text = m.encode().unwrap();
        let series = |class: &str, ns: &str, workload: &str, container: &str, comm: &str| {
            let image = if ns == "prod" {
                "docker.io/library/app:1"
            } else {
                ns
            };
            sample(
                &text,
                &format!(
                    "imds_snoop_requests_total{{class=\"{class}\",status=\"200\",host_network=\"\",\
                     namespace=\"{ns}\",workload=\"{workload}\",container=\"{container}\",\
                     image=\"{image}\",comm=\"{comm}\"}}"
                ),
            )
        };
        assert_eq!(series("v1", "", "", "", "curl"), Some(2.0), "{text}");
        assert_eq!(
            series("v2", "prod", "web", "app", "aws"),
            Some(1.0),
            "{text}"
        );
        let o = OVERFLOW;
        assert_eq!(series("v1", o, o, o, o), Some(2.0), "{text}");
        assert_eq!(series("v2_token", o, o, o, o), Some(1.0), "{text}");
        assert_eq!(series("v1", "", "", "", "wget"), None, "{text}");
        assert_eq!(
            text.matches("imds_snoop_requests_total{").count(),
            4,
            "{text}"
        );
        assert!(
            text.contains("At most 2 label sets") && text.contains(OVERFLOW),
            "HELP must state the bound: {text}"
        );
    }

    #[test]
    fn encodes_openmetrics_with_escaped_labels_totals_and_latency() {
        let m = Metrics::with_limit(10);
        // A caller controls its comm: quotes, backslashes and newlines must not break lines.
        m.observe(
            &record(Class::Malformed, "a\"b\\c\nd", None),
            Duration::from_micros(30),
        );
        m.observe(&record(Class::V1, "curl", None), Duration::from_millis(3));
        m.set_totals(
            &Losses {
                ring_full: 5,
                no_scratch: 0,
                writer_queue_full: 7,
                log_write_failed: 2,
            },
            &DegradedEvents {
                process_events: 3,
                responses: 1,
            },
            40,
        );
        m.set_attached(AttachMode::Tracepoint, true);
        m.set_statuses_traced(true);
        m.set_window_start(std::time::UNIX_EPOCH + Duration::from_millis(1_764_000_000_500));
        m.observe_untraced();
        let text = m.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"imds_snoop_requests_total{class="malformed",status="200",host_network="",namespace="",workload="",container="",image="",comm="a\"b\\c\\x0ad"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert!(text.lines().all(|l| !l.starts_with('d')), "{text}");
        for (series, want) in [
            (r#"imds_snoop_kernel_drops_total{reason="ring_full"}"#, 5.0),
            (r#"imds_snoop_kernel_drops_total{reason="no_scratch"}"#, 0.0),
            (
                r#"imds_snoop_kernel_drops_total{reason="process_event"}"#,
                3.0,
            ),
            (r#"imds_snoop_kernel_drops_total{reason="response"}"#, 1.0),
            ("imds_snoop_writer_queue_drops_total", 7.0),
            ("imds_snoop_log_lines_lost_total", 2.0),
            ("imds_snoop_log_lines_written_total", 40.0),
            ("imds_snoop_untraced_responses_total", 1.0),
            (r#"imds_snoop_attached{mode="tracepoint"}"#, 1.0),
            ("imds_snoop_statuses_traced", 1.0),
            ("imds_snoop_window_start_seconds", 1_764_000_000.5),
            ("imds_snoop_processing_seconds_count", 2.0),
            (r#"imds_snoop_processing_seconds_bucket{le="0.00004"}"#, 1.0),
            (r#"imds_snoop_processing_seconds_bucket{le="+Inf"}"#, 2.0),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
        let sum = sample(&text, "imds_snoop_processing_seconds_sum").unwrap();
        assert!((sum - 0.00303).abs() < 1e-9, "{text}");
        assert!(
            text.contains("# TYPE imds_snoop_requests counter"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT imds_snoop_processing_seconds seconds"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE imds_snoop_window_start_seconds gauge"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Totals are the daemon's running totals, set, not added.
        m.set_totals(&Losses::default(), &DegradedEvents::default(), 41);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, "imds_snoop_log_lines_written_total"),
            Some(41.0)
        );
    }

    #[test]
    fn pod_labels_come_from_the_pod_only() {
        let r = record(Class::V1, "curl", Some(("prod", "web-1", "app")));
        let l = RequestLabels::of(&r);
        assert_eq!(
            (
                l.class,
                &l.namespace[..],
                &l.workload[..],
                &l.container[..],
                &l.image[..]
            ),
            ("v1", "prod", "web", "app", "docker.io/library/app:1")
        );
        assert_eq!(l.host_network, "");
        let mut r = record(Class::V2, "curl", Some(("prod", "web-1", "app")));
        r.host_network = Some(false);
        assert_eq!(RequestLabels::of(&r).host_network, "false");
        r.host_network = Some(true);
        assert_eq!(RequestLabels::of(&r).host_network, "true");
        // A container with no pod (plain containerd, docker): no pod labels, and no
        // container id either (ids would make a label set per container restart).
        let mut r = record(Class::V2, "curl", Some(("prod", "web-1", "app")));
        if let Origin::Container(c) = &mut r.origin {
            c.pod = None;
        }
        let l = RequestLabels::of(&r);
        assert_eq!(
            (
                &l.namespace[..],
                &l.workload[..],
                &l.container[..],
                &l.image[..],
                &l.comm[..]
            ),
            ("", "", "", "", "curl")
        );
    }

    /// A CronJob's pods (a new name each run) are one label set, not one per run: the
    /// bound is spent on workloads, not on pod names.
    #[test]
    fn cronjob_pods_share_one_label_set() {
        let m = Metrics::with_limit(3);
        for run in 0..50 {
            let pod = format!("backup-{}-x2k4p", 29_412_345 + run);
            m.observe(&record(Class::V1, "curl", Some(("ops", &pod, "job"))), US);
        }
        let text = m.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"imds_snoop_requests_total{class="v1",status="200",host_network="",namespace="ops",workload="backup",container="job",image="docker.io/library/app:1",comm="curl"}"#
            ),
            Some(50.0),
            "{text}"
        );
        assert!(
            !text.contains(&format!("namespace=\"{OVERFLOW}\"")),
            "{text}"
        );
        assert_eq!(
            text.matches("imds_snoop_requests_total{").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn disabled_metrics_record_nothing() {
        let m = Metrics::disabled();
        m.observe(&record(Class::V1, "curl", None), US);
        m.set_totals(&Losses::default(), &DegradedEvents::default(), 1);
        assert_eq!(m.encode().unwrap(), "");
    }

    /// A token PUT left unanswered (the hop-limit warning's line) is counted as a token
    /// PUT whose status is `none`: the metric's classes stay the four request kinds.
    #[test]
    fn an_unanswered_token_put_counts_as_v2_token() {
        let mut r = record(Class::V2Token, "curl", None);
        r.outcome = Outcome::NoResponse;
        assert_eq!(r.class(), Class::V2TokenNoResponse);
        let labels = RequestLabels::of(&r);
        assert_eq!((labels.class, labels.status.as_str()), ("v2_token", "none"));
    }
}
