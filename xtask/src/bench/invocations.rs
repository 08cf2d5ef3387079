//! Per-invocation cost of every program the daemon attaches, from the kernel's BPF run-time
//! statistics, side by side with an empty program on the same hook (`bpf::empty_twin`).
//!
//! Each repetition runs both arms in turn (the order alternates): the empty twins alone,
//! then the daemon alone, each over the same bounded workload: request/response rounds
//! pod-a -> pod-b (TCP sends, received packets), a batch of `/bin/true` processes (fork,
//! exec, exit) and UDP datagrams to a closed port (drops). A program's figure for one
//! repetition is (run_time_ns delta) / (run_cnt delta); the table gives the median and
//! min..max over repetitions. The statistics cost two clock reads per run in both arms
//! (they are inside run_time_ns), so the figures are the floor plus what our code adds.
//! Invocations of other processes on the machine (builds, other tests) are counted too:
//! run_cnt is per program, not per workload; the rates per send and per received packet
//! are taken over the request/response phase, where our load dominates.

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{
    Daemon, Env,
    bpf::{self, Attached, EmptyTwin, ProgInfo},
    num,
    pods::Pods,
    stats::{max, median, min},
};

/// What one repetition of one arm does.
pub(crate) struct Workload {
    pub rr_rounds: u64,
    pub processes: u32,
    pub drops: u64,
}

/// The daemon's programs as found in the probe run: (name, hook label, model info, hook).
#[derive(Clone)]
pub(crate) struct Hooks {
    pub progs: Vec<(String, String, ProgInfo, Attached)>,
}

impl Hooks {
    /// The programs a running daemon has attached.
    pub(crate) fn of(pid: i32) -> Result<Self> {
        let mut progs = Vec::new();
        for a in bpf::attached_programs(pid)? {
            let fd = bpf::prog_fd_by_id(a.prog_id)?;
            let info = bpf::prog_info(&fd)?;
            progs.push((info.name.clone(), a.hook.label(info.prog_type), info, a));
        }
        if progs.is_empty() {
            bail!("the daemon (pid {pid}) holds no BPF link");
        }
        Ok(Self { progs })
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.progs.iter().map(|(n, h, ..)| key(n, h)).collect()
    }

    /// Empty programs on every hook; an error for a hook that cannot have one.
    pub(crate) fn twins(&self) -> Result<Vec<(String, EmptyTwin)>> {
        let cgroups = super::cgroup_dirs();
        self.progs
            .iter()
            .map(|(name, label, info, a)| {
                bpf::empty_twin(info, &a.hook, &cgroups)
                    .map(|t| (key(name, label), t))
                    .with_context(|| format!("the empty twin of {name} ({label})"))
            })
            .collect()
    }
}

fn key(name: &str, hook: &str) -> String {
    format!("{name} ({hook})")
}

/// (run_time_ns, run_cnt) per program key.
type Snapshot = BTreeMap<String, (u64, u64)>;

fn snapshot_twins(twins: &[(String, EmptyTwin)]) -> Result<Snapshot> {
    twins
        .iter()
        .map(|(k, t)| t.info().map(|i| (k.clone(), (i.run_time_ns, i.run_cnt))))
        .collect()
}

fn snapshot_daemon(pid: i32) -> Result<Snapshot> {
    let h = Hooks::of(pid)?;
    Ok(h.progs
        .into_iter()
        .map(|(n, l, i, _)| (key(&n, &l), (i.run_time_ns, i.run_cnt)))
        .collect())
}

