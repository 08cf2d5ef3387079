//! `cargo xtask bench`: what imds-snoop costs and whether it loses events (issue 8).
//!
//! Needs root. Everything that sends packets runs inside a network namespace made here
//! (`imds-bench-<pid>`: `lo` with 169.254.169.254/32 and fd00:ec2::254/128, deleted at the
//! end), driven by `tests/bench/loadgen.rs`, a std-only program this builds with plain
//! `rustc` into `target/bench/`. The daemon is the real release binary.
//!
//! 1. **Per invocation** (`invocations.rs`), for each attach mode the kernel accepts: the
//!    kernel's BPF run-time statistics of every program the daemon attaches (found from
//!    its link descriptors, `bpf.rs`: a hook added to the daemon is measured with no change
//!    here), side by side with an empty program on the same hook, median and min..max over
//!    `--reps` repetitions of a bounded non-IMDS workload on the pod topology below, then
//!    on IMDS traffic (the burst client against the fake IMDS, paced). Fails if a program
//!    never ran (no figure), never on a figure's size.
//! 2. **Pod -> node -> pod** (`pods.rs`, `wallclock.rs`): iperf3 throughput and 64-byte
//!    request/response latency between two pod namespaces routed by a node namespace,
//!    detached / empty programs / imds-snoop interleaved for `--rounds` rounds; each ratio
//!    with a 95% interval over paired rounds.
//! 3. **IMDS burst**: keep-alive and new-connection clients against the fast responder in
//!    `loadgen burst` at 169.254.169.254:80, paced to `--rate` (default 20,000/s), then
//!    unpaced, then at 2,000/s, then unpaced with a 4 KiB ring: requests sent vs lines written vs drops.
//!    **Daemon cost** during the paced burst: user+sys CPU per logged event, peak RSS.
//! 4. **Start-up**: spawn to `attached` with default flags, median of 5; binary size.
//!
//! Prints the kernel and date first, a row per measurement as it goes, and a closing
//! markdown table for the README.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use imds_snoop_line::{TextBody, TextLine};
use imds_snoop_test_support::netns::{self, Namespace};

use crate::cmd;

mod bpf;
mod invocations;
mod pods;
mod stats;
mod wallclock;

use stats::median;

/// Options of `cargo xtask bench` (its command line); `Default` is a full run.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct BenchOptions {
    /// Short run: fewer rounds and repetitions, shorter bursts (for iteration, not figures).
    #[arg(long)]
    pub quick: bool,
    /// Pod -> node -> pod rounds of detached / empty programs / imds-snoop (default 12; 3
    /// with --quick).
    #[arg(long, value_name = "N")]
    pub rounds: Option<usize>,
    /// Repetitions of the per-invocation workload, each arm (default 7; 2 with --quick).
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// Seconds per IMDS burst (default 5; 2 with --quick).
    #[arg(long, value_name = "SECONDS")]
    pub seconds: Option<f64>,
    /// Paced burst rate, requests/s (default 20000).
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,
    /// Attach mode to measure; repeatable (default fentry, kprobe, tracepoint; those the
    /// kernel refuses are reported and skipped).
    #[arg(long = "attach", value_name = "MODE")]
    pub attach: Vec<String>,
    /// Sections to run; repeatable: invocations, imds (per invocation on IMDS traffic),
    /// pods, burst, startup (default all). Only imds and burst send IMDS requests.
    #[arg(long = "only", value_name = "SECTION")]
    pub only: Vec<String>,
    /// Use the existing target/release/imds-snoop instead of building it.
    #[arg(long)]
    pub no_build: bool,
    /// Measure this imds-snoop binary instead (e.g. an older build, for a before/after);
    /// implies --no-build.
    #[arg(long, value_name = "PATH")]
    pub daemon_bin: Option<PathBuf>,
    /// Leave out the closing `cargo xtask fuzz` step.
    #[arg(long)]
    pub skip_fuzz: bool,
}

/// What one run does, from the options.
struct Plan {
    rounds: usize,
    reps: usize,
    iperf_secs: u32,
    rr_rounds: u64,
    /// Per-invocation workload: request/response rounds, processes, dropped datagrams.
    inv_rr_rounds: u64,
    inv_processes: u32,
    inv_drops: u64,
    imds_reps: usize,
    imds_secs: f64,
    burst_secs: f64,
    rate: f64,
    /// Also the unpaced and the low-rate bursts.
    unpaced_row: bool,
    small_ring_secs: f64,
    startup_runs: usize,
}

impl Plan {
    fn new(o: &BenchOptions) -> Self {
        let q = o.quick;
        Self {
            rounds: o.rounds.unwrap_or(if q { 3 } else { 12 }).max(2),
            reps: o.reps.unwrap_or(if q { 2 } else { 7 }).max(1),
            iperf_secs: if q { 1 } else { 3 },
            rr_rounds: if q { 5_000 } else { 20_000 },
            inv_rr_rounds: if q { 5_000 } else { 20_000 },
            inv_processes: if q { 50 } else { 200 },
            inv_drops: if q { 2_000 } else { 10_000 },
            imds_reps: if q { 2 } else { 5 },
            imds_secs: if q { 1.0 } else { 2.0 },
            burst_secs: o
                .seconds
                .unwrap_or(if q { 2.0 } else { 5.0 })
                .clamp(0.5, 30.0),
            rate: o.rate.unwrap_or(20_000.0).max(1.0),
            unpaced_row: !q,
            small_ring_secs: if q { 1.0 } else { 3.0 },
            startup_runs: if q { 3 } else { 5 },
        }
    }
}

