//! The userspace stages between the ring buffer and the formatter, in order: decode (ring
//! record -> event), http (per-socket reassembly -> requests), attribution (caller, its
//! ancestors, container and pod), outcome (a request waits for its response's status, or
//! times out) -> [`Record`]s.
//!
//! No aya type and nothing privileged here: the input is the bytes of ring-buffer records
//! and a directory tree ([`Paths`], the node's `/proc`, cgroups and runtime state, or a fake
//! one under any root, see [`Paths::under`]), so the whole path is unit-tested without root
//! (see the tests below) and can be fuzzed.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::{
    attribution::{Attribution, Paths},
    clock::BootClock,
    decode::{self, Event, HopDrop, Send},
    http::{Reassembler, Request},
    outcome::{Answer, DropJoin, Outcomes},
    record::{Outcome, Record, Untraced},
    redact::SeenTokens,
};

/// A request whose headers have not ended after this long is logged as it is (truncated).
const REASSEMBLY_TTL: Duration = Duration::from_secs(2);
/// Bytes of one request kept while waiting for the end of its headers.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Requests waiting for their response (each a few hundred bytes); more are logged at once.
const MAX_WAITING_FOR_RESPONSE: usize = 8192;

/// The stages and their state: per-socket reassembly, the attribution caches, requests
/// waiting for their response, and the boot-to-wall clock offset.
pub(crate) struct Pipeline {
    reassembler: Reassembler<Send>,
    attribution: Attribution,
    outcomes: Outcomes,
    clock: BootClock,
    decode_errors: u64,
    /// Token values seen in requests: redacted from every field of every record.
    tokens: SeenTokens,
    /// The response program was just found blind (see [`Self::take_blind`]).
    blind: bool,
    /// Inode of the node's network namespace, to say whether each caller is in it.
    host_netns: Option<u32>,
    /// Hop-limit drops that matched no waiting request, to be written on their own
    /// ([`Self::take_unmatched_drops`]); bounded by [`MAX_UNMATCHED_DROPS`] between takes.
    unmatched_drops: Vec<HopDrop>,
    /// Answers to calls that were not traced, for [`Self::take_untraced`].
    untraced: Vec<Untraced>,
}

/// Unmatched drops held between two takes by the daemon (it takes them after every drain);
/// past this they are only counted (`Outcomes::drops_unmatched`).
const MAX_UNMATCHED_DROPS: usize = 256;

impl Pipeline {
    /// `paths`: where `/proc`, the cgroup tree and the runtimes' state are read.
    /// `response_timeout`: how long a request waits for its response's status; `None` when
    /// responses are not traced (every record then comes out as soon as it is attributed).
    pub(crate) fn new(paths: Paths, response_timeout: Option<Duration>) -> Self {
        Self {
            reassembler: Reassembler::new(MAX_REQUEST_BYTES, REASSEMBLY_TTL),
            attribution: Attribution::new(paths),
            outcomes: Outcomes::new(response_timeout, MAX_WAITING_FOR_RESPONSE, Instant::now()),
            clock: BootClock::now(),
            decode_errors: 0,
            tokens: SeenTokens::new(),
            blind: false,
            host_netns: None,
            unmatched_drops: Vec::new(),
            untraced: Vec::new(),
        }
    }

    /// The node's network namespace (its inode): each record then says whether its socket
    /// is in it (`net:host`) or not (`net:other`).
    pub(crate) fn with_host_netns(mut self, inode: Option<u32>) -> Self {
        self.host_netns = inode;
        self
    }

    /// One ring-buffer record (a kernel event's bytes, as the ring hands them over). Appends
    /// to `out` the records it completes, in the order they are to be written: none (a head
    /// still incomplete, a request waiting for its status, an exec/fork/exit event), one, or
    /// several (pipelined requests, a response releasing a waiting request). `now`: when the
    /// drain this record belongs to began (ages in the reassembly and exec caches). An
    /// undecodable record is counted ([`Self::decode_errors`]) and warned about, never fatal.
    pub(crate) fn push(&mut self, record: &[u8], now: Instant, out: &mut Vec<Record>) {
        match decode::decode(record) {
            Ok(Event::Send(send)) => self.on_send(send, now, out),
            Ok(Event::Exec(exec)) => self.attribution.on_exec(exec, now),
            Ok(Event::Exit { tgid }) => self.attribution.on_exit(tgid, now),
            Ok(Event::Fork { tgid, ppid }) => self.attribution.on_fork(tgid, ppid, now),
            Ok(Event::Response(response)) => match self.outcomes.response(&response, now) {
                Answer::Request(record) => out.push(record),
                Answer::Untraced(r) => self.untraced.push(Untraced {
                    time: self.clock.wall(r.ts_ns),
                    status: r.status,
                    local: r.local,
                    remote: r.remote,
                }),
                Answer::Nothing => {}
            },
            Ok(Event::HopDrop(drop)) => match self.outcomes.hop_drop(&drop, now) {
                DropJoin::Matched(record) => out.push(*record),
                DropJoin::Repeat => {}
                DropJoin::Unmatched => {
                    if self.unmatched_drops.len() < MAX_UNMATCHED_DROPS {
                        self.unmatched_drops.push(drop);
                    }
                }
            },
            Err(e) => {
                self.decode_errors += 1;
                if self.decode_errors.is_power_of_two() {
                    warn!(count = self.decode_errors, "undecodable kernel event: {e}");
                }
            }
        }
    }

