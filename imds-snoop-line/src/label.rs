//! The separators and field labels of the text line, in the order a line has them:
//!
//! ```text
//! [<time>] [<LEVEL>] <label> (pid:<pid>:<comm> argv:<argv>) called by -> (pid:...) -> ...
//!  req details: <request>, -> <status> container:<id12> pod:<ns>/<name>
//!  container-name:<name> image:<ref> workload~:<name> container-pid:<pid>
//!  net:host|net:other uid:<uid> dst:<addr> truncated payload-unreadable
//! ```
//!
//! (one line; the origin is `container:... [pod:... [container-name:...] [image:...]
//! workload~:... | pod-uid:...]`,
//! `host unit:<unit>`, `host unit:-` or `origin:unknown`). Values the caller controls (argv,
//! comm, headers, unit and pod names) are escaped for control characters only, so a value
//! can hold any of these strings: readers take the *last* ` req details: ` and the last
//! origin label, which only the daemon writes after the request. [`ALL`] lists every one,
//! for escaping and for checks that a new label does not collide.

/// Opens a process: `(pid:<pid>:<comm> argv:<argv>)`.
pub const PID: &str = "(pid:";
/// Between a process's comm and its argv.
pub const ARGV: &str = " argv:";
/// Stands for argv when the process was gone before `/proc` could be read:
/// `argv:[exited] <comm>`.
pub const EXITED: &str = "[exited] ";
/// After the caller, before its first ancestor.
pub const CALLED_BY: &str = " called by";
/// Before each ancestor (after [`CALLED_BY`]), and before the response status.
pub const ARROW: &str = " -> ";
/// After the processes, before the request (the anchor tool's spelling).
pub const REQ_DETAILS: &str = " req details: ";
/// Between the request line and each header in the request details (lowercased
/// `name: value` pairs; the anchor tool's spelling, a trailing one included).
pub const HEADER_SEPARATOR: &str = ", ";
/// The user agent header in the (lowercased) request details.
pub const USER_AGENT: &str = "user-agent: ";
/// After [`ARROW`] in place of a status: the connection was reset before a response.
pub const RESET: &str = "reset";
/// After [`ARROW`] in place of a status: the connection was closed before a response.
pub const CLOSED: &str = "closed";
/// After [`ARROW`] in place of a status: the response was seen dropped at the hop limit
/// in the node's forwarding path (the drop hook).
pub const HOP_DROPPED: &str = "dropped";
/// The daemon's line for a hop-limit drop that matched no traced request:
/// `imds-snoop saw a reply dropped at the hop limit (...)`.
pub const HOP_DROP_UNMATCHED: &str = "imds-snoop saw a reply dropped at the hop limit";
/// Origin of a containerized caller: the container id's first 12 characters.
pub const CONTAINER: &str = "container:";
/// `pod:<namespace>/<name>`, after [`CONTAINER`].
pub const POD: &str = "pod:";
/// The container's name in its pod.
pub const CONTAINER_NAME: &str = "container-name:";
/// The container's image as the runtime's annotations name it (containerd's
/// `io.kubernetes.cri.image-name`, CRI-O's `io.kubernetes.cri-o.ImageName`): a validated
/// image reference, `docker.io/library/nginx:1.25`; left out when unknown (docker).
pub const IMAGE: &str = "image:";
/// The pod's workload, guessed from its name ([`crate::workload::guess`]): the `~` says
/// it is a guess (`workload~:web` for pods `web-7d9f8b6c5-x2k4p`, `web-0`, ...).
pub const WORKLOAD: &str = "workload~:";
/// The pod's uid when its names are unknown.
pub const POD_UID: &str = "pod-uid:";
/// Origin of a host caller: `host unit:<systemd unit>`, [`NO_UNIT`] when none.
pub const HOST_UNIT: &str = "host unit:";
/// The unit of a host caller that has none.
pub const NO_UNIT: &str = "-";
/// The word `host` of [`HOST_UNIT`], as the reader sees it once split at spaces.
pub const HOST: &str = "host";
/// [`HOST_UNIT`] without its `host ` word, as the reader sees it once split at spaces.
pub const UNIT: &str = "unit:";
/// Origin not known.
pub const ORIGIN_UNKNOWN: &str = "origin:unknown";
/// The caller's pid in its container's pid namespace, when it differs.
pub const CONTAINER_PID: &str = "container-pid:";
/// The calling socket is in the node's network namespace (host processes, hostNetwork
/// pods): a PUT response hop limit of 1 reaches it.
pub const NET_HOST: &str = "net:host";
/// The calling socket is in another network namespace (a pod behind a veth or bridge, one
/// routing hop away): a hop limit of 1 cuts its token responses off.
pub const NET_OTHER: &str = "net:other";
/// The caller's uid.
pub const UID: &str = "uid:";
/// The destination: `169.254.169.254:80`, `[fd00:ec2::254]:80`.
pub const DST: &str = "dst:";
/// Flag: the request was cut short (bounded capture or reassembly).
pub const TRUNCATED: &str = "truncated";
/// Flag: the kernel could not read the send's payload.
pub const PAYLOAD_UNREADABLE: &str = "payload-unreadable";
/// The daemon's loss line: `imds-snoop dropped <N> events (totals: ...)`.
pub const DROPPED: &str = "imds-snoop dropped ";
/// The daemon's "degraded" line: `imds-snoop lost <N> kernel events that are not calls ...`.
pub const DEGRADED: &str = "imds-snoop lost ";
/// The daemon's start marker: `imds-snoop started (...)`, written once attached.
pub const STARTED: &str = "imds-snoop started";
/// The daemon's stop marker: `imds-snoop stopped (...)`, written last at a clean stop.
pub const STOPPED: &str = "imds-snoop stopped";
/// `imds-snoop statuses not traced from now (<reason>)`: lines after it have no status, and
/// no token PUT can be seen unanswered.
pub const STATUSES_OFF: &str = "imds-snoop statuses not traced from now";
/// `imds-snoop IMDS answered a call it did not see traced (-> <status> to <local> from
/// <IMDS>; ...)`: a response on a connection with no traced call (MPTCP, TCP Fast Open with
/// the tracepoint attach, a send the hooks miss). One per connection.
pub const UNTRACED: &str = "imds-snoop IMDS answered a call it did not see traced";