/// Paced rate of the per-invocation IMDS traffic, requests/s: well inside what the daemon
/// handles, so the figure is the programs', not a full ring's.
const IMDS_INV_RATE: f64 = 2000.0;
const SECTIONS: [&str; 5] = ["invocations", "imds", "pods", "burst", "startup"];

const KEEPALIVE_CLIENTS: u32 = 8;
const NEWCONN_CLIENTS: u32 = 4;
const SMALL_RING: u32 = 4096;
/// A rate well inside what the daemon handles on a small machine (full run only).
const LOW_RATE: u32 = 2000;
const NETNS_PREFIX: &str = "imds-bench-";

pub(crate) fn bench(opts: BenchOptions) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the benchmark loads eBPF programs and creates a network namespace: run it as root \
             (sudo -E cargo xtask bench)"
        );
    }
    for tool in ["ip", "rustc", "sh", "iperf3", "taskset", "ss"] {
        if cmd::find_program(tool).is_none() {
            bail!("`{tool}` is needed and not on PATH (`cargo xtask setup` installs it)");
        }
    }
    let plan = Plan::new(&opts);
    let root = cmd::workspace_root();
    for s in &opts.only {
        if !SECTIONS.contains(&s.as_str()) {
            bail!("--only {s}: not one of {}", SECTIONS.join(", "));
        }
    }
    let run = |s: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == s);
    let daemon_bin = opts
        .daemon_bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/imds-snoop"));
    if !opts.no_build && opts.daemon_bin.is_none() {
        let mut cargo = cmd::command("cargo");
        cargo.args(["build", "--release", "--package", "imds-snoop"]);
        eprintln!("xtask: {}", cmd::display(&cargo));
        cmd::run(&mut cargo)?;
    }
    if !daemon_bin.is_file() {
        bail!(
            "{} is missing (build it, or drop --no-build)",
            daemon_bin.display()
        );
    }
    let loadgen = build_loadgen(&root)?;
    let scratch = root.join(format!("target/bench/run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;

    let mut report = Report::default();
    print_header(&opts, &plan);
    let ns = bench_netns()?;
    let env = Env {
        daemon: daemon_bin,
        loadgen,
        scratch: scratch.clone(),
        ns,
    };

    // Which attach modes this kernel accepts.
    let wanted: Vec<String> = if opts.attach.is_empty() {
        ["fentry", "kprobe", "tracepoint"]
            .map(String::from)
            .to_vec()
    } else {
        opts.attach.clone()
    };
    let mut modes = Vec::new();
    for mode in &wanted {
        match Daemon::start(&env, &["--attach", mode], &format!("probe-{mode}")) {
            Ok(mut d) => {
                let line = d.attached_line.clone();
                // Its programs and hooks: what the empty twins copy.
                let hooks = invocations::Hooks::of(d.pid);
                d.stop()?;
                let hooks = hooks?;
                println!("attach {mode}: ok ({line}); programs:");
                for (name, hook, info, _) in &hooks.progs {
                    println!("  {name}: {hook} (prog id {})", info.id);
                }
                modes.push((mode.clone(), hooks));
            }
            Err(e) => {
                println!(
                    "attach {mode}: refused ({})",
                    one_line(&format!("{e:#}"), 160)
                );
                report.note(format!("{mode}: refused by this kernel, not measured"));
            }
        }
    }
    if modes.is_empty() {
        bail!("no attach mode worked on this kernel: nothing to measure");
    }

    println!();

    // Servers in pod-b live at most as long as the pod sections can take.
    let pods = pods::Pods::new(env.ns.name(), &env.loadgen, 3600)?;
    for (mode, hooks) in &modes {
        if run("invocations") {
            per_invocation(&env, &pods, &plan, mode, hooks, &mut report)?;
        }
        if run("imds") {
            per_invocation_imds(&env, &plan, mode, hooks, &mut report)?;
        }
        if run("pods") {
            let p = wallclock::Plan {
                rounds: plan.rounds,
                iperf_secs: plan.iperf_secs,
                rr_rounds: plan.rr_rounds,
            };
            wallclock::measure(&env, &pods, hooks, mode, &p, &mut report)?;
        }
    }
    drop(pods);
    let first = &modes[0].0;
    if run("burst") {
        burst(&env, &plan, first, &mut report)?;
    }
    if run("startup") {
        startup(&env, &plan, first, &mut report)?;
    }

    report.print();
    drop(env); // deletes the namespace
    let _ = fs::remove_dir_all(&scratch);
    Ok(())
}

/// Compiles tests/bench/loadgen.rs with plain rustc when the binary is older than it.
fn build_loadgen(root: &Path) -> Result<PathBuf> {
    let src = root.join("tests/bench/loadgen.rs");
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let bin = out_dir.join("loadgen");
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!((modified(&src), modified(&bin)), (Some(s), Some(b)) if b >= s);
    if !fresh {
        let mut rustc = cmd::command("rustc");
        rustc
            .args(["--edition", "2024", "-O", "-C", "codegen-units=1", "-o"])
            .arg(&bin)
            .arg(&src);
        eprintln!("xtask: {}", cmd::display(&rustc));
        cmd::run(&mut rustc)?;
    }
    Ok(bin)
}

fn print_header(opts: &BenchOptions, plan: &Plan) {
    let kernel = read_trim("/proc/sys/kernel/osrelease");
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    // Read-only git: --no-optional-locks, so nothing (not even the index) is written.
    let git = |args: &[&str]| {
        cmd::output(cmd::command("git").arg("--no-optional-locks").args(args))
            .ok()
            .flatten()
    };
    let commit = match (
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["status", "--porcelain", "--untracked-files=no"]),
    ) {
        (Some(head), Some(st)) if !st.trim().is_empty() => format!("{} (modified)", head.trim()),
        (Some(head), _) => head.trim().to_owned(),
        _ => "?".into(),
    };
    println!(
        "# imds-snoop benchmark{}",
        if opts.quick { " (--quick)" } else { "" }
    );
    println!("date:   {}", utc_now());
    println!("kernel: {kernel}");
    println!("cpu:    {cpus} x {model}");
    println!("load:   {}", read_trim("/proc/loadavg"));
    println!("commit: {commit}");
    println!(
        "plan:   per invocation {} reps ({} rr rounds, {} processes, {} drops each; IMDS {} reps of {} s at {IMDS_INV_RATE}/s); pods {} rounds (iperf3 {} s, {} rr rounds); burst {} s at {} req/s",
        plan.reps,
        plan.inv_rr_rounds,
        plan.inv_processes,
        plan.inv_drops,
        plan.imds_reps,
        plan.imds_secs,
        plan.rounds,
        plan.iperf_secs,
        plan.rr_rounds,
        plan.burst_secs,
        plan.rate
    );
    println!();
}

