//! Time of the kernel's stamps. The ground floor: depends on nothing else in the crate.

use chrono::{DateTime, Local};

/// Converts the kernel's CLOCK_BOOTTIME stamps to wall-clock time.
pub(crate) struct BootClock {
    /// CLOCK_REALTIME minus CLOCK_BOOTTIME when read, in nanoseconds.
    realtime_minus_boot_ns: i128,
}

impl BootClock {
    /// The offset between the clocks now: re-read it now and then, since the wall clock
    /// steps (NTP) while the boot clock does not.
    pub(crate) fn now() -> Self {
        Self {
            realtime_minus_boot_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    /// A fixed offset (CLOCK_REALTIME minus CLOCK_BOOTTIME, in nanoseconds), for tests that
    /// need the wall time of a stamp to be known.
    #[cfg(test)]
    pub(crate) fn fixed(realtime_minus_boot_ns: i128) -> Self {
        Self {
            realtime_minus_boot_ns,
        }
    }

    /// The wall-clock time of a kernel stamp (`bpf_ktime_get_boot_ns`, nanoseconds since
    /// boot), clamped to the representable range.
    pub(crate) fn wall(&self, boot_ns: u64) -> DateTime<Local> {
        let ns = boot_ns as i128 + self.realtime_minus_boot_ns;
        DateTime::from_timestamp_nanos(ns.clamp(0, i64::MAX as i128) as i64).with_timezone(&Local)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}
