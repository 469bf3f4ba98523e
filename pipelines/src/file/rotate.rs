//! An append-only file that rotates by size: `path` → `path.1` → `path.2` …,
//! keeping `keep` rotated files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: usize,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingFile {
    pub fn open(path: &Path, max_size: u64, keep: usize) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max_size: max_size.max(1),
            keep,
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path).ok();
        } else {
            std::fs::remove_file(self.rotated(self.keep)).ok();
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))
                        .with_context(|| format!("rotating {}", from.display()))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))
                .with_context(|| format!("rotating {}", self.path.display()))?;
        }
        self.file = open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Write one whole line; rotates first if it would overflow the file.
    pub fn write_line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file
            .write_all(line)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.size += line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut f = RotatingFile::open(&path, 20, 2).unwrap();
        for i in 0..5 {
            f.write_line(format!("line-{i}-xxxxxxxx\n").as_bytes())
                .unwrap();
        }
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line-4-xxxxxxxx\n");
        assert_eq!(
            std::fs::read_to_string(path.with_extension("jsonl.1")).unwrap(),
            "line-3-xxxxxxxx\n"
        );
        assert_eq!(
            std::fs::read_to_string(path.with_extension("jsonl.2")).unwrap(),
            "line-2-xxxxxxxx\n"
        );
        assert!(!path.with_extension("jsonl.3").exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
