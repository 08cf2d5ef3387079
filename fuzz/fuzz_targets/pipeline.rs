//! The whole userspace path (imds-snoop/src/pipeline.rs, through `imds_snoop::fuzzing`) on
//! ring records and a node tree that an attacker shapes: processes with hostile argv, uids
//! and cgroup files, fake `containerd-shim` ancestors with any `-id`, a user-written
//! config.json where a path id would lead, next to one real runtime (a root-owned socket,
//! task directory and bundle naming pod `shop/real-pod`, its shim the parent of the
//! bundle's init).
//!
//! Input: a sequence of operations, each a selector byte and its fields (see `op`); the
//! first operation is always a complete v2 request carrying [`TOKEN`] in its header.
//! Properties, checked on every input:
//! - nothing panics;
//! - one line per record: no CR or LF in a text line, each JSON line one object;
//! - bounded lines (see [`MAX_TEXT`], [`MAX_JSON`]);
//! - no 20-character piece of [`TOKEN`] in any line, text or JSON (it was seen in a
//!   header first; then argv, comm, path, user agent may carry it anywhere);
//! - the only pod any line names is `shop/real-pod`, the one a real bundle names.
#![no_main]

use std::{
    fs,
    io::Write as _,
    mem::size_of,
    os::unix::fs::{MetadataExt as _, chown},
    path::PathBuf,
    sync::OnceLock,
};

use imds_snoop::fuzzing::{FuzzPipeline, Line};
use imds_snoop_common::{
    AF_INET, Ancestor, COMM_LEN, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EVENT_HOP_DROP,
    EVENT_RESPONSE, EVENT_SEND, ExecEvent, ExitEvent, ForkEvent, HopDropEvent, MAX_ANCESTORS,
    MAX_ARGV, ResponseEvent, SendEvent,
};
use libfuzzer_sys::fuzz_target;

/// Shaped like an IMDS token (56 base64 characters), never in the seeds.
const TOKEN: &str = "AQAEAPipelineFuzzToken0123456789ZYXWVUTSRQPONMLKabcdefg==";
const PIECE: usize = 20;
/// The real bundle's container, and a second id whose bundle a user "wrote".
const REAL_ID: &str = "abc123def4567890abc123def4567890abc123def4567890abc123def4567890";
const FORGED_ID: &str = "fff123def4567890abc123def4567890abc123def4567890abc123def4567890";
const SHIM_PID: u32 = 90;
const INIT_PID: u32 = 91;
/// Pids the input's processes take: `FIRST_PID + slot`.
const FIRST_PID: u32 = 100;
const SLOTS: u8 = 16;
/// Bounds on one line: argv (512 chars) of the caller and up to 32 ancestors, each char
/// escaped to at most 4, plus the request details (bounded by the request bytes kept).
const MAX_TEXT: usize = 34 * 4 * 600 + 8 * 16 * 1024;
const MAX_JSON: usize = 2 * MAX_TEXT;

/// The fixed part of the tree: the real runtime and the user's forged bundles.
struct Node {
    root: PathBuf,
    owner: u32,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("imds-fuzz-pipeline-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let state = root.join("run/containerd");
        let tasks = state.join("io.containerd.runtime.v2.task/k8s.io");
        let bundle = tasks.join(REAL_ID);
        fs::create_dir_all(&bundle).unwrap();
        fs::create_dir_all(root.join("sys/fs/cgroup")).unwrap();
        fs::create_dir_all(root.join("var/log/pods")).unwrap();
        let owner = fs::metadata(&root).unwrap().uid();
        let config = |name: &str| {
            format!(
                r#"{{"annotations":{{"io.kubernetes.cri.sandbox-name":"{name}","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.container-name":"app"}}}}"#
            )
        };
        fs::write(bundle.join("config.json"), config("real-pod")).unwrap();
        fs::write(bundle.join("init.pid"), INIT_PID.to_string()).unwrap();
        std::mem::forget(
            std::os::unix::net::UnixListener::bind(state.join("containerd.sock")).unwrap(),
        );
        let proc_dir = |pid: u32| root.join("proc").join(pid.to_string());
        fs::create_dir_all(proc_dir(INIT_PID)).unwrap();
        fs::write(
            proc_dir(INIT_PID).join("stat"),
            format!("{INIT_PID} (pause) S {SHIM_PID} 1 1 0"),
        )
        .unwrap();
        fs::create_dir_all(proc_dir(SHIM_PID)).unwrap();
        fs::write(
            proc_dir(SHIM_PID).join("cmdline"),
            format!(
                "/usr/bin/containerd-shim-runc-v2\0-namespace\0k8s.io\0-id\0{REAL_ID}\0-address\0/run/containerd/containerd.sock\0"
            ),
        )
        .unwrap();
        fs::write(
            proc_dir(SHIM_PID).join("status"),
            format!("Uid:\t{owner}\t{owner}\t{owner}\t{owner}\n"),
        )
        .unwrap();
        // What a user can write: its own config.json (where a path id used to lead) and,
        // if this run may give files away, a bundle of another id owned by someone else.
        let user = owner.wrapping_add(1);
        let evil = root.join("tmp/evil");
        fs::create_dir_all(&evil).unwrap();
        fs::write(evil.join("config.json"), config("forged")).unwrap();
        let forged = tasks.join(FORGED_ID);
        fs::create_dir_all(&forged).unwrap();
        let given = [&evil, &forged].iter().all(|d| chown(d, Some(user), None).is_ok());
        if given {
            fs::write(forged.join("config.json"), config("forged")).unwrap();
            fs::write(forged.join("init.pid"), INIT_PID.to_string()).unwrap();
            chown(forged.join("config.json"), Some(user), None).unwrap();
        }
        Node { root, owner }
    })
}

