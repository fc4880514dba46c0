//! `ramem search`: the k nearest memory entries of query embeddings, exact
//! (every key scored) or approximate (the memory's HNSW index).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ramem_index::{
    open_memory_index, search_memory, search_memory_hnsw, HnswSearchParams, SearchParams,
};
use ramem_store::memory::Memory;

/// How `search` finds neighbours.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// Score every key: exact.
    Exact,
    /// Walk the memory's HNSW index (`ramem index build`): approximate, much faster on large memories.
    Hnsw,
}

#[derive(Args)]
pub struct SearchArgs {
    /// The memory directory.
    #[arg(long)]
    pub memory: PathBuf,
    /// Q x D float .npy of query embeddings (from the memory's key encoder); rows are L2-normalised.
    #[arg(long)]
    pub queries: PathBuf,
    /// Neighbours per query.
    #[arg(long)]
    pub k: usize,
    /// Output: Q x K int64 .npy of memory row ids, by descending cosine similarity.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the Q x K float32 similarities.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// The queries are memory entries: never return a query's own entry (query row i is
    /// memory row i, or the ids in --query-ids).
    #[arg(long)]
    pub exclude_self: bool,
    /// Q x 1 int64 .npy: the memory id of each query, for --exclude-self.
    #[arg(long, requires = "exclude_self")]
    pub query_ids: Option<PathBuf>,
    /// exact scores every key; hnsw uses the index built by `ramem index build` (an index
    /// older than the memory is an error: rebuild it).
    #[arg(long, value_enum, default_value = "exact")]
    pub engine: Engine,
    /// With --engine hnsw: beam width of the graph search (at least k is used); larger is
    /// slower and finds more of the true neighbours.
    #[arg(long, default_value_t = 64)]
    pub ef: usize,
}

/// Reads a Q x D query matrix for `memory` and scales every row to unit
/// length; a row of zeros or with NaN/infinity is an error naming the file.
pub fn load_queries(path: &Path, memory: &Memory) -> Result<(usize, Vec<f32>)> {
    let queries = ramem_store::npy::read_f32_matrix(path)?;
    let dim = memory.key_dim();
    if queries.cols != dim {
        bail!(
            "{}: queries have {} dimensions but the memory's keys have {dim} ({})",
            path.display(),
            queries.cols,
            memory.manifest().key.encoder
        );
    }
    let mut data = queries.data;
    for (i, row) in data.chunks_mut(dim).enumerate() {
        if row.iter().any(|v| !v.is_finite()) {
            bail!("{}: query row {i} contains NaN or infinity", path.display());
        }
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm == 0.0 {
            bail!(
                "{}: query row {i} is all zeros (no direction to search)",
                path.display()
            );
        }
        row.iter_mut().for_each(|v| *v /= norm);
    }
    Ok((queries.rows, data))
}

pub fn run(args: &SearchArgs) -> Result<()> {
    for (flag, path) in [
        ("--out", Some(&args.out)),
        ("--scores", args.scores.as_ref()),
    ] {
        if let Some(path) = path {
            if path.extension().and_then(|e| e.to_str()) != Some("npy") {
                bail!("{}: {flag} must be a .npy file", path.display());
            }
        }
    }
    let memory = Memory::open(&args.memory)?;
    let count = memory.count();
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    if count == 0 {
        bail!("{}: the memory is empty", args.memory.display());
    }
    if args.k as u64 > count {
        bail!(
            "--k {} is larger than the memory at {}, which holds {count} entries",
            args.k,
            args.memory.display()
        );
    }
    let dim = memory.key_dim();
    let (nq, data) = load_queries(&args.queries, &memory)?;
    let exclude = if args.exclude_self {
        Some(match &args.query_ids {
            Some(path) => {
                let ids = ramem_store::npy::read_i64_matrix(path)?;
                if ids.rows != nq || ids.cols != 1 {
                    bail!(
                        "{}: expected {} x 1 query ids, found {} x {}",
                        path.display(),
                        nq,
                        ids.rows,
                        ids.cols
                    );
                }
                ids.data
            }
            None => (0..nq as i64).collect(),
        })
    } else {
        None
    };
    if args.engine == Engine::Hnsw && args.ef == 0 {
        bail!("--ef must be at least 1");
    }
    let index = match args.engine {
        Engine::Exact => None,
        Engine::Hnsw => Some(open_memory_index(&memory)?),
    };
    let start = Instant::now();
    let found = match &index {
        None => search_memory(&memory, &data, dim, &SearchParams { k: args.k, exclude })
            .map_err(anyhow::Error::from),
        Some(index) => search_memory_hnsw(
            &memory,
            index,
            &data,
            dim,
            &HnswSearchParams {
                k: args.k,
                ef: args.ef,
                exclude,
            },
        )
        .map_err(anyhow::Error::from),
    }
    .with_context(|| format!("searching {}", args.memory.display()))?;
    let elapsed = start.elapsed().as_secs_f64();
    ramem_store::npy::write_i64_matrix(&args.out, nq, args.k, &found.ids)?;
    if let Some(path) = &args.scores {
        ramem_store::npy::write_f32_matrix(path, nq, args.k, &found.scores)?;
    }
    tracing::info!(
        "{} queries x {count} entries, k = {}: {:.3} s ({:.0} queries/s); ids in {}",
        nq,
        args.k,
        elapsed,
        nq as f64 / elapsed.max(1e-9),
        args.out.display()
    );
    Ok(())
}
