//! The kernel side of the benchmark, through bpf(2) directly: run-time statistics, the
//! programs a running daemon has attached (whatever they are: found from its link
//! descriptors, so a hook added to the daemon is measured without a change here), and an
//! empty program on each of those hooks (the floor).
//!
//! Layouts are `union bpf_attr` and `struct bpf_prog_info` of include/uapi/linux/bpf.h
//! (offsets checked against 6.18's header); every field used exists since 5.11
//! (`attach_btf_obj_id`) or earlier.

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

#[cfg(target_arch = "x86_64")]
const SYS_BPF: i64 = 321;
#[cfg(target_arch = "aarch64")]
const SYS_BPF: i64 = 280;

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_BTF_GET_FD_BY_ID: i64 = 19;
const BPF_LINK_CREATE: i64 = 28;
const BPF_ENABLE_STATS: i64 = 32;

const PROG_TYPE_CGROUP_SKB: u32 = 8;
const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const PROG_TYPE_TRACING: u32 = 26;
const TRACE_RAW_TP: u32 = 23;

unsafe extern "C" {
    fn syscall(num: i64, ...) -> i64;
}

/// bpf(cmd, attr, size) on a zero-padded attr of 128 bytes; a new descriptor or an error.
fn bpf(cmd: i64, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: the kernel reads (and for OBJ_GET_INFO writes through pointers inside)
    // `attr`, which lives across the call; pointers in it point to live buffers.
    let r = unsafe { syscall(SYS_BPF, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// `BPF_ENABLE_STATS` (`BPF_STATS_RUN_TIME`): run-time statistics of every BPF program for
/// as long as the returned descriptor is open, so a crash cannot leave them on
/// (kernel/bpf/syscall.c `bpf_enable_runtime_stats`). They cost two clock reads per run,
/// in every arm alike.
pub(crate) fn enable_stats() -> Result<OwnedFd> {
    let mut a = [0u8; 128]; // enable_stats.type = BPF_STATS_RUN_TIME (0)
    let fd = bpf(BPF_ENABLE_STATS, &mut a).context("bpf(BPF_ENABLE_STATS)")?;
    Ok(owned(fd))
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says of a program.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProgInfo {
    pub id: u32,
    pub prog_type: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub attach_btf_obj_id: u32,
    pub attach_btf_id: u32,
}

pub(crate) fn prog_info(fd: &OwnedFd) -> Result<ProgInfo> {
    let mut info = [0u8; 232];
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd.as_raw_fd() as u32);
    put32(&mut a, 4, info.len() as u32);
    put64(&mut a, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).context("bpf(BPF_OBJ_GET_INFO_BY_FD)")?;
    let u32_at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().unwrap());
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(ProgInfo {
        id: u32_at(4),
        prog_type: u32_at(0),
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        run_time_ns: u64_at(192),
        run_cnt: u64_at(200),
        attach_btf_obj_id: u32_at(220),
        attach_btf_id: u32_at(224),
    })
}

pub(crate) fn prog_fd_by_id(id: u32) -> Result<OwnedFd> {
    let mut a = [0u8; 128];
    put32(&mut a, 0, id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut a)
        .with_context(|| format!("bpf(BPF_PROG_GET_FD_BY_ID, {id})"))?;
    Ok(owned(fd))
}

/// Where a program is attached, from its link's fdinfo (kernel/bpf/syscall.c
/// `bpf_link_show_fdinfo` and the per-type `show_fdinfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    /// A raw tracepoint link: `tp_btf/<tp>` (a tracing program) or `raw_tp/<tp>`.
    RawTp { tp: String },
    /// A tracing link (fentry, fexit, ...): its attach type and target BTF id.
    Tracing { attach_type: u32, btf_id: u32 },
    /// A cgroup link: its attach type (0 = ingress) and the cgroup's id.
    Cgroup { attach_type: u32, cgroup_id: u64 },
    /// Anything else (a kprobe's perf link): measured, but no empty twin.
    Other { link_type: String },
}

/// One program the daemon has attached.
#[derive(Clone, Debug)]
pub(crate) struct Attached {
    pub prog_id: u32,
    pub hook: Hook,
}

/// The programs `pid` holds a BPF link of (every program aya attaches holds one), in
/// descriptor order.
pub(crate) fn attached_programs(pid: i32) -> Result<Vec<Attached>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut fds: Vec<u32> = fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let mut out = Vec::new();
    for fd in fds {
        let Ok(text) = fs::read_to_string(format!("{dir}/{fd}")) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .map(str::trim)
        };
        let (Some(link_type), Some(prog_id)) = (
            field("link_type"),
            field("prog_id").and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        let num = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
        let hook = match link_type {
            "raw_tracepoint" => match field("tp_name") {
                Some(tp) => Hook::RawTp { tp: tp.to_owned() },
                None => Hook::Other {
                    link_type: link_type.to_owned(),
                },
            },
            "tracing" => match (num("attach_type"), num("target_btf_id")) {
                (Some(t), Some(id)) => Hook::Tracing {
                    attach_type: t as u32,
                    btf_id: id as u32,
                },
                _ => Hook::Other {
                    link_type: link_type.to_owned(),
                },
            },
            "cgroup" => match (num("attach_type"), num("cgroup_id")) {
                (Some(t), Some(id)) => Hook::Cgroup {
                    attach_type: t as u32,
                    cgroup_id: id,
                },
                _ => Hook::Other {
                    link_type: link_type.to_owned(),
                },
            },
            other => Hook::Other {
                link_type: other.to_owned(),
            },
        };
        out.push(Attached { prog_id, hook });
    }
    Ok(out)
}