/// Reads the input front to back; past its end, zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.byte() as usize).min(max).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken.to_vec()
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// `bytes` with [`TOKEN`] put in at a place the input picks, when its flag says so.
fn with_token(mut bytes: Vec<u8>, input: &mut Input) -> Vec<u8> {
    let at = input.byte();
    if at & 1 != 0 {
        let at = (at as usize >> 1).min(bytes.len());
        bytes.splice(at..at, TOKEN.bytes());
    }
    bytes
}

fn pid_of(slot: u8) -> u32 {
    FIRST_PID + u32::from(slot % SLOTS)
}

/// Shim argv words an attacker would try.
fn hostile_shim(choice: u8) -> Vec<u8> {
    let id = match choice % 4 {
        0 => "a\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}".to_owned(),
        1 => "../../../../../../tmp/evil".to_owned(),
        2 => REAL_ID.to_owned(),
        _ => FORGED_ID.to_owned(),
    };
    format!(
        "/tmp/containerd-shim-x\0-namespace\0k8s.io\0-id\0{id}\0-address\0/run/containerd/containerd.sock\0"
    )
    .into_bytes()
}

/// Writes process `slot`'s /proc files as the input says.
fn process(input: &mut Input) {
    let node = node();
    let pid = pid_of(input.byte());
    let dir = node.root.join("proc").join(pid.to_string());
    fs::create_dir_all(&dir).unwrap();
    let kind = input.byte();
    let argv = if kind & 1 != 0 {
        hostile_shim(kind >> 1)
    } else {
        let argv = input.bytes(96);
        with_token(argv, input)
    };
    fs::write(dir.join("cmdline"), argv).unwrap();
    let uid = if kind & 8 != 0 {
        node.owner
    } else {
        node.owner.wrapping_add(1)
    };
    fs::write(
        dir.join("status"),
        format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
    )
    .unwrap();
    let cgroup = match input.byte() % 4 {
        0 => b"0::/system.slice/app.service\n".to_vec(),
        1 => format!("0::/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{REAL_ID}\n")
            .into_bytes(),
        2 => {
            format!("0::/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{FORGED_ID}\n")
                .into_bytes()
        }
        _ => input.bytes(128),
    };
    fs::write(dir.join("cgroup"), cgroup).unwrap();
    fs::write(
        dir.join("stat"),
        format!("{pid} (x) S {} 1 1 0", pid_of(input.byte())),
    )
    .unwrap();
}

fn comm(bytes: &[u8]) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    for (d, s) in c.iter_mut().zip(bytes) {
        *d = *s;
    }
    c
}

