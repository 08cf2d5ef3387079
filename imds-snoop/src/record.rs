//! What a line says: the [`Record`] of one IMDS request and its [`Outcome`], and the
//! level and labels derived from them. The formatters in `output` only lay it out.

use std::net::IpAddr;

use chrono::{DateTime, Local};

use crate::{
    attribution::{Origin, Proc},
    http::{Class, Request},
};

/// Everything one trace line reports about one IMDS request.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub time: DateTime<Local>,
    pub request: Request,
    pub caller: Proc,
    pub ancestors: Vec<Proc>,
    pub uid: u32,
    /// The caller's pid inside its container's pid namespace, when that differs.
    pub ns_pid: Option<u32>,
    pub origin: Origin,
    pub cgroup_id: u64,
    pub netns: u32,
    /// The socket is in the node's network namespace (`--host-netns`); `None` when the
    /// daemon does not know that namespace.
    pub host_network: Option<bool>,
    pub dst: (IpAddr, u16),
    /// Bytes in the send that started the request (may exceed what was captured).
    pub bytes: u64,
    /// The kernel could not read the send's payload (unsupported buffer type or a fault).
    pub unreadable: bool,
    /// What came back (see `outcome.rs`).
    pub outcome: Outcome,
}

/// IMDS answered on a connection where no send was traced (see `outcome.rs`): a call was
/// made that no request line shows. The response path (cgroup_skb ingress) sees packets,
/// not processes: the connection's ends are all it knows of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Untraced {
    /// When the answer arrived.
    pub time: DateTime<Local>,
    /// The status IMDS answered with.
    pub status: u16,
    /// The caller's end of the connection.
    pub local: (IpAddr, u16),
    /// The IMDS end.
    pub remote: (IpAddr, u16),
}

/// What IMDS answered to a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Responses are not traced (`--responses off`, or the attach failed), or the daemon
    /// stopped before the wait was over.
    #[default]
    Unknown,
    /// The status code of the response.
    Status(u16),
    /// No response within `--response-timeout`.
    NoResponse,
    /// IMDS (or whatever answered in its place) reset the connection before responding.
    Reset,
    /// The connection was closed (FIN) before a response.
    Closed,
    /// The response was seen dropped in the node's forwarding path with its TTL run out
    /// (the drop hook): the hop limit cut the caller off.
    Dropped(Dropped),
}

/// What the drop hook saw of a response dropped at the hop limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// The reply's TTL / hop limit as it reached the node (0 or 1).
    pub ttl: u8,
    /// The kernel's drop reason by name (`IP_INHDR`, the only one the program reports);
    /// None where the kernel gives none (5.10: told apart by the route).
    pub reason: Option<&'static str>,
    /// Inode of the network namespace the reply died in (the node's).
    pub netns: u32,
}

impl Record {
    /// The line's class: the request's, except that a token PUT left unanswered is
    /// [`Class::V2TokenNoResponse`], the hop-limit warning (a hop limit of 1 drops the PUT
    /// response for pods behind a bridge or veth). Its row of the class table gives the
    /// text label, the JSON `class`, the metric label and the level.
    pub(crate) fn class(&self) -> Class {
        if self.token_not_received() {
            Class::V2TokenNoResponse
        } else if self.token_dropped() {
            Class::V2TokenDropped
        } else {
            self.request.class
        }
    }

    /// Level as the anchor tool prints it (`WARNING` for v1, malformed requests and the
    /// hop-limit warning, `INFO` otherwise).
    pub(crate) fn level(&self) -> &'static str {
        self.class().level().as_str()
    }

    /// A token PUT that got no answer: the hop-limit warning.
    pub(crate) fn token_not_received(&self) -> bool {
        self.request.class == Class::V2Token && self.outcome == Outcome::NoResponse
    }

    /// A token PUT whose response was seen dropped at the hop limit (the drop hook).
    pub(crate) fn token_dropped(&self) -> bool {
        self.request.class == Class::V2Token && matches!(self.outcome, Outcome::Dropped(_))
    }

    /// The drop, when the response was seen dropped at the hop limit.
    pub(crate) fn dropped(&self) -> Option<&Dropped> {
        match &self.outcome {
            Outcome::Dropped(d) => Some(d),
            _ => None,
        }
    }

    /// `reset` or `closed` when the connection ended without a response (text ` -> reset`,
    /// JSON `"connection":"reset"`): not silence, so not the hop limit.
    pub(crate) fn connection_end(&self) -> Option<&'static str> {
        match self.outcome {
            Outcome::Reset => Some(imds_snoop_line::label::RESET),
            Outcome::Closed => Some(imds_snoop_line::label::CLOSED),
            _ => None,
        }
    }

    /// The status code, when a response was seen.
    pub(crate) fn status(&self) -> Option<u16> {
        match self.outcome {
            Outcome::Status(s) => Some(s),
            _ => None,
        }
    }
}
