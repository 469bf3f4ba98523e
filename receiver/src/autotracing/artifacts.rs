//! The capture folder: where heavy artifacts (flame graphs, folded stacks)
//! go, and how they are named.
//!
//! Layout: `<capture_dir>/<detector>/<UTC time>-<scope>.<ext>`, e.g.
//! `captures/cpuidle/20261125T134501Z-kotel-test-burn.svg`. Each detector
//! folder keeps at most [`KEEP_PER_DETECTOR`] files; older ones are removed
//! when a new one is written.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Files kept per detector folder before the oldest are deleted.
pub const KEEP_PER_DETECTOR: usize = 200;

/// The artifact base name for one capture: `<UTC time>-<scope>` (scope made
/// file-name safe and at most 64 bytes).
pub fn base_name(time_ns: u64, scope: &str) -> String {
    let secs = (time_ns / 1_000_000_000) as i64;
    let (y, mo, d, h, mi, s) = civil(secs);
    let mut safe: String = scope
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = safe.trim_matches('_').to_string();
    safe = if trimmed.is_empty() {
        "host".into()
    } else {
        trimmed
    };
    safe.truncate(64);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z-{safe}")
}

/// Write `data` to `<dir>/<detector>/<base>.<ext>`; returns the full path.
pub fn write(
    dir: &Path,
    detector: &str,
    base: &str,
    ext: &str,
    data: &[u8],
) -> anyhow::Result<PathBuf> {
    let folder = dir.join(detector);
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("creating capture folder {}", folder.display()))?;
    let path = folder.join(format!("{base}.{ext}"));
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    prune(&folder, KEEP_PER_DETECTOR);
    Ok(path)
}

/// Delete the oldest files of `folder` beyond `keep` (names sort by time).
fn prune(folder: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(folder) else {
        return;
    };
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    if names.len() <= keep {
        return;
    }
    names.sort();
    for p in &names[..names.len() - keep] {
        let _ = std::fs::remove_file(p);
    }
}

/// Unix seconds to (year, month, day, hour, minute, second) in UTC.
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_time_sorted_and_safe() {
        // 2026-11-25 13:45:01 UTC
        let t = 1_795_614_301u64 * 1_000_000_000;
        assert_eq!(
            base_name(t, "/kubepods/pod1/abc"),
            "20261125T134501Z-kubepods_pod1_abc"
        );
        assert_eq!(base_name(0, "host"), "19700101T000000Z-host");
        assert_eq!(base_name(0, "///"), "19700101T000000Z-host");
    }

    #[test]
    fn prune_keeps_newest() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            write(d.path(), "x", &format!("{i}"), "txt", b"a").unwrap();
        }
        prune(&d.path().join("x"), 2);
        let mut left: Vec<_> = std::fs::read_dir(d.path().join("x"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["3.txt", "4.txt"]);
    }
}
