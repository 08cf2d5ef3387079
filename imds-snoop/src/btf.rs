//! Kernel struct offsets and enum values, read from the running kernel's BTF.
//!
//! Rust eBPF programs get no CO-RE relocations, so instead of compiling offsets in we look
//! every field up here at start and hand the table to the kernel program as a read-only
//! global ([`Offsets`]). Each field is named by a path of member names; anonymous structs and
//! unions on the way are searched through, so one path serves every layout from 5.10 to 6.18
//! (e.g. `iov_iter.count` moved into an anonymous struct in 6.4). Where a member was renamed
//! the table lists the alternatives in order (`__iov` from 6.4, `iov` before). A field that
//! cannot be found is an error naming the kernel, never a guessed offset.

use std::{
    cell::RefCell, collections::HashMap, io::Write as _, os::fd::FromRawFd as _, path::Path,
};

use btf_rs::{Backend, Btf, Type};
use imds_snoop_common::{DropConfig, Offsets};
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BtfError {
    #[error(
        "cannot read kernel BTF at {path} ({source}); imds-snoop needs it to find struct \
         offsets, and a kernel built without CONFIG_DEBUG_INFO_BTF has none (every AL2023, \
         Bottlerocket and recent Debian/Ubuntu kernel has it)"
    )]
    Missing {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel {kernel}: BTF has no {what}; this kernel layout is not supported")]
    NotFound { kernel: String, what: String },
    #[error("kernel {kernel}: reading BTF for {what}: {source}")]
    Read {
        kernel: String,
        what: String,
        #[source]
        source: btf_rs::Error,
    },
}

/// The running kernel's release, for error messages.
pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) struct KernelBtf {
    btf: Btf,
    kernel: String,
    /// Types by name, looked up once: the mmap backend finds a name by scanning every type.
    by_name: RefCell<HashMap<String, Vec<Type>>>,
}

impl KernelBtf {
    /// Maps the BTF file rather than parsing all of it: btf-rs's default (cached) backend
    /// builds every type of vmlinux (~150k) up front, ~215 ms and ~40 MiB at start-up for
    /// the few dozen members we read. Kernels before 6.16 cannot mmap
    /// /sys/kernel/btf/vmlinux; there the file is copied once into a memfd, which can be.
    pub(crate) fn load(path: &Path) -> Result<Self, BtfError> {
        let missing = |source| BtfError::Missing {
            path: path.display().to_string(),
            source,
        };
        let btf = match Btf::from_file_with_backend(path, Backend::Mmap) {
            Ok(btf) => btf,
            Err(e) => {
                debug!("mmap of {} refused ({e}); mapping a copy", path.display());
                Self::map_copy(path).map_err(missing)?
            }
        };
        Ok(Self {
            btf,
            kernel: kernel_release(),
            by_name: RefCell::default(),
        })
    }

    /// The file read once into a memfd, mapped through /proc/self/fd (btf-rs maps paths only).
    fn map_copy(path: &Path) -> Result<Btf, btf_rs::Error> {
        let bytes = std::fs::read(path)?;
        // SAFETY: a constant NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(c"imds-snoop-btf".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(&bytes)?;
        drop(bytes);
        Btf::from_file_with_backend(format!("/proc/self/fd/{fd}"), Backend::Mmap)
    }

    /// `resolve_types_by_name`, memoized.
    fn types_named(&self, name: &str) -> Result<Vec<Type>, btf_rs::Error> {
        if let Some(types) = self.by_name.borrow().get(name) {
            return Ok(types.clone());
        }
        let types = self.btf.resolve_types_by_name(name)?;
        self.by_name
            .borrow_mut()
            .insert(name.to_owned(), types.clone());
        Ok(types)
    }

