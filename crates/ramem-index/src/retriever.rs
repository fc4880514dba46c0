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
use crate::int8::{open_memory_int8, shortlist_len, Int8Error, Int8Header};
use crate::{search_exact, search_int8, Int8Keys, Keys, Neighbours, SearchError, SearchParams};

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
    /// The memory's int8 keys (`index-int8/`, from `ramem index build
    /// --kind int8`) scanned whole, each query's shortlist re-scored on the
    /// memory's keys: for batches of queries.
    Int8,
    /// A vector database searching the memory with its own index (a memory
    /// on a Milvus collection); never chosen by name.
    Remote,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::Exact, Engine::Hnsw, Engine::Int8];

    pub fn name(self) -> &'static str {
        match self {
            Engine::Exact => "exact",
            Engine::Hnsw => "hnsw",
            Engine::Int8 => "int8",
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
            .ok_or_else(|| format!("unknown search engine {text:?}; known: exact, hnsw, int8"))
    }
}

/// Opens `memory` for search with `engine` (for HNSW and int8: its saved
/// index or quantised keys, refused when missing, stale or made for other
/// keys).
pub fn open_retriever(
    memory: Arc<Memory>,
    engine: Engine,
) -> Result<Box<dyn Retriever>, SearchError> {
    Ok(match engine {
        Engine::Exact => Box::new(ExactSearch::new(memory)),
        Engine::Hnsw => Box::new(HnswSearch::open(memory)?),
        Engine::Int8 => Box::new(Int8Search::open(memory)?),
        Engine::Remote => {
            return Err(SearchError::Unsupported(format!(
                "{} is a memory directory: search it exactly, with its HNSW index or its int8 keys",
                memory.dir().display()
            )))
        }
    })
}

/// The memory's HNSW index where it has a usable one, else its int8 keys
/// where it has usable ones, else exact search; an index or int8 keys that
/// exist but cannot be used say why in the log.
pub fn best_retriever(memory: Arc<Memory>) -> Box<dyn Retriever> {
    match HnswSearch::open(memory.clone()) {
        Ok(index) => return Box::new(index),
        Err(SearchError::Index(HnswError::Missing { .. })) => {}
        Err(e) => tracing::warn!("not searching with the HNSW index: {e}"),
    }
    match Int8Search::open(memory.clone()) {
        Ok(int8) => return Box::new(int8),
        Err(SearchError::Int8(Int8Error::Missing { .. })) => {}
        Err(e) => tracing::warn!("not searching with the int8 keys: {e}"),
    }
    Box::new(ExactSearch::new(memory))
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

/// Search of a memory directory through its int8 keys: every row scored in
/// int8, each query's shortlist re-scored on the memory's keys.
pub struct Int8Search {
    memory: Arc<Memory>,
    codes: Int8Keys,
    header: Int8Header,
}

impl Int8Search {
    /// Opens the memory's int8 keys (see [`open_memory_int8`]).
    pub fn open(memory: Arc<Memory>) -> Result<Int8Search, SearchError> {
        let (codes, header) = open_memory_int8(&memory)?;
        Ok(Int8Search {
            memory,
            codes,
            header,
        })
    }

    /// What the int8 keys were made from.
    pub fn header(&self) -> &Int8Header {
        &self.header
    }
}

impl Retriever for Int8Search {
    fn engine(&self) -> Engine {
        Engine::Int8
    }

    fn describe(&self) -> String {
        format!("int8 keys of {}", self.memory.dir().display())
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
        search_int8(
            &self.codes,
            &memory_keys(&self.memory)?,
            queries,
            dim,
            params,
        )
    }

    fn cache_tag(&self, params: &SearchParams) -> Option<String> {
        Some(format!(
            "int8 shortlist={} codes={}",
            shortlist_len(params),
            self.header.codes_checksum
        ))
    }
}
