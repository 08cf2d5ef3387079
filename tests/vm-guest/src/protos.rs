//! The hook prototypes of the kernel program, checked against the running kernel's BTF.
//!
//! The one source of truth is the eBPF sources themselves: each entry point carries
//! `// proto:` lines (see imds-snoop-ebpf/src/main.rs), embedded here at build time with
//! `include_str!`. In each kernel-matrix guest (and on the host) the runner checks every
//! hook against `/sys/kernel/btf/vmlinux` before the suite, so a kernel that renames a
//! function, changes its arguments or changes a tracepoint's arity turns the matrix red
//! even when the daemon would still load (a kprobe, for one, attaches to a function whatever
//! its arguments are).
//!
//! What is checked, per kind:
//! - `fentry`, `kprobe`: a BTF `FUNC` of that name whose prototype has the same return type
//!   and the same parameter types, in order;
//! - `tp_btf`, `raw_tp`, `tracepoint`: the `btf_trace_<name>` typedef (a pointer to
//!   `void (*)(void *, TP_PROTO...)`): same arity and parameter types;
//! - `cgroup_skb`: each parameter's struct (the program's context) exists.
//!
//! Types compare by their spelling as declared (typedef names are not resolved, so
//! `size_t` must stay `size_t`); `__user`-style type tags are ignored.
//!
//! Which kernels: a hook must be in the BTF of every kernel from its first known version on
//! (after the last one, the newest era must still hold); before its first version it may be
//! absent (the `tcp_sendmsg_locked` tracepoint on 6.12), and when present must match one of
//! its eras. A hook with prototype eras (one line each, `sched_process_exit` gained an
//! argument in 6.14) must match the era whose range holds the kernel.
// Reads BTF from the kernel and text from sources: no slice or index that could panic.
#![warn(clippy::indexing_slicing, clippy::string_slice)]

use btf_rs::{Btf, BtfType, Type};

/// The eBPF sources, as built into this binary (a test checks that none is missing).
pub(crate) const SOURCES: &[(&str, &str)] = &[
    (
        "capture.rs",
        include_str!("../../../imds-snoop-ebpf/src/capture.rs"),
    ),
    (
        "drop.rs",
        include_str!("../../../imds-snoop-ebpf/src/drop.rs"),
    ),
    (
        "kernel.rs",
        include_str!("../../../imds-snoop-ebpf/src/kernel.rs"),
    ),
    (
        "lib.rs",
        include_str!("../../../imds-snoop-ebpf/src/lib.rs"),
    ),
    (
        "main.rs",
        include_str!("../../../imds-snoop-ebpf/src/main.rs"),
    ),
    (
        "process.rs",
        include_str!("../../../imds-snoop-ebpf/src/process.rs"),
    ),
    (
        "response.rs",
        include_str!("../../../imds-snoop-ebpf/src/response.rs"),
    ),
];

const KINDS: [&str; 6] = [
    "fentry",
    "kprobe",
    "tp_btf",
    "raw_tp",
    "tracepoint",
    "cgroup_skb",
];

/// A kernel version, `major.minor` (a patch level, if given, is ignored).
pub(crate) type Version = (u32, u32);

/// One `// proto:` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Proto {
    pub(crate) kind: String,
    /// Function, tracepoint or attach point (`ingress`).
    pub(crate) target: String,
    pub(crate) source: String,
    pub(crate) first: Version,
    pub(crate) last: Version,
    /// Return type (functions and `cgroup_skb`), tokenised; empty for tracepoints.
    pub(crate) ret: Vec<String>,
    /// Parameter types, tokenised (`["const", "struct", "sock", "*"]`), names dropped.
    pub(crate) params: Vec<Vec<String>>,
    /// The prototype as written, for messages.
    pub(crate) text: String,
}

impl Proto {
    /// `kind/target`, as hooks are named in messages (`fentry/tcp_sendmsg`).
    pub(crate) fn hook(&self) -> String {
        format!("{}/{}", self.kind, self.target)
    }

