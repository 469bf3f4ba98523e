//! Allocation-free readers of kernel text files (`/proc`, `/sys`).
//!
//! [`ProcFile`] keeps its file descriptor open for the life of a collector
//! and re-reads the whole file with `pread(2)` at offset 0 into a buffer it
//! reuses, so a steady-state read costs no `open`/`close` and no allocation.
//! The helpers in this module split that buffer into lines and fields and
//! parse numbers straight from bytes.
//!
//! [`intern`] turns the few dynamic names a collector derives from a kernel
//! file (`linux.vmstat.pgfault`) into `&'static str`, so emitting them does
//! not allocate once they have been seen.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Initial buffer size: enough for `/proc/loadavg`, `/proc/meminfo` and
/// `/proc/vmstat`; `/proc/stat` on large machines grows it once.
const INITIAL_CAPACITY: usize = 8 * 1024;

/// An open kernel text file, re-read in full on every [`ProcFile::read`].
pub struct ProcFile {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
}

impl std::fmt::Debug for ProcFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcFile")
            .field("path", &self.path)
            .field("capacity", &self.buf.len())
            .finish()
    }
}

impl ProcFile {
    /// Open `path` read-only. The error names the path.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            buf: vec![0; INITIAL_CAPACITY],
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole current content of the file. Reads with `pread` from
    /// offset 0 until end of file; the buffer doubles when the file does not
    /// fit and keeps its size for later reads.
    pub fn read(&mut self) -> io::Result<&[u8]> {
        let mut filled = 0;
        loop {
            if filled == self.buf.len() {
                let grown = self.buf.len() * 2;
                self.buf.resize(grown, 0);
            }
            match self.file.read_at(&mut self.buf[filled..], filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("reading {}: {e}", self.path.display()),
                    ));
                }
            }
        }
        Ok(&self.buf[..filled])
    }
}

/// Non-empty lines of `buf`, without their `\n`.
pub fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// Whitespace-separated fields of `line`.
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
}

/// Parse an unsigned decimal integer; `None` on an empty field, any
/// non-digit or overflow.
pub fn parse_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parse a decimal floating-point number (`0.93`).
pub fn parse_f64(field: &[u8]) -> Option<f64> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Split a `Key:   value unit` line (`/proc/meminfo` style) into the key and
/// the rest after the colon, trimmed.
pub fn key_value(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    Some((&line[..colon], line[colon + 1..].trim_ascii()))
}

/// Split a line into its first field and the rest (`/proc/vmstat`,
/// `/proc/stat` style).
pub fn first_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = line.trim_ascii_start();
    let end = line
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(line.len());
    if end == 0 {
        return None;
    }
    Some((&line[..end], line[end..].trim_ascii_start()))
}

/// A `'static` copy of `s`, shared by every caller asking for an equal
/// string. Each distinct string is leaked once: use only for the bounded set
/// of names derived from kernel file keys.
pub fn intern(s: &str) -> &'static str {
    static SET: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = SET
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(&found) = set.get(s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_f64(b"0.93"), Some(0.93));
        assert_eq!(parse_f64(b"x"), None);
    }

    #[test]
    fn splits_lines_and_fields() {
        let buf = b"cpu  1 2  3\n\nintr 5\n";
        let ls: Vec<&[u8]> = lines(buf).collect();
        assert_eq!(ls, vec![&b"cpu  1 2  3"[..], &b"intr 5"[..]]);
        let fs: Vec<&[u8]> = fields(ls[0]).collect();
        assert_eq!(fs, vec![&b"cpu"[..], b"1", b"2", b"3"]);
        assert_eq!(
            first_field(b"nr_dirty 12"),
            Some((&b"nr_dirty"[..], &b"12"[..]))
        );
        assert_eq!(first_field(b"   "), None);
        assert_eq!(
            key_value(b"Active(anon):       1544 kB"),
            Some((&b"Active(anon)"[..], &b"1544 kB"[..]))
        );
        assert_eq!(key_value(b"no colon"), None);
    }

    #[test]
    fn rereads_changed_file_and_grows() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(b"first\n").unwrap();
        tmp.flush().unwrap();
        let mut f = ProcFile::open(tmp.path()).unwrap();
        assert_eq!(f.read().unwrap(), b"first\n");
        assert_eq!(f.read().unwrap(), b"first\n");
        let big = vec![b'x'; 3 * INITIAL_CAPACITY + 17];
        std::fs::write(tmp.path(), &big).unwrap();
        assert_eq!(f.read().unwrap(), &big[..]);
        std::fs::write(tmp.path(), b"short").unwrap();
        assert_eq!(f.read().unwrap(), b"short");
    }

    #[test]
    fn reads_real_proc_file() {
        let mut f = ProcFile::open("/proc/stat").unwrap();
        let first = f.read().unwrap().len();
        assert!(first > 0);
        assert!(f.read().unwrap().starts_with(b"cpu "));
    }

    #[test]
    fn missing_file_names_path() {
        let err = ProcFile::open("/proc/does-not-exist").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/proc/does-not-exist"), "{err}");
    }

    #[test]
    fn interns_once() {
        let a = intern(&String::from("linux.test.name"));
        let b = intern("linux.test.name");
        assert!(std::ptr::eq(a, b));
    }
}
