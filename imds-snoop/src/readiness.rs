//! Telling the service manager we are attached: systemd's `sd_notify` (for `Type=notify`)
//! and a ready file with our pid (for Kubernetes probes via `imds-snoop check`).

use std::{
    fs, io,
    os::{linux::net::SocketAddrExt, unix::net::SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
};

/// Sends `READY=1` to systemd when it asked for it (NOTIFY_SOCKET set); a no-op otherwise.
pub(crate) fn notify_ready() -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    // "@name" is a socket in the abstract namespace.
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.send_to_addr(b"READY=1", &addr)?;
    Ok(())
}

/// The ready file, removed when dropped (clean exit).
pub(crate) struct ReadyFile(PathBuf);

impl ReadyFile {
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `imds-snoop check`: ready file present and naming a live process. A `kill -9` leaves
/// the file behind, so the pid is checked too.
pub fn check(ready_file: &Path) -> ExitCode {
    let pid = match fs::read_to_string(ready_file) {
        Ok(s) => s.trim().parse::<u32>().ok(),
        Err(e) => {
            eprintln!("imds-snoop check: not ready: {}: {e}", ready_file.display());
            return ExitCode::FAILURE;
        }
    };
    match pid {
        Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => ExitCode::SUCCESS,
        _ => {
            eprintln!(
                "imds-snoop check: not ready: {} names no running process",
                ready_file.display()
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_follows_the_ready_file() {
        let path = std::env::temp_dir().join(format!("imds-ready-{}", std::process::id()));
        assert_eq!(check(&path), ExitCode::FAILURE);
        let ready = ReadyFile::create(&path).unwrap();
        assert_eq!(check(&path), ExitCode::SUCCESS);
        fs::write(&path, "999999999\n").unwrap();
        assert_eq!(check(&path), ExitCode::FAILURE, "a stale pid is not ready");
        drop(ready);
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn notify_reaches_a_listening_socket() {
        let path = std::env::temp_dir().join(format!("imds-notify-{}", std::process::id()));
        let _ = fs::remove_file(&path);
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY: tests in this module do not read NOTIFY_SOCKET concurrently.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        notify_ready().unwrap();
        // SAFETY: as for set_var above.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 16];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = fs::remove_file(&path);
    }
}