    fn holds(&self, v: Version) -> bool {
        self.first <= v && v <= self.last
    }
}

/// Every `// proto:` line of the embedded eBPF sources.
pub(crate) fn embedded() -> Result<Vec<Proto>, String> {
    let mut out = Vec::new();
    for (file, text) in SOURCES {
        for (n, line) in text.lines().enumerate() {
            if let Some(rest) = line.trim_start().strip_prefix("// proto:") {
                out.push(parse(rest).map_err(|e| format!("{file}:{}: {e}", n + 1))?);
            }
        }
    }
    Ok(out)
}

/// Parses what follows `// proto:`:
/// `KIND TARGET SOURCE FIRST..LAST : PROTOTYPE`.
pub(crate) fn parse(line: &str) -> Result<Proto, String> {
    let (head, text) = line
        .split_once(" : ")
        .ok_or("no ` : ` before the prototype")?;
    let text = text.trim();
    let fields: Vec<&str> = head.split_whitespace().collect();
    let &[kind, target, source, range] = fields.as_slice() else {
        return Err(format!(
            "want `KIND TARGET SOURCE FIRST..LAST`, got {head:?}"
        ));
    };
    if !KINDS.contains(&kind) {
        return Err(format!(
            "unknown kind {kind:?} (known: {})",
            KINDS.join(", ")
        ));
    }
    let (first, last) = range
        .split_once("..")
        .ok_or(format!("bad range {range:?} (want FIRST..LAST)"))?;
    let (first, last) = (version(first)?, version(last)?);
    if first > last {
        return Err(format!("empty range {range}"));
    }
    let open = text.find('(').ok_or("no `(` in the prototype")?;
    let close = text.rfind(')').ok_or("no `)` in the prototype")?;
    let (before, inside) = match (text.get(..open), text.get(open + 1..close)) {
        (Some(b), Some(i)) if close > open => (b.trim(), i),
        _ => return Err("unbalanced parentheses".into()),
    };
    let tracepoint = matches!(kind, "tp_btf" | "raw_tp" | "tracepoint");
    let ret = if tracepoint {
        if before != "TP_PROTO" {
            return Err(format!(
                "a {kind} prototype is `TP_PROTO(...)`, not {before:?}"
            ));
        }
        Vec::new()
    } else if kind == "cgroup_skb" {
        tokens(before)
    } else {
        let ret = before
            .strip_suffix(target)
            .ok_or(format!("the prototype does not name {target}"))?;
        tokens(ret)
    };
    if !tracepoint && ret.is_empty() {
        return Err("no return type".into());
    }
    let params = if inside.trim() == "void" || inside.trim().is_empty() {
        Vec::new()
    } else {
        inside.split(',').map(param_type).collect()
    };
    Ok(Proto {
        kind: kind.into(),
        target: target.into(),
        source: source.into(),
        first,
        last,
        ret,
        params,
        text: text.into(),
    })
}

/// `6.12` (or `6.12.117+deb12-cloud-amd64`, as `uname -r` says it) -> (6, 12).
pub(crate) fn version(s: &str) -> Result<Version, String> {
    let mut parts = s.split(|c: char| !c.is_ascii_digit());
    let mut num = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .ok_or(format!("bad kernel version {s:?}"))
    };
    Ok((num()?, num()?))
}

/// Words that are part of a type, never a parameter's name.
const TYPE_WORDS: [&str; 11] = [
    "int", "long", "char", "short", "unsigned", "signed", "void", "bool", "const", "struct", "*",
];

/// A C type as tokens: `const struct sock *` -> `["const", "struct", "sock", "*"]`.
fn tokens(ty: &str) -> Vec<String> {
    ty.replace('*', " * ")
        .split_whitespace()
        // Sparse annotations: BTF has them as type tags, or not at all.
        .filter(|t| !matches!(*t, "__user" | "__rcu" | "__percpu" | "__iomem"))
        .map(str::to_owned)
        .collect()
}

