//! Load generator for `cargo xtask bench` (std only; built with plain `rustc`, no crate).
//!
//! Run it only inside a test network namespace: `burst` binds the IMDS address, which only
//! exists on the namespace's `lo`.
//!
//! - `stream`: hot-path cost of a TCP send. One thread, one loopback connection to
//!   127.0.0.1:<ephemeral port> (never 80): `--msgs` sends of `--bytes` bytes with
//!   TCP_NODELAY (one segment each, one `tcp_sendmsg` each), the receiving end drained
//!   (non-blocking) every `--drain-every` sends in the same thread. Prints per-send time:
//!   thread CPU time (not inflated by preemption on a shared machine) and wall time, the
//!   median and minimum over `--chunks` equal chunks.
//! - `pingpong`: request/response on loopback, in one thread so no scheduler wake-up is
//!   timed: A sends `--bytes`, B reads them and answers `--bytes`, A reads the answer. Two
//!   TCP sends per round trip; prints per-round-trip time as `stream` does.
//! - `burst`: a minimal HTTP/1.1 responder on `--addr` (every request answered
//!   `200 OK`, `Content-Length: 2`, `ok`) and, in the same process, `--keepalive` clients
//!   on persistent connections plus `--newconn` clients opening one connection per request,
//!   for `--seconds`, paced to `--rate` requests/s in total (0: as fast as they can). Each
//!   request (IMDSv1 GET, token PUT, IMDSv2 GET, in turn) is written with one `write()`, so
//!   one request is one kernel send event. Prints what was sent, by kind.
//! - `rr-server` / `rr-client`: request/response across namespaces (the pod -> node -> pod
//!   workload): the server (`--addr`, one connection, `--seconds` at most) answers every
//!   `--bytes` request with `--bytes`; the client connects to `--addr` and times `--rounds`
//!   round trips one by one (wall clock: the pods' scheduler wake-ups are part of latency).
//!   Prints the mean, median and 99th percentile, µs.
//! - `udp-drop`: `--count` datagrams to `--addr`, a port nobody listens on: each one is
//!   freed by the receiving kernel as a drop (`kfree_skb`, reason NO_SOCKET), for the drop
//!   hook's per-invocation figure. Paced by `--rate` datagrams/s (ICMP replies are
//!   rate-limited, the datagrams are not).
//!
//! Every command prints one line of `key=value` pairs on stdout. Every loop is bounded in
//! count and time.

use std::{
    env,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

unsafe extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; the clock id exists on every Linux.
    unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Args(Vec<String>);

impl Args {
    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        let flag = format!("--{name}");
        match self.0.iter().position(|a| *a == flag) {
            Some(i) => self
                .0
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| die(&format!("{flag} needs a valid value"))),
            None => default,
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    process::exit(2)
}

fn main() {
    let argv: Vec<String> = env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        die("usage: loadgen stream|pingpong|burst [--flag value ...]")
    };
    let args = Args(argv[1..].to_vec());
    match cmd.as_str() {
        "stream" => stream(&args),
        "pingpong" => pingpong(&args),
        "burst" => burst(&args),
        "rr-server" => rr_server(&args),
        "rr-client" => rr_client(&args),
        "udp-drop" => udp_drop(&args),
        other => die(&format!("unknown command {other}")),
    }
}

/// A connected loopback pair (client, server end), TCP_NODELAY on both.
fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| die(&format!("bind: {e}")));
    let addr = listener.local_addr().unwrap();
    if addr.port() == 80 {
        die("ephemeral port 80: refusing (IMDS port)");
    }
    let client = TcpStream::connect(addr).unwrap_or_else(|e| die(&format!("connect: {e}")));
    let (server, _) = listener
        .accept()
        .unwrap_or_else(|e| die(&format!("accept: {e}")));
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    (client, server)
}