    /// The daemon's 1 s tick: re-reads the clock offset, ages the caches, and appends to
    /// `out` the heads that timed out (truncated) and the requests whose wait for a status
    /// is over (as unanswered).
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<Record>) {
        self.clock = BootClock::now();
        self.attribution.sweep(now);
        self.tokens.sweep(now);
        self.outcomes.sweep(now);
        for (ctx, request) in self.reassembler.expire(now) {
            self.emit(ctx, request, out);
        }
        out.extend(self.outcomes.expire(now));
        if self.outcomes.blind() {
            warn!(
                "the response program saw no reply to any IMDS call so far (cgroup v1 \
                 net_cls/net_prio in use?): statuses and hop-limit warnings are unreliable; \
                 consider --responses off"
            );
            self.blind = true;
        }
    }

    /// True once, after the response program was found blind (see `Outcomes::blind`): the
    /// daemon then tells the trace log that statuses are not traced from then on.
    pub(crate) fn take_blind(&mut self) -> bool {
        std::mem::take(&mut self.blind)
    }

    /// At shutdown: appends everything still held to `out`. Heads in reassembly are emitted
    /// truncated; waits that are over count as unanswered, the rest were cut short by the
    /// stop (outcome unknown).
    pub(crate) fn finish(&mut self, now: Instant, out: &mut Vec<Record>) {
        for (ctx, request) in self.reassembler.drain() {
            self.emit(ctx, request, out);
        }
        out.extend(self.outcomes.expire(now));
        out.extend(self.outcomes.drain());
    }

    /// Hop-limit drops that matched no waiting request since the last call: the daemon
    /// writes a line for each (a drop is never lost silently).
    pub(crate) fn take_unmatched_drops(&mut self) -> Vec<HopDrop> {
        std::mem::take(&mut self.unmatched_drops)
    }

    /// Hop-limit drops since start: (joined to their request, matching none, repeats).
    pub(crate) fn hop_drops(&self) -> (u64, u64, u64) {
        (
            self.outcomes.drops_matched,
            self.outcomes.drops_unmatched,
            self.outcomes.drops_repeated,
        )
    }

    /// Ring records that could not be decoded, since start.
    pub(crate) fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Responses with no waiting request, since start.
    pub(crate) fn responses_unmatched(&self) -> u64 {
        self.outcomes.unmatched
    }

    /// IMDS answers on connections where no call was traced, since start (one per
    /// connection).
    pub(crate) fn responses_untraced(&self) -> u64 {
        self.outcomes.untraced
    }

    /// The answers to untraced calls found since the last call (see `Outcomes::response`),
    /// each to be written as a line of its own.
    pub(crate) fn take_untraced(&mut self) -> std::vec::Drain<'_, Untraced> {
        self.untraced.drain(..)
    }

    /// Requests written without waiting for their status (too many were waiting).
    pub(crate) fn logged_without_waiting(&self) -> u64 {
        self.outcomes.overflowed
    }

    fn on_send(&mut self, mut send: Send, now: Instant, out: &mut Vec<Record>) {
        // Before reassembly: a head still incomplete is answered too (`400` to bytes that
        // are not HTTP), and that answer is not to an untraced call.
        self.outcomes.sent((send.src, send.dst), now);
        if send.payload.is_empty() && send.unreadable {
            // Still a call to IMDS by someone: log it, with what the kernel knows.
            let request = Request::unreadable();
            self.emit(send, request, out);
            return;
        }
        let payload = std::mem::take(&mut send.payload);
        // Before anything is attributed or written: the caller's own argv may hold the
        // token its request carries.
        self.tokens.observe(send.sock_id, &payload, now);
        let key = send.sock_id;
        let truncated = send.truncated;
        // What the kernel did not copy of this send (its size is the send's whole length).
        let unseen = usize::try_from(send.size)
            .ok()
            .map(|size| size.saturating_sub(payload.len()));
        for (ctx, request) in self
            .reassembler
            .push_send(key, send, &payload, truncated, unseen, now)
        {
            self.emit(ctx, request, out);
        }
    }

    fn emit(&mut self, send: Send, request: Request, out: &mut Vec<Record>) {
        // One clock read serves attribution's caches and the response wait. Not the drain's
        // `now`: under sustained load a drain lasts long enough for it to go stale.
        let now = Instant::now();
        let who = self.attribution.attribute(&send, now);
        let mut record = Record {
            time: self.clock.wall(send.ts_ns),
            request,
            caller: who.caller,
            ancestors: who.ancestors,
            uid: send.uid,
            ns_pid: (send.ns_tgid != 0 && send.ns_tgid != send.tgid).then_some(send.ns_tgid),
            origin: who.origin,
            cgroup_id: send.cgroup_id,
            netns: send.netns,
            host_network: self.host_netns.map(|host| host == send.netns),
            dst: send.dst,
            bytes: send.size,
            unreadable: send.unreadable,
            outcome: Outcome::Unknown,
        };
        scrub(&self.tokens, &mut record);
        // Attributed now (the caller may exit), written once its response is in.
        out.extend(self.outcomes.request((send.src, send.dst), record, now));
    }
}

