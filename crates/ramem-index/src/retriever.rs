//! The retrieval interface and its two embedded engines.
//!
//! A [`Retriever`] answers batches of queries with the `k` best memory rows
//! of each, by global row id: ids stay the same for the life of the memory
//! (rows are only appended), so a neighbour list found once can be kept and
//! read back (see [`crate::NeighbourCache`]). The embedded engines read the
//! memory directory in place; a remote engine (a vector database over the
//! network) implements the same trait and reports a lost connection or a
//! slow answer as [`SearchError::Unavailable`] or [`SearchError::TimedOut`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ramem_store::memory::{Memory, MemoryView};
use serde::{Deserialize, Serialize};

use crate::hnsw::{open_memory_index, HnswError, HnswIndex};
use crate::{search_exact, Keys, Neighbours, SearchError, SearchParams};

/// HNSW's beam width when [`SearchParams::ef`] is not set.
pub const DEFAULT_EF: usize = 64;

/// Finds the nearest memory rows of a batch of queries.
pub trait Retriever: Send + Sync {
    /// Which engine this is.
    fn engine(&self) -> Engine;
    /// What is searched, for messages (`exact search of /data/mem`).
    fn describe(&self) -> String;
    /// Rows that can be returned: ids `0..len()`.
    fn len(&self) -> u64;
    /// Whether there is nothing to find.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Query (and key) dimension.
    fn dim(&self) -> usize;
    /// The `params.k` best rows of each query (`queries`: row-major, `dim`
    /// wide, which must be [`Retriever::dim`]), best first, with global row
    /// ids; ordering and padding as the crate docs say.
    fn search(
        &self,
        queries: &[f32],
        dim: usize,
        params: &SearchParams,
    ) -> Result<Neighbours, SearchError>;
    /// What, beyond the memory, the queries and `params`, the results
    /// depend on (the index an approximate engine walks, and its beam); it
    /// names cached results. `None` for exact search, whose results depend
    /// on nothing else.
    fn cache_tag(&self, params: &SearchParams) -> Option<String> {
        let _ = params;
        None
    }
}

impl<R: Retriever + ?Sized> Retriever for Box<R> {
    fn engine(&self) -> Engine {
        (**self).engine()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn search(
        &self,
        queries: &[f32],
        dim: usize,
        params: &SearchParams,
    ) -> Result<Neighbours, SearchError> {
        (**self).search(queries, dim, params)
    }
    fn cache_tag(&self, params: &SearchParams) -> Option<String> {
        (**self).cache_tag(params)
    }
}

/// The search engines a memory can be searched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Every key scored: exact.
    #[default]
    Exact,
    /// The memory's HNSW graph (`index-hnsw/`, from `ramem index build`):
    /// approximate, much faster on large memories.
    Hnsw,
    /// A vector database searching the memory with its own index (a memory
    /// on a Milvus collection); never chosen by name.
    Remote,
}

impl Engine {
    pub const ALL: [Engine; 2] = [Engine::Exact, Engine::Hnsw];

    pub fn name(self) -> &'static str {
        match self {
            Engine::Exact => "exact",
            Engine::Hnsw => "hnsw",
            Engine::Remote => "remote",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = String;

    fn from_str(text: &str) -> Result<Engine, String> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name() == text)
            .ok_or_else(|| format!("unknown search engine {text:?}; known: exact, hnsw"))
    }
}

/// Opens `memory` for search with `engine` (for HNSW: its saved index,
/// refused when missing, stale or built for other keys).
pub fn open_retriever(
    memory: Arc<Memory>,
    engine: Engine,
) -> Result<Box<dyn Retriever>, SearchError> {
    Ok(match engine {
        Engine::Exact => Box::new(ExactSearch::new(memory)),
        Engine::Hnsw => Box::new(HnswSearch::open(memory)?),
        Engine::Remote => {
            return Err(SearchError::Unsupported(format!(
                "{} is a memory directory: search it exactly or with its HNSW index",
                memory.dir().display()
            )))
        }
    })
}

