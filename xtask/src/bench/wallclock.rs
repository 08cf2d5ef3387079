//! Wall-clock cost on the pod -> node -> pod workload: detached, empty programs on every
//! hook the daemon uses, and imds-snoop, interleaved in rotating order each round; each
//! ratio is the geometric mean of its per-round ratios with a 95% t-interval (paired
//! rounds: the machine's drift between rounds cancels). Kernel statistics are off here:
//! these are the real costs, clock reads not included.

use std::collections::HashMap;

use anyhow::{Result, bail};

use super::{
    Daemon, Env, Ours, Report, count_lines,
    invocations::Hooks,
    num,
    pods::Pods,
    stats::{Ratio, median},
};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Arm {
    Detached,
    Empty,
    Imds,
}

impl Arm {
    const ALL: [Arm; 3] = [Arm::Detached, Arm::Empty, Arm::Imds];

    fn label(self) -> &'static str {
        match self {
            Arm::Detached => "detached",
            Arm::Empty => "empty",
            Arm::Imds => "imds-snoop",
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Run {
    gbps: f64,
    rr_mean_us: f64,
    rr_p50_us: f64,
    rr_p99_us: f64,
}

/// (what, the run's figure, unit).
type Metric = (&'static str, fn(&Run) -> f64, &'static str);

pub(crate) struct Plan {
    pub rounds: usize,
    pub iperf_secs: u32,
    pub rr_rounds: u64,
}

pub(crate) fn measure(
    env: &Env,
    pods: &Pods,
    hooks: &Hooks,
    mode: &str,
    plan: &Plan,
    report: &mut Report,
) -> Result<()> {
    println!(
        "## 2. pod -> node -> pod, attach {mode}: iperf3 {} s (Gbit/s) and {} request/response rounds of 64 bytes (µs), {} rounds of detached / empty / imds-snoop in rotating order; {}",
        plan.iperf_secs,
        plan.rr_rounds,
        plan.rounds,
        pods.pinning()
    );
    let mut runs: HashMap<Arm, Vec<Run>> = HashMap::new();
    for r in 0..plan.rounds {
        let mut order = Vec::new();
        let mut this = HashMap::new();
        for k in 0..3 {
            let arm = Arm::ALL[(r + k) % 3];
            order.push(arm.label());
            let run = one(
                env,
                pods,
                hooks,
                mode,
                arm,
                plan,
                &format!("pods-{r}-{}", arm.label()),
            )?;
            this.insert(arm, run);
            runs.entry(arm).or_default().push(run);
        }
        let f = |a: Arm| this[&a];
        println!(
            "round {} [{}]: {:.2} / {:.2} / {:.2} Gbit/s; rr mean {:.1} / {:.1} / {:.1} µs (p99 {:.0} / {:.0} / {:.0})",
            r + 1,
            order.join(" "),
            f(Arm::Detached).gbps,
            f(Arm::Empty).gbps,
            f(Arm::Imds).gbps,
            f(Arm::Detached).rr_mean_us,
            f(Arm::Empty).rr_mean_us,
            f(Arm::Imds).rr_mean_us,
            f(Arm::Detached).rr_p99_us,
            f(Arm::Empty).rr_p99_us,
            f(Arm::Imds).rr_p99_us,
        );
    }
    let col = |a: Arm, f: fn(&Run) -> f64| runs[&a].iter().map(f).collect::<Vec<_>>();
    let ratio = |num_arm: Arm, den: Arm, f: fn(&Run) -> f64| {
        let (n, d) = (col(num_arm, f), col(den, f));
        Ratio::of(&n.iter().zip(&d).map(|(a, b)| a / b).collect::<Vec<_>>())
    };
    let metrics: [Metric; 3] = [
        ("iperf3 throughput", |r| r.gbps, "Gbit/s"),
        ("request/response mean latency", |r| r.rr_mean_us, "µs"),
        ("request/response median latency", |r| r.rr_p50_us, "µs"),
    ];
    for (what, f, unit) in metrics {
        let med = |a: Arm| median(&col(a, f));
        let (a, b, c) = (med(Arm::Detached), med(Arm::Empty), med(Arm::Imds));
        let ib = ratio(Arm::Imds, Arm::Empty, f);
        let ia = ratio(Arm::Imds, Arm::Detached, f);
        let ea = ratio(Arm::Empty, Arm::Detached, f);
        println!(
            "=> {what}, medians {a:.2} / {b:.2} / {c:.2} {unit}; ratios (mean of {} paired rounds [95% interval]): empty/detached {}, imds-snoop/detached {}, imds-snoop/empty {}",
            ia.n,
            ea.show(),
            ia.show(),
            ib.show()
        );
        report.row(
            format!("Pod -> node -> pod `{mode}`: {what}, {unit}, detached / empty / imds-snoop (median of {} rounds)", ia.n),
            format!("{a:.2} / {b:.2} / {c:.2}"),
            String::new(),
            String::new(),
        );
        for (name, r) in [
            ("empty programs / detached", ea),
            ("imds-snoop / detached", ia),
            ("imds-snoop / empty programs", ib),
        ] {
            report.row(
                format!("Pod -> node -> pod `{mode}`: {what}, {name}"),
                r.show(),
                String::new(),
                if r.resolved() {
                    "interval excludes 0%".into()
                } else {
                    "not resolved".into()
                },
            );
        }
    }
    println!();
    Ok(())
}

fn one(
    env: &Env,
    pods: &Pods,
    hooks: &Hooks,
    mode: &str,
    arm: Arm,
    plan: &Plan,
    tag: &str,
) -> Result<Run> {
    let mut daemon = None;
    let mut twins = None;
    match arm {
        Arm::Detached => {}
        Arm::Empty => twins = Some(hooks.twins()?),
        Arm::Imds => daemon = Some(Daemon::start(env, &["--attach", mode], tag)?),
    }
    let gbps = pods.iperf(plan.iperf_secs)?;
    let rr = pods.rr(&env.loadgen, plan.rr_rounds)?;
    drop(twins);
    if let Some(mut d) = daemon {
        d.stop()?;
        // Non-IMDS traffic: a line for it would be a false positive.
        let lines = count_lines(&d.log, Ours::Loadgen)?;
        if lines.ours != 0 {
            bail!(
                "the pod workload is not IMDS traffic, yet the daemon logged {} lines for it ({})",
                lines.ours,
                d.log.display()
            );
        }
    }
    Ok(Run {
        gbps,
        rr_mean_us: num(&rr, "mean_us")?,
        rr_p50_us: num(&rr, "p50_us")?,
        rr_p99_us: num(&rr, "p99_us")?,
    })
}
