//! Approximate nearest-neighbour search with an HNSW graph (hierarchical
//! navigable small world; Malkov and Yashunin, 2018) over a memory's keys.
//!
//! The graph holds only links: node `i` is global row `i` of the memory and
//! its vector is read from the memory-mapped keys (f16 or f32) whenever a
//! distance is needed, so the index adds about `4 * (2m + 1)` bytes per
//! vector (plus the few nodes on upper levels) to the keys the memory
//! already holds. Similarity is the inner product (cosine on the memory's
//! unit keys), computed by the same SIMD kernels as exact search.
//!
//! - [`HnswIndex::build`] inserts every row in parallel batches; the result
//!   depends on the seed, never on the thread count (see `build.rs`).
//! - [`HnswIndex::search`] walks the upper levels greedily and searches
//!   level 0 with a beam of `ef` nodes (at least `k`; [`crate::DEFAULT_EF`]
//!   when unset); queries of a batch run
//!   in parallel. Results are ordered like exact search (best first, ties by
//!   smaller id; -1 / -inf padding when fewer than `k` rows can be returned)
//!   and an excluded row is walked through but never returned.
//! - [`build_memory_index`] / [`open_memory_index`] keep the index in the
//!   memory directory (`index-hnsw/`, see `file.rs` and docs/FORMAT.md).
//!   An index covering fewer rows than the memory holds (the memory grew
//!   after the build) is refused as stale, as is one whose key layout does
//!   not match: rebuild it, or bring it up to date with
//!   [`update_memory_index`], which inserts just the new rows.

mod build;
mod file;
mod graph;
mod memory;
mod search;

use std::path::PathBuf;

pub use build::HnswParams;
pub(crate) use file::checksum;
pub use file::{HnswHeader, HEADER_FILE, INDEX_DIR, LINKS_FILE};
pub(crate) use memory::layout_mismatch;
pub use memory::{build_memory_index, index_dir, open_memory_index, update_memory_index};

use rayon::prelude::*;

use crate::keys::{Elem, Rows, Typed};
use crate::{Keys, Neighbours, SearchError, SearchParams, DEFAULT_EF};
use graph::Graph;
use ramem_store::memory::RowSet;
use search::{greedy, score, search_level, with_scratch, Cand, Excluded, Scratch};

/// Why a saved index could not be written or opened.
#[derive(Debug, thiserror::Error)]
pub enum HnswError {
    #[error("{}: no HNSW index; build one with `ramem index build`", path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: stale index: built for {built} rows, but the memory now holds {now}; rebuild it with `ramem index build`", path.display())]
    Stale { path: PathBuf, built: u64, now: u64 },
    #[error("{}: the index does not match the memory: {reason}; rebuild it with `ramem index build`", path.display())]
    Mismatch { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] ramem_store::StoreError),
}

/// An HNSW graph over rows `0..len()` of some key set.
#[derive(Debug, Clone, PartialEq)]
pub struct HnswIndex {
    graph: Graph,
    header: HnswHeader,
}

