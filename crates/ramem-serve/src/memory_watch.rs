//! The memory as it is now, for a server that runs while the memory grows
//! (`ramem memory add`, `memory push`) or is edited (`relabel`, `delete`).
//!
//! A memory directory commits a change by renaming a new `manifest.json`
//! over the old one, and brings its HNSW index up to date by rewriting the
//! index header. [`MemoryWatch::current`] looks at both files (one `stat`
//! each) and reopens the memory when either changed, so a reader sees every
//! committed entry and never a half-written one: a memory opens from its
//! manifest, which lists committed shards only. A memory in a vector
//! database searches its live collection; what the server knows of it (its
//! size, its label names) is read again at most once a second.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use ramem_index::hnsw::{index_dir, HEADER_FILE};
use ramem_index::SearchableMemory;
use ramem_recognize::open_memory;
use ramem_store::memory::MANIFEST_FILE;

/// How often a memory in a vector database is described again.
const REMOTE_REFRESH: Duration = Duration::from_secs(1);

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

/// What says a memory changed: its manifest and index header's stamps (a
/// directory), or the time it was last described (a remote memory).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Version {
    Local(Option<FileStamp>, Option<FileStamp>),
    Remote(Instant),
}

fn local_version(dir: &Path) -> Version {
    Version::Local(
        stamp(&dir.join(MANIFEST_FILE)),
        stamp(&index_dir(dir).join(HEADER_FILE)),
    )
}

/// A memory, reopened when it changes.
pub struct MemoryWatch {
    location: PathBuf,
    /// The directory of a memory on disk.
    dir: Option<PathBuf>,
    state: Mutex<(Version, Arc<dyn SearchableMemory>)>,
}

impl MemoryWatch {
    /// Watches `memory` (already open).
    pub fn new(memory: Arc<dyn SearchableMemory>) -> MemoryWatch {
        let location = PathBuf::from(memory.location());
        let dir = memory.clone().local().map(|m| m.dir().to_path_buf());
        let version = match &dir {
            Some(dir) => local_version(dir),
            None => Version::Remote(Instant::now()),
        };
        MemoryWatch {
            location,
            dir,
            state: Mutex::new((version, memory)),
        }
    }

    /// Where the memory is.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// The memory as committed now: the same handle while nothing changed,
    /// a reopened one after a commit. A memory that cannot be reopened
    /// (removed meanwhile, a server down) is an error; the last good handle
    /// stays.
    pub fn current(&self) -> Result<Arc<dyn SearchableMemory>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stale = match (&self.dir, state.0) {
            (Some(dir), version) => {
                let now = local_version(dir);
                (now != version).then_some(now)
            }
            (None, Version::Remote(at)) => {
                (at.elapsed() >= REMOTE_REFRESH).then(|| Version::Remote(Instant::now()))
            }
            (None, Version::Local(..)) => None,
        };
        if let Some(now) = stale {
            let memory = open_memory(&self.location)
                .with_context(|| format!("reopening the memory {}", self.location.display()))?;
            // A remote memory described again is kept only if it changed.
            let changed = self.dir.is_some() || memory.fingerprint()? != state.1.fingerprint()?;
            if changed {
                tracing::info!(
                    "the memory {} changed: {} entries now",
                    self.location.display(),
                    memory.count()
                );
                state.1 = memory;
            }
            state.0 = now;
        }
        Ok(state.1.clone())
    }
}
