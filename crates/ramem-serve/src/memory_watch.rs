//! The memory as it is now, for a server that runs while the memory grows
//! (`ramem memory add`) or is edited (`relabel`, `delete`).
//!
//! A memory commits a change by renaming a new `manifest.json` over the
//! old one, and brings its HNSW index up to date by rewriting the index
//! header. [`MemoryWatch::current`] looks at both files (one `stat` each)
//! and reopens the memory when either changed, so a reader sees every
//! committed entry and never a half-written one: a memory opens from its
//! manifest, which lists committed shards only.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use ramem_index::hnsw::{index_dir, HEADER_FILE};
use ramem_store::memory::{Memory, MANIFEST_FILE};

/// What identifies a version of a file: enough to see a rename or rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// The stamps of a memory's manifest and index header.
type MemoryStamp = (Option<FileStamp>, Option<FileStamp>);

fn memory_stamp(dir: &Path) -> MemoryStamp {
    (
        stamp(&dir.join(MANIFEST_FILE)),
        stamp(&index_dir(dir).join(HEADER_FILE)),
    )
}

/// A memory directory, reopened when it changes.
pub struct MemoryWatch {
    dir: PathBuf,
    state: Mutex<(MemoryStamp, Arc<Memory>)>,
}

impl MemoryWatch {
    /// Watches `memory` (already open).
    pub fn new(memory: Arc<Memory>) -> MemoryWatch {
        let dir = memory.dir().to_path_buf();
        MemoryWatch {
            state: Mutex::new((memory_stamp(&dir), memory)),
            dir,
        }
    }

    /// The memory directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The memory as committed now: the same handle while nothing changed,
    /// a reopened one after a commit. A memory that cannot be reopened
    /// (removed meanwhile) is an error; the last good handle stays.
    pub fn current(&self) -> Result<Arc<Memory>> {
        let now = memory_stamp(&self.dir);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 != now {
            let memory = Memory::open(&self.dir)
                .with_context(|| format!("reopening the memory {}", self.dir.display()))?;
            tracing::info!(
                "the memory {} changed: {} entries now",
                self.dir.display(),
                memory.count()
            );
            *state = (now, Arc::new(memory));
        }
        Ok(state.1.clone())
    }
}
