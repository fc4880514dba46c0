//! `ramem search` (the k nearest memory entries of query embeddings, exact,
//! through the memory's HNSW index or its int8 keys) and `ramem index
//! build|eval|info` (that index, or those keys); the work is in
//! `ramem-index`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ramem_index::hnsw::index_dir;
use ramem_index::int8::int8_dir;
use ramem_index::{
    build_memory_index, build_memory_int8, index_summary, int8_summary, read_queries, recall_curve,
    Engine, HnswParams, SearchError, SearchParams, DEFAULT_EF,
};
use ramem_recognize::{exact_by_default, is_collection, open_memory};
use ramem_store::memory::{Memory, MemoryView};

#[derive(Args)]
pub struct SearchArgs {
    /// The memory: a directory, or a collection (milvus://HOST:PORT/COLLECTION).
    #[arg(long)]
    pub memory: PathBuf,
    /// Q x D float .npy of query embeddings (from the memory's key encoder); rows are L2-normalised.
    #[arg(long)]
    pub queries: PathBuf,
    /// Neighbours per query.
    #[arg(long)]
    pub k: usize,
    /// Output: Q x K int64 .npy of memory row ids, by descending cosine similarity. A slot
    /// with no neighbour to fill it (k above what a query can return, e.g. k equal to the
    /// memory's size with --exclude-self) holds id -1 and score -inf: skip -1 (in NumPy,
    /// index -1 is the last row).
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
    /// For a memory directory: exact (every key scored; the default), hnsw (the index built
    /// by `ramem index build`: approximate, much faster on large memories; an index older than
    /// the memory is an error: rebuild it) or int8 (the int8 keys made by `ramem index build
    /// --kind int8`, every one scored and each query's best re-scored exactly: for large
    /// batches of queries). A collection is searched with its own index.
    #[arg(long)]
    pub engine: Option<Engine>,
    /// Beam width of a graph search (--engine hnsw, or a collection with an HNSW index), or
    /// the rows re-scored per query (--engine int8; default 4 x k); at least k is used;
    /// larger is slower and finds more of the true neighbours.
    #[arg(long)]
    pub ef: Option<usize>,
}

/// The memory's size, refusing an empty memory and a `k` above its size
/// (whose lists would be padded).
fn check_k_fits(memory: &dyn MemoryView, k: usize) -> Result<u64> {
    let count = memory.live_count();
    if count == 0 {
        bail!("{}: the memory is empty", memory.location());
    }
    if k as u64 > count {
        bail!(
            "--k {k} is larger than the memory at {}, which holds {count} entries",
            memory.location()
        );
    }
    Ok(count)
}

/// Checks `params` (the library's one check of k and ef) and words a
/// refusal in terms of the flags that set them.
fn check_flags(params: &SearchParams) -> Result<()> {
    match params.check(&[], 1) {
        Err(SearchError::ZeroK) => bail!("--k must be at least 1"),
        Err(SearchError::ZeroEf) => bail!("--ef must be at least 1"),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

pub fn search(args: &SearchArgs) -> Result<()> {
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
    let memory = open_memory(&args.memory)?;
    let remote = is_collection(&args.memory);
    let engine = exact_by_default(&args.memory, args.engine);
    match (engine, args.ef) {
        (Some(Engine::Hnsw), ef) => params = params.with_ef(ef.unwrap_or(DEFAULT_EF)),
        // Without --ef the library's default shortlist (4 x k) applies.
        (Some(Engine::Int8), ef) => params.ef = ef,
        (_, Some(ef)) if remote => params = params.with_ef(ef),
        (_, Some(_)) => bail!("--ef is for --engine hnsw or int8"),
        _ => {}
    }
    check_flags(&params)?;
    let count = check_k_fits(memory.as_ref(), args.k)?;
    let dim = memory.key_dim();
    let (nq, data) = read_queries(&args.queries, memory.as_ref())?;
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
    let retriever = memory.retriever(engine)?;
    let start = Instant::now();
    let found = retriever
        .search(&data, dim, &params)
        .with_context(|| format!("searching {}", args.memory.display()))?;
    let elapsed = start.elapsed().as_secs_f64();
    let padded = found.padded_slots();
    if padded > 0 {
        tracing::warn!(
            "{padded} of the {} result slots have no neighbour and hold id -1 (score -inf): \
             skip them (in NumPy, index -1 is the last row)",
            found.ids.len()
        );
    }
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

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Build the HNSW index of a memory (saved in MEMORY/index-hnsw/), or its int8 keys
    /// (--kind int8, saved in MEMORY/index-int8/).
    Build(BuildArgs),
    /// Recall@k against exact search and queries/s for each --ef.
    Eval(EvalArgs),
    /// Show a memory's index: settings, size (exits 1, saying why, when it is missing or stale).
    Info(InfoArgs),
}

/// What `ramem index` builds, measures or shows.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IndexKind {
    /// The HNSW graph: approximate search, fast for any number of queries.
    Hnsw,
    /// int8 keys: every entry scored in int8 and each query's best re-scored exactly; for
    /// batches of queries, at under a third of the bytes per entry of f16 keys.
    Int8,
}

impl IndexKind {
    fn engine(self) -> Engine {
        match self {
            IndexKind::Hnsw => Engine::Hnsw,
            IndexKind::Int8 => Engine::Int8,
        }
    }
}

pub fn index(command: IndexCommand) -> Result<()> {
    match command {
        IndexCommand::Build(args) => build(&args),
        IndexCommand::Eval(args) => eval(&args),
        IndexCommand::Info(args) => info(&args),
    }
}

#[derive(Args)]
pub struct BuildArgs {
    /// The memory directory; the index is written to MEMORY/index-hnsw/ (MEMORY/index-int8/
    /// for --kind int8), replacing any old one.
    #[arg(long)]
    pub memory: PathBuf,
    /// hnsw: the graph; int8: the memory's keys quantised to int8 (one scale per entry).
    #[arg(long, value_enum, default_value_t = IndexKind::Hnsw)]
    pub kind: IndexKind,
    /// Links per node on the upper levels (level 0 keeps 2 x m): more is slower to build,
    /// larger, and reaches a given recall with a smaller --ef. HNSW only; default 16.
    #[arg(long)]
    pub m: Option<usize>,
    /// Beam width while inserting: higher builds a better graph, more slowly. HNSW only;
    /// default 200.
    #[arg(long)]
    pub ef_construction: Option<usize>,
    /// Seed of the node levels and insertion order (the index is the same for any
    /// --threads). HNSW only; default 0.
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The memory directory (with an index from `ramem index build`).
    #[arg(long)]
    pub memory: PathBuf,
    /// What to measure: the HNSW index, or the int8 keys.
    #[arg(long, value_enum, default_value_t = IndexKind::Hnsw)]
    pub kind: IndexKind,
    /// Q x D float .npy of query embeddings; rows are L2-normalised.
    #[arg(long)]
    pub queries: PathBuf,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Beam widths to try (--kind int8: rows re-scored per query), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    pub ef: Vec<usize>,
    /// The queries are memory rows 0..Q: never return a query's own entry.
    #[arg(long)]
    pub exclude_self: bool,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args)]
