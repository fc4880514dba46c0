//! How the study searches a memory: the configured engine behind the
//! memory's neighbour cache (`MEM/neighbours/`), so that every list is
//! searched once whatever the number of seeds and reruns; with an
//! approximate engine, exact search too, to measure its recall.

use std::sync::Arc;

use std::path::Path;

use anyhow::{bail, Context, Result};
use ramem_index::{
    build_memory_index, build_memory_int8, open_memory_index, open_memory_int8, Engine,
    ExactSearch, HnswError, HnswParams, HnswSearch, Int8Error, Int8Search, NeighbourCache,
    Neighbours, Retriever, SearchParams, SearchableMemory, NEIGHBOURS_DIR,
};
use ramem_store::memory::Memory;

use crate::config::RetrievalConfig;

/// The searches of one memory.
pub struct MemorySearch {
    engine: NeighbourCache<Box<dyn Retriever>>,
    /// Exact search, where the engine is approximate (for recall).
    exact: Option<NeighbourCache<ExactSearch>>,
    ef: Option<usize>,
}

impl MemorySearch {
    /// Opens `memory` for search with `retrieval`'s engine. For HNSW (int8)
    /// the memory's index (int8 keys) is used, and built first where it is
    /// missing, stale or built for other keys. A memory that is not a directory here (a
    /// collection in a vector database) is searched with its own index,
    /// its lists cached under `out/neighbours/`.
    pub fn open(
        memory: &Arc<dyn SearchableMemory>,
        retrieval: &RetrievalConfig,
        out: &Path,
    ) -> Result<MemorySearch> {
        let Some(local) = memory.clone().local() else {
            if retrieval.engine != Engine::Exact || retrieval.ef.is_some() {
                bail!(
                    "{}: a memory in a vector database is searched with its collection's index; \
                     leave [retrieval] engine and ef out",
                    memory.location()
                );
            }
            let cache = out.join(NEIGHBOURS_DIR).join(
                ramem_store::Fnv1a::new()
                    .write(memory.location().as_bytes())
                    .hex(),
            );
            return Ok(MemorySearch {
                engine: NeighbourCache::new(memory.clone().retriever(None)?, &cache),
                exact: None,
                ef: None,
            });
        };
        let cache = local.dir().join(NEIGHBOURS_DIR);
        let exact = || NeighbourCache::new(ExactSearch::new(local.clone()), &cache);
        let engine: Box<dyn Retriever> = match retrieval.engine {
            Engine::Hnsw => {
                ensure_index(&local, retrieval)?;
                Box::new(HnswSearch::open(local.clone())?)
            }
            Engine::Int8 => {
                ensure_int8(&local)?;
                Box::new(Int8Search::open(local.clone())?)
            }
            _ => Box::new(ExactSearch::new(local.clone())),
        };
        let approximate = engine.engine() != Engine::Exact;
        Ok(MemorySearch {
            engine: NeighbourCache::new(engine, &cache),
            exact: approximate.then(exact),
            ef: retrieval.ef,
        })
    }

    /// The engine's `k` best neighbours of each query (cached), query `i`
    /// never returning row `exclude[i]`.
    pub fn search(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
        exclude: Option<Vec<i64>>,
    ) -> Result<Neighbours> {
        Ok(self.engine.search(queries, dim, &self.params(k, exclude))?)
    }

    /// The engine searched: its name, and its beam width where it has one
    /// (for int8 keys, the rows re-scored per query where set; by default
    /// 4 x k).
    pub fn engine(&self) -> (Engine, Option<usize>) {
        let engine = self.engine.engine();
        let ef = match engine {
            Engine::Hnsw => Some(self.ef.unwrap_or(ramem_index::DEFAULT_EF)),
            Engine::Int8 => self.ef,
            _ => None,
        };
        (engine, ef)
    }

    /// Exact search's lists for the same queries, where the engine is
    /// approximate (`None` for exact search, whose recall is 1).
    pub fn exact(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
        exclude: Option<Vec<i64>>,
    ) -> Result<Option<Neighbours>> {
        match &self.exact {
            None => Ok(None),
            Some(exact) => Ok(Some(exact.search(
                queries,
                dim,
                &self.params(k, exclude),
            )?)),
        }
    }

    fn params(&self, k: usize, exclude: Option<Vec<i64>>) -> SearchParams {
        let mut params = SearchParams::new(k);
        params.ef = self.ef;
        params.exclude = exclude;
        params
    }
}

/// Quantises `memory`'s keys to int8 unless usable int8 keys are there.
fn ensure_int8(memory: &Memory) -> Result<()> {
    let why = match open_memory_int8(memory) {
        Ok(_) => return Ok(()),
        Err(Int8Error::Missing { .. }) => "it has none",
        Err(Int8Error::Stale { .. }) => "they are older than the memory",
        Err(Int8Error::Mismatch { .. }) => "they were made for other keys",
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        "quantising the keys of {} to int8 ({why})",
        memory.dir().display()
    );
    build_memory_int8(memory)
        .with_context(|| format!("quantising the keys of {}", memory.dir().display()))?;
    Ok(())
}

/// Builds `memory`'s HNSW index unless a usable one is there.
fn ensure_index(memory: &Memory, retrieval: &RetrievalConfig) -> Result<()> {
    let why = match open_memory_index(memory) {
        Ok(_) => return Ok(()),
        Err(HnswError::Missing { .. }) => "it has none",
        Err(HnswError::Stale { .. }) => "its index is older than the memory",
        Err(HnswError::Mismatch { .. }) => "its index was built for other keys",
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        "building the HNSW index of {} ({why})",
        memory.dir().display()
    );
    let params = HnswParams {
        m: retrieval.m,
        ef_construction: retrieval.ef_construction,
        seed: 0,
    };
    let bar = ramem_progress::bar(memory.count(), "rows");
    bar.set_message(format!("indexing {}", memory.dir().display()));
    build_memory_index(memory, &params, &|done| bar.set_position(done as u64))
        .with_context(|| format!("building the HNSW index of {}", memory.dir().display()))?;
    bar.finish();
    Ok(())
}