fn delta(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, (u64, u64)> {
    after
        .iter()
        .map(|(k, &(t1, n1))| {
            let (t0, n0) = before.get(k).copied().unwrap_or((0, 0));
            (k.clone(), (t1.saturating_sub(t0), n1.saturating_sub(n0)))
        })
        .collect()
}

/// One arm's figures for one repetition.
#[derive(Default, Clone)]
struct ArmRep {
    /// Program key -> ns per invocation over the whole workload.
    ns: BTreeMap<String, f64>,
    /// Program key -> invocations per RR send, per TCP segment received (RR phase).
    per_send: BTreeMap<String, f64>,
    per_seg: BTreeMap<String, f64>,
}

fn run_arm(
    env: &Env,
    pods: &Pods,
    hooks: &Hooks,
    imds: bool,
    mode: &str,
    w: &Workload,
    tag: &str,
) -> Result<ArmRep> {
    let twins;
    let mut daemon = None;
    let snap: Box<dyn Fn() -> Result<Snapshot>> = if imds {
        let d = Daemon::start(env, &["--attach", mode], tag)?;
        let pid = d.pid;
        daemon = Some(d);
        Box::new(move || snapshot_daemon(pid))
    } else {
        twins = hooks.twins()?;
        let t = &twins;
        Box::new(move || snapshot_twins(t))
    };
    let s0 = snap()?;
    let seg0 = pods.tcp_in_segs()?;
    let rr = pods.rr(&env.loadgen, w.rr_rounds)?;
    let seg1 = pods.tcp_in_segs()?;
    let s1 = snap()?;
    for _ in 0..w.processes {
        Command::new("/bin/true")
            .status()
            .context("running /bin/true")?;
    }
    pods.drops(&env.loadgen, w.drops)?;
    let s2 = snap()?;
    drop(snap);
    if let Some(mut d) = daemon {
        d.stop()?;
    }
    let sends = num(&rr, "sends")?;
    let segs = seg1.saturating_sub(seg0) as f64;
    let rr_phase = delta(&s0, &s1);
    let mut rep = ArmRep::default();
    for (k, (t, n)) in delta(&s0, &s2) {
        if n == 0 {
            bail!(
                "{k} did not run during the workload ({}): no figure for it",
                if imds { "imds-snoop" } else { "empty twin" }
            );
        }
        rep.ns.insert(k.clone(), t as f64 / n as f64);
        let rn = rr_phase.get(&k).map_or(0, |&(_, n)| n) as f64;
        rep.per_send.insert(k.clone(), rn / sends);
        rep.per_seg.insert(k, rn / segs.max(1.0));
    }
    Ok(rep)
}

/// The per-invocation table: `reps` repetitions of both arms, alternating their order.
/// Returns the printed rows for the closing summary.
pub(crate) fn measure(
    env: &Env,
    pods: &Pods,
    hooks: &Hooks,
    mode: &str,
    reps: usize,
    w: &Workload,
    label: &str,
) -> Result<Vec<Row>> {
    let _stats = bpf::enable_stats()?;
    let mut empty = Vec::new();
    let mut ours = Vec::new();
    for r in 0..reps {
        for imds in if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let tag = format!("inv-{label}-{r}-{}", if imds { "imds" } else { "empty" });
            let rep = run_arm(env, pods, hooks, imds, mode, w, &tag)?;
            if imds {
                ours.push(rep);
            } else {
                empty.push(rep);
            }
        }
        println!("  rep {}/{reps} done", r + 1);
    }
    let mut rows = Vec::new();
    for k in hooks.keys() {
        let col = |reps: &[ArmRep], f: fn(&ArmRep) -> &BTreeMap<String, f64>| -> Vec<f64> {
            reps.iter().filter_map(|r| f(r).get(&k).copied()).collect()
        };
        let e = col(&empty, |r| &r.ns);
        let o = col(&ours, |r| &r.ns);
        let row = Row {
            program: k.clone(),
            empty: Spread::of(&e),
            ours: Spread::of(&o),
            per_send: median(&col(&ours, |r| &r.per_send)),
            per_seg: median(&col(&ours, |r| &r.per_seg)),
        };
        println!("  {}", row.line());
        rows.push(row);
    }
    Ok(rows)
}

/// Median and min..max of repetitions, ns per invocation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub(crate) fn of(v: &[f64]) -> Self {
        Self {
            median: median(v),
            min: min(v),
            max: max(v),
            n: v.len(),
        }
    }

    pub(crate) fn show(&self) -> String {
        format!("{:.1} [{:.1} .. {:.1}]", self.median, self.min, self.max)
    }
}