/// Where a text line's origin fields start: the last of these (with its leading space) in
/// the request details.
pub const ORIGIN_STARTS: [&str; 3] = [" container:", " host unit:", " origin:unknown"];

/// Every separator and field label above.
pub const ALL: [&str; 36] = [
    PID,
    ARGV,
    EXITED,
    CALLED_BY,
    ARROW,
    REQ_DETAILS,
    HEADER_SEPARATOR,
    USER_AGENT,
    RESET,
    CLOSED,
    HOP_DROPPED,
    HOP_DROP_UNMATCHED,
    CONTAINER,
    POD,
    CONTAINER_NAME,
    IMAGE,
    WORKLOAD,
    POD_UID,
    HOST_UNIT,
    NO_UNIT,
    HOST,
    UNIT,
    ORIGIN_UNKNOWN,
    CONTAINER_PID,
    NET_HOST,
    NET_OTHER,
    UID,
    DST,
    TRUNCATED,
    PAYLOAD_UNREADABLE,
    DROPPED,
    DEGRADED,
    STARTED,
    STOPPED,
    STATUSES_OFF,
    UNTRACED,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_starts_are_the_origin_labels() {
        assert_eq!(
            ORIGIN_STARTS,
            [
                format!(" {CONTAINER}").as_str(),
                &format!(" {HOST_UNIT}"),
                &format!(" {ORIGIN_UNKNOWN}")
            ]
        );
        assert_eq!(HOST_UNIT, format!("{HOST} {UNIT}"));
        let mut all = ALL.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), ALL.len(), "a label listed twice");
    }
}