/// A parameter's type without its name: `const struct sock *sk` -> `const struct sock *`.
fn param_type(param: &str) -> Vec<String> {
    let mut t = tokens(param);
    if t.len() >= 2
        && let Some(last) = t.last()
        && !TYPE_WORDS.contains(&last.as_str())
    {
        t.pop();
    }
    t
}

/// The verdict for one hook on one kernel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// In the BTF, with the expected prototype.
    Match,
    /// Not in the BTF, and not expected this early.
    AbsentOk,
    /// Not as written: missing, or other arguments.
    Drift(String),
}

/// Checks every hook (the lines sharing a kind and target are its eras) against `btf` of a
/// kernel `v`. Returns (hook, verdict) in source order.
pub(crate) fn check(btf: &Btf, v: Version, protos: &[Proto]) -> Vec<(String, Verdict)> {
    let mut hooks: Vec<String> = Vec::new();
    for p in protos {
        if !hooks.contains(&p.hook()) {
            hooks.push(p.hook());
        }
    }
    hooks
        .into_iter()
        .map(|hook| {
            let eras: Vec<&Proto> = protos.iter().filter(|p| p.hook() == hook).collect();
            let verdict = check_hook(btf, v, &eras);
            (hook, verdict)
        })
        .collect()
}

fn check_hook(btf: &Btf, v: Version, eras: &[&Proto]) -> Verdict {
    let Some(&any) = eras.first() else {
        return Verdict::Drift("no prototype".into());
    };
    let found = match lookup(btf, any) {
        Ok(f) => f,
        Err(e) => return Verdict::Drift(e),
    };
    let holding: Vec<&Proto> = eras.iter().copied().filter(|p| p.holds(v)).collect();
    let expected: Vec<&Proto> = if !holding.is_empty() {
        holding
    } else if eras.iter().all(|p| v < p.first) {
        // Before its first known kernel: may be absent; if present, must be one of its eras.
        if found.is_empty() {
            return Verdict::AbsentOk;
        }
        eras.to_vec()
    } else {
        // After the last known kernel (or between eras): the newest era before `v` holds.
        eras.iter()
            .copied()
            .filter(|p| p.first <= v)
            .max_by_key(|p| p.first)
            .into_iter()
            .collect()
    };
    if found.is_empty() {
        return Verdict::Drift(format!(
            "{} is not in this kernel's BTF (expected from {}.{})",
            any.hook(),
            any.first.0,
            any.first.1
        ));
    }
    for shape in &found {
        if expected.iter().any(|p| shape.matches(p)) {
            return Verdict::Match;
        }
    }
    let want: Vec<&str> = expected.iter().map(|p| p.text.as_str()).collect();
    let have: Vec<String> = found.iter().map(Shape::display).collect();
    Verdict::Drift(format!(
        "{}: this kernel has {}, the source says {}",
        any.hook(),
        have.join(" or "),
        want.join(" or ")
    ))
}

/// A prototype as the kernel's BTF has it.
#[derive(Debug)]
struct Shape {
    /// None: not compared (tracepoints return nothing we use).
    ret: Option<Vec<String>>,
    params: Vec<Vec<String>>,
}

impl Shape {
    fn matches(&self, p: &Proto) -> bool {
        self.params == p.params && self.ret.as_ref().is_none_or(|r| *r == p.ret)
    }

    fn display(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|t| t.join(" ")).collect();
        match &self.ret {
            Some(r) => format!("`{} ({})`", r.join(" "), params.join(", ")),
            None => format!("`TP_PROTO({})`", params.join(", ")),
        }
    }
}

