//! One writer at a time: the writer lock of a memory directory.
//!
//! A writer holds an exclusive advisory lock (`flock`) on `MEM/writer.lock`
//! for as long as it lives, and writes its process id and command into the
//! file. A second writer is refused with a message naming the holder.
//! Readers never take the lock, so they never wait. The operating system
//! drops the lock when the holding process ends, however it ends, so a lock
//! left by a killed writer is stale by construction: the next writer takes
//! it (and overwrites the old holder's record). The file itself stays.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{IoContext, Result, StoreError};

/// The lock file inside a memory directory.
pub const LOCK_FILE: &str = "writer.lock";

/// A held writer lock; released when dropped.
#[derive(Debug)]
pub(crate) struct WriterLock {
    _file: File,
}

impl WriterLock {
    /// Takes the writer lock of the memory at `dir` (which must exist), or
    /// says who holds it.
    pub fn acquire(dir: &Path) -> Result<WriterLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path, "open the writer lock")?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder may be rewriting its record; an empty read is fine.
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::Locked {
                    path: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "another process".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Io {
                    path,
                    action: "lock the memory for writing",
                    error: e,
                })
            }
        }
        let command: Vec<String> = std::env::args()
            .take(3)
            .map(|a| {
                Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(a)
            })
            .collect();
        let record = format!("pid {} ({})\n", std::process::id(), command.join(" "));
        file.set_len(0).at(&path, "write the writer lock")?;
        file.seek(SeekFrom::Start(0))
            .at(&path, "write the writer lock")?;
        file.write_all(record.as_bytes())
            .at(&path, "write the writer lock")?;
        Ok(WriterLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_holder_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(dir.path()).unwrap();
        let err = WriterLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("being written"),
            "{err}"
        );
        drop(first);
        WriterLock::acquire(dir.path()).unwrap();
    }
}
