//! Crash-safe file writes.
//!
//! A file is first written under a hidden temporary name in the directory of
//! its final path, synced to disk, and then renamed over the final path. A
//! rename within one directory is atomic, so readers (and a process restarted
//! after a crash) see either the old file or the complete new one, never a
//! partial write. The temporary file lives in the same directory because a
//! rename across file systems is not atomic (and usually not possible).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result, StoreError};

/// Writes `bytes` to `path` atomically: `path` ends up holding either its
/// previous content or all of `bytes`, even if the process dies midway.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)
        .at(&file.temp_path, "write temporary file")?;
    file.commit()
}

/// A buffered file writer whose content appears at its destination only when
/// [`commit`](AtomicFile::commit) succeeds.
///
/// Dropping an `AtomicFile` without committing deletes the temporary file and
/// leaves whatever was at the destination untouched.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    temp_path: PathBuf,
    // `None` once commit has consumed the handle.
    writer: Option<BufWriter<File>>,
    committed: bool,
}

/// Makes temporary names unique among the files one process has open.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl AtomicFile {
    /// Starts writing a new version of `path`. The parent directory must exist.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let Some(name) = path.file_name() else {
            return Err(StoreError::Invalid {
                path,
                reason: "not a file path (it has no file name)".into(),
            });
        };
        let dir = parent_dir(&path);
        let pid = std::process::id();
        // `create_new` refuses to reuse a name, so a leftover file from a
        // crashed process with the same pid is skipped rather than clobbered.
        let mut attempts = 0;
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let temp_name = format!(".{}.{pid}.{n}.tmp", name.to_string_lossy());
            let temp_path = dir.join(temp_name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp_path)
            {
                Ok(file) => {
                    return Ok(AtomicFile {
                        path,
                        temp_path,
                        writer: Some(BufWriter::with_capacity(1 << 20, file)),
                        committed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => {
                    attempts += 1;
                }
                Err(e) => return Err(e).at(&temp_path, "create temporary file"),
            }
        }
    }

    /// The destination path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the data is being written until the commit.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Flushes and syncs the data, then renames it over the destination.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&self.temp_path, "write temporary file")?;
        file.sync_all().at(&self.temp_path, "sync temporary file")?;
        drop(file);
        fs::rename(&self.temp_path, &self.path).at(&self.path, "rename temporary file onto")?;
        self.committed = true;
        sync_dir(parent_dir(&self.path));
        Ok(())
    }

    fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer present until commit")
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.writer().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer().flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.writer().seek(pos)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            // Close the handle first; the removal is best effort because a
            // destructor has no way to report failure.
            drop(self.writer.take());
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// The directory a relative or absolute file path lives in.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a completed rename durable. Best effort: some file systems do not
/// support syncing a directory, and the data itself is already synced.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_atomic_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(entries(dir.path()), vec!["a.txt"]);
    }

    #[test]
    fn dropped_file_leaves_old_content_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"new but abandoned").unwrap();
            f.flush().unwrap();
            assert!(f.temp_path().exists());
            assert_eq!(f.temp_path().parent(), p.parent());
        }
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(dir.path()), vec!["a.txt"]);
    }

    #[test]
    fn nothing_visible_before_commit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.bin");
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        f.flush().unwrap();
        assert!(!p.exists());
        f.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn seek_rewrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bin");
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"xxxxtail").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"head").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"headtail");
    }

    #[test]
    fn missing_directory_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/x.bin");
        let err = write_atomic(&p, b"x").unwrap_err().to_string();
        assert!(err.contains("no/such/dir"), "{err}");
        assert!(err.contains("create temporary file"), "{err}");
    }

    #[test]
    fn path_without_file_name_is_rejected() {
        let err = AtomicFile::create("/").unwrap_err().to_string();
        assert!(err.contains("no file name"), "{err}");
    }
}