/// The shapes the kernel's BTF has for a hook (none: absent).
fn lookup(btf: &Btf, p: &Proto) -> Result<Vec<Shape>, String> {
    let err = |e: btf_rs::Error| format!("{}: reading BTF: {e}", p.hook());
    match p.kind.as_str() {
        "fentry" | "kprobe" => {
            let mut shapes = Vec::new();
            for ty in btf.resolve_types_by_name(&p.target).unwrap_or_default() {
                let Type::Func(f) = ty else { continue };
                let Type::FuncProto(proto) = btf.resolve_chained_type(&f).map_err(err)? else {
                    continue;
                };
                let ret = btf
                    .resolve_type_by_id(proto.return_type_id())
                    .map_err(err)?;
                shapes.push(Shape {
                    ret: Some(render(btf, &ret).map_err(err)?),
                    params: params(btf, &proto.parameters).map_err(err)?,
                });
            }
            Ok(shapes)
        }
        "cgroup_skb" => {
            // The context struct(s) named by the parameters must exist.
            for param in &p.params {
                let Some(name) = struct_name(param) else {
                    return Err(format!("{}: {param:?} is not a struct pointer", p.hook()));
                };
                let found = btf
                    .resolve_types_by_name(name)
                    .unwrap_or_default()
                    .into_iter()
                    .any(|t| matches!(t, Type::Struct(_)));
                if !found {
                    return Ok(Vec::new());
                }
            }
            Ok(vec![Shape {
                ret: Some(p.ret.clone()),
                params: p.params.clone(),
            }])
        }
        _ => {
            let name = format!("btf_trace_{}", p.target);
            let mut shapes = Vec::new();
            for ty in btf.resolve_types_by_name(&name).unwrap_or_default() {
                let Type::Typedef(td) = ty else { continue };
                let Type::Ptr(ptr) = btf.resolve_chained_type(&td).map_err(err)? else {
                    continue;
                };
                let Type::FuncProto(proto) = btf.resolve_chained_type(&ptr).map_err(err)? else {
                    continue;
                };
                // The first parameter is the probe's `void *__data`.
                let mut all = params(btf, &proto.parameters).map_err(err)?;
                if all.first().is_some_and(|t| t == &["void", "*"]) {
                    all.remove(0);
                }
                shapes.push(Shape {
                    ret: None,
                    params: all,
                });
            }
            Ok(shapes)
        }
    }
}

/// `struct X *` -> `X`.
fn struct_name(param: &[String]) -> Option<&str> {
    match param {
        [s, name, star] if s == "struct" && star == "*" => Some(name),
        _ => None,
    }
}

fn params(btf: &Btf, ps: &[btf_rs::Parameter]) -> Result<Vec<Vec<String>>, btf_rs::Error> {
    ps.iter()
        .map(|p| {
            if p.is_variadic() {
                return Ok(vec!["...".to_owned()]);
            }
            render(btf, &btf.resolve_chained_type(p)?)
        })
        .collect()
}

/// A BTF type spelled as C declares it, as tokens (see [`tokens`]).
fn render(btf: &Btf, ty: &Type) -> Result<Vec<String>, btf_rs::Error> {
    let named = |t: &dyn BtfType, prefix: Option<&str>| -> Result<Vec<String>, btf_rs::Error> {
        let name = btf.resolve_name(t)?;
        let mut v: Vec<String> = prefix.map(str::to_owned).into_iter().collect();
        v.extend(tokens(&name));
        Ok(v)
    };
    Ok(match ty {
        Type::Void => vec!["void".to_owned()],
        Type::Ptr(p) => {
            let mut v = render(btf, &btf.resolve_chained_type(p)?)?;
            v.push("*".to_owned());
            v
        }
        Type::Const(c) => {
            let mut v = vec!["const".to_owned()];
            v.extend(render(btf, &btf.resolve_chained_type(c)?)?);
            v
        }
        Type::Volatile(c) => {
            let mut v = vec!["volatile".to_owned()];
            v.extend(render(btf, &btf.resolve_chained_type(c)?)?);
            v
        }
        Type::Restrict(c) => render(btf, &btf.resolve_chained_type(c)?)?,
        Type::TypeTag(t) => render(btf, &btf.resolve_chained_type(t)?)?,
        Type::Struct(s) => named(s, Some("struct"))?,
        Type::Union(u) => named(u, Some("union"))?,
        Type::Enum(e) => named(e, Some("enum"))?,
        Type::Enum64(e) => named(e, Some("enum"))?,
        Type::Fwd(f) => named(f, Some("struct"))?,
        Type::Int(i) => named(i, None)?,
        Type::Float(f) => named(f, None)?,
        Type::Typedef(t) => named(t, None)?,
        other => vec![format!("<{}>", other.name())],
    })
}

