//! `ramem search`: the k nearest memory entries of query embeddings, exact
//! (every key scored) or approximate (the memory's HNSW index).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ramem_index::{open_retriever, Engine, SearchError, SearchParams};
use ramem_store::memory::Memory;

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
    /// exact (every key scored) or hnsw (the index built by `ramem index build`: approximate,
    /// much faster on large memories; an index older than the memory is an error: rebuild it).
    #[arg(long, default_value = "exact")]
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

/// Checks `params` (the library's one check of k and ef) and words a
/// refusal in terms of the flags that set them.
pub fn check_flags(params: &SearchParams) -> Result<()> {
    match params.check(&[], 1) {
        Err(SearchError::ZeroK) => bail!("--k must be at least 1"),
        Err(SearchError::ZeroEf) => bail!("--ef must be at least 1"),
        other => other.map(|_| ()).map_err(Into::into),
    }
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
    let mut params = SearchParams::new(args.k);
    if args.engine == Engine::Hnsw {
        params = params.with_ef(args.ef);
    }
    check_flags(&params)?;
    let memory = std::sync::Arc::new(Memory::open(&args.memory)?);
    let count = memory.count();
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
    if args.exclude_self {
        params = params.excluding(match &args.query_ids {
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
        });
    }
    let retriever = open_retriever(memory, args.engine)?;
    let start = Instant::now();
    let found = retriever
        .search(&data, dim, &params)
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
