//! The process's own CPU time and memory, as the kernel counts them.

use serde::{Deserialize, Serialize};

/// CPU time and memory of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// User plus system CPU time, microseconds.
    pub cpu_us: u64,
    /// Resident memory now, KiB.
    pub rss_kib: u64,
    /// Peak resident memory, KiB.
    pub max_rss_kib: u64,
}

/// This process's usage now.
pub fn usage() -> Usage {
    // SAFETY: `getrusage` only writes the struct it is given, which is zero-initialised and
    // lives for the call.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    Usage {
        cpu_us: micros(ru.ru_utime) + micros(ru.ru_stime),
        rss_kib: rss_kib().unwrap_or(0),
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    }
}

/// The resident set size from `/proc/self/status` (`VmRSS`), KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The total size of the files under `dir`, bytes.
pub fn disk_usage(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_grows_with_work_and_memory_is_seen() {
        let before = usage();
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = usage();
        assert!(after.cpu_us > before.cpu_us, "{before:?} -> {after:?}");
        assert!(after.rss_kib > 0 && after.max_rss_kib >= after.rss_kib / 2, "{after:?}");
    }

    #[test]
    fn disk_usage_adds_up_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b"), [0u8; 23]).unwrap();
        assert_eq!(disk_usage(dir.path()), 123);
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }
}