/// Runs the check on this kernel and prints one `IMDS-PROTO` line per hook and the
/// `IMDS-PROTOS` summary the host parses:
/// `IMDS-PROTOS kernel=K result=pass|fail hooks=N [reason=...]`. Returns whether it passed.
pub(crate) fn run(kernel: &str, btf_path: &str, out: &dyn Fn(&str)) -> bool {
    let summary = |ok: bool, n: usize, reason: Option<&str>| {
        let mut line = format!(
            "IMDS-PROTOS kernel={kernel} result={} hooks={n}",
            if ok { "pass" } else { "fail" }
        );
        if let Some(r) = reason {
            line.push_str(" reason=");
            line.push_str(r);
        }
        out(&line);
        ok
    };
    let protos = match embedded() {
        Ok(p) => p,
        Err(e) => return summary(false, 0, Some(&format!("bad proto line: {e}"))),
    };
    let v = match version(kernel) {
        Ok(v) => v,
        Err(e) => return summary(false, 0, Some(&e)),
    };
    let btf = match std::fs::read(btf_path)
        .map_err(|e| e.to_string())
        .and_then(|b| Btf::from_bytes(&b).map_err(|e| e.to_string()))
    {
        Ok(b) => b,
        Err(e) => return summary(false, 0, Some(&format!("{btf_path}: {e}"))),
    };
    let results = check(&btf, v, &protos);
    let mut drifts = Vec::new();
    for (hook, verdict) in &results {
        let (result, detail) = match verdict {
            Verdict::Match => ("ok", String::new()),
            Verdict::AbsentOk => ("absent", " (before its first known kernel)".to_owned()),
            Verdict::Drift(why) => {
                drifts.push(why.clone());
                ("DRIFT", format!(" {why}"))
            }
        };
        out(&format!(
            "IMDS-PROTO kernel={kernel} hook={hook} result={result}{detail}"
        ));
    }
    let reason = (!drifts.is_empty()).then(|| drifts.join(" | "));
    summary(drifts.is_empty(), results.len(), reason.as_deref())
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    reason = "tests index known results; a panic there is a failed test"
)]
mod tests {
    use super::*;

    const HOST_BTF: &str = "/sys/kernel/btf/vmlinux";