/// Median and minimum of per-chunk (cpu, wall) ns per operation.
fn summary(kind: &str, ops: u64, chunks: &[(u64, u64)], per_chunk: u64) {
    let mut cpu: Vec<f64> = chunks
        .iter()
        .map(|c| c.0 as f64 / per_chunk as f64)
        .collect();
    let mut wall: Vec<f64> = chunks
        .iter()
        .map(|c| c.1 as f64 / per_chunk as f64)
        .collect();
    cpu.sort_by(f64::total_cmp);
    wall.sort_by(f64::total_cmp);
    println!(
        "{kind} ops={ops} chunks={} cpu_ns_median={:.1} cpu_ns_min={:.1} wall_ns_median={:.1} wall_ns_min={:.1}",
        chunks.len(),
        cpu[cpu.len() / 2],
        cpu[0],
        wall[wall.len() / 2],
        wall[0]
    );
}

fn stream(args: &Args) {
    let msgs: u64 = args.get("msgs", 500_000);
    let chunks: u64 = args.get("chunks", 10).max(1);
    let bytes: usize = args.get("bytes", 64);
    let drain_every: u64 = args.get("drain-every", 32).max(1);
    let per_chunk = (msgs / chunks).max(1);
    let (mut client, mut server) = loopback_pair();
    server.set_nonblocking(true).unwrap();
    let msg = vec![0x5au8; bytes];
    let mut sink = vec![0u8; 1 << 16];
    let mut drain = |server: &mut TcpStream| {
        loop {
            match server.read(&mut sink) {
                Ok(0) => die("sink closed"),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => die(&format!("sink read: {e}")),
            }
        }
    };
    // Warm-up: connection, caches, socket buffers.
    for i in 0..per_chunk.min(20_000) {
        client.write_all(&msg).unwrap();
        if i % drain_every == drain_every - 1 {
            drain(&mut server);
        }
    }
    drain(&mut server);
    let mut results = Vec::new();
    for _ in 0..chunks {
        let (c0, w0) = (thread_cpu_ns(), Instant::now());
        for i in 0..per_chunk {
            if client
                .write(&msg)
                .unwrap_or_else(|e| die(&format!("send: {e}")))
                != bytes
            {
                die("short send");
            }
            if i % drain_every == drain_every - 1 {
                drain(&mut server);
            }
        }
        drain(&mut server);
        results.push((thread_cpu_ns() - c0, w0.elapsed().as_nanos() as u64));
    }
    summary("stream", per_chunk * chunks, &results, per_chunk);
}

