//! Neighbour lists kept on disk, so that the same search runs once.
//!
//! [`NeighbourCache`] wraps any [`Retriever`]: a search whose queries, `k`,
//! exclusions, memory size and engine (its [`Retriever::cache_tag`]) match
//! one made before is read from `DIR/HASH.ids.npy` and `DIR/HASH.scores.npy`
//! (HASH: 16 hex digits of FNV-1a over all of those) instead of searched
//! again. The directory is usually the memory's `neighbours/`; the files are
//! plain `.npy` (Q x k int64 ids, Q x k float32 scores), written atomically,
//! scores first, so a pair is complete when its ids file exists. Rows are
//! only ever appended to a memory and its size is part of the hash, so a
//! cached list never outlives the memory it was searched in.

use std::path::{Path, PathBuf};

use ramem_store::Fnv1a;

use crate::{Engine, Neighbours, Retriever, SearchError, SearchParams};

/// The cache's directory inside a memory directory.
pub const NEIGHBOURS_DIR: &str = "neighbours";

/// A retriever whose results are cached in a directory.
pub struct NeighbourCache<R> {
    inner: R,
    dir: PathBuf,
}

impl<R: Retriever> NeighbourCache<R> {
    /// Caches `inner`'s results in `dir` (created on the first write).
    pub fn new(inner: R, dir: impl Into<PathBuf>) -> NeighbourCache<R> {
        NeighbourCache {
            inner,
            dir: dir.into(),
        }
    }

    /// The wrapped retriever.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// The cache files of a search: (ids, scores).
    fn paths(&self, queries: &[f32], params: &SearchParams) -> (PathBuf, PathBuf) {
        let mut hasher = Fnv1a::new();
        for v in queries {
            hasher.write(&v.to_le_bytes());
        }
        hasher.write(&(params.k as u64).to_le_bytes());
        hasher.write(&self.inner.len().to_le_bytes());
        for id in params.exclude.iter().flatten() {
            hasher.write(&id.to_le_bytes());
        }
        // Exact search adds nothing, so its lists keep the names they had
        // before other engines existed.
        if let Some(tag) = self.inner.cache_tag(params) {
            hasher.write(tag.as_bytes());
        }
        let h = hasher.hex();
        (
            self.dir.join(format!("{h}.ids.npy")),
            self.dir.join(format!("{h}.scores.npy")),
        )
    }

    fn read(ids: &Path, scores: &Path, rows: usize, k: usize) -> Option<Neighbours> {
        let ids_matrix = ramem_store::npy::read_i64_matrix(ids).ok()?;
        let scores_matrix = ramem_store::npy::read_f32_matrix(scores).ok()?;
        (ids_matrix.rows == rows
            && ids_matrix.cols == k
            && scores_matrix.rows == rows
            && scores_matrix.cols == k)
            .then_some(Neighbours {
                k,
                ids: ids_matrix.data,
                scores: scores_matrix.data,
            })
    }
}

impl<R: Retriever> Retriever for NeighbourCache<R> {
    fn engine(&self) -> Engine {
        self.inner.engine()
    }

    fn describe(&self) -> String {
        format!(
            "{} (neighbour lists cached in {})",
            self.inner.describe(),
            self.dir.display()
        )
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn search(
        &self,
        queries: &[f32],
        dim: usize,
        params: &SearchParams,
    ) -> Result<Neighbours, SearchError> {
        if dim != self.inner.dim() {
            return Err(SearchError::DimMismatch {
                keys: self.inner.dim(),
                queries: dim,
            });
        }
        params.check(queries, dim)?;
        let rows = queries.len() / dim;
        let (ids_path, scores_path) = self.paths(queries, params);
        if let Some(found) = Self::read(&ids_path, &scores_path, rows, params.k) {
            tracing::debug!("neighbours from {}", ids_path.display());
            return Ok(found);
        }
        let found = self.inner.search(queries, dim, params)?;
        std::fs::create_dir_all(&self.dir).map_err(|error| ramem_store::StoreError::Io {
            path: self.dir.clone(),
            action: "create the neighbour cache",
            error,
        })?;
        ramem_store::npy::write_f32_matrix(&scores_path, rows, params.k, &found.scores)?;
        ramem_store::npy::write_i64_matrix(&ids_path, rows, params.k, &found.ids)?;
        Ok(found)
    }

    fn cache_tag(&self, params: &SearchParams) -> Option<String> {
        self.inner.cache_tag(params)
    }
}
