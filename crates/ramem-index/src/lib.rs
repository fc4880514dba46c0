//! k-nearest-neighbour search by inner product over ramem's memory, behind
//! one retrieval interface.
//!
//! - [`Retriever`] is the interface every caller (the study, training,
//!   prediction, the command line) searches through: batched queries in,
//!   [`Neighbours`] (stable global row ids and scores) out, one
//!   [`SearchParams`] (`k`, `ef` where the engine has a beam, rows to
//!   exclude) and one error type, [`SearchError`], which can also say that a
//!   remote engine is unavailable or timed out. Three embedded engines
//!   implement it: [`ExactSearch`] (every key scored), [`Int8Search`]
//!   (every key scored in int8, each query's shortlist re-scored exactly)
//!   and [`HnswSearch`] (the memory's HNSW graph); [`open_retriever`] picks
//!   one by [`Engine`], and
//!   [`NeighbourCache`] keeps any engine's results on disk
//!   (`MEM/neighbours/`) so that a list is searched once.
//! - [`Keys`] is the one borrowed key type (f32 or f16 rows, one slice or a
//!   memory's memory-mapped shards); [`search_exact`] and [`HnswIndex`]
//!   search it directly.
//!
//! Ordering: per query, results are sorted by descending score; equal scores
//! are ordered by smaller row id first, so results are deterministic for a
//! given input, whatever the thread count. Keys whose score is NaN are never
//! returned.
//!
//! Padding: if `k` exceeds the number of rows that can be returned (the
//! memory's size, less an excluded row), the real neighbours come first and
//! the remaining slots hold id -1 and score -inf. Callers indexing arrays
//! with the ids must skip -1.
//!
//! Approximate search lives in [`hnsw`]: an HNSW graph over the same keys
//! (read in place through [`Keys`]), saved in the memory directory; and in
//! [`int8`]: quantised copies of the keys, also saved there, for batch
//! search.

pub mod dedup;
mod exact;
pub mod hnsw;
pub mod int8;
mod kernels;
mod keys;
mod neighbour_cache;
mod queries;
mod recall;
mod retriever;
mod topk;

use std::path::PathBuf;

pub use dedup::{
    copy_memory_without, dedup_memory, find_near_duplicates, CopyReport, DedupError, DedupReport,
};
pub use exact::search_exact;
pub use hnsw::{
    build_memory_index, open_memory_index, update_memory_index, HnswError, HnswIndex, HnswParams,
};
pub use int8::{
    build_memory_int8, open_memory_int8, search_int8, update_memory_int8, Int8Error, Int8Keys,
};
pub use keys::Keys;
pub use neighbour_cache::{NeighbourCache, NEIGHBOURS_DIR};
pub use queries::{read_queries, QueryFileError};
pub use recall::{
    index_summary, int8_summary, recall_curve, IndexHeader, RecallCurve, RecallPoint,
};
pub use retriever::{
    best_retriever, open_retriever, Engine, ExactSearch, HnswSearch, Int8Search, Retriever,
    SearchableMemory, DEFAULT_EF,
};

/// What to search for: the same for every engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchParams {
    /// Neighbours per query (at least 1).
    pub k: usize,
    /// Beam width of an approximate engine (HNSW's `ef`; for quantised keys,
    /// the rows re-scored per query), raised to `k` when smaller; larger is
    /// slower and finds more of the true neighbours. `None`: the engine's
    /// default. Exact search ignores it.
    pub ef: Option<usize>,
    /// One entry per query: a row id that query must not return (its own
    /// entry in the memory), or -1 for none (any value that is not a row id
    /// excludes nothing).
    pub exclude: Option<Vec<i64>>,
}

impl SearchParams {
    /// `k` neighbours per query, the engine's default beam, nothing excluded.
    pub fn new(k: usize) -> SearchParams {
        SearchParams {
            k,
            ef: None,
            exclude: None,
        }
    }

    /// The same search with beam width `ef`.
    pub fn with_ef(self, ef: usize) -> SearchParams {
        SearchParams {
            ef: Some(ef),
            ..self
        }
    }

    /// The same search, query `i` never returning row `exclude[i]`.
    pub fn excluding(self, exclude: Vec<i64>) -> SearchParams {
        SearchParams {
            exclude: Some(exclude),
            ..self
        }
    }

