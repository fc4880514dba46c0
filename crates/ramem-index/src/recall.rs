//! How good and how fast a memory's HNSW index or int8 keys are: recall@k
//! against exact search and queries/s for a list of beam widths or
//! shortlist lengths (`ramem index eval`), and a description of each
//! (`ramem index info`).

use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ramem_store::memory::Memory;
use serde::Serialize;

use crate::hnsw::{index_dir, HnswHeader, HEADER_FILE, LINKS_FILE};
use crate::int8::{int8_dir, open_memory_int8, Int8Error, Int8Header};
use crate::{
    open_memory_index, Engine, ExactSearch, HnswError, HnswSearch, Int8Search, Retriever,
    SearchError, SearchParams,
};

/// One beam width's (or shortlist length's) point on the curve.
#[derive(Debug, Clone, Serialize)]
pub struct RecallPoint {
    /// HNSW's beam width, or the rows re-scored per query from int8 keys.
    pub ef: usize,
    /// Recall@k against exact search.
    pub recall: f64,
    pub queries_per_s: f64,
}

/// Recall@k and speed of a memory's index, beam width by beam width.
#[derive(Debug, Clone, Serialize)]
pub struct RecallCurve {
    pub memory: PathBuf,
    pub queries: usize,
    /// The memory's entries.
    pub count: u64,
    pub k: usize,
    /// Query `i` is memory row `i`, which it never returns.
    pub exclude_self: bool,
    pub threads: usize,
    /// The engine measured: "hnsw" or "int8".
    pub engine: Engine,
    /// Its header: the HNSW index's, or the int8 keys'.
    pub index: IndexHeader,
    pub exact_queries_per_s: f64,
    pub curve: Vec<RecallPoint>,
}

/// What an approximate engine searches with, as saved.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum IndexHeader {
    Hnsw(HnswHeader),
    Int8(Int8Header),
}

/// Searches `queries` (`dim` wide, the memory's key dimension) exactly and
/// with `engine` (the memory's HNSW index, or its int8 keys) at each beam
/// width or shortlist length in `efs`, and compares.
pub fn recall_curve(
    memory: Arc<Memory>,
    engine: Engine,
    queries: &[f32],
    k: usize,
    efs: &[usize],
    exclude_self: bool,
) -> Result<RecallCurve, SearchError> {
    let dim = memory.key_dim();
    let nq = queries.len().checked_div(dim).unwrap_or(0);
    let (approximate, index): (Box<dyn Retriever>, IndexHeader) = match engine {
        Engine::Hnsw => {
            let hnsw = HnswSearch::open(memory.clone())?;
            let header = IndexHeader::Hnsw(hnsw.index().header().clone());
            (Box::new(hnsw), header)
        }
        Engine::Int8 => {
            let int8 = Int8Search::open(memory.clone())?;
            let header = IndexHeader::Int8(int8.header().clone());
            (Box::new(int8), header)
        }
        other => {
            return Err(SearchError::Unsupported(format!(
                "recall is measured for the hnsw and int8 engines, not {other}"
            )))
        }
    };
    let mut params = SearchParams::new(k);
    if exclude_self {
        params = params.excluding((0..nq as i64).collect());
    }
    let start = Instant::now();
    let exact = ExactSearch::new(memory.clone()).search(queries, dim, &params)?;
    let exact_queries_per_s = nq as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let mut curve = Vec::with_capacity(efs.len());
    for &ef in efs {
        let start = Instant::now();
        let found = approximate.search(queries, dim, &params.clone().with_ef(ef))?;
        curve.push(RecallPoint {
            ef,
            recall: found.recall_against(&exact),
            queries_per_s: nq as f64 / start.elapsed().as_secs_f64().max(1e-9),
        });
    }
    Ok(RecallCurve {
        memory: memory.dir().to_path_buf(),
        queries: nq,
        count: memory.count(),
        k,
        exclude_self,
        threads: rayon::current_num_threads(),
        engine,
        index,
        exact_queries_per_s,
        curve,
    })
}

impl RecallCurve {
    /// The curve as a table: exact search first, then each beam width (for
    /// int8 keys: each shortlist length).
    pub fn table(&self) -> String {
        let column = match self.engine {
            Engine::Int8 => "rescored",
            _ => "ef",
        };
        let mut out = format!(
            "{} queries x {} entries, k = {}\n{:>8}  {:>9}  {:>11}\n{:>8}  {:>9.4}  {:>11.1}\n",
            self.queries,
            self.count,
            self.k,
            column,
            "recall@k",
            "queries/s",
            "exact",
            1.0,
            self.exact_queries_per_s
        );
        for p in &self.curve {
            let _ = writeln!(
                out,
                "{:>8}  {:>9.4}  {:>11.1}",
                p.ef, p.recall, p.queries_per_s
            );
        }
        out
    }
}

/// The index of `memory` described for people: settings and size; an
/// error when it is missing or stale.
pub fn index_summary(memory: &Memory) -> Result<String, HnswError> {
    let index = open_memory_index(memory)?;
    let h = index.header();
    let n = index.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "index:        {} (HNSW, {})",
        index_dir(memory.dir()).display(),
        h.metric
    );
    let _ = writeln!(
        out,
        "entries:      {} (the memory holds {})",
        h.count,
        memory.count()
    );
    let _ = writeln!(out, "keys:         {} x {} {}", h.count, h.dim, h.key_dtype);
    let _ = writeln!(
        out,
        "m:            {} (level 0: {}), ef-construction {}, seed {}",
        h.m, h.m0, h.ef_construction, h.seed
    );
    let _ = writeln!(out, "levels:       {}", h.max_level as usize + 1);
    let _ = writeln!(
        out,
        "size:         {:.1} MiB of links ({:.0} bytes per entry) in {} and {}",
        index.graph_bytes() as f64 / (1 << 20) as f64,
        index.graph_bytes() as f64 / n,
        LINKS_FILE,
        HEADER_FILE
    );
    let _ = writeln!(out, "build time:   {:.1} s", h.build_seconds);
    Ok(out)
}

/// The int8 keys of `memory` described for people: what they were made
/// from and their size; an error when they are missing or stale.
pub fn int8_summary(memory: &Memory) -> Result<String, Int8Error> {
    let (codes, h) = open_memory_int8(memory)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "int8 keys:    {} (re-scored on the memory's {} keys)",
        int8_dir(memory.dir()).display(),
        h.key_dtype
    );
    let _ = writeln!(
        out,
        "entries:      {} (the memory holds {})",
        h.count,
        memory.count()
    );
    let _ = writeln!(
        out,
        "size:         {:.1} MiB ({} bytes per entry: {} of codes, a scale and a code sum)",
        (codes.bytes_per_row() as u64 * h.count) as f64 / (1 << 20) as f64,
        codes.bytes_per_row(),
        h.padded_dim
    );
    let _ = writeln!(out, "build time:   {:.1} s", h.build_seconds);
    Ok(out)
}
