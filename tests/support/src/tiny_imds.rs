//! The in-process fake IMDS: threads and std only, for where tests/fake_imds.py cannot run
//! (the kernel-matrix VMs have no Python; `vm-guest` runs it). One request per connection
//! (`Connection: close`), read up to the end of its headers (at most 64 KiB):
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` -> 200, the token;
//!   without it -> 400;
//! - `GET <missing>` -> 404; any other `GET <path>` -> 200 `fake imds <path>\n`;
//! - anything else -> 405.
//!
//! It checks no token: every GET is answered (the daemon, not the fake, is under test).
//!
//! `put_ttl` is IMDS's PUT response hop limit (tests/fake_imds.py's `--ttl`): the IP TTL
//! (`IP_TTL`; `IPV6_UNICAST_HOPS` on IPv6) set on the connection before a token PUT's reply
//! and kept, so retransmissions of that reply carry it too. The handshake before it goes out
//! with the default TTL, as with fake_imds.py.

use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::Duration,
};

/// What the fake hands out.
#[derive(Clone, Copy, Debug)]
pub struct TinyImds {
    /// The token every PUT gets (it must never reach the trace log).
    pub token: &'static str,
    /// The (lowercase) path answered 404.
    pub missing: &'static str,
    /// TTL / hop limit of token PUT responses; `None`: the system default (64).
    pub put_ttl: Option<u8>,
}

impl TinyImds {
    /// Listens on every address of `addrs` and serves each connection on its own thread,
    /// for the rest of the process. Errs (naming the address) when one cannot be bound:
    /// the addresses must already be on `lo`.
    pub fn start(self, addrs: &[SocketAddr]) -> Result<(), String> {
        for &addr in addrs {
            let listener = TcpListener::bind(addr).map_err(|e| {
                format!("bind {addr}: {e} (are 169.254.169.254/32 and fd00:ec2::254/128 on lo?)")
            })?;
            thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    thread::spawn(move || {
                        if let Err(e) = self.serve(conn) {
                            eprintln!("vm-guest: fake IMDS {addr}: {e}");
                        }
                    });
                }
            });
        }
        Ok(())
    }

    fn serve(self, mut conn: TcpStream) -> io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !contains(&req, b"\r\n\r\n") {
            let n = conn.read(&mut buf)?;
            if n == 0 || req.len() > 64 * 1024 {
                return Ok(());
            }
            req.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
        let mut first = text.lines().next().unwrap_or("").split(' ');
        let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let (status, body) = if method == "put" && path == "/latest/api/token" {
            if let Some(ttl) = self.put_ttl {
                set_ttl(&conn, ttl)?;
            }
            if text.contains("x-aws-ec2-metadata-token-ttl-seconds:") {
                ("200 OK", self.token.to_owned())
            } else {
                ("400 Bad Request", String::new())
            }
        } else if method == "get" && path == self.missing {
            ("404 Not Found", String::new())
        } else if method == "get" {
            ("200 OK", format!("fake imds {path}\n"))
        } else {
            ("405 Method Not Allowed", String::new())
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(resp.as_bytes())?;
        let _ = conn.shutdown(Shutdown::Write);
        Ok(())
    }
}

/// The IPv4 TTL or IPv6 hop limit of every packet `conn` sends from now on.
fn set_ttl(conn: &TcpStream, ttl: u8) -> io::Result<()> {
    if conn.local_addr()?.is_ipv4() {
        return conn.set_ttl(u32::from(ttl));
    }
    let hops = libc::c_int::from(ttl);
    // SAFETY: setsockopt on a socket this stream owns, with a c_int option value and its size.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            (&raw const hops).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