    /// Checks `k`, `ef`, the queries and the exclude list, the same for
    /// every engine; returns one exclude entry per query (-1 for none).
    pub fn check(&self, queries: &[f32], dim: usize) -> Result<Vec<i64>, SearchError> {
        let k = self.k;
        if k == 0 {
            return Err(SearchError::ZeroK);
        }
        if self.ef == Some(0) {
            return Err(SearchError::ZeroEf);
        }
        if dim == 0 {
            return Err(SearchError::ZeroDim);
        }
        if !queries.len().is_multiple_of(dim) {
            return Err(SearchError::RaggedQueries {
                len: queries.len(),
                dim,
            });
        }
        if let Some(i) = queries.iter().position(|v| !v.is_finite()) {
            return Err(SearchError::NonFiniteQuery {
                query: i / dim,
                pos: i % dim,
            });
        }
        let nq = queries.len() / dim;
        let exclude: Vec<i64> = match &self.exclude {
            Some(e) if e.len() != nq => {
                return Err(SearchError::ExcludeLength {
                    got: e.len(),
                    want: nq,
                })
            }
            Some(e) => e.clone(),
            None => vec![-1; nq],
        };
        // Results take 12 bytes per slot; refuse sizes no allocation can meet
        // rather than abort.
        if nq
            .checked_mul(k)
            .is_none_or(|slots| slots > isize::MAX as usize / 12)
        {
            return Err(SearchError::TooManyResults { queries: nq, k });
        }
        Ok(exclude)
    }
}

/// Search results: `ids` and `scores` hold `k` entries per query, row-major,
/// best first; unused slots have id -1 and score -inf (see the crate docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    pub k: usize,
    pub ids: Vec<i64>,
    pub scores: Vec<f32>,
}

impl Neighbours {
    /// Number of queries.
    pub fn queries(&self) -> usize {
        self.ids.len().checked_div(self.k).unwrap_or(0)
    }

    /// Slots holding padding (id -1) rather than a neighbour.
    pub fn padded_slots(&self) -> usize {
        self.ids.iter().filter(|&&id| id < 0).count()
    }

    /// The first `k` neighbours of every query (`k` at most `self.k`).
    pub fn truncated(&self, k: usize) -> Neighbours {
        let k = k.min(self.k);
        let mut ids = Vec::with_capacity(self.queries() * k);
        let mut scores = Vec::with_capacity(self.queries() * k);
        for q in 0..self.queries() {
            ids.extend_from_slice(&self.ids[q * self.k..q * self.k + k]);
            scores.extend_from_slice(&self.scores[q * self.k..q * self.k + k]);
        }
        Neighbours { k, ids, scores }
    }

    /// Recall@k against `exact` (the true neighbours of the same queries,
    /// same `k`): the share of `exact`'s neighbours (padding aside) that
    /// these lists found. 1 when `exact` has none.
    pub fn recall_against(&self, exact: &Neighbours) -> f64 {
        let k = self.k.min(exact.k);
        let relevant = exact.ids.iter().filter(|&&id| id >= 0).count();
        if relevant == 0 || k == 0 {
            return 1.0;
        }
        let mut hits = 0usize;
        for (got, want) in self.ids.chunks(self.k).zip(exact.ids.chunks(exact.k)) {
            hits += got
                .iter()
                .filter(|&&id| id >= 0 && want.contains(&id))
                .count();
        }
        hits as f64 / relevant as f64
    }
}

/// Why a search (or building what it needs) failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("ef must be at least 1")]
    ZeroEf,
    #[error("dimension must be at least 1")]
    ZeroDim,
    #[error("the memory holds no entries")]
    EmptyMemory,
    #[error("key data has {len} values, not a multiple of the key dimension {dim}")]
    RaggedKeys { len: usize, dim: usize },
    #[error("{}: the memory mixes f16 and f32 key shards", memory.display())]
    MixedKeyTypes { memory: PathBuf },
    #[error("dimension mismatch: keys have dimension {keys}, queries {queries}")]
    DimMismatch { keys: usize, queries: usize },
    #[error("query data has {len} values, not a multiple of the dimension {dim}")]
    RaggedQueries { len: usize, dim: usize },
    #[error("query {query} has a non-finite value (NaN or infinity) at position {pos}")]
    NonFiniteQuery { query: usize, pos: usize },
    #[error("exclude list has {got} entries, expected one per query ({want})")]
    ExcludeLength { got: usize, want: usize },
    #[error("{queries} queries x k = {k} results are too many to allocate")]
    TooManyResults { queries: usize, k: usize },
    #[error("{rows} keys are too many for one graph index (at most 4294967294)")]
    TooManyKeys { rows: usize },
    #[error("the index covers {graph} rows but the key set has {keys}")]
    GraphMismatch { graph: usize, keys: usize },
    /// The engine cannot be reached (a remote engine that is down or
    /// refuses the connection).
    #[error("{engine} is unavailable: {reason}")]
    Unavailable { engine: String, reason: String },
    /// The engine did not answer in time.
    #[error("{engine} did not answer within {seconds:.1} s")]
    TimedOut { engine: String, seconds: f64 },
    /// What was asked is not something this memory or engine does.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Index(#[from] HnswError),
    #[error(transparent)]
    Int8(#[from] Int8Error),
    #[error(transparent)]
    Store(#[from] ramem_store::StoreError),
}
