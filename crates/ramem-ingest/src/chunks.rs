//! The one resumable chunk writer: a run's output in chunks under
//! `OUT.partial/`, each committed atomically as it completes, joined into
//! the final file only when every chunk is done.
//!
//! Layout of the directory:
//! - `plan.json`: what identifies the run (input, model, settings); a run
//!   with another plan does not resume these chunks, it removes them;
//! - per chunk `i` (six digits): `chunk-i.ids.txt` (the ids of the rows
//!   written, one per line), `chunk-i.skipped.json` (the inputs that could
//!   not be read: position in the chunk, id, reason), `chunk-i.logits.npy`
//!   where the run writes logits, and `chunk-i.npy` (the rows), written
//!   last: a chunk is complete when its `.npy` exists.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// An input a chunk could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Position in the chunk.
    pub index: usize,
    pub id: String,
    pub reason: String,
}

/// One chunk's output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// Ids of the rows, in row order.
    pub ids: Vec<String>,
    pub dim: usize,
    /// `ids.len() x dim` values.
    pub rows: Vec<f32>,
    /// `ids.len() x classes` values, where the run writes logits.
    pub logits: Option<(usize, Vec<f32>)>,
    pub skipped: Vec<Skipped>,
}

/// A run's chunk directory (see the module docs).
pub struct ChunkDir {
    dir: PathBuf,
}

impl ChunkDir {
    /// The chunk directory of the output `out`: `OUT.partial`.
    pub fn path_for(out: &Path) -> PathBuf {
        PathBuf::from(format!("{}.partial", out.display()))
    }

    /// Opens `dir` for the run `plan`. A directory left by the same plan is
    /// resumed (`true`); one left by another plan is removed first.
    pub fn open(dir: &Path, plan: &serde_json::Value) -> Result<(ChunkDir, bool)> {
        let plan_path = dir.join("plan.json");
        if dir.is_dir() {
            let previous: Option<serde_json::Value> = std::fs::read(&plan_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            if previous.as_ref() == Some(plan) {
                return Ok((ChunkDir { dir: dir.into() }, true));
            }
            tracing::warn!(
                "{} belongs to a different run; starting over",
                dir.display()
            );
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        ramem_store::write_atomic(&plan_path, &serde_json::to_vec_pretty(plan)?)?;
        Ok((ChunkDir { dir: dir.into() }, false))
    }

    fn file(&self, index: usize, suffix: &str) -> PathBuf {
        self.dir.join(format!("chunk-{index:06}{suffix}"))
    }

    /// The rows file of chunk `index`.
    pub fn rows_path(&self, index: usize) -> PathBuf {
        self.file(index, ".npy")
    }

    /// The logits file of chunk `index`.
    pub fn logits_path(&self, index: usize) -> PathBuf {
        self.file(index, ".logits.npy")
    }

    /// The ids and skipped inputs of chunk `index` if it is complete (rows
    /// are left in their file); `None` if it is not, or cannot be read (it
    /// is then written again).
    pub fn completed(&self, index: usize) -> Option<(Vec<String>, Vec<Skipped>)> {
        if !self.rows_path(index).is_file() {
            return None;
        }
        let ids = std::fs::read_to_string(self.file(index, ".ids.txt")).ok()?;
        let skipped = std::fs::read(self.file(index, ".skipped.json")).ok()?;
        let skipped: Vec<Skipped> = serde_json::from_slice(&skipped).ok()?;
        Some((ids.lines().map(str::to_string).collect(), skipped))
    }

    /// Commits chunk `index`, its rows last.
    pub fn write(&self, index: usize, chunk: &Chunk) -> Result<()> {
        let ids: String = chunk.ids.iter().map(|id| format!("{id}\n")).collect();
        ramem_store::write_atomic(self.file(index, ".ids.txt"), ids.as_bytes())?;
        ramem_store::write_atomic(
            self.file(index, ".skipped.json"),
            &serde_json::to_vec(&chunk.skipped)?,
        )?;
        if let Some((classes, logits)) = &chunk.logits {
            ramem_store::npy::write_f32_matrix(
                self.logits_path(index),
                chunk.ids.len(),
                *classes,
                logits,
            )?;
        }
        ramem_store::npy::write_f32_matrix(
            self.rows_path(index),
            chunk.ids.len(),
            chunk.dim,
            &chunk.rows,
        )?;
        Ok(())
    }

    /// Removes the directory (after the final file is written).
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_resume_under_the_same_plan_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out.npy.partial");
        let plan = serde_json::json!({"input": "a", "model": "m"});
        let (chunks, resumed) = ChunkDir::open(&dir, &plan).unwrap();
        assert!(!resumed);
        assert!(chunks.completed(0).is_none());
        let chunk = Chunk {
            ids: vec!["x".into(), "z".into()],
            dim: 2,
            rows: vec![1.0, 2.0, 3.0, 4.0],
            logits: None,
            skipped: vec![Skipped {
                index: 1,
                id: "y".into(),
                reason: "corrupt".into(),
            }],
        };
        chunks.write(0, &chunk).unwrap();
        let (ids, skipped) = chunks.completed(0).unwrap();
        assert_eq!((ids, skipped), (chunk.ids.clone(), chunk.skipped.clone()));
        let (again, resumed) = ChunkDir::open(&dir, &plan).unwrap();
        assert!(resumed && again.completed(0).is_some());
        // A damaged record is a chunk to write again, not an error.
        std::fs::write(dir.join("chunk-000000.skipped.json"), b"[{").unwrap();
        assert!(again.completed(0).is_none());
        let other = serde_json::json!({"input": "b", "model": "m"});
        let (fresh, resumed) = ChunkDir::open(&dir, &other).unwrap();
        assert!(!resumed && fresh.completed(0).is_none());
        fresh.remove().unwrap();
        assert!(!dir.exists());
    }
}