/// Every token value seen on the wire, out of every text field of `r` that a caller can
/// fill: comms and argv of the caller and its ancestors, the path, header values and the
/// malformed snippet. The header redaction by name (`http`) has done its part already;
/// this covers a token anywhere else (`python3 fetch.py <token>`), whatever precedes it.
fn scrub(tokens: &SeenTokens, r: &mut Record) {
    fn one(tokens: &SeenTokens, s: &mut String) {
        if let std::borrow::Cow::Owned(clean) = tokens.redact(s) {
            *s = clean;
        }
    }
    if tokens.is_empty() {
        return;
    }
    for p in std::iter::once(&mut r.caller).chain(r.ancestors.iter_mut()) {
        one(tokens, &mut p.comm);
        if let Some(argv) = &mut p.argv {
            one(tokens, argv);
        }
    }
    let req = &mut r.request;
    for s in [&mut req.path, &mut req.snippet, &mut req.method]
        .into_iter()
        .flatten()
    {
        one(tokens, s);
    }
    for (name, value) in &mut req.headers {
        one(tokens, name);
        one(tokens, value);
    }
}

#[cfg(test)]
mod tests {
    //! The whole userspace path on recorded events: ring-record bytes built from the shared
    //! `imds-snoop-common` types (as the kernel writes them), and a fake node tree (`/proc`,
    //! cgroup files, a containerd bundle) in a temporary directory. No root, no kernel.
    //! The expected lines are spelled out here in full: the test is their oracle.

    use std::{fs, mem::size_of, path::PathBuf};

    use chrono::{Local, TimeZone as _};
    use imds_snoop_common::{
        AF_INET, Ancestor, COMM_LEN, EVENT_EXEC, EVENT_RESPONSE, EVENT_SEND, ExecEvent,
        FLAG_UNSUPPORTED_ITER, MAX_ANCESTORS, MAX_ARGV, ResponseEvent, SendEvent,
    };

    use super::*;
    use crate::output::{Format, LineFormatter};

    /// The container of the recorded containerd bundle and cgroup files under
    /// tests/fixtures/ (pod shop/web-1, container app).
    const ID: &str = "abc123def4567890abc123def4567890abc123def4567890abc123def4567890";
    const POD_UID: &str = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
    /// The send's boot-clock stamp, and the wall time the test clock makes of it:
    /// 2025-10-22 02:55:40.993 UTC.
    const TS_NS: u64 = 5_000_000_000;
    const WALL_NS: i64 = 1_761_101_740_993_000_000;
    const TOKEN: &str = "AQAEAFakeTokenValueImdsSnoopFixture0123456789abcdefghi==";