impl Hook {
    /// A short name: `tp_btf/sched_process_exec`, `cgroup_skb/ingress`, ...
    pub(crate) fn label(&self, prog_type: u32) -> String {
        match self {
            Hook::RawTp { tp } if prog_type == PROG_TYPE_TRACING => format!("tp_btf/{tp}"),
            Hook::RawTp { tp } => format!("raw_tp/{tp}"),
            Hook::Tracing {
                attach_type,
                btf_id,
            } => format!("tracing(attach {attach_type})/btf {btf_id}"),
            Hook::Cgroup { attach_type: 0, .. } if prog_type == PROG_TYPE_CGROUP_SKB => {
                "cgroup_skb/ingress".into()
            }
            Hook::Cgroup { attach_type, .. } => format!("cgroup(attach {attach_type})"),
            Hook::Other { link_type } => format!("{link_type} link"),
        }
    }
}

/// An empty program attached to a hook: loaded and linked here, detached on drop.
pub(crate) struct EmptyTwin {
    prog: OwnedFd,
    _link: OwnedFd,
}

impl EmptyTwin {
    pub(crate) fn info(&self) -> Result<ProgInfo> {
        prog_info(&self.prog)
    }
}

/// `r0 = ret; exit`: two instructions (struct bpf_insn: code, regs, off, imm).
fn empty_insns(ret: i32) -> [u64; 2] {
    [0xb7 | (u64::from(ret as u32) << 32), 0x95]
}

