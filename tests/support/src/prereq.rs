//! Whether the tests can run here, and running them one at a time.

use std::{
    io::Write as _,
    path::Path,
    sync::{Mutex, MutexGuard},
};

/// Whether the end-to-end tests can run here. Without root (or `ip`, or bpf) they are
/// skipped loudly, except under CI (`CI` set to anything), where a skip would hide that
/// nothing was tested: there they fail.
pub fn require_root() -> bool {
    let Some(why) = missing_prerequisite() else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "e2e tests cannot run: {why}. CI must run them as root on a bpf-capable kernel; they never skip under CI"
        );
    }
    // Straight to fd 2: libtest captures eprintln! of passing tests, and this must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED (not root): {why}; e2e test did not run ***\n"
    );
    false
}

fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (euid 0)".into());
    }
    for tool in ["ip", "python3", "curl", "sh", "flock"] {
        if !on_path(tool) {
            return Some(format!("`{tool}` is not on PATH"));
        }
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    bpf_unavailable()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Creates (and closes) a one-entry array map: the cheapest proof that bpf() works here.
fn bpf_unavailable() -> Option<String> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, then
    // fields that must be zero.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Some(format!(
            "bpf() is unavailable: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is the map we just created and nothing else owns it.
    unsafe { libc::close(fd as libc::c_int) };
    None
}

/// Holds the e2e lock: tests run one at a time even under cargo's parallel runner, because
/// every daemon sees every namespace's IMDS traffic.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next test must still run.
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