    fn fixture(path: &str) -> Vec<u8> {
        fs::read(format!(
            "{}/../tests/fixtures/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// A fake node root: `proc/<pid>/{cmdline,cgroup}`, the containerd bundle, empty cgroup
    /// and pod-log trees. Removed on drop.
    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Self {
            let root = std::env::temp_dir()
                .join(format!("imds-snoop-pipeline-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            let paths = Paths::under(&root);
            fs::create_dir_all(&paths.cgroup_root).unwrap();
            fs::create_dir_all(&paths.pod_logs).unwrap();
            let bundle = paths.containerd_root.join("k8s.io").join(ID);
            fs::create_dir_all(&bundle).unwrap();
            fs::write(
                bundle.join("config.json"),
                fixture("containerd/config.json"),
            )
            .unwrap();
            Self(root)
        }

        /// A live process: its argv and, if given, its /proc/<pid>/cgroup file.
        fn process(&self, pid: u32, argv: &[&str], cgroup: Option<&[u8]>) {
            let dir = Paths::under(&self.0).proc_root.join(pid.to_string());
            fs::create_dir_all(&dir).unwrap();
            let mut cmdline = argv.join("\0");
            cmdline.push('\0');
            fs::write(dir.join("cmdline"), cmdline).unwrap();
            if let Some(cgroup) = cgroup {
                fs::write(dir.join("cgroup"), cgroup).unwrap();
            }
        }

        /// A process running as `uid` (its `status`), with `argv`.
        fn process_as(&self, pid: u32, uid: u32, argv: &[&str]) {
            self.process(pid, argv, None);
            let dir = Paths::under(&self.0).proc_root.join(pid.to_string());
            fs::write(
                dir.join("status"),
                format!("Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
            )
            .unwrap();
        }

        /// containerd's side of a shim `shim` running container `ID`: the runtime's socket
        /// next to its task directory, and the bundle's `init.pid` naming `init`, a child of
        /// the shim.
        fn runtime_of(&self, shim: u32, init: u32) {
            let paths = Paths::under(&self.0);
            let socket = paths
                .containerd_root
                .parent()
                .unwrap()
                .join("containerd.sock");
            let _ = fs::remove_file(&socket);
            std::mem::forget(std::os::unix::net::UnixListener::bind(&socket).unwrap());
            let bundle = paths.containerd_root.join("k8s.io").join(ID);
            fs::write(bundle.join("init.pid"), init.to_string()).unwrap();
            let dir = paths.proc_root.join(init.to_string());
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join("stat"),
                format!("{init} (pause) S {shim} {init} {init} 0"),
            )
            .unwrap();
        }

        /// The uid that owns this tree (root in CI; the runtime's owner in these tests).
        fn owner(&self) -> u32 {
            use std::os::unix::fs::MetadataExt as _;
            fs::metadata(&self.0).unwrap().uid()
        }

        /// A pipeline reading this tree, its clock fixed so that `TS_NS` is `WALL_NS`.
        fn pipeline(&self, response_timeout: Option<Duration>) -> Pipeline {
            let mut paths = Paths::under(&self.0);
            paths.owner = self.owner();
            let mut p = Pipeline::new(paths, response_timeout);
            p.clock = BootClock::fixed(WALL_NS as i128 - TS_NS as i128);
            p
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The bytes of a ring record: the event as the kernel writes it.
    fn bytes_of<T: Copy>(event: &T) -> Vec<u8> {
        // SAFETY: T is one of the shared event types: repr(C), integers only, padding
        // spelled out as fields (asserted in imds-snoop-common), so every byte is
        // initialized; the slice lives no longer than `event`.
        unsafe { std::slice::from_raw_parts((event as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn comm(name: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    fn v4(a: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(a), 0, 0, 0]
    }

    /// A send of `payload` on socket `sock` from 10.0.0.2:`sport` to IMDS, by `tgid`
    /// (`name`, pid 7 in its namespace) whose parents are `ancestors`.
    fn send(
        sock: u64,
        sport: u16,
        tgid: u32,
        name: &str,
        ancestors: &[(u32, &str)],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut chain = [Ancestor::default(); MAX_ANCESTORS];
        for (slot, &(pid, c)) in chain.iter_mut().zip(ancestors) {
            *slot = Ancestor {
                tgid: pid,
                comm: comm(c),
            };
        }
        let head = SendEvent {
            kind: EVENT_SEND,
            flags: 0,
            ts_ns: TS_NS,
            sock_id: sock,
            cgroup_id: 0,
            size: payload.len() as u64,
            tgid,
            tid: tgid,
            uid: 0,
            gid: 0,
            netns: 4026531840,
            family: AF_INET,
            dport: 80,
            daddr: v4([169, 254, 169, 254]),
            payload_len: payload.len() as u32,
            ancestors_len: ancestors.len() as u32,
            ns_tgid: 7,
            sport,
            _pad: 0,
            saddr: v4([10, 0, 0, 2]),
            comm: comm(name),
            ancestors: chain,
        };
        let mut record = bytes_of(&head);
        record.extend_from_slice(payload);
        record
    }

    /// The status line of a response to 10.0.0.2:`lport` from IMDS.
    fn response(lport: u16, status: u16) -> Vec<u8> {
        bytes_of(&ResponseEvent {
            kind: EVENT_RESPONSE,
            status,
            family: AF_INET,
            ts_ns: TS_NS + 1_000_000,
            laddr: v4([10, 0, 0, 2]),
            raddr: v4([169, 254, 169, 254]),
            lport,
            rport: 80,
            _pad: 0,
        })
    }

    fn exec(tgid: u32, ppid: u32, argv: &[&str]) -> Vec<u8> {
        let mut bytes = [0u8; MAX_ARGV];
        let joined = argv.join("\0");
        bytes[..joined.len()].copy_from_slice(joined.as_bytes());
        bytes_of(&ExecEvent {
            kind: EVENT_EXEC,
            tgid,
            ppid,
            uid: 0,
            ts_ns: TS_NS,
            argv_len: joined.len() as u32,
            comm: comm(argv[0]),
            _pad: 0,
            argv: bytes,
        })
    }

    /// Pushes `records` in order (one drain); the records they let out.
    fn run(p: &mut Pipeline, records: &[Vec<u8>]) -> Vec<Record> {
        let mut out = Vec::new();
        let now = Instant::now();
        for r in records {
            p.push(r, now, &mut out);
        }
        out
    }

    fn lines(r: &Record) -> (String, serde_json::Value) {
        let (mut text, mut json) = (String::new(), String::new());
        LineFormatter::new(Format::Text, "node-1").push_line(r, &mut text);
        LineFormatter::new(Format::Json, "node-1").push_line(r, &mut json);
        (text, serde_json::from_str(&json).unwrap())
    }

    /// The test clock's time of `TS_NS`: as the text line and as JSON print it.
    fn stamps() -> (String, String) {
        let t = Local.timestamp_nanos(WALL_NS);
        (
            t.format("%Y-%m-%d %H:%M:%S,%3f").to_string(),
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
        )
    }

    const CURL_V1: &[u8] = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\
        User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

    #[test]
    fn v1_call_from_a_pod_container() {
        let root = Root::new("v1");
        let cgroup = fixture("cgroup/containerd-cgroupfs-hybrid.txt");
        root.process(
            4242,
            &["curl", "-s", "http://169.254.169.254/latest/meta-data/"],
            Some(&cgroup),
        );
        root.process(4200, &["/bin/sh", "-c", "curl"], Some(&cgroup));
        let mut p = root.pipeline(None);
        let out = run(
            &mut p,
            &[send(1, 40000, 4242, "curl", &[(4200, "sh")], CURL_V1)],
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].time, Local.timestamp_nanos(WALL_NS));
        let (text, json) = lines(&out[0]);
        let (stamp, rfc) = stamps();
        assert_eq!(
            text,
            format!(
                "[{stamp}] [WARNING] imdsv1(!) (pid:4242:curl argv:curl -s \
                 http://169.254.169.254/latest/meta-data/) called by -> (pid:4200:sh \
                 argv:/bin/sh -c curl) req details: get /latest/meta-data/ http/1.1, \
                 host: 169.254.169.254, user-agent: curl/8.5.0, accept: */*, \
                 container:abc123def456 pod:shop/web-1 container-name:app workload~:web container-pid:7 \
                 uid:0 dst:169.254.169.254:80"
            )
        );
        assert_eq!(
            json,
            serde_json::json!({
                "schema": 1,
                "timestamp": rfc,
                "node": "node-1",
                "level": "WARNING",
                "class": "v1",
                "status": null,
                "method": "GET",
                "path": "/latest/meta-data/",
                "http_version": "1.1",
                "headers": [
                    ["Host", "169.254.169.254"],
                    ["User-Agent", "curl/8.5.0"],
                    ["Accept", "*/*"]
                ],
                "caller": {
                    "pid": 4242,
                    "ns_pid": 7,
                    "comm": "curl",
                    "argv": "curl -s http://169.254.169.254/latest/meta-data/",
                    "uid": 0
                },
                "ancestors": [{"pid": 4200, "comm": "sh", "argv": "/bin/sh -c curl"}],
                "container": {"id": ID, "runtime": "containerd"},
                "pod": {
                    "namespace": "shop",
                    "name": "web-1",
                    "uid": POD_UID,
                    "container": "app",
                    "workload": "web",
                    "workload_guess": true
                },
                "host_unit": null,
                "cgroup_id": 0,
                "netns": 4026531840u32,
                "destination": "169.254.169.254:80",
                "bytes": CURL_V1.len(),
                "flags": {
                    "malformed": false,
                    "truncated": false,
                    "unreadable": false,
                    "caller_exited": false
                }
            })
        );
        assert_eq!(p.decode_errors(), 0);
    }

    #[test]
    fn token_put_waits_for_its_status_or_is_the_hop_limit_warning() {
        let root = Root::new("token");
        let host = b"0::/system.slice/cloud-init.service\n";
        root.process(300, &["python3", "/usr/bin/cloud-init"], Some(host));
        let mut p = root.pipeline(Some(Duration::from_secs(1)));
        let put = b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
            X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
        // Two PUTs on two connections: both wait; the first is answered.
        let waiting = run(
            &mut p,
            &[
                send(1, 40001, 300, "python3", &[], put),
                send(2, 40002, 300, "python3", &[], put),
            ],
        );
        assert!(waiting.is_empty(), "{waiting:?}");
        let answered = run(&mut p, &[response(40001, 200)]);
        assert_eq!(answered.len(), 1);
        let (stamp, _) = stamps();
        let start = format!(
            "[{stamp}] [INFO] imdsv2(token) (pid:300:python3 argv:python3 \
             /usr/bin/cloud-init) req details: put /latest/api/token http/1.1, host: \
             169.254.169.254, x-aws-ec2-metadata-token-ttl-seconds: 21600,"
        );
        let end = " host unit:cloud-init.service container-pid:7 uid:0 dst:169.254.169.254:80";
        assert_eq!(lines(&answered[0]).0, format!("{start} -> 200{end}"));
        assert_eq!(lines(&answered[0]).1["status"], 200);

        // The second never hears back: after the timeout it is the hop-limit warning.
        let mut expired = Vec::new();
        p.expire(Instant::now() + Duration::from_secs(5), &mut expired);
        assert_eq!(expired.len(), 1);
        let (text, json) = lines(&expired[0]);
        assert_eq!(
            text,
            format!(
                "[{stamp}] [WARNING] imdsv2 token response not received (hop limit?) \
                 (pid:300:python3 argv:python3 /usr/bin/cloud-init) req details: put \
                 /latest/api/token http/1.1, host: 169.254.169.254, \
                 x-aws-ec2-metadata-token-ttl-seconds: 21600,{end}"
            )
        );
        assert_eq!(
            (&json["class"], &json["level"], &json["status"]),
            (
                &serde_json::json!("v2_token_no_response"),
                &serde_json::json!("WARNING"),
                &serde_json::Value::Null
            )
        );
        // A response nobody waits for is counted, not written.
        assert!(run(&mut p, &[response(40009, 200)]).is_empty());
        assert_eq!(p.responses_unmatched(), 1);
    }

    /// An answer on a connection with no traced send, past the start's grace, comes out
    /// once as an untraced answer with its time (the response's boot-clock stamp, on the
    /// wall clock) and both ends; an answer to a traced send does not.
    #[test]
    fn an_answer_to_an_untraced_call_comes_out_once() {
        let root = Root::new("untraced");
        let mut p = root.pipeline(Some(Duration::from_secs(2)));
        let later = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        p.push(&response(40100, 200), later, &mut out);
        p.push(&response(40100, 200), later, &mut out);
        let get = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
        p.push(&send(9, 40101, 300, "curl", &[], get), later, &mut out);
        p.push(&response(40101, 200), later, &mut out);
        assert_eq!(out.len(), 1, "the traced GET, answered");
        let untraced: Vec<Untraced> = p.take_untraced().collect();
        assert_eq!(
            untraced,
            [Untraced {
                time: Local.timestamp_nanos(WALL_NS + 1_000_000),
                status: 200,
                local: ("10.0.0.2".parse().unwrap(), 40100),
                remote: ("169.254.169.254".parse().unwrap(), 80),
            }]
        );
        assert_eq!((p.responses_untraced(), p.responses_unmatched()), (1, 2));
    }

    #[test]
    fn head_split_across_sends_with_tokens_in_argv_and_header() {
        let root = Root::new("split");
        let argv_token = format!("X-aws-ec2-metadata-token: {TOKEN}");
        root.process(
            500,
            &["curl", "-H", &argv_token, "http://169.254.169.254/"],
            Some(b"0::/user.slice/session-3.scope\n"),
        );
        let mut p = root.pipeline(None);
        let head = format!(
            "GET /latest/meta-data/iam/info HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             X-aws-ec2-metadata-token: {TOKEN}\r\n\r\n"
        );
        let (first, second) = head.as_bytes().split_at(60);
        let out = run(
            &mut p,
            &[
                send(9, 40100, 500, "curl", &[], first),
                send(9, 40100, 500, "curl", &[], second),
            ],
        );
        assert_eq!(out.len(), 1, "one request from two sends: {out:?}");
        let (text, json) = lines(&out[0]);
        let (stamp, _) = stamps();
        assert_eq!(
            text,
            format!(
                "[{stamp}] [INFO] imdsv2 (pid:500:curl argv:curl -H \
                 X-aws-ec2-metadata-token: **token redacted** http://169.254.169.254/) req \
                 details: get /latest/meta-data/iam/info http/1.1, host: 169.254.169.254, \
                 **token redacted**, host unit:session-3.scope container-pid:7 uid:0 \
                 dst:169.254.169.254:80"
            )
        );
        assert_eq!(json["class"], "v2");
        assert_eq!(
            json["headers"][1],
            serde_json::json!(["X-aws-ec2-metadata-token", "**token redacted**"])
        );
        // The record's size is the first send's: the request started there.
        assert_eq!(json["bytes"], 60);
        assert!(!json.to_string().contains(TOKEN), "{json}");
    }

    #[test]
    fn exited_caller_gets_exec_argv_and_shim_names_the_pod() {
        let root = Root::new("shim");
        // The caller (5000) has exited: only its exec event knows its argv. Its parent is
        // a containerd shim, alive but with no cgroup file the resolver can use; it checks
        // out: the owner's process, the owner's socket, its bundle's init is its child.
        root.runtime_of(4100, 4101);
        root.process_as(
            4100,
            root.owner(),
            &[
                "/usr/bin/containerd-shim-runc-v2",
                "-namespace",
                "k8s.io",
                "-id",
                ID,
                "-address",
                "/run/containerd/containerd.sock",
            ],
        );
        let mut p = root.pipeline(None);
        let out = run(
            &mut p,
            &[
                vec![1, 2, 3],
                exec(5000, 4100, &["python3", "app.py"]),
                send(
                    3,
                    40200,
                    5000,
                    "python3",
                    &[(4100, "containerd-shim")],
                    CURL_V1,
                ),
            ],
        );
        assert_eq!(p.decode_errors(), 1);
        assert_eq!(out.len(), 1);
        let (text, json) = lines(&out[0]);
        let (stamp, _) = stamps();
        assert_eq!(
            text,
            format!(
                "[{stamp}] [WARNING] imdsv1(!) (pid:5000:python3 argv:python3 app.py) \
                 called by -> (pid:4100:containerd-shim \
                 argv:/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {ID} -address \
                 /run/containerd/containerd.sock) req details: get /latest/meta-data/ \
                 http/1.1, host: 169.254.169.254, user-agent: curl/8.5.0, accept: */*, \
                 container:abc123def456 pod:shop/web-1 container-name:app workload~:web container-pid:7 \
                 uid:0 dst:169.254.169.254:80"
            )
        );
        assert_eq!(json["pod"]["uid"], serde_json::Value::Null);
        assert_eq!(json["flags"]["caller_exited"], false);
    }

    /// A bare-argv token exit: `python3 fetch.py <token>` sends the token in its header
    /// (redacted by name) and carries it in argv (and its shell's): the value seen on the
    /// wire is redacted there too, in text and JSON, and in later lines of other callers.
    #[test]
    fn a_token_seen_on_the_wire_is_redacted_from_every_field() {
        let root = Root::new("bare-token");
        let host = b"0::/system.slice/app.service\n";
        root.process(800, &["python3", "fetch.py", TOKEN], Some(host));
        let dashed = format!("--token={TOKEN}");
        root.process(
            799,
            &["sh", "-c", &format!("python3 fetch.py {TOKEN}")],
            Some(host),
        );
        root.process(801, &["app", &dashed, "-v"], Some(host));
        let mut p = root.pipeline(None);
        let head = format!(
            "GET /latest/meta-data/?t={TOKEN} HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             User-Agent: x/{TOKEN}\r\nX-aws-ec2-metadata-token: {TOKEN}\r\n\r\n"
        );
        let out = run(
            &mut p,
            &[
                send(11, 40400, 800, "python3", &[(799, "sh")], head.as_bytes()),
                // Another caller, later, with the token only in argv.
                send(12, 40401, 801, "app", &[], CURL_V1),
            ],
        );
        assert_eq!(out.len(), 2, "{out:?}");
        for r in &out {
            let (text, json) = lines(r);
            let json = json.to_string();
            for piece in [TOKEN, &TOKEN[..20], &TOKEN[30..]] {
                assert!(!text.contains(piece), "{piece} in {text}");
                assert!(!json.contains(piece), "{piece} in {json}");
            }
        }
        let (text, _) = lines(&out[0]);
        assert!(
            text.contains("argv:python3 fetch.py **token redacted**)"),
            "{text}"
        );
        let (text, _) = lines(&out[1]);
        assert!(text.contains("argv:app --**token redacted** -v)"), "{text}");
    }

    /// Issue 16's measured attacks on the shim road, as an unprivileged user would make
    /// them: a fake `containerd-shim` with a non-ASCII `-id` (sliced at byte 12 it panicked
    /// the daemon), with a path `-id` (it read a config.json the user wrote), and a root
    /// process borrowing a real container's id and the real socket (its bundle's init is not
    /// its child). None names a container or pod; every line is written.
    #[test]
    fn fake_shims_name_nothing() {
        let root = Root::new("fake-shim");
        root.runtime_of(4100, 4101);
        let me = root.owner();
        let user = me.wrapping_add(1);
        // The user's own config.json, where a path id used to lead.
        let evil = root.0.join("tmp/evil");
        fs::create_dir_all(&evil).unwrap();
        fs::write(
            evil.join("config.json"),
            br#"{"annotations":{"io.kubernetes.cri.sandbox-name":"forged","io.kubernetes.cri.sandbox-namespace":"kube-system"}}"#,
        )
        .unwrap();
        let shim = |id: &str| {
            vec![
                "/tmp/containerd-shim-x".to_owned(),
                "-namespace".into(),
                "k8s.io".into(),
                "-id".into(),
                id.into(),
                "-address".into(),
                "/run/containerd/containerd.sock".into(),
            ]
        };
        let cases: Vec<(u32, u32, Vec<String>)> = vec![
            (4300, user, shim("aéééééééééé")),
            (4301, user, shim("../../../../../tmp/evil")),
            (4302, me, shim("aéééééééééé")),
            (4303, me, shim("../../../../../tmp/evil")),
            (4304, user, shim(ID)),
            // The owner's process, the real id and socket: but not the bundle's parent.
            (4305, me, shim(ID)),
        ];
        let mut records = Vec::new();
        for (i, (pid, uid, argv)) in cases.iter().enumerate() {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            root.process_as(*pid, *uid, &argv);
            let caller = 5100 + i as u32;
            records.push(exec(caller, *pid, &["curl", "http://169.254.169.254/"]));
            records.push(send(
                20 + i as u64,
                40500 + i as u16,
                caller,
                "curl",
                &[(*pid, "containerd-shim")],
                CURL_V1,
            ));
        }
        let mut p = root.pipeline(None);
        let out = run(&mut p, &records);
        assert_eq!(out.len(), cases.len(), "{out:?}");
        for r in &out {
            let (text, json) = lines(r);
            assert!(text.contains(" origin:unknown "), "{text}");
            assert!(!text.contains("forged") && !text.contains("pod:"), "{text}");
            assert_eq!(json["container"], serde_json::Value::Null, "{json}");
            assert_eq!(json["pod"], serde_json::Value::Null, "{json}");
        }
        // The real shim, for contrast, names the pod.
        root.process_as(
            4100,
            me,
            &shim(ID).iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let out = run(
            &mut p,
            &[send(
                40,
                40600,
                5200,
                "curl",
                &[(4100, "containerd-shim")],
                CURL_V1,
            )],
        );
        assert!(
            lines(&out[0])
                .0
                .contains("container:abc123def456 pod:shop/web-1"),
            "{out:?}"
        );
    }

    /// A child forked without exec (a shell's subshell) that has exited by the time its line
    /// is written: its parent's argv, copied at the fork or looked up through the living
    /// parent; nothing when the parent exec'd since the fork.
    #[test]
    fn forked_callers_keep_their_parents_argv() {
        let root = Root::new("fork");
        root.process(7000, &["bash", "-l"], None);
        let fork = |tgid: u32, ppid: u32| {
            bytes_of(&imds_snoop_common::ForkEvent {
                kind: imds_snoop_common::EVENT_FORK,
                tgid,
                ppid,
                _pad: 0,
            })
        };
        let exit = |tgid: u32| {
            bytes_of(&imds_snoop_common::ExitEvent {
                kind: imds_snoop_common::EVENT_EXIT,
                tgid,
                ts_ns: TS_NS,
            })
        };
        let mut p = root.pipeline(None);
        let out = run(
            &mut p,
            &[
                // Parent known from its exec: copied at the fork.
                exec(6000, 1, &["bash", "script.sh"]),
                fork(6001, 6000),
                exit(6001),
                send(50, 40700, 6001, "bash", &[(6000, "bash")], CURL_V1),
                // Parent not known (started before the daemon): looked up through it.
                fork(7001, 7000),
                exit(7001),
                send(51, 40701, 7001, "bash", &[(7000, "bash")], CURL_V1),
                // The parent exec'd after the fork: the child's image is not the new one.
                fork(7002, 7000),
                exec(7000, 1, &["python3", "new.py"]),
                exit(7002),
                send(52, 40702, 7002, "bash", &[(7000, "python3")], CURL_V1),
            ],
        );
        let argv: Vec<Option<&str>> = out.iter().map(|r| r.caller.argv.as_deref()).collect();
        assert_eq!(argv, [Some("bash script.sh"), Some("bash -l"), None]);
        assert!(
            lines(&out[2])
                .0
                .contains("(pid:7002:bash argv:[exited] bash)")
        );
    }

    /// A caller cannot make its line look like two lines or like another caller's: line
    /// breaks, ANSI escapes and the line's own labels in its comm, argv, path and user agent
    /// are escaped, and the line contract's reader finds every field where the daemon put it.
    #[test]
    fn forged_fields_stay_in_their_place() {
        let root = Root::new("forge");
        let host = b"0::/system.slice/app.service\n";
        let forged = "x\n[2026-01-01 00:00:00,000] [INFO] imdsv2 (pid:1:init argv:/sbin/init) \
                      req details: get / http/1.1, -> 200 container:abcdefabcdef \
                      pod:kube-system/forged container-name:x uid:0 dst:1.2.3.4:80\r\x1b[2J";
        root.process(900, &["evil", forged], Some(host));
        root.process(
            899,
            &["sh", "-c", "called by -> (pid:1:x argv:y)"],
            Some(host),
        );
        let mut p = root.pipeline(None);
        let head = "GET /x?a=%20-> 200 pod:kube-system/forged HTTP/1.1\r\nHost: 169.254.169.254\r\n\
                    User-Agent: ua -> 200 container:abc pod:kube-system/forged uid:0\r\n\r\n";
        let out = run(
            &mut p,
            &[send(
                60,
                40800,
                900,
                "ev:l -> x",
                &[(899, "sh")],
                head.as_bytes(),
            )],
        );
        assert_eq!(out.len(), 1);
        let (text, _) = lines(&out[0]);
        assert!(!text.contains(['\n', '\r', '\x1b']), "{text}");
        let line = imds_snoop_line::TextLine::parse(&text).expect("a line");
        let call = line.call().expect("a call");
        assert_eq!(call.caller_pid(), Some(900), "{text}");
        assert_eq!(call.chain(), [900, 899], "{text}");
        assert!(call.argv().unwrap().starts_with("evil x\\x0a["), "{text}");
        let fields = call.fields();
        assert_eq!(fields.status, None, "{text}");
        assert_eq!(
            fields.origin,
            imds_snoop_line::TextOrigin::Host {
                unit: Some("app.service")
            },
            "{text}"
        );
        assert_eq!(fields.destination, Some("169.254.169.254:80"), "{text}");
        assert!(!text.contains("pod:kube-system/forged"), "{text}");
    }

    #[test]
    fn unreadable_send_and_shutdown_drain() {
        let root = Root::new("drain");
        let mut p = root.pipeline(None);
        // The kernel could not read this send's payload: still a call, written at once.
        let mut unreadable = send(5, 40301, 6001, "aws", &[], b"");
        let flags = std::mem::offset_of!(SendEvent, flags);
        unreadable[flags..flags + 4].copy_from_slice(&FLAG_UNSUPPORTED_ITER.to_ne_bytes());
        // A head that never ends is written truncated at shutdown; the caller is gone.
        let cut = send(
            4,
            40300,
            6000,
            "wget",
            &[],
            b"GET /latest/user-data HTTP/1.1\r\nHost: 169",
        );
        let mut out = run(&mut p, &[unreadable, cut]);
        assert_eq!(out.len(), 1);
        p.finish(Instant::now(), &mut out);
        assert_eq!(out.len(), 2);
        let (stamp, _) = stamps();
        let (text, json) = lines(&out[0]);
        assert_eq!(
            text,
            format!(
                "[{stamp}] [WARNING] malformed(!) (pid:6001:aws argv:[exited] aws) req \
                 details:  origin:unknown container-pid:7 uid:0 dst:169.254.169.254:80 \
                 payload-unreadable"
            )
        );
        assert_eq!(json["flags"]["unreadable"], true);
        let (text, json) = lines(&out[1]);
        assert_eq!(
            text,
            format!(
                "[{stamp}] [WARNING] imdsv1(!) (pid:6000:wget argv:[exited] wget) req \
                 details: get /latest/user-data http/1.1, host: 169, origin:unknown \
                 container-pid:7 uid:0 dst:169.254.169.254:80 truncated"
            )
        );
        assert_eq!(json["flags"]["caller_exited"], true);
        assert_eq!(json["flags"]["truncated"], true);
    }
}