/// Loads an empty program of `model`'s type on `hook` and attaches it there. `cgroups`:
/// the cgroup v2 directories to look for a cgroup link's cgroup id in.
pub(crate) fn empty_twin(model: &ProgInfo, hook: &Hook, cgroups: &[PathBuf]) -> Result<EmptyTwin> {
    let name = format!("e_{}", model.name);
    match hook {
        Hook::RawTp { tp } if model.prog_type == PROG_TYPE_TRACING => {
            let btf = btf_fd(model.attach_btf_obj_id)?;
            let prog = load(
                PROG_TYPE_TRACING,
                TRACE_RAW_TP,
                model.attach_btf_id,
                btf.as_ref(),
                0,
                &name,
            )
            .with_context(|| format!("loading an empty tp_btf/{tp}"))?;
            let link = raw_tp_open(&prog, None)?;
            Ok(EmptyTwin { prog, _link: link })
        }
        Hook::RawTp { tp } if model.prog_type == PROG_TYPE_RAW_TRACEPOINT => {
            let prog = load(PROG_TYPE_RAW_TRACEPOINT, 0, 0, None, 0, &name)?;
            let link = raw_tp_open(&prog, Some(tp))?;
            Ok(EmptyTwin { prog, _link: link })
        }
        Hook::Tracing {
            attach_type,
            btf_id,
        } => {
            let btf = btf_fd(model.attach_btf_obj_id)?;
            let prog = load(
                PROG_TYPE_TRACING,
                *attach_type,
                *btf_id,
                btf.as_ref(),
                0,
                &name,
            )?;
            let link = raw_tp_open(&prog, None)?;
            Ok(EmptyTwin { prog, _link: link })
        }
        Hook::Cgroup {
            attach_type,
            cgroup_id,
        } if model.prog_type == PROG_TYPE_CGROUP_SKB => {
            let dir = cgroups
                .iter()
                .find(|d| inode(d) == Some(*cgroup_id))
                .with_context(|| {
                    format!("no cgroup v2 directory with id {cgroup_id} among {cgroups:?}")
                })?;
            let cg = fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
            // cgroup_skb returns 1: the packet passes.
            let prog = load(PROG_TYPE_CGROUP_SKB, *attach_type, 0, None, 1, &name)?;
            let mut a = [0u8; 128];
            put32(&mut a, 0, prog.as_raw_fd() as u32);
            put32(&mut a, 4, cg.as_raw_fd() as u32);
            put32(&mut a, 8, *attach_type);
            let link = owned(bpf(BPF_LINK_CREATE, &mut a).context("bpf(BPF_LINK_CREATE)")?);
            Ok(EmptyTwin { prog, _link: link })
        }
        other => bail!("no empty twin for {}", other.label(model.prog_type)),
    }
}

fn inode(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(p).ok().map(|m| m.ino())
}

/// The BTF object a tracing program attaches into (vmlinux or a module), by id.
fn btf_fd(id: u32) -> Result<Option<OwnedFd>> {
    if id == 0 {
        return Ok(None);
    }
    let mut a = [0u8; 128];
    put32(&mut a, 0, id);
    let fd = bpf(BPF_BTF_GET_FD_BY_ID, &mut a).context("bpf(BPF_BTF_GET_FD_BY_ID)")?;
    Ok(Some(owned(fd)))
}

fn load(
    prog_type: u32,
    expected_attach_type: u32,
    attach_btf_id: u32,
    attach_btf: Option<&OwnedFd>,
    ret: i32,
    name: &str,
) -> Result<OwnedFd> {
    let insns = empty_insns(ret);
    let license = b"GPL\0";
    let mut a = [0u8; 128];
    put32(&mut a, 0, prog_type);
    put32(&mut a, 4, insns.len() as u32);
    put64(&mut a, 8, insns.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    // prog_name: [A-Za-z0-9_.], at most 15 bytes and a NUL.
    let clean: Vec<u8> = name
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
        .take(15)
        .collect();
    a[48..48 + clean.len()].copy_from_slice(&clean);
    put32(&mut a, 68, expected_attach_type);
    put32(&mut a, 108, attach_btf_id);
    if let Some(btf) = attach_btf {
        put32(&mut a, 112, btf.as_raw_fd() as u32);
    }
    let fd = bpf(BPF_PROG_LOAD, &mut a)
        .with_context(|| format!("bpf(BPF_PROG_LOAD) of an empty program of type {prog_type}"))?;
    Ok(owned(fd))
}

fn raw_tp_open(prog: &OwnedFd, tp: Option<&str>) -> Result<OwnedFd> {
    let name = tp.map(|t| format!("{t}\0"));
    let mut a = [0u8; 128];
    put64(&mut a, 0, name.as_ref().map_or(0, |n| n.as_ptr() as u64));
    put32(&mut a, 8, prog.as_raw_fd() as u32);
    let fd = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut a).context("bpf(BPF_RAW_TRACEPOINT_OPEN)")?;
    Ok(owned(fd))
}