// ---------------------------------------------------------------------------------------
// 1. Per invocation

fn per_invocation(
    env: &Env,
    pods: &pods::Pods,
    plan: &Plan,
    mode: &str,
    hooks: &invocations::Hooks,
    report: &mut Report,
) -> Result<()> {
    println!(
        "## 1. per invocation, attach {mode}: kernel BPF stats, empty twin vs imds-snoop, {} reps; non-IMDS workload: {} request/response rounds pod-a -> pod-b, {} processes, {} dropped datagrams",
        plan.reps, plan.inv_rr_rounds, plan.inv_processes, plan.inv_drops
    );
    let w = invocations::Workload {
        rr_rounds: plan.inv_rr_rounds,
        processes: plan.inv_processes,
        drops: plan.inv_drops,
    };
    let rows = invocations::measure(env, pods, hooks, mode, plan.reps, &w, mode)?;
    for r in &rows {
        report.row(
            format!(
                "Per run `{mode}`, non-IMDS traffic: {} ns, empty / imds-snoop, median [min .. max] of {}",
                r.program, r.ours.n
            ),
            format!("{} / {}", r.empty.show(), r.ours.show()),
            format!("{:.3} per RR send, {:.3} per TCP segment received", r.per_send, r.per_seg),
            r.difference(),
        );
    }
    println!();
    Ok(())
}