fn bytes_of<T: Copy>(event: &T) -> Vec<u8> {
    // SAFETY: T is one of the shared event types: repr(C), integers only, padding spelled
    // out as fields (asserted in imds-snoop-common), so every byte is initialized.
    unsafe { std::slice::from_raw_parts((event as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn send(
    sock: u64,
    sport: u16,
    tgid: u32,
    name: &[u8],
    ancestors: &[u32],
    payload: &[u8],
) -> Vec<u8> {
    let mut chain = [Ancestor::default(); MAX_ANCESTORS];
    for (slot, &pid) in chain.iter_mut().zip(ancestors) {
        *slot = Ancestor {
            tgid: pid,
            comm: comm(if pid == SHIM_PID {
                b"containerd-shim"
            } else {
                name
            }),
        };
    }
    let head = SendEvent {
        kind: EVENT_SEND,
        flags: 0,
        ts_ns: 1,
        sock_id: sock,
        cgroup_id: 0,
        size: payload.len() as u64,
        tgid,
        tid: tgid,
        uid: 65534,
        gid: 65534,
        netns: 1,
        family: AF_INET,
        dport: 80,
        daddr: [u32::from_ne_bytes([169, 254, 169, 254]), 0, 0, 0],
        payload_len: payload.len() as u32,
        ancestors_len: ancestors.len().min(MAX_ANCESTORS) as u32,
        ns_tgid: tgid,
        sport,
        _pad: 0,
        saddr: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
        comm: comm(name),
        ancestors: chain,
    };
    let mut record = bytes_of(&head);
    record.extend_from_slice(payload);
    record
}

/// One ring record from the input.
fn op(input: &mut Input) -> Option<Vec<u8>> {
    match input.byte() % 8 {
        0 | 1 => {
            let sock = u64::from(input.byte() % 8);
            let tgid = pid_of(input.byte());
            let name = input.bytes(COMM_LEN);
            let mut ancestors: Vec<u32> = (0..input.byte() % 4)
                .map(|_| pid_of(input.byte()))
                .collect();
            if input.byte() & 1 != 0 {
                ancestors.push(SHIM_PID);
            }
            let payload = input.bytes(255);
            let payload = with_token(payload, input);
            Some(send(
                sock,
                40000 + sock as u16,
                tgid,
                &name,
                &ancestors,
                &payload,
            ))
        }
        2 => {
            let tgid = pid_of(input.byte());
            let argv = input.bytes(255);
            let argv = with_token(argv, input);
            let mut ev = ExecEvent {
                kind: EVENT_EXEC,
                tgid,
                ppid: pid_of(input.byte()),
                uid: 65534,
                ts_ns: 1,
                argv_len: argv.len().min(MAX_ARGV) as u32,
                comm: comm(&argv),
                _pad: 0,
                argv: [0; MAX_ARGV],
            };
            for (d, s) in ev.argv.iter_mut().zip(&argv) {
                *d = *s;
            }
            Some(bytes_of(&ev))
        }
        3 => Some(bytes_of(&ForkEvent {
            kind: EVENT_FORK,
            tgid: pid_of(input.byte()),
            ppid: pid_of(input.byte()),
            _pad: 0,
        })),
        4 => Some(bytes_of(&ExitEvent {
            kind: EVENT_EXIT,
            tgid: pid_of(input.byte()),
            ts_ns: 1,
        })),
        5 => Some(bytes_of(&ResponseEvent {
            kind: EVENT_RESPONSE,
            status: u16::from(input.byte()) + 100,
            family: AF_INET,
            ts_ns: 2,
            laddr: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            raddr: [u32::from_ne_bytes([169, 254, 169, 254]), 0, 0, 0],
            lport: 40000 + u16::from(input.byte() % 8),
            rport: 80,
            _pad: 0,
        })),
        // A reply dropped at the hop limit: joins a waiting request on its port, or is an
        // unmatched drop (or a repeat).
        6 => Some(bytes_of(&HopDropEvent {
            kind: EVENT_HOP_DROP,
            ttl: input.byte() % 2,
            how: input.byte() % 3,
            family: AF_INET,
            reason: u32::from(input.byte()),
            netns: 4026531840,
            ts_ns: 3,
            laddr: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            raddr: [u32::from_ne_bytes([169, 254, 169, 254]), 0, 0, 0],
            lport: 40000 + u16::from(input.byte() % 8),
            rport: 80,
            _pad: 0,
        })),
        _ => {
            process(input);
            None
        }
    }
}

fn check(lines: &[Line]) {
    for l in lines {
        assert!(!l.text.contains(['\n', '\r']), "a line break: {:?}", l.text);
        assert!(
            l.text.len() <= MAX_TEXT,
            "text line of {} bytes",
            l.text.len()
        );
        assert!(
            l.json.len() <= MAX_JSON,
            "JSON line of {} bytes",
            l.json.len()
        );
        assert!(!l.json.contains(['\n', '\r']), "a line break: {:?}", l.json);
        let v: serde_json::Value = serde_json::from_str(&l.json).expect("one JSON object");
        assert!(v.is_object());
        for piece in TOKEN.as_bytes().windows(PIECE) {
            let piece = std::str::from_utf8(piece).unwrap();
            assert!(!l.text.contains(piece), "token piece {piece} in {}", l.text);
            assert!(!l.json.contains(piece), "token piece {piece} in {}", l.json);
        }
        if let Some((ns, name)) = &l.pod {
            assert_eq!(
                (ns.as_str(), name.as_str()),
                ("shop", "real-pod"),
                "{}",
                l.text
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let node = node();
    // A fresh set of processes for each input.
    for slot in 0..SLOTS {
        let _ = fs::remove_dir_all(node.root.join("proc").join(pid_of(slot).to_string()));
    }
    let mut p = FuzzPipeline::new(&node.root, node.owner);
    let mut first = Vec::new();
    let _ = write!(
        first,
        "GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: {TOKEN}\r\n\r\n"
    );
    check(&p.push(&send(99, 39999, pid_of(0), b"seed", &[], &first)));
    let mut input = Input(data);
    let mut ops = 0;
    while !input.done() && ops < 64 {
        ops += 1;
        if let Some(record) = op(&mut input) {
            check(&p.push(&record));
        }
    }
    check(&p.finish());
});