fn pingpong(args: &Args) {
    let rounds: u64 = args.get("rounds", 100_000);
    let chunks: u64 = args.get("chunks", 10).max(1);
    let bytes: usize = args.get("bytes", 64);
    let per_chunk = (rounds / chunks).max(1);
    let (mut a, mut b) = loopback_pair();
    let req = vec![0x51u8; bytes];
    let resp = vec![0x52u8; bytes];
    let mut buf = vec![0u8; bytes];
    let one = |a: &mut TcpStream, b: &mut TcpStream, buf: &mut [u8]| {
        a.write_all(&req).unwrap();
        b.read_exact(buf).unwrap();
        b.write_all(&resp).unwrap();
        a.read_exact(buf).unwrap();
    };
    for _ in 0..per_chunk.min(10_000) {
        one(&mut a, &mut b, &mut buf);
    }
    let mut results = Vec::new();
    for _ in 0..chunks {
        let (c0, w0) = (thread_cpu_ns(), Instant::now());
        for _ in 0..per_chunk {
            one(&mut a, &mut b, &mut buf);
        }
        results.push((thread_cpu_ns() - c0, w0.elapsed().as_nanos() as u64));
    }
    summary("pingpong", per_chunk * chunks, &results, per_chunk);
}

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The three request kinds, each one `write()`. The token is a made-up 56-character value.
fn requests() -> [Vec<u8>; 3] {
    let token = "AQAEAFakeBenchTokenNotARealOne0123456789abcdefghijklmnopq";
    [
        b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: imds-bench\r\nAccept: */*\r\n\r\n".to_vec(),
        b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: imds-bench\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n".to_vec(),
        format!("GET /latest/meta-data/placement/region HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: imds-bench\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n").into_bytes(),
    ]
}

/// Answers every complete request (headers ended by CRLFCRLF) on `conn` until EOF.
fn serve(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 8192];
    let mut have = 0usize;
    let mut out = Vec::with_capacity(RESPONSE.len() * 4);
    loop {
        let n = match conn.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let mut start = 0;
        out.clear();
        while let Some(end) = buf[start..have].windows(4).position(|w| w == b"\r\n\r\n") {
            start += end + 4;
            out.extend_from_slice(RESPONSE);
        }
        buf.copy_within(start..have, 0);
        have -= start;
        if have == buf.len() {
            return; // not HTTP from our clients
        }
        if !out.is_empty() && conn.write_all(&out).is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Counts {
    sent: [AtomicU64; 3],
    keepalive: AtomicU64,
    newconn: AtomicU64,
    errors: AtomicU64,
}

fn burst(args: &Args) {
    let addr: SocketAddr = args.get("addr", "169.254.169.254:80".parse().unwrap());
    let keepalive: usize = args.get("keepalive", 8);
    let newconn: usize = args.get("newconn", 4);
    let seconds: f64 = args.get("seconds", 5.0);
    let rate: f64 = args.get("rate", 0.0);
    let threads = keepalive + newconn;
    if threads == 0 || !(0.0..=60.0).contains(&seconds) {
        die("need clients and --seconds in 0..60");
    }

    let listener = TcpListener::bind(addr).unwrap_or_else(|e| die(&format!("bind {addr}: {e}")));
    // A fixed pool of connection handlers: no thread start per new connection.
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..(keepalive + 2 * newconn + 4) {
        let rx = Arc::clone(&rx);
        thread::spawn(move || {
            loop {
                let conn = match rx.lock().unwrap().recv() {
                    Ok(c) => c,
                    Err(_) => return,
                };
                serve(conn);
            }
        });
    }
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if tx.send(conn).is_err() {
                return;
            }
        }
    });

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let reqs = Arc::new(requests());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    // Each client's share of the rate: one request every `interval`.
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(threads as f64 / rate));
    let mut clients = Vec::new();
    for t in 0..threads {
        let (counts, stop, reqs) = (Arc::clone(&counts), Arc::clone(&stop), Arc::clone(&reqs));
        let persistent = t < keepalive;
        clients.push(thread::spawn(move || {
            let mut conn: Option<TcpStream> = None;
            let mut resp = vec![0u8; RESPONSE.len()];
            let mut k: u64 = 0;
            // Spread the threads' first requests over one interval.
            let offset = interval.map(|i| i.mul_f64(t as f64 / threads as f64));
            loop {
                let now = Instant::now();
                if now >= deadline || stop.load(Ordering::Relaxed) {
                    return;
                }
                if let (Some(i), Some(o)) = (interval, offset) {
                    let due = start + o + i.mul_f64(k as f64);
                    if due >= deadline {
                        return;
                    }
                    if due > now {
                        thread::sleep(due - now);
                    }
                }
                if conn.is_none() {
                    match TcpStream::connect(addr) {
                        Ok(c) => {
                            let _ = c.set_nodelay(true);
                            conn = Some(c);
                        }
                        Err(_) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().unwrap();
                let kind = ((k + t as u64) % 3) as usize;
                k += 1;
                let req = &reqs[kind];
                // One write() per request: one kernel send event.
                match c.write(req) {
                    Ok(n) if n == req.len() => {
                        counts.sent[kind].fetch_add(1, Ordering::Relaxed);
                        let ctr = if persistent {
                            &counts.keepalive
                        } else {
                            &counts.newconn
                        };
                        ctr.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(_) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                        continue;
                    }
                }
                if c.read_exact(&mut resp).is_err() {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    continue;
                }
                if !persistent {
                    conn = None; // close; the next request opens a new connection
                }
            }
        }));
    }
    for c in clients {
        let _ = c.join();
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let sent: Vec<u64> = counts
        .sent
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let total: u64 = sent.iter().sum();
    println!(
        "burst pid={} sent={total} v1={} token={} v2={} keepalive={} newconn={} errors={} elapsed_s={elapsed:.3} rate={:.0}",
        process::id(),
        sent[0],
        sent[1],
        sent[2],
        counts.keepalive.load(Ordering::Relaxed),
        counts.newconn.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        total as f64 / elapsed
    );
}

/// Refuses the IMDS port: these commands are for non-IMDS traffic between test namespaces.
fn non_imds(addr: SocketAddr) -> SocketAddr {
    if matches!(addr.port(), 0 | 80) {
        die(&format!("{addr}: refusing port 80 (IMDS) and port 0"));
    }
    addr
}

fn rr_server(args: &Args) {
    let addr = non_imds(args.get("addr", "0.0.0.0:7000".parse().unwrap()));
    let bytes: usize = args.get("bytes", 64);
    let seconds: f64 = args.get("seconds", 60.0);
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| die(&format!("bind {addr}: {e}")));
    println!("rr-server listening={addr}");
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.clamp(1.0, 600.0));
    listener.set_nonblocking(true).unwrap();
    // One connection at a time, until the deadline.
    while Instant::now() < deadline {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => die(&format!("accept: {e}")),
        };
        let mut conn = conn;
        conn.set_nonblocking(false).unwrap();
        conn.set_nodelay(true).unwrap();
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = conn.set_read_timeout(Some(left.max(Duration::from_millis(10))));
        let resp = vec![0x52u8; bytes];
        let mut buf = vec![0u8; bytes];
        while conn.read_exact(&mut buf).is_ok() {
            if conn.write_all(&resp).is_err() {
                break;
            }
        }
    }
}

fn rr_client(args: &Args) {
    let addr = non_imds(args.get("addr", "127.0.0.1:7000".parse().unwrap()));
    let rounds: u64 = args.get("rounds", 10_000).clamp(1, 10_000_000);
    let bytes: usize = args.get("bytes", 64);
    let mut conn = None;
    // The server may still be starting: retry for a second.
    for _ in 0..100 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    let mut conn = conn.unwrap_or_else(|| die(&format!("connect {addr}: no server")));
    conn.set_nodelay(true).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = vec![0x51u8; bytes];
    let mut buf = vec![0u8; bytes];
    let mut one = |conn: &mut TcpStream| {
        conn.write_all(&req)
            .unwrap_or_else(|e| die(&format!("send: {e}")));
        conn.read_exact(&mut buf)
            .unwrap_or_else(|e| die(&format!("recv: {e}")));
    };
    for _ in 0..rounds.min(1000) {
        one(&mut conn);
    }
    let mut ns: Vec<u64> = Vec::with_capacity(rounds as usize);
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        one(&mut conn);
        ns.push(t.elapsed().as_nanos() as u64);
    }
    let wall = t0.elapsed().as_nanos() as f64;
    let cpu = (thread_cpu_ns() - cpu0) as f64;
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    println!(
        "rr rounds={rounds} sends={} mean_us={:.3} p50_us={:.3} p99_us={:.3} cpu_us_per_rt={:.3}",
        // Warm-up rounds included: every send the kernel saw.
        2 * (rounds + rounds.min(1000)),
        wall / rounds as f64 / 1e3,
        at(0.5),
        at(0.99),
        cpu / rounds as f64 / 1e3
    );
}

fn udp_drop(args: &Args) {
    let addr = non_imds(args.get("addr", "127.0.0.1:9".parse().unwrap()));
    let count: u64 = args.get("count", 10_000).clamp(1, 1_000_000);
    let rate: f64 = args.get::<f64>("rate", 20_000.0).clamp(1.0, 1_000_000.0);
    let sock = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .unwrap_or_else(|e| die(&format!("bind: {e}")));
    let msg = [0x55u8; 32];
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut sent = 0u64;
    for i in 0..count {
        let due = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        // ICMP port-unreachable replies make later sends fail with ECONNREFUSED on a
        // connected socket; this one is not connected, so errors are only local ones.
        if sock.send_to(&msg, addr).is_ok() {
            sent += 1;
        }
        if start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    println!(
        "udp-drop sent={sent} elapsed_s={:.3}",
        start.elapsed().as_secs_f64()
    );
}