/// The same programs on IMDS traffic (the burst client against the fake IMDS, paced): a
/// section of its own, as it sends IMDS requests other sessions' daemons on the machine
/// see too (run it under the e2e lock).
fn per_invocation_imds(
    env: &Env,
    plan: &Plan,
    mode: &str,
    hooks: &invocations::Hooks,
    report: &mut Report,
) -> Result<()> {
    println!(
        "## 1b. per invocation on IMDS traffic, attach {mode}: burst client -> fake IMDS at {IMDS_INV_RATE}/s for {} s, {} reps",
        plan.imds_secs, plan.imds_reps
    );
    let rows = invocations::imds_traffic(
        env,
        hooks,
        mode,
        plan.imds_reps,
        plan.imds_secs,
        IMDS_INV_RATE,
    )?;
    for (k, e, o, per) in rows {
        report.row(
            format!(
                "Per run `{mode}`, IMDS traffic ({IMDS_INV_RATE}/s): {k} ns, empty / imds-snoop"
            ),
            format!("{} / {}", e.show(), o.show()),
            format!("{per:.2} runs per IMDS request"),
            String::new(),
        );
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2, 3. IMDS burst and daemon cost

struct BurstResult {
    sent: u64,
    rate: f64,
    lines_ours: u64,
    lines_other: u64,
    dropped_kernel: u64,
    dropped_backpressure: u64,
    lost_io: u64,
    warning_drops: u64,
    cpu_s: f64,
    vm_hwm_kib: u64,
    vm_rss_kib: u64,
    process_events: Option<u64>,
    ancestors: Option<usize>,
}

impl BurstResult {
    fn accounted(&self) -> u64 {
        self.lines_ours + self.dropped_kernel + self.dropped_backpressure + self.lost_io
    }

    fn describe(&self) -> String {
        format!(
            "sent {} ({:.0}/s), logged {}, dropped {} in kernel + {} back-pressure + {} I/O",
            self.sent,
            self.rate,
            self.lines_ours,
            self.dropped_kernel,
            self.dropped_backpressure,
            self.lost_io
        )
    }
}

fn burst(env: &Env, plan: &Plan, mode: &str, report: &mut Report) -> Result<()> {
    println!(
        "## 2. IMDS burst, attach {mode}: {KEEPALIVE_CLIENTS} keep-alive + {NEWCONN_CLIENTS} new-connection clients -> 169.254.169.254:80"
    );
    let secs = plan.burst_secs;
    let paced = burst_run(env, mode, secs, plan.rate, None, "burst-paced")?;
    println!("paced {:.0}/s, 4 MiB ring: {}", plan.rate, paced.describe());
    let lost = paced.sent.saturating_sub(paced.lines_ours);
    report.row(
        format!(
            "IMDS burst {:.0} req/s for {secs} s, 4 MiB ring: sent / logged / dropped",
            plan.rate
        ),
        format!(
            "{} ({:.0}/s) / {} / {}",
            paced.sent,
            paced.rate,
            paced.lines_ours,
            paced.dropped_kernel + paced.dropped_backpressure + paced.lost_io
        ),
        "0 lost at ≥ 20,000/s".into(),
        verdict(lost == 0 && paced.rate >= 20_000.0 * 0.98),
    );
    if paced.rate < 20_000.0 * 0.98 {
        report.note(format!(
            "the paced burst reached only {:.0} req/s (load generator and daemon share the CPUs)",
            paced.rate
        ));
    }
    check_accounting("paced burst", &paced, report);

    // 3. Daemon cost, from the paced run.
    let us = if paced.lines_ours > 0 {
        paced.cpu_s * 1e6 / paced.lines_ours as f64
    } else {
        f64::NAN
    };
    println!(
        "daemon: {:.2} s user+sys for {} events = {us:.1} µs/event; VmHWM {:.1} MiB, VmRSS after {:.1} MiB; caller ancestors per line: {}",
        paced.cpu_s,
        paced.lines_ours,
        mib(paced.vm_hwm_kib),
        mib(paced.vm_rss_kib),
        paced.ancestors.map_or("?".into(), |n| n.to_string())
    );
    report.row(
        "Daemon CPU (user+sys) per logged event, paced burst".into(),
        format!("{us:.1} µs"),
        "≤ 10 µs".into(),
        verdict(us <= 10.0),
    );
    report.row(
        "Daemon peak RSS (VmHWM) / RSS after the paced burst".into(),
        format!(
            "{:.1} / {:.1} MiB",
            mib(paced.vm_hwm_kib),
            mib(paced.vm_rss_kib)
        ),
        "≤ 25 MiB".into(),
        verdict(mib(paced.vm_hwm_kib) <= 25.0),
    );

    if plan.unpaced_row {
        let max = burst_run(env, mode, secs, 0.0, None, "burst-max")?;
        println!("unpaced, 4 MiB ring: {}", max.describe());
        report.row(
            format!("IMDS burst unpaced for {secs} s, 4 MiB ring: sent / logged / dropped"),
            format!(
                "{} ({:.0}/s) / {} ({:.0}/s) / {}",
                max.sent,
                max.rate,
                max.lines_ours,
                max.lines_ours as f64 / secs,
                max.dropped_kernel + max.dropped_backpressure + max.lost_io
            ),
            "(ceiling)".into(),
            String::new(),
        );
        check_accounting("unpaced burst", &max, report);

        // A rate the daemon keeps up with here: the pipeline loses nothing when it can.
        let low = burst_run(env, mode, secs, f64::from(LOW_RATE), None, "burst-low")?;
        let low_us = low.cpu_s * 1e6 / low.lines_ours.max(1) as f64;
        println!(
            "paced {LOW_RATE}/s, 4 MiB ring: {}; daemon {low_us:.1} µs/event",
            low.describe()
        );
        report.row(
            format!(
                "IMDS burst {LOW_RATE} req/s for {secs} s, 4 MiB ring: sent / logged / dropped; daemon CPU per event"
            ),
            format!(
                "{} ({:.0}/s) / {} / {}; {low_us:.1} µs",
                low.sent,
                low.rate,
                low.lines_ours,
                low.dropped_kernel + low.dropped_backpressure + low.lost_io
            ),
            "0 lost".into(),
            verdict(low.sent == low.lines_ours),
        );
        check_accounting("low-rate burst", &low, report);
    }

    let small = burst_run(
        env,
        mode,
        plan.small_ring_secs,
        0.0,
        Some(SMALL_RING),
        "burst-small-ring",
    )?;
    println!("unpaced, {SMALL_RING}-byte ring: {}", small.describe());
    let (exact, text) = check_accounting("small ring", &small, report);
    report.row(
        format!(
            "Drops counted, {SMALL_RING}-byte ring, unpaced {} s: sent = logged + dropped",
            plan.small_ring_secs
        ),
        text,
        "exact".into(),
        verdict(exact),
    );
    println!();
    Ok(())
}

/// Prints whether every request sent is either logged or counted as dropped. Returns
/// (no request unaccounted, a description).
fn check_accounting(what: &str, r: &BurstResult, report: &mut Report) -> (bool, String) {
    let acc = r.accounted();
    let events = r.process_events.map_or("unknown".into(), |n| n.to_string());
    let text = if acc == r.sent {
        format!(
            "{} = {} + {} (exact)",
            r.sent,
            r.lines_ours,
            acc - r.lines_ours
        )
    } else if acc > r.sent {
        format!(
            "{} < {} + {}: {} more drops than requests lost (exec/exit events machine-wide in the window: {events}; their drops are counted apart, so this is a miscount)",
            r.sent,
            r.lines_ours,
            acc - r.lines_ours,
            acc - r.sent
        )
    } else {
        format!(
            "{} > {} + {}: {} requests neither logged nor counted",
            r.sent,
            r.lines_ours,
            acc - r.lines_ours,
            r.sent - acc
        )
    };
    println!("{what}: {text}");
    if r.lines_other > 0 {
        println!(
            "{what}: {} IMDS lines from other processes on the machine (not counted)",
            r.lines_other
        );
    }
    // The log's drop lines count every loss (kernel, writer queue, failed writes), as the
    // exit summary's three fields do together.
    let summary_drops = r.dropped_kernel + r.dropped_backpressure + r.lost_io;
    if r.warning_drops != summary_drops {
        println!(
            "{what}: drop lines in the log say {}, the exit summary {summary_drops}",
            r.warning_drops
        );
        report.note(format!(
            "{what}: `imds-snoop dropped` lines total {} but the exit summary says \
             dropped_kernel + dropped_backpressure + lost_io = {summary_drops}",
            r.warning_drops
        ));
    }
    // Send drops are counted apart from exec/exit and response drops (DROP_* kinds), so
    // every request is a line or a counted drop, exactly.
    if acc > r.sent {
        report.note(format!(
            "{what}: drops exceed lost requests by {} ({events} exec/exit events \
             machine-wide in the window): send drops should be counted apart from them",
            acc - r.sent
        ));
    }
    (acc == r.sent, text)
}

fn burst_run(
    env: &Env,
    mode: &str,
    secs: f64,
    rate: f64,
    ring: Option<u32>,
    tag: &str,
) -> Result<BurstResult> {
    let ring_arg = ring.map(|r| r.to_string());
    let mut args = vec!["--attach", mode];
    if let Some(r) = &ring_arg {
        args.extend(["--ring-bytes", r]);
    }
    let mut d = Daemon::start(env, &args, tag)?;
    let cpu0 = d.cpu_ticks()?;
    let perf = ProcessEventCounter::start(&env.scratch, tag, secs + 1.5);
    let out = env.loadgen_detached(
        &[
            "burst",
            "--seconds",
            &secs.to_string(),
            "--rate",
            &rate.to_string(),
            "--keepalive",
            &KEEPALIVE_CLIENTS.to_string(),
            "--newconn",
            &NEWCONN_CLIENTS.to_string(),
        ],
        tag,
        Duration::from_secs_f64(secs + 30.0),
    )?;
    let process_events = perf.and_then(ProcessEventCounter::finish);
    let sent = num(&out, "sent")? as u64;
    let pid = num(&out, "pid")? as u32;
    if num(&out, "errors")? > 0.0 {
        println!("{tag}: load generator errors: {}", kv(&out, "errors"));
    }
    // Wait (bounded) for the daemon to catch up: the log stops growing.
    d.wait_log_quiet(Duration::from_secs(1), Duration::from_secs(120));
    let cpu_s = (d.cpu_ticks()? - cpu0) as f64 / clock_ticks();
    let vm_hwm_kib = d.status_kib("VmHWM")?;
    let vm_rss_kib = d.status_kib("VmRSS")?;
    let summary = d.stop()?;
    let lines = count_lines(&d.log, Ours::Pid(pid))?;
    let field = |k: &str| -> Result<u64> {
        summary
            .get(k)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {k}= in the daemon's exit line"))
    };
    Ok(BurstResult {
        sent,
        rate: num(&out, "rate")?,
        lines_ours: lines.ours,
        lines_other: lines.imds_total() - lines.ours,
        dropped_kernel: field("dropped_kernel")?,
        dropped_backpressure: field("dropped_backpressure")?,
        lost_io: field("lost_io")?,
        warning_drops: lines.drop_warnings,
        cpu_s,
        vm_hwm_kib,
        vm_rss_kib,
        process_events,
        ancestors: lines.sample_ancestors,
    })
}

// ---------------------------------------------------------------------------------------
// 4. Start-up

fn startup(env: &Env, plan: &Plan, mode: &str, report: &mut Report) -> Result<()> {
    println!(
        "## 4. start-up: spawn to `attached`, default flags (--attach auto) and --attach {mode}, interleaved"
    );
    let explicit = ["--attach", mode];
    let mut ms: [Vec<f64>; 2] = Default::default();
    let mut hwm = Vec::new();
    for i in 0..plan.startup_runs {
        for (k, args) in [&[][..], &explicit[..]].into_iter().enumerate() {
            let mut d = Daemon::start(env, args, &format!("startup-{i}-{k}"))?;
            let t = d.startup.as_secs_f64() * 1e3;
            let h = d.status_kib("VmHWM")?;
            d.stop()?;
            println!(
                "run {} {}: {t:.0} ms ({}), VmHWM {:.1} MiB",
                i + 1,
                if k == 0 { "default" } else { mode },
                d.attached_line,
                mib(h)
            );
            ms[k].push(t);
            hwm.push(mib(h));
        }
    }
    let (m, me) = (median(&ms[0]), median(&ms[1]));
    let size = fs::metadata(&env.daemon)?.len();
    println!(
        "=> median {m:.0} ms ({}) default, {me:.0} ms ({}) --attach {mode}; VmHWM at start-up {:.1} MiB; binary {:.2} MiB ({size} bytes)\n",
        spread_ms(&ms[0]),
        spread_ms(&ms[1]),
        median(&hwm),
        size as f64 / (1 << 20) as f64
    );
    report.row(
        format!(
            "Start-up to attached, default flags (median of {}; `auto` tries fentry, kprobe first)",
            plan.startup_runs
        ),
        format!("{m:.0} ms ({})", spread_ms(&ms[0])),
        "≤ 300 ms".into(),
        verdict(m <= 300.0),
    );
    report.row(
        format!("Start-up to attached, `--attach {mode}`"),
        format!("{me:.0} ms ({})", spread_ms(&ms[1])),
        "≤ 300 ms".into(),
        verdict(me <= 300.0),
    );
    report.row(
        "Peak RSS right after start-up (VmHWM)".into(),
        format!("{:.1} MiB", median(&hwm)),
        "≤ 25 MiB".into(),
        verdict(median(&hwm) <= 25.0),
    );
    report.row(
        "Release binary size (kernel object inside)".into(),
        format!("{:.2} MiB", size as f64 / (1 << 20) as f64),
        String::new(),
        String::new(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Environment: namespace, daemon, load generator

struct Env {
    daemon: PathBuf,
    loadgen: PathBuf,
    scratch: PathBuf,
    ns: Namespace,
}

impl Env {
    /// Runs the load generator in the namespace *detached* from this process (its parent
    /// exits at once, so it is re-parented): the callers' ancestry in the daemon's lines is
    /// then `loadgen -> init` whatever launched the benchmark (a CI runner's deep chain of
    /// long command lines would otherwise be part of every line the daemon writes).
    fn loadgen_detached(
        &self,
        args: &[&str],
        tag: &str,
        timeout: Duration,
    ) -> Result<HashMap<String, String>> {
        let out = self.scratch.join(format!("{tag}.loadgen.out"));
        let err = self.scratch.join(format!("{tag}.loadgen.err"));
        let mut line = format!(
            "ip netns exec {} {}",
            shq(self.ns.name()),
            shq(&self.loadgen.to_string_lossy())
        );
        for a in args {
            line.push(' ');
            line.push_str(&shq(a));
        }
        let script = format!(
            "{line} >{} 2>{} </dev/null & echo $!",
            shq(&out.to_string_lossy()),
            shq(&err.to_string_lossy())
        );
        let pid: i32 = cmd::output(Command::new("sh").args(["-c", &script]))?
            .and_then(|s| s.trim().parse().ok())
            .context("starting the detached load generator")?;
        let deadline = Instant::now() + timeout;
        while process_alive(pid) {
            if Instant::now() > deadline {
                // SAFETY: plain kill(2) of the pid we started.
                unsafe { kill(pid, SIGKILL) };
                bail!("the load generator (pid {pid}) ran past {timeout:?}: killed");
            }
            thread::sleep(Duration::from_millis(50));
        }
        let text = fs::read_to_string(&out).unwrap_or_default();
        if !text.contains("sent=") {
            bail!(
                "the load generator printed no result: {}",
                fs::read_to_string(&err).unwrap_or_default().trim()
            );
        }
        Ok(parse_kv(&text))
    }
}

/// The benchmark's network namespace (`imds-bench-<pid>`): `lo` up with the IMDS
/// addresses. Deleted on drop, with every process still inside it killed (tests/support's
/// [`Namespace`]).
fn bench_netns() -> Result<Namespace> {
    let ns = netns::imds_namespace(NETNS_PREFIX)?;
    // New-connection clients: more ports, reuse of TIME_WAIT ones (this namespace only).
    let _ = ns
        .exec("sysctl")
        .args(["-q", "-w"])
        .args([
            "net.ipv4.ip_local_port_range=1024 65000",
            "net.ipv4.tcp_tw_reuse=1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Ok(ns)
}

/// A running imds-snoop, attached. Killed on drop if not stopped.
struct Daemon {
    child: Child,
    pid: i32,
    log: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    startup: Duration,
    attached_at: Instant,
    attached_line: String,
}

/// imds-snoop prints `attached` (and tells systemd READY=1) before it installs its SIGTERM
/// handler; a SIGTERM in between kills it without its exit summary. Stop no sooner.
const SIGTERM_GRACE: Duration = Duration::from_millis(300);

impl Daemon {
    fn start(env: &Env, args: &[&str], tag: &str) -> Result<Self> {
        let log = env.scratch.join(format!("{tag}.log"));
        let mut c = Command::new(&env.daemon);
        c.arg("--log-file")
            .arg(&log)
            .args(["--max-bytes", "4294967296", "--backups", "1"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = c
            .spawn()
            .with_context(|| format!("starting {}", cmd::display(&c)))?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<(Instant, String)>();
        {
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains(" attached ") {
                        let _ = tx.send((Instant::now(), line.clone()));
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let pid = child.id() as i32;
        let mut d = Self {
            child,
            pid,
            log,
            stderr: lines,
            startup: Duration::ZERO,
            attached_at: t0,
            attached_line: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((t, line)) => {
                d.startup = t - t0;
                d.attached_at = t;
                d.attached_line = line
                    .split_once(" attached ")
                    .map(|(_, rest)| rest.split(';').next().unwrap_or(rest).trim().to_owned())
                    .unwrap_or(line);
                Ok(d)
            }
            Err(_) => {
                let _ = d.child.kill();
                let _ = d.child.wait();
                thread::sleep(Duration::from_millis(50));
                let text = d.stderr.lock().unwrap().join("\n");
                bail!(
                    "`{} {}` did not attach: {}",
                    env.daemon.display(),
                    args.join(" "),
                    text.trim()
                )
            }
        }
    }

    /// utime + stime of every thread, clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("/proc/PID/stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the comm: state is field 3; utime 14, stime 15.
        let get = |i: usize| -> Result<u64> {
            f.get(i - 3)
                .and_then(|v| v.parse().ok())
                .context("/proc/PID/stat field")
        };
        Ok(get(14)? + get(15)?)
    }

    fn status_kib(&self, key: &str) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {key} in /proc/{}/status", self.pid))
    }

    /// Waits until the log has not grown for `quiet`, at most `limit`.
    fn wait_log_quiet(&self, quiet: Duration, limit: Duration) {
        let end = Instant::now() + limit;
        let size = || fs::metadata(&self.log).map_or(0, |m| m.len());
        let (mut last, mut since) = (size(), Instant::now());
        while Instant::now() < end {
            thread::sleep(Duration::from_millis(100));
            let now = size();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// SIGTERM, wait (bounded), and the `key=value` pairs of the `detached` line.
    fn stop(&mut self) -> Result<HashMap<String, String>> {
        if let Some(rest) = SIGTERM_GRACE.checked_sub(self.attached_at.elapsed()) {
            thread::sleep(rest);
        }
        // SAFETY: plain kill(2) of our own child, not yet reaped.
        unsafe { kill(self.pid, SIGTERM) };
        let end = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "imds-snoop (pid {}) ignored SIGTERM for 60 s: killed",
                    self.pid
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The reader thread sees EOF right after exit.
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            let lines = self.stderr.lock().unwrap().clone();
            if let Some(l) = lines.iter().rev().find(|l| l.contains("detached")) {
                if !status.success() {
                    bail!("imds-snoop exited with {status}: {}", lines.join("\n"));
                }
                return Ok(parse_kv(l));
            }
            if Instant::now() > end {
                bail!(
                    "imds-snoop exited ({status}) without its `detached` line: {}",
                    lines.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Counts exec and exit events machine-wide (they share the kernel ring and its drop
/// counter with the send events) with `perf stat`, when perf is there.
struct ProcessEventCounter {
    child: Child,
    out: PathBuf,
}

impl ProcessEventCounter {
    fn start(scratch: &Path, tag: &str, secs: f64) -> Option<Self> {
        let perf = cmd::find_program("perf")?;
        let out = scratch.join(format!("{tag}.perf"));
        let child = Command::new(perf)
            .args(["stat", "-a", "-x", ",", "-o"])
            .arg(&out)
            .args([
                "-e",
                "sched:sched_process_exec,sched:sched_process_exit",
                "--",
                "sleep",
                &format!("{secs:.1}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Self { child, out })
    }

    fn finish(mut self) -> Option<u64> {
        let ok = self.child.wait().ok()?.success();
        let text = fs::read_to_string(&self.out).ok()?;
        let mut total = 0;
        let mut seen = 0;
        for l in text.lines().filter(|l| l.contains("sched:sched_process_")) {
            total += l.split(',').next()?.trim().parse::<u64>().ok()?;
            seen += 1;
        }
        (ok && seen == 2).then_some(total)
    }
}

// ---------------------------------------------------------------------------------------
// Log parsing

#[derive(Default)]
struct LineCounts {
    by_class: HashMap<String, u64>,
    ours: u64,
    drop_warnings: u64,
    sample_ancestors: Option<usize>,
}

impl LineCounts {
    fn imds_total(&self) -> u64 {
        self.by_class.values().sum()
    }
}

/// Whose lines count as ours: the other engineers' and CI's IMDS tests on the same machine
/// are seen by our daemon too.
enum Ours {
    /// The caller's pid.
    Pid(u32),
    /// Any load generator process (caller comm `loadgen`).
    Loadgen,
}

/// Counts request lines (by class; `ours` for our callers) and sums the `imds-snoop dropped
/// N events` lines, over the log and its rotations.
fn count_lines(log: &Path, ours: Ours) -> Result<LineCounts> {
    let mut counts = LineCounts::default();
    let mut files = vec![log.to_path_buf()];
    for i in 1..=9 {
        let p = PathBuf::from(format!("{}.{i}", log.display()));
        if p.exists() {
            files.push(p);
        }
    }
    for f in files {
        let Ok(file) = fs::File::open(&f) else {
            continue;
        };
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            let line = String::from_utf8_lossy(&line);
            // Read through the line contract (imds-snoop-line).
            let call = match TextLine::parse(&line).map(|l| l.body) {
                Some(TextBody::Dropped { events }) => {
                    counts.drop_warnings += events;
                    continue;
                }
                // A token PUT left unanswered (its response lost, e.g. to a full ring) is a
                // request line too, of its own class.
                Some(TextBody::Call(call)) if call.class.is_some() => call,
                _ => continue,
            };
            *counts.by_class.entry(call.label.to_owned()).or_default() += 1;
            let is_ours = match ours {
                Ours::Pid(p) => call.caller_pid() == Some(p),
                Ours::Loadgen => call.caller().is_some_and(|c| c.comm == "loadgen"),
            };
            if is_ours {
                counts.ours += 1;
                if counts.sample_ancestors.is_none() {
                    counts.sample_ancestors = Some(call.ancestor_count());
                }
            }
        }
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------------------
// The closing table

#[derive(Default)]
struct Report {
    rows: Vec<[String; 4]>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, what: String, measured: String, target: String, verdict: String) {
        self.rows.push([what, measured, target, verdict]);
    }

    fn note(&mut self, n: String) {
        self.notes.push(n);
    }

    fn print(&self) {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Summary ({}, kernel {}, {} CPUs)\n",
            utc_now(),
            read_trim("/proc/sys/kernel/osrelease"),
            thread::available_parallelism().map_or(0, |n| n.get())
        );
        let _ = writeln!(s, "| measurement | measured | target | |");
        let _ = writeln!(s, "| --- | --- | --- | --- |");
        for [a, b, c, d] in &self.rows {
            let _ = writeln!(s, "| {a} | {b} | {c} | {d} |");
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        println!("{s}");
    }
}

fn verdict(ok: bool) -> String {
    if ok { "met" } else { "**missed**" }.into()
}

// ---------------------------------------------------------------------------------------
// Small helpers

fn parse_kv(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches(',').to_owned()))
        .collect()
}

fn kv<'a>(m: &'a HashMap<String, String>, k: &str) -> &'a str {
    m.get(k).map_or("?", String::as_str)
}

fn num(m: &HashMap<String, String>, k: &str) -> Result<f64> {
    m.get(k)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no number {k}= in {m:?}"))
}

fn spread_ms(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0} .. {hi:.0} ms")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path).map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}

/// Single-quoted for sh.
fn shq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => false,
    }
}

/// Now, UTC, RFC 3339 (seconds).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SC_CLK_TCK: i32 = 2;

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn sysconf(name: i32) -> i64;
}

/// Runs `c`; its stdout (`None` when empty), or an error with its stderr when it fails.
fn cmd_output(c: &mut Command) -> Result<Option<String>> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", cmd::display(c)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd::display(c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((!text.trim().is_empty()).then_some(text))
}

/// The cgroup v2 directories a cgroup link may be on: the root of a unified host, or the
/// `unified/` of a hybrid one (where the daemon attaches its response program).
fn cgroup_dirs() -> Vec<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        // A cgroup v2 directory has `cgroup.controllers`; a hybrid host's tmpfs root has
        // not (and its root inode may carry the same number as the v2 root's cgroup id).
        .filter(|p| p.join("cgroup.controllers").is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines the daemon wrote in an end-to-end run, a loss line and a hop-limit warning.
    #[test]
    fn count_lines_reads_the_daemon_lines() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/report/e2e-daemon.log"
        );
        let mut log = fs::read_to_string(fixture).unwrap();
        log.push_str(
            "[2026-11-23 09:29:24,000] [WARNING] imds-snoop dropped 7 events (totals: ring \
             buffer full 7, no scratch 0, writer queue full 0, log write failed 0); raise \
             --ring-bytes if the ring buffer fills\n\
             [2026-11-23 09:29:25,000] [WARNING] imdsv2 token response not received (hop \
             limit?) (pid:25929:loadgen argv:loadgen burst) req details: put \
             /latest/api/token http/1.1, host unit:- uid:0 dst:169.254.169.254:80\n\
             not a trace line\n",
        );
        let path = std::env::temp_dir().join(format!("xtask-bench-{}.log", std::process::id()));
        fs::write(&path, log).unwrap();
        let by_pid = count_lines(&path, Ours::Pid(25906)).unwrap();
        let loadgen = count_lines(&path, Ours::Loadgen).unwrap();
        let _ = fs::remove_file(&path);
        assert_eq!(by_pid.by_class["imdsv1(!)"], 2);
        assert_eq!(
            by_pid.by_class["imdsv2 token response not received (hop limit?)"],
            1
        );
        assert_eq!((by_pid.imds_total(), by_pid.drop_warnings), (3, 7));
        assert_eq!((by_pid.ours, by_pid.sample_ancestors), (1, Some(3)));
        assert_eq!((loadgen.ours, loadgen.sample_ancestors), (1, Some(0)));
    }
}