/// The memory's HNSW index where it has a usable one, else exact search;
/// an index that exists but cannot be used says why in the log.
pub fn best_retriever(memory: Arc<Memory>) -> Box<dyn Retriever> {
    match HnswSearch::open(memory.clone()) {
        Ok(index) => Box::new(index),
        Err(e) => {
            if !matches!(e, SearchError::Index(HnswError::Missing { .. })) {
                tracing::warn!("searching exactly: {e}");
            }
            Box::new(ExactSearch::new(memory))
        }
    }
}

/// A memory with the ways it can be searched: a directory here (exact
/// search or its HNSW index), or a collection in a vector database, which
/// searches with its own index. Recognizers, studies and the server hold
/// memories as this, so a memory moved off the machine is used the same way.
pub trait SearchableMemory: MemoryView {
    /// How to search it: with `engine`, or (`None`) the best way it has.
    fn retriever(
        self: Arc<Self>,
        engine: Option<Engine>,
    ) -> Result<Box<dyn Retriever>, SearchError>;
}

impl SearchableMemory for Memory {
    fn retriever(
        self: Arc<Self>,
        engine: Option<Engine>,
    ) -> Result<Box<dyn Retriever>, SearchError> {
        match engine {
            Some(engine) => open_retriever(self, engine),
            None => Ok(best_retriever(self)),
        }
    }
}

/// The keys an embedded engine searches; an empty memory has none to search.
fn memory_keys(memory: &Memory) -> Result<Keys<'_>, SearchError> {
    if memory.count() == 0 {
        return Err(SearchError::EmptyMemory);
    }
    Keys::of_memory(memory)
}

/// Exact search of a memory directory: every key scored.
pub struct ExactSearch {
    memory: Arc<Memory>,
}

impl ExactSearch {
    pub fn new(memory: Arc<Memory>) -> ExactSearch {
        ExactSearch { memory }
    }
}

impl Retriever for ExactSearch {
    fn engine(&self) -> Engine {
        Engine::Exact
    }

    fn describe(&self) -> String {
        format!("exact search of {}", self.memory.dir().display())
    }

    fn len(&self) -> u64 {
        self.memory.count()
    }

    fn dim(&self) -> usize {
        self.memory.key_dim()
    }

    fn search(
        &self,
        queries: &[f32],
        dim: usize,
        params: &SearchParams,
    ) -> Result<Neighbours, SearchError> {
        search_exact(&memory_keys(&self.memory)?, queries, dim, params)
    }
}

/// Approximate search of a memory directory through its saved HNSW index.
pub struct HnswSearch {
    memory: Arc<Memory>,
    index: HnswIndex,
}

impl HnswSearch {
    /// Opens the memory's index (see [`open_memory_index`]).
    pub fn open(memory: Arc<Memory>) -> Result<HnswSearch, SearchError> {
        let index = open_memory_index(&memory)?;
        Ok(HnswSearch { memory, index })
    }

    /// The index searched.
    pub fn index(&self) -> &HnswIndex {
        &self.index
    }
}

impl Retriever for HnswSearch {
    fn engine(&self) -> Engine {
        Engine::Hnsw
    }

    fn describe(&self) -> String {
        format!("HNSW index of {}", self.memory.dir().display())
    }

    fn len(&self) -> u64 {
        self.memory.count()
    }

    fn dim(&self) -> usize {
        self.memory.key_dim()
    }

    fn search(
        &self,
        queries: &[f32],
        dim: usize,
        params: &SearchParams,
    ) -> Result<Neighbours, SearchError> {
        self.index
            .search(&memory_keys(&self.memory)?, queries, dim, params)
    }

    fn cache_tag(&self, params: &SearchParams) -> Option<String> {
        let h = self.index.header();
        Some(format!(
            "hnsw ef={} links={}",
            params.ef.unwrap_or(DEFAULT_EF).max(params.k),
            h.links_checksum
        ))
    }
}