pub(crate) struct Row {
    pub program: String,
    pub empty: Spread,
    pub ours: Spread,
    pub per_send: f64,
    pub per_seg: f64,
}

impl Row {
    /// Our program minus the empty one, only when the two spreads do not overlap.
    pub(crate) fn difference(&self) -> String {
        let d = self.ours.median - self.empty.median;
        if self.ours.min > self.empty.max || self.ours.max < self.empty.min {
            format!("{d:+.1} ns")
        } else {
            format!("within the spread ({d:+.1} ns)")
        }
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "{}: empty {} ns, imds-snoop {} ns per run (median [min .. max] of {}): {}; {:.3} runs per RR send, {:.3} per TCP segment received",
            self.program,
            self.empty.show(),
            self.ours.show(),
            self.ours.n,
            self.difference(),
            self.per_send,
            self.per_seg
        )
    }
}

/// IMDS traffic: the daemon's programs (and the twins) while the burst client calls the fake
/// IMDS in the bench namespace, paced, bounded: ns per run and runs per request.
pub(crate) fn imds_traffic(
    env: &Env,
    hooks: &Hooks,
    mode: &str,
    reps: usize,
    secs: f64,
    rate: f64,
) -> Result<Vec<(String, Spread, Spread, f64)>> {
    let _stats = bpf::enable_stats()?;
    let mut empty: Vec<BTreeMap<String, f64>> = Vec::new();
    let mut ours: Vec<BTreeMap<String, f64>> = Vec::new();
    let mut per_req: Vec<BTreeMap<String, f64>> = Vec::new();
    let burst = |tag: &str| -> Result<f64> {
        let out = env.loadgen_detached(
            &[
                "burst",
                "--seconds",
                &secs.to_string(),
                "--rate",
                &rate.to_string(),
                "--keepalive",
                "2",
                "--newconn",
                "1",
            ],
            tag,
            std::time::Duration::from_secs_f64(secs + 30.0),
        )?;
        num(&out, "sent")
    };
    for r in 0..reps {
        for imds in if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let tag = format!("inv-imds-{r}-{}", if imds { "imds" } else { "empty" });
            let (d, sent) = if imds {
                let mut d = Daemon::start(env, &["--attach", mode], &tag)?;
                let s0 = snapshot_daemon(d.pid)?;
                let sent = burst(&tag)?;
                let s1 = snapshot_daemon(d.pid)?;
                d.stop()?;
                (delta(&s0, &s1), sent)
            } else {
                let twins = hooks.twins()?;
                let s0 = snapshot_twins(&twins)?;
                let sent = burst(&tag)?;
                let s1 = snapshot_twins(&twins)?;
                (delta(&s0, &s1), sent)
            };
            let ns = d
                .iter()
                .filter(|(_, (_, n))| *n > 0)
                .map(|(k, &(t, n))| (k.clone(), t as f64 / n as f64))
                .collect();
            if imds {
                ours.push(ns);
                per_req.push(
                    d.iter()
                        .map(|(k, &(_, n))| (k.clone(), n as f64 / sent.max(1.0)))
                        .collect(),
                );
            } else {
                empty.push(ns);
            }
        }
    }
    let mut rows = Vec::new();
    for k in hooks.keys() {
        let col = |v: &[BTreeMap<String, f64>]| -> Vec<f64> {
            v.iter().filter_map(|m| m.get(&k).copied()).collect()
        };
        let row = (
            k.clone(),
            Spread::of(&col(&empty)),
            Spread::of(&col(&ours)),
            median(&col(&per_req)),
        );
        println!(
            "  {}: empty {} ns, imds-snoop {} ns per run; {:.2} runs per IMDS request",
            row.0,
            row.1.show(),
            row.2.show(),
            row.3
        );
        rows.push(row);
    }
    Ok(rows)
}