impl HnswIndex {
    /// Builds the graph over all of `keys`; `progress(done)` is called as
    /// rows are inserted (from the calling thread).
    pub fn build(
        keys: &Keys,
        params: &HnswParams,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<HnswIndex, SearchError> {
        if keys.is_empty() {
            return Err(SearchError::EmptyMemory);
        }
        if keys.rows() >= u32::MAX as usize {
            return Err(SearchError::TooManyKeys { rows: keys.rows() });
        }
        let start = std::time::Instant::now();
        let graph = match &keys.0 {
            Typed::F16(rows) => build::build(rows, params, progress),
            Typed::F32(rows) => build::build(rows, params, progress),
        };
        let header = HnswHeader {
            format: String::new(),
            version: 0,
            metric: String::new(),
            m: graph.m,
            m0: graph.m0,
            ef_construction: params.ef_construction,
            seed: params.seed,
            count: graph.len() as u64,
            dim: keys.dim(),
            key_dtype: keys.dtype_name().into(),
            entry: graph.entry,
            max_level: graph.max_level,
            upper_blocks: 0,
            links_bytes: 0,
            links_checksum: String::new(),
            build_seconds: start.elapsed().as_secs_f64(),
        };
        Ok(HnswIndex { graph, header })
    }

    /// Inserts the rows of `keys` after the ones indexed (`keys` must hold
    /// the indexed rows first, as a memory does after it grew), with the
    /// settings of the build; `progress(done)` counts the new rows.
    pub fn extend(
        &mut self,
        keys: &Keys,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<usize, SearchError> {
        let old = self.graph.len();
        if keys.rows() < old {
            return Err(SearchError::GraphMismatch {
                graph: old,
                keys: keys.rows(),
            });
        }
        if keys.rows() >= u32::MAX as usize {
            return Err(SearchError::TooManyKeys { rows: keys.rows() });
        }
        let params = HnswParams {
            m: self.header.m,
            ef_construction: self.header.ef_construction,
            seed: self.header.seed,
        };
        let start = std::time::Instant::now();
        match &keys.0 {
            Typed::F16(rows) => build::extend(&mut self.graph, rows, &params, progress),
            Typed::F32(rows) => build::extend(&mut self.graph, rows, &params, progress),
        }
        self.header.count = self.graph.len() as u64;
        self.header.entry = self.graph.entry;
        self.header.max_level = self.graph.max_level;
        self.header.build_seconds += start.elapsed().as_secs_f64();
        Ok(self.graph.len() - old)
    }

    /// Rows indexed.
    pub fn len(&self) -> usize {
        self.graph.len()
    }

    /// Whether no rows are indexed.
    pub fn is_empty(&self) -> bool {
        self.graph.len() == 0
    }

    /// Build settings and bookkeeping (as stored in `header.json`).
    pub fn header(&self) -> &HnswHeader {
        &self.header
    }

    /// Bytes of the graph (levels, links, upper-level offsets): what the
    /// index adds to the keys.
    pub fn graph_bytes(&self) -> usize {
        self.graph.bytes()
    }

    /// Approximate inner-product k-NN of `queries` (row-major, `dim` wide)
    /// among `keys`, which must be the rows the index was built over;
    /// beam width `params.ef` ([`DEFAULT_EF`] when unset), at least `k`.
    pub fn search(
        &self,
        keys: &Keys,
        queries: &[f32],
        dim: usize,
        params: &SearchParams,
    ) -> Result<Neighbours, SearchError> {
        if keys.rows() != self.graph.len() {
            return Err(SearchError::GraphMismatch {
                graph: self.graph.len(),
                keys: keys.rows(),
            });
        }
        if keys.dim() != dim {
            return Err(SearchError::DimMismatch {
                keys: keys.dim(),
                queries: dim,
            });
        }
        let k = params.k;
        let exclude = params.check(queries, dim)?;
        if self.graph.len() == 0 {
            return Err(SearchError::EmptyMemory);
        }
        let ef = params.ef.unwrap_or(DEFAULT_EF).max(k);
        let (ids, scores) = match &keys.0 {
            Typed::F16(rows) => search_all(&self.graph, rows, queries, k, ef, &exclude, keys.1),
            Typed::F32(rows) => search_all(&self.graph, rows, queries, k, ef, &exclude, keys.1),
        };
        Ok(Neighbours { k, ids, scores })
    }
}

fn search_all<T: Elem>(
    graph: &Graph,
    rows: &Rows<'_, T>,
    queries: &[f32],
    k: usize,
    ef: usize,
    exclude: &[i64],
    deleted: Option<&RowSet>,
) -> (Vec<i64>, Vec<f32>) {
    let dim = rows.dim;
    let n = graph.len();
    let per_query: Vec<Vec<Cand>> = queries
        .par_chunks(dim)
        .zip(exclude.par_iter())
        .map_init(Vec::new, |sims, (q, &ex)| {
            let ex = Excluded {
                one: if (0..n as i64).contains(&ex) {
                    ex as u32
                } else {
                    u32::MAX
                },
                set: deleted,
            };
            with_scratch(n, graph.m0, |scratch| {
                search_one(graph, rows, q, k, ef, ex, scratch, sims)
            })
        })
        .collect();
    let mut ids = vec![-1i64; per_query.len() * k];
    let mut scores = vec![f32::NEG_INFINITY; per_query.len() * k];
    for (qi, found) in per_query.iter().enumerate() {
        for (j, c) in found.iter().take(k).enumerate() {
            ids[qi * k + j] = c.id as i64;
            scores[qi * k + j] = c.sim;
        }
    }
    (ids, scores)
}

#[allow(clippy::too_many_arguments)]
fn search_one<T: Elem>(
    graph: &Graph,
    rows: &Rows<'_, T>,
    q: &[f32],
    k: usize,
    ef: usize,
    exclude: Excluded<'_>,
    scratch: &mut Scratch,
    sims: &mut Vec<f32>,
) -> Vec<Cand> {
    let mut entry_sim = [0f32];
    score(rows, &[graph.entry], q, &mut entry_sim);
    let mut cur = Cand {
        sim: entry_sim[0],
        id: graph.entry,
    };
    for l in (1..=graph.max_level as usize).rev() {
        cur = greedy(graph, rows, q, cur, l, sims);
    }
    let mut found = search_level(graph, rows, q, &[cur], ef, 0, exclude, scratch);
    found.truncate(k);
    found
}
