//! The hop-limit topology inside a VM (or a host namespace): "pod" -> "node" -> "imds", three
//! network namespaces of this process joined by veth pairs, the node forwarding, as
//! tests/support's `Routed` builds it with iproute2 on the host. The guests have only
//! busybox, whose `ip` has no `netns` and names a veth's peer itself, so this speaks
//! rtnetlink directly (std + libc).
//!
//! Namespaces here are per thread: [`Netns::new`] unshares one on a thread of its own and
//! keeps an fd of it (the namespace lives as long as the fd); [`Netns::run`] runs a closure
//! on a thread that joined it (sockets made there stay in it); [`Netns::enter_in_child`]
//! joins it in a child between fork and exec. Nothing is done to the runner's own namespace.
//!
//! Addresses as tests/support's `Routed` (10.200.1.0/24 pod<->node, 10.200.2.0/24
//! node<->imds); the imds namespace holds 169.254.169.254/32 on its `lo`.

use std::{
    fs, io,
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    thread,
};

/// The pod's address (its `eth0`), the node's on each side, the imds namespace's `eth0`.
pub(crate) const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
pub(crate) const NODE_POD_SIDE: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
pub(crate) const NODE_IMDS_SIDE: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 1);
pub(crate) const IMDS_ETH: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);

/// A network namespace kept alive by an fd (`/proc/thread-self/ns/net` of the thread that
/// made it).
pub(crate) struct Netns {
    fd: OwnedFd,
    /// Its inode: what `/proc/PID/ns/net` links to (`net:[INODE]`).
    pub(crate) inode: u64,
}

impl Netns {
    /// A new namespace with `lo` up.
    pub(crate) fn new() -> io::Result<Self> {
        let (fd, inode) = thread::spawn(|| -> io::Result<(OwnedFd, u64)> {
            // SAFETY: unshare(2) of this thread's network namespace only (threads of a
            // process may differ in it); the thread ends right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(ctx("unshare(CLONE_NEWNET)", io::Error::last_os_error()));
            }
            let file = fs::File::open("/proc/thread-self/ns/net")
                .map_err(|e| ctx("open /proc/thread-self/ns/net", e))?;
            let inode = file.metadata()?.ino();
            Ok((OwnedFd::from(file), inode))
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))??;
        let ns = Self { fd, inode };
        ns.run(|| link_up("lo"))?;
        Ok(ns)
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let fd = self.fd.as_raw_fd();
        thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) of this (scoped, short-lived) thread to a namespace fd we
                // hold open for the scope's duration.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(ctx("setns", io::Error::last_os_error()));
                }
                f()
            })
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))?
        })
    }

    /// For `Command::pre_exec`: joins this namespace in the forked child. The fd stays open
    /// until the child execs (it is close-on-exec), and must outlive the spawn.
    pub(crate) fn enter_in_child(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let fd = self.fd.as_raw_fd();
        move || {
            // SAFETY: setns(2) is async-signal-safe; fd is open in the child (inherited).
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
    }
}

/// The three namespaces, joined and routed.
pub(crate) struct Routed {
    pub(crate) pod: Netns,
    pub(crate) node: Netns,
    pub(crate) imds: Netns,
}

impl Routed {
    pub(crate) fn new() -> io::Result<Self> {
        let (pod, node, imds) = (Netns::new()?, Netns::new()?, Netns::new()?);
        // pod eth0 <-> node veth-pod; node veth-imds <-> imds eth0 (each pair made in the
        // first namespace, its peer created straight in the other).
        pod.run(|| veth_pair("eth0", &node, "veth-pod"))?;
        node.run(|| veth_pair("veth-imds", &imds, "eth0"))?;
        pod.run(|| {
            address("eth0", POD, 24)?;
            link_up("eth0")?;
            route(Ipv4Addr::UNSPECIFIED, 0, NODE_POD_SIDE)
        })?;
        node.run(|| {
            address("veth-pod", NODE_POD_SIDE, 24)?;
            address("veth-imds", NODE_IMDS_SIDE, 24)?;
            link_up("veth-pod")?;
            link_up("veth-imds")?;
            route(crate::IMDS_V4, 32, IMDS_ETH)?;
            // /proc/sys/net is the opening thread's namespace's.
            fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|e| ctx("node: ip_forward=1", e))
        })?;
        imds.run(|| {
            address("lo", crate::IMDS_V4, 32)?;
            address("eth0", IMDS_ETH, 24)?;
            link_up("eth0")?;
            route(Ipv4Addr::UNSPECIFIED, 0, NODE_IMDS_SIDE)
        })?;
        Ok(Self { pod, node, imds })
    }

    /// ICMP "time exceeded" messages the node sent (`OutTimeExcds` of its /proc/net/snmp):
    /// packets that died there of their TTL.
    pub(crate) fn node_time_exceeded(&self) -> io::Result<u64> {
        let text = self
            .node
            .run(|| fs::read_to_string("/proc/thread-self/net/snmp"))?;
        let mut icmp = text.lines().filter(|l| l.starts_with("Icmp: "));
        let (Some(names), Some(values)) = (icmp.next(), icmp.next()) else {
            return Err(io::Error::other(
                "no Icmp lines in the node's /proc/net/snmp",
            ));
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "OutTimeExcds")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| io::Error::other("no OutTimeExcds in the node's /proc/net/snmp"))
    }
}