pub struct InfoArgs {
    /// The memory directory.
    #[arg(long)]
    pub memory: PathBuf,
    /// What to show: the HNSW index, or the int8 keys.
    #[arg(long, value_enum, default_value_t = IndexKind::Hnsw)]
    pub kind: IndexKind,
}

fn build(args: &BuildArgs) -> Result<()> {
    if args.kind == IndexKind::Int8 {
        if args.m.is_some() || args.ef_construction.is_some() || args.seed.is_some() {
            bail!(
                "--m, --ef-construction and --seed are for --kind hnsw: int8 keys have no settings"
            );
        }
        return build_int8(args);
    }
    let defaults = HnswParams::default();
    let params = HnswParams {
        m: args.m.unwrap_or(defaults.m),
        ef_construction: args.ef_construction.unwrap_or(defaults.ef_construction),
        seed: args.seed.unwrap_or(defaults.seed),
    };
    if params.m < 2 {
        bail!("--m must be at least 2");
    }
    if params.ef_construction == 0 {
        bail!("--ef-construction must be at least 1");
    }
    let memory = Memory::open(&args.memory)?;
    let count = memory.count();
    if count == 0 {
        bail!("{}: the memory is empty", args.memory.display());
    }
    let bar = ramem_progress::bar(count, "rows");
    let start = Instant::now();
    let index = build_memory_index(&memory, &params, &|done| bar.set_position(done as u64))
        .with_context(|| format!("building the index of {}", args.memory.display()))?;
    bar.finish();
    tracing::info!(
        "indexed {count} entries (m = {}, ef-construction = {}) in {:.1} s; graph {:.0} bytes per entry, in {}",
        params.m,
        params.ef_construction,
        start.elapsed().as_secs_f64(),
        index.graph_bytes() as f64 / count as f64,
        index_dir(&args.memory).display()
    );
    Ok(())
}

fn build_int8(args: &BuildArgs) -> Result<()> {
    let memory = Memory::open(&args.memory)?;
    if memory.count() == 0 {
        bail!("{}: the memory is empty", args.memory.display());
    }
    let start = Instant::now();
    let (codes, header) = build_memory_int8(&memory)
        .with_context(|| format!("quantising the keys of {}", args.memory.display()))?;
    tracing::info!(
        "quantised {} entries to int8 in {:.1} s: {} bytes per entry, against {} for the {} keys; in {}",
        header.count,
        start.elapsed().as_secs_f64(),
        codes.bytes_per_row(),
        memory.key_dtype().item_size() * header.dim,
        header.key_dtype,
        int8_dir(&args.memory).display()
    );
    Ok(())
}

fn eval(args: &EvalArgs) -> Result<()> {
    if let Some(path) = &args.json {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            bail!("{}: --json must be a .json file", path.display());
        }
    }
    if args.ef.is_empty() {
        bail!("--ef must list at least one beam width");
    }
    for &ef in &args.ef {
        check_flags(&SearchParams::new(args.k).with_ef(ef))?;
    }
    let memory = Arc::new(Memory::open(&args.memory)?);
    check_k_fits(memory.as_ref(), args.k)?;
    let (nq, queries) = read_queries(&args.queries, memory.as_ref())?;
    if nq == 0 {
        bail!("{}: no queries", args.queries.display());
    }
    let curve = recall_curve(
        memory,
        args.kind.engine(),
        &queries,
        args.k,
        &args.ef,
        args.exclude_self,
    )?;
    print!("{}", curve.table());
    if let Some(path) = &args.json {
        ramem_store::write_atomic(path, serde_json::to_string_pretty(&curve)?.as_bytes())?;
    }
    Ok(())
}

fn info(args: &InfoArgs) -> Result<()> {
    // A missing or stale index is an answer, and an error (exit status 1):
    // scripts can test for a usable index with `ramem index info`.
    let memory = Memory::open(&args.memory)?;
    match args.kind {
        IndexKind::Hnsw => print!("{}", index_summary(&memory)?),
        IndexKind::Int8 => print!("{}", int8_summary(&memory)?),
    }
    Ok(())
}