    #[test]
    fn parses_a_function_and_a_tracepoint() {
        let p = parse(
            " fentry tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : int tcp_sendmsg(struct sock *sk, \
             struct msghdr *msg, size_t size)",
        )
        .unwrap();
        assert_eq!(p.hook(), "fentry/tcp_sendmsg");
        assert_eq!(p.source, "net/ipv4/tcp.c");
        assert_eq!((p.first, p.last), ((4, 1), (6, 18)));
        assert_eq!(p.ret, ["int"]);
        assert_eq!(
            p.params,
            [
                vec!["struct", "sock", "*"],
                vec!["struct", "msghdr", "*"],
                vec!["size_t"]
            ]
        );
        let t = parse(
            " tp_btf tcp_sendmsg_locked include/trace/events/tcp.h 6.13..6.18 : \
             TP_PROTO(const struct sock *sk, const struct msghdr *msg, \
             const struct sk_buff *skb, int size_goal)",
        )
        .unwrap();
        assert!(t.ret.is_empty());
        assert_eq!(t.params.len(), 4);
        assert_eq!(t.params[0], ["const", "struct", "sock", "*"]);
        assert_eq!(t.params[3], ["int"]);
        let c = parse(
            " cgroup_skb ingress include/uapi/linux/bpf.h 4.10..6.18 : int (struct __sk_buff *skb)",
        )
        .unwrap();
        assert_eq!(
            (c.ret.as_slice(), c.params.len()),
            (&["int".to_owned()][..], 1)
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "fentry tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 int tcp_sendmsg(struct sock *sk)",
            "fentry tcp_sendmsg 4.1..6.18 : int tcp_sendmsg(struct sock *sk)",
            "uprobe tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : int tcp_sendmsg(struct sock *sk)",
            "fentry tcp_sendmsg net/ipv4/tcp.c 6.18..4.1 : int tcp_sendmsg(struct sock *sk)",
            "fentry tcp_sendmsg net/ipv4/tcp.c 4.1-6.18 : int tcp_sendmsg(struct sock *sk)",
            "fentry tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : int tcp_recvmsg(struct sock *sk)",
            "tp_btf x include/trace/events/x.h 5.5..6.18 : int x(struct sock *sk)",
            "fentry tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : int tcp_sendmsg)struct sock *sk(",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(version("6.12.117+deb12-cloud-amd64"), Ok((6, 12)));
        assert_eq!(version("5.10.0-46-cloud-amd64"), Ok((5, 10)));
        assert_eq!(version("6.18.44-fc-v769"), Ok((6, 18)));
        assert_eq!(version("6.1"), Ok((6, 1)));
        assert!(version("six").is_err());
    }

    /// The sources in this binary are all of the eBPF crate's, and every entry point has
    /// its prototype.
    #[test]
    fn every_source_and_hook_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../imds-snoop-ebpf/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".rs"))
            .collect();
        on_disk.sort();
        let embedded_names: Vec<&str> = SOURCES.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, embedded_names, "add new eBPF sources to SOURCES");

        let protos = embedded().unwrap();
        let hooks: Vec<String> = protos.iter().map(Proto::hook).collect();
        for (file, text) in SOURCES {
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            for (i, &line) in lines.iter().enumerate() {
                let hook = if let Some(rest) = line.strip_prefix("#[fentry(function = \"") {
                    format!("fentry/{}", rest.trim_end_matches("\")]"))
                } else if let Some(rest) = line.strip_prefix("#[btf_tracepoint(function = \"") {
                    format!("tp_btf/{}", rest.trim_end_matches("\")]"))
                } else if line == "#[kprobe]" {
                    "kprobe/".to_owned()
                } else if line.starts_with("#[cgroup_skb") {
                    "cgroup_skb/".to_owned()
                } else {
                    continue;
                };
                assert!(
                    hooks.iter().any(|h| h.starts_with(&hook)),
                    "{hook}: an entry point without a `// proto:` line"
                );
                // The real programs (not the benchmark's empty ones) say where they were
                // proven, in the comment block right above them.
                let comments = lines[..i].iter().rev().take_while(|l| l.starts_with("//"));
                let (proto, proven) = comments.fold((false, false), |(p, q), l| {
                    (
                        p || l.starts_with("// proto:"),
                        q || l.starts_with("// proven:"),
                    )
                });
                assert!(
                    proto == proven,
                    "{file}:{}: a `// proto:` line without its `// proven:` line",
                    i + 1
                );
            }
        }
        assert_eq!(
            hooks,
            [
                "fentry/tcp_sendmsg",
                "kprobe/tcp_sendmsg",
                "tp_btf/tcp_sendmsg_locked",
                "tp_btf/kfree_skb",
                "tp_btf/kfree_skb",
                "tp_btf/kfree_skb",
                "tp_btf/sched_process_exec",
                "tp_btf/sched_process_exit",
                "tp_btf/sched_process_exit",
                "tp_btf/sched_process_fork",
                "cgroup_skb/ingress"
            ]
        );
    }

    /// The host's BTF; None (skipped, loudly) where the kernel has none, except under CI.
    fn host_btf() -> Option<(Btf, Version)> {
        let Ok(bytes) = std::fs::read(HOST_BTF) else {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "{HOST_BTF} unreadable under CI"
            );
            eprintln!("SKIPPED: {HOST_BTF} unreadable: this kernel has no BTF");
            return None;
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        Some((
            Btf::from_bytes(&bytes).unwrap(),
            version(release.trim()).unwrap(),
        ))
    }

    #[test]
    fn the_host_kernel_has_every_prototype() {
        let Some((btf, v)) = host_btf() else { return };
        let protos = embedded().unwrap();
        for (hook, verdict) in check(&btf, v, &protos) {
            assert!(
                matches!(verdict, Verdict::Match | Verdict::AbsentOk),
                "{hook} on {v:?}: {verdict:?}"
            );
        }
        // 6.18 (this project's CI host) has them all, the tracepoint included.
        if v >= (6, 13) {
            assert!(
                check(&btf, v, &protos)
                    .iter()
                    .all(|(_, verdict)| *verdict == Verdict::Match)
            );
        }
    }

    #[test]
    fn drift_is_caught() {
        let Some((btf, v)) = host_btf() else { return };
        let drift = |line: &str| {
            let p = parse(line).unwrap();
            let results = check(&btf, v, &[p]);
            assert_eq!(results.len(), 1);
            matches!(results[0].1, Verdict::Drift(_))
        };
        // As written: no drift.
        assert!(!drift(
            "fentry tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : int tcp_sendmsg(struct sock *sk, \
             struct msghdr *msg, size_t size)"
        ));
        // An argument too many, a different type, a different return type, a missing
        // function.
        assert!(drift(
            "fentry tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : int tcp_sendmsg(struct sock *sk, \
             struct msghdr *msg, size_t size, int flags)"
        ));
        assert!(drift(
            "kprobe tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : int tcp_sendmsg(struct socket *sk, \
             struct msghdr *msg, size_t size)"
        ));
        assert!(drift(
            "kprobe tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : long tcp_sendmsg(struct sock *sk, \
             struct msghdr *msg, size_t size)"
        ));
        assert!(drift(
            "fentry tcp_sendmsg_nope net/ipv4/tcp.c 4.1..6.18 : int tcp_sendmsg_nope(struct sock *sk)"
        ));
        // A tracepoint's arity: sched_process_exit's one-argument era does not hold on
        // 6.14+; kfree_skb (2, 3 or 4 arguments on 5.10, 5.17+, 6.11+) the same way.
        if v >= (6, 14) {
            assert!(drift(
                "tp_btf sched_process_exit include/trace/events/sched.h 3.0..6.18 : \
                 TP_PROTO(struct task_struct *p)"
            ));
        }
        if v >= (6, 11) {
            assert!(drift(
                "tp_btf kfree_skb include/trace/events/skb.h 5.17..6.18 : \
                 TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason)"
            ));
            assert!(!drift(
                "tp_btf kfree_skb include/trace/events/skb.h 6.11..6.18 : \
                 TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, \
                 struct sock *rx_sk)"
            ));
        }
        // Before its first known kernel a hook may be absent, but not after it.
        let absent = parse(
            "tp_btf no_such_tracepoint include/trace/events/x.h 99.0..99.1 : TP_PROTO(int x)",
        )
        .unwrap();
        assert_eq!(check(&btf, v, &[absent])[0].1, Verdict::AbsentOk);
        assert!(drift(
            "tp_btf no_such_tracepoint include/trace/events/x.h 5.0..6.0 : TP_PROTO(int x)"
        ));
        // cgroup_skb: the context struct must exist.
        assert!(drift(
            "cgroup_skb ingress include/uapi/linux/bpf.h 4.10..6.18 : int (struct __no_such_ctx *skb)"
        ));
    }
}