fn ctx(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

// --- rtnetlink -------------------------------------------------------------------------------

// From include/uapi/linux/{rtnetlink,if_link,veth,if_addr}.h (stable ABI).
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const NLA_F_NESTED: u16 = 0x8000;

/// A netlink message under construction: header, family struct, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, family_struct: &[u8]) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
        let mut m = Self { buf };
        m.buf.extend_from_slice(family_struct);
        m.pad();
        m
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// Opens a nested attribute; returns where its length goes ([`Msg::end`]).
    fn nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        if let Some(b) = self.buf.get_mut(at..at + 2) {
            b.copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// Sends it on a NETLINK_ROUTE socket of this thread's namespace; waits for the ack.
    fn send(mut self, what: &str) -> io::Result<()> {
        let len = self.buf.len() as u32;
        if let Some(b) = self.buf.get_mut(0..4) {
            b.copy_from_slice(&len.to_ne_bytes());
        }
        // SAFETY: socket(2); the fd is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(ctx("netlink socket", io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh fd of ours.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: send(2) of our buffer, its length.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                self.buf.as_ptr().cast(),
                self.buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(ctx(what, io::Error::last_os_error()));
        }
        let mut reply = [0u8; 4096];
        // SAFETY: recv(2) into our buffer, its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        if n < 0 {
            return Err(ctx(what, io::Error::last_os_error()));
        }
        // NLMSG_ERROR: header (16), then the error code (0 = ack).
        let kind = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let code = reply
            .get(16..20)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        match (kind, code) {
            (Some(k), Some(0)) if k == libc::NLMSG_ERROR as u16 => Ok(()),
            (Some(k), Some(e)) if k == libc::NLMSG_ERROR as u16 => {
                Err(ctx(what, io::Error::from_raw_os_error(-e)))
            }
            _ => Err(io::Error::other(format!(
                "{what}: unexpected netlink reply"
            ))),
        }
    }
}

/// `struct ifinfomsg` (16 bytes): family, pad, type, index, flags, change.
fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn index(dev: &str) -> io::Result<i32> {
    let name = std::ffi::CString::new(dev).map_err(io::Error::other)?;
    // SAFETY: if_nametoindex(3) on a NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(ctx(
            &format!("no interface {dev}"),
            io::Error::last_os_error(),
        )),
        i => Ok(i as i32),
    }
}

/// `ip link add NAME type veth peer name PEER netns PEER_NS`, in this thread's namespace.
fn veth_pair(name: &str, peer_ns: &Netns, peer: &str) -> io::Result<()> {
    let create = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Msg::new(libc::RTM_NEWLINK, create, &ifinfomsg(0, 0, 0));
    m.attr(IFLA_IFNAME, &cstr(name));
    let info = m.nest(IFLA_LINKINFO);
    m.attr(IFLA_INFO_KIND, b"veth");
    let data = m.nest(IFLA_INFO_DATA);
    let p = m.nest(VETH_INFO_PEER);
    m.buf.extend_from_slice(&ifinfomsg(0, 0, 0));
    m.attr(IFLA_IFNAME, &cstr(peer));
    m.attr(IFLA_NET_NS_FD, &peer_ns.fd.as_raw_fd().to_ne_bytes());
    m.end(p);
    m.end(data);
    m.end(info);
    m.send(&format!(
        "veth {name} <-> {peer} (is veth loaded? /lib/modules/<uname -r>/veth.ko)"
    ))
}

/// `ip link set DEV up`.
fn link_up(dev: &str) -> io::Result<()> {
    let up = libc::IFF_UP as u32;
    Msg::new(libc::RTM_NEWLINK, 0, &ifinfomsg(index(dev)?, up, up)).send(&format!("{dev} up"))
}

/// `ip addr add ADDR/PREFIX dev DEV`.
fn address(dev: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut ifa = [0u8; 8];
    ifa[0] = libc::AF_INET as u8;
    ifa[1] = prefix;
    ifa[4..8].copy_from_slice(&index(dev)?.to_ne_bytes());
    let create = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Msg::new(libc::RTM_NEWADDR, create, &ifa);
    m.attr(IFA_LOCAL, &addr.octets());
    m.attr(IFA_ADDRESS, &addr.octets());
    m.send(&format!("address {addr}/{prefix} on {dev}"))
}

/// `ip route add DST/LEN via GATEWAY` (LEN 0: the default route).
fn route(dst: Ipv4Addr, len: u8, gateway: Ipv4Addr) -> io::Result<()> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let mut rt = [0u8; 12];
    rt[0] = libc::AF_INET as u8;
    rt[1] = len;
    rt[4] = libc::RT_TABLE_MAIN;
    rt[5] = libc::RTPROT_BOOT;
    rt[6] = libc::RT_SCOPE_UNIVERSE;
    rt[7] = libc::RTN_UNICAST;
    let create = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Msg::new(libc::RTM_NEWROUTE, create, &rt);
    if len > 0 {
        m.attr(RTA_DST, &dst.octets());
    }
    m.attr(RTA_GATEWAY, &gateway.octets());
    m.send(&format!("route {dst}/{len} via {gateway}"))
}