    /// Resolves every offset the kernel program reads.
    pub(crate) fn offsets(&self) -> Result<Offsets, BtfError> {
        let common = self.offset("sock", &[&["__sk_common"]])?;
        let sk = |field: &str| -> Result<u32, BtfError> {
            Ok(common + self.offset("sock_common", &[&[field]])?)
        };
        let iter = |paths: &[&[&str]]| self.offset("iov_iter", paths);
        // 5.10 has `unsigned int type` (iterator kind | direction bit); 5.14+ `u8 iter_type`.
        let (iter_type, iter_type_size, iter_type_mask) =
            match self.member("iov_iter", &[&["iter_type"]]) {
                Ok((off, size)) => (off, size, u32::MAX),
                Err(_) => {
                    let (off, size) = self.member("iov_iter", &[&["type"]])?;
                    // `iov_iter_type()` on 5.10: `i->type & ~(READ | WRITE)`, READ=0, WRITE=1.
                    (off, size, !1u32)
                }
            };
        Ok(Offsets {
            sk_family: sk("skc_family")?,
            sk_dport: sk("skc_dport")?,
            sk_daddr: sk("skc_daddr")?,
            sk_v6_daddr: sk("skc_v6_daddr")?,
            sk_net: sk("skc_net")?,
            net_inum: self.offset("net", &[&["ns", "inum"]])?,
            msg_iter: self.offset("msghdr", &[&["msg_iter"]])?,
            iter_type,
            iter_type_size,
            iter_type_mask,
            iter_iov_offset: iter(&[&["iov_offset"]])?,
            iter_count: iter(&[&["count"]])?,
            iter_iov: iter(&[&["__iov"], &["iov"]])?,
            // Before 6.0 there is no ubuf member; the iovec pointer's slot is as good as any
            // since ITER_UBUF never matches there.
            iter_ubuf: iter(&[&["ubuf"], &["iov"]])?,
            iter_nr_segs: iter(&[&["nr_segs"]])?,
            iter_iovec: self.enum_value("iter_type", "ITER_IOVEC")?,
            iter_ubuf_kind: self
                .enum_value("iter_type", "ITER_UBUF")
                .unwrap_or(u32::MAX),
            task_real_parent: self.offset("task_struct", &[&["real_parent"]])?,
            task_group_leader: self.offset("task_struct", &[&["group_leader"]])?,
            task_tgid: self.offset("task_struct", &[&["tgid"]])?,
            task_comm: self.offset("task_struct", &[&["comm"]])?,
            task_mm: self.offset("task_struct", &[&["mm"]])?,
            mm_arg_start: self.offset("mm_struct", &[&["arg_start"]])?,
            mm_arg_end: self.offset("mm_struct", &[&["arg_end"]])?,
            task_thread_pid: self.offset("task_struct", &[&["thread_pid"]])?,
            pid_level: self.offset("pid", &[&["level"]])?,
            pid_numbers: self.offset("pid", &[&["numbers"]])?,
            upid_size: self.struct_size("upid")?,
            sk_num: sk("skc_num")?,
            sk_rcv_saddr: sk("skc_rcv_saddr")?,
            sk_v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
        })
    }

    /// What the hop-limit drop program reads (`DropConfig`): sk_buff, net_device and rtable
    /// members, and `SKB_DROP_REASON_IP_INHDR` (0 where this kernel's enum has none: the
    /// daemon then loads the program that needs no reason).
    pub(crate) fn drop_config(&self) -> Result<DropConfig, BtfError> {
        let skb = |paths: &[&[&str]]| self.offset("sk_buff", paths);
        Ok(DropConfig {
            skb_head: skb(&[&["head"]])?,
            skb_network_header: skb(&[&["network_header"]])?,
            skb_sk: skb(&[&["sk"]])?,
            skb_dev: skb(&[&["dev"]])?,
            skb_refdst: skb(&[&["_skb_refdst"]])?,
            dev_nd_net: self.offset("net_device", &[&["nd_net"]])?,
            rt_flags: self.offset("rtable", &[&["rt_flags"]])?,
            ip_inhdr: self
                .enum_value("skb_drop_reason", "SKB_DROP_REASON_IP_INHDR")
                .unwrap_or(0),
        })
    }

    /// Arguments of BTF tracepoint `name` (its `btf_trace_<name>` typedef, a pointer to
    /// `void (*)(void *__data, TP_PROTO...)`), `__data` left out; None without it.
    pub(crate) fn tracepoint_arity(&self, name: &str) -> Option<usize> {
        let types = self.types_named(&format!("btf_trace_{name}")).ok()?;
        types.into_iter().find_map(|ty| {
            let Type::Typedef(td) = ty else { return None };
            let Type::Ptr(ptr) = self.btf.resolve_chained_type(&td).ok()? else {
                return None;
            };
            let Type::FuncProto(proto) = self.btf.resolve_chained_type(&ptr).ok()? else {
                return None;
            };
            proto.parameters.len().checked_sub(1)
        })
    }

    /// Whether the kernel has a BTF-enabled tracepoint `name` (its `btf_trace_<name>` typedef).
    pub(crate) fn has_btf_tracepoint(&self, name: &str) -> bool {
        self.btf
            .resolve_ids_by_name(&format!("btf_trace_{name}"))
            .is_ok_and(|ids| !ids.is_empty())
    }

    pub(crate) fn kernel(&self) -> &str {
        &self.kernel
    }

    fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        self.size_of(&self.struct_type(strukt)?)
    }

    fn offset(&self, strukt: &str, paths: &[&[&str]]) -> Result<u32, BtfError> {
        self.member(strukt, paths).map(|(off, _)| off)
    }

    /// Byte offset and size of the first path in `paths` that exists in `struct strukt`.
    fn member(&self, strukt: &str, paths: &[&[&str]]) -> Result<(u32, u32), BtfError> {
        let root = self.struct_type(strukt)?;
        for path in paths {
            if let Some(found) = self.walk(&root, path)? {
                return Ok(found);
            }
        }
        let tried: Vec<String> = paths.iter().map(|p| p.join(".")).collect();
        Err(self.not_found(format!("member {strukt}.{}", tried.join(" or "))))
    }

    fn struct_type(&self, name: &str) -> Result<Type, BtfError> {
        let types = self
            .types_named(name)
            .map_err(|source| self.read_err(format!("struct {name}"), source))?;
        types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| self.not_found(format!("struct {name}")))
    }

    /// Follows `path` from `ty`; returns (bit offset / 8, byte size of the last member).
    fn walk(&self, ty: &Type, path: &[&str]) -> Result<Option<(u32, u32)>, BtfError> {
        let Some((first, rest)) = path.split_first() else {
            return Ok(None);
        };
        let Some((bits, member_ty)) = self.find_member(ty, first)? else {
            return Ok(None);
        };
        let here = bits / 8;
        if rest.is_empty() {
            return Ok(Some((here, self.size_of(&member_ty)?)));
        }
        Ok(self
            .walk(&member_ty, rest)?
            .map(|(off, size)| (here + off, size)))
    }

    /// Finds member `name` in a struct or union, searching anonymous members recursively.
    /// Returns its bit offset from the start of `ty` and its (resolved) type.
    fn find_member(&self, ty: &Type, name: &str) -> Result<Option<(u32, Type)>, BtfError> {
        let (Type::Struct(s) | Type::Union(s)) = ty else {
            return Ok(None);
        };
        for m in &s.members {
            let mname = self
                .btf
                .resolve_name(m)
                .map_err(|source| self.read_err(format!("member name {name}"), source))?;
            let mty = self.resolve(
                self.btf
                    .resolve_chained_type(m)
                    .map_err(|source| self.read_err(format!("type of {name}"), source))?,
            )?;
            if mname == name {
                return Ok(Some((m.bit_offset(), mty)));
            }
            if mname.is_empty()
                && let Some((bits, found)) = self.find_member(&mty, name)?
            {
                return Ok(Some((m.bit_offset() + bits, found)));
            }
        }
        Ok(None)
    }

    /// Strips typedefs and qualifiers.
    fn resolve(&self, mut ty: Type) -> Result<Type, BtfError> {
        for _ in 0..32 {
            match &ty {
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let inner = ty.as_btf_type().expect("qualifiers are BTF types");
                    ty = self
                        .btf
                        .resolve_chained_type(inner)
                        .map_err(|source| self.read_err("typedef".into(), source))?;
                }
                _ => return Ok(ty),
            }
        }
        Err(self.not_found("end of a typedef chain".into()))
    }

    fn size_of(&self, ty: &Type) -> Result<u32, BtfError> {
        Ok(match ty {
            Type::Int(i) => i.size() as u32,
            Type::Enum(e) => e.size() as u32,
            Type::Enum64(e) => e.size() as u32,
            Type::Struct(s) | Type::Union(s) => s.size() as u32,
            Type::Ptr(_) => 8,
            // Arrays and the rest: the kernel program reads fixed-size values of its own.
            _ => 0,
        })
    }

    /// The value of enumerator `name` of `enum enum_name`.
    fn enum_value(&self, enum_name: &str, name: &str) -> Result<u32, BtfError> {
        let types = self
            .types_named(enum_name)
            .map_err(|source| self.read_err(format!("enum {enum_name}"), source))?;
        for ty in &types {
            if let Type::Enum(e) = ty {
                for m in &e.members {
                    if self.btf.resolve_name(m).is_ok_and(|n| n == name) {
                        return Ok(m.val());
                    }
                }
            }
        }
        Err(self.not_found(format!("enumerator {enum_name}::{name}")))
    }

    fn not_found(&self, what: String) -> BtfError {
        BtfError::NotFound {
            kernel: self.kernel.clone(),
            what,
        }
    }

    fn read_err(&self, what: String, source: btf_rs::Error) -> BtfError {
        BtfError::Read {
            kernel: self.kernel.clone(),
            what,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this runs on must give a complete, plausible table. Runs against the
    /// machine's own BTF (the kernel matrix runs it on 5.10, 6.1 and 6.12 too).
    #[test]
    fn offsets_of_running_kernel_are_plausible() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: /sys/kernel/btf/vmlinux missing"
            );
            eprintln!("SKIPPED: no /sys/kernel/btf/vmlinux on this machine");
            return;
        }
        let btf = KernelBtf::load(path).expect("load BTF");
        let o = btf.offsets().expect("resolve offsets");
        // sock_common: family, ports and addresses live in its first 64 bytes.
        assert!(
            o.sk_daddr < 64 && o.sk_dport < 64 && o.sk_family < 64,
            "{o:?}"
        );
        assert!(o.sk_v6_daddr >= 16, "{o:?}");
        // skc_daddr/skc_rcv_saddr and skc_dport/skc_num are pairs of one union (addrpair,
        // portpair): the local half sits right after the remote half.
        assert_eq!(o.sk_rcv_saddr, o.sk_daddr + 4, "{o:?}");
        assert_eq!(o.sk_num, o.sk_dport + 2, "{o:?}");
        assert_eq!(o.sk_v6_rcv_saddr, o.sk_v6_daddr + 16, "{o:?}");
        assert_ne!(o.iter_count, o.iter_iov_offset, "{o:?}");
        assert_ne!(o.iter_iov, o.iter_count, "{o:?}");
        assert!(o.iter_type_size == 1 || o.iter_type_size == 4, "{o:?}");
        assert_ne!(o.iter_iovec, o.iter_ubuf_kind, "{o:?}");
        assert!(o.task_comm > o.task_tgid, "{o:?}");
    }

    /// Kernels before 6.16 refuse to mmap /sys/kernel/btf/vmlinux: the memfd copy they fall
    /// back to must give the same table.
    #[test]
    fn mapped_copy_gives_the_same_offsets() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return;
        }
        let direct = KernelBtf::load(path).expect("load BTF");
        let copy = KernelBtf {
            btf: KernelBtf::map_copy(path).expect("memfd copy"),
            kernel: kernel_release(),
            by_name: RefCell::default(),
        };
        let (a, b) = (direct.offsets().unwrap(), copy.offsets().unwrap());
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(copy.has_btf_tracepoint("sched_process_exec"));
    }

    /// The drop hook's table on this kernel: distinct sk_buff members, and the tracepoint's
    /// arity and reason as the kernel's version says (2 args before 5.17, 3, 4 from 6.11;
    /// `SKB_DROP_REASON_IP_INHDR` on 5.19+, never 0, which is `SKB_NOT_DROPPED_YET` or
    /// `NOT_SPECIFIED`; none before 5.17).
    #[test]
    fn drop_config_of_running_kernel_is_plausible() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return;
        }
        let btf = KernelBtf::load(path).expect("load BTF");
        let c = btf.drop_config().expect("drop config");
        let skb = [
            c.skb_head,
            c.skb_network_header,
            c.skb_sk,
            c.skb_dev,
            c.skb_refdst,
        ];
        for (i, a) in skb.iter().enumerate() {
            for b in &skb[i + 1..] {
                assert_ne!(a, b, "{c:?}");
            }
        }
        assert!(c.dev_nd_net > 0 && c.rt_flags > 0, "{c:?}");
        let release = kernel_release();
        let mut v = release
            .split(|ch: char| !ch.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let v = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        let arity = btf.tracepoint_arity("kfree_skb");
        let want = if v >= (6, 11) {
            4
        } else if v >= (5, 17) {
            3
        } else {
            2
        };
        assert_eq!(arity, Some(want), "kernel {release}");
        if v >= (5, 19) {
            assert_ne!(c.ip_inhdr, 0, "kernel {release}: {c:?}");
        } else if v < (5, 17) {
            assert_eq!(
                c.ip_inhdr, 0,
                "kernel {release}: no drop reasons yet: {c:?}"
            );
        }
        assert_eq!(btf.tracepoint_arity("no_such_tracepoint"), None);
    }

    #[test]
    fn missing_member_is_an_error_naming_the_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return;
        }
        let btf = KernelBtf::load(path).expect("load BTF");
        let err = btf
            .offset("iov_iter", &[&["no_such_member"]])
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("iov_iter.no_such_member"), "{msg}");
        assert!(msg.contains(btf.kernel()), "{msg}");
    }

    #[test]
    fn missing_btf_file_says_so() {
        let Err(err) = KernelBtf::load(Path::new("/nonexistent/vmlinux")) else {
            panic!("loading a missing BTF file must fail");
        };
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }
}
