//! `ramem index build|eval|info`: the approximate-search (HNSW) index kept
//! in a memory directory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ramem_index::hnsw::{index_dir, HEADER_FILE, LINKS_FILE};
use ramem_index::{
    build_memory_index, open_memory_index, ExactSearch, HnswError, HnswParams, HnswSearch,
    Retriever, SearchParams,
};
use ramem_store::memory::Memory;

use crate::progress;
use crate::search_cmd::{check_flags, load_queries};

#[derive(Args)]
pub struct BuildArgs {
    /// The memory directory; the index is written to MEMORY/index-hnsw/ (replacing any old one).
    #[arg(long)]
    pub memory: PathBuf,
    /// Links per node on the upper levels (level 0 keeps 2 x m): more is slower to build,
    /// larger, and reaches a given recall with a smaller --ef.
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// Beam width while inserting: higher builds a better graph, more slowly.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// Seed of the node levels and insertion order (the index is the same for any --threads).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The memory directory (with an index from `ramem index build`).
    #[arg(long)]
    pub memory: PathBuf,
    /// Q x D float .npy of query embeddings; rows are L2-normalised.
    #[arg(long)]
    pub queries: PathBuf,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Beam widths to try, comma-separated.
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
}

pub fn build(args: &BuildArgs) -> Result<()> {
    if args.m < 2 {
        bail!("--m must be at least 2");
    }
    if args.ef_construction == 0 {
        bail!("--ef-construction must be at least 1");
    }
    let memory = Memory::open(&args.memory)?;
    let count = memory.count();
    if count == 0 {
        bail!("{}: the memory is empty", args.memory.display());
    }
    let params = HnswParams {
        m: args.m,
        ef_construction: args.ef_construction,
        seed: args.seed,
    };
    let bar = progress::bar(count, "rows");
    let start = Instant::now();
    let index = build_memory_index(&memory, &params, &|done| bar.set_position(done as u64))
        .with_context(|| format!("building the index of {}", args.memory.display()))?;
    bar.finish_and_clear();
    tracing::info!(
        "indexed {count} entries (m = {}, ef-construction = {}) in {:.1} s; graph {:.0} bytes per entry, in {}",
        args.m,
        args.ef_construction,
        start.elapsed().as_secs_f64(),
        index.graph_bytes() as f64 / count as f64,
        index_dir(&args.memory).display()
    );
    Ok(())
}

pub fn eval(args: &EvalArgs) -> Result<()> {
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
    let (nq, queries) = load_queries(&args.queries, &memory)?;
    if nq == 0 {
        bail!("{}: no queries", args.queries.display());
    }
    let hnsw = HnswSearch::open(memory.clone())?;
    let mut params = SearchParams::new(args.k);
    if args.exclude_self {
        params = params.excluding((0..nq as i64).collect());
    }
    let k = args.k;
    let start = Instant::now();
    let exact = ExactSearch::new(memory).search(&queries, dim, &params)?;
    let exact_qps = nq as f64 / start.elapsed().as_secs_f64().max(1e-9);
    println!("{nq} queries x {count} entries, k = {k}");
    println!("{:>8}  {:>9}  {:>11}", "ef", "recall@k", "queries/s");
    println!("{:>8}  {:>9.4}  {:>11.1}", "exact", 1.0, exact_qps);
    let mut curve = Vec::new();
    for &ef in &args.ef {
        let start = Instant::now();
        let found = hnsw.search(&queries, dim, &params.clone().with_ef(ef))?;
        let qps = nq as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let recall = found.recall_against(&exact);
        println!("{ef:>8}  {recall:>9.4}  {qps:>11.1}");
        curve.push(serde_json::json!({"ef": ef, "recall": recall, "queries_per_s": qps}));
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "memory": args.memory, "queries": nq, "count": count, "k": k,
            "exclude_self": args.exclude_self,
            "threads": rayon::current_num_threads(),
            "index": hnsw.index().header(),
            "exact_queries_per_s": exact_qps,
            "curve": curve,
        });
        ramem_store::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    Ok(())
}

pub fn info(args: &InfoArgs) -> Result<()> {
    let memory = Memory::open(&args.memory)?;
    let dir = index_dir(&args.memory);
    let index = match open_memory_index(&memory) {
        Ok(index) => index,
        Err(e @ (HnswError::Missing { .. } | HnswError::Stale { .. })) => {
            println!("{e}");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let h = index.header();
    let n = index.len().max(1) as f64;
    println!("index:        {} (HNSW, {})", dir.display(), h.metric);
    println!(
        "entries:      {} (the memory holds {})",
        h.count,
        memory.count()
    );
    println!("keys:         {} x {} {}", h.count, h.dim, h.key_dtype);
    println!(
        "m:            {} (level 0: {}), ef-construction {}, seed {}",
        h.m, h.m0, h.ef_construction, h.seed
    );
    println!("levels:       {}", h.max_level as usize + 1);
    println!(
        "size:         {:.1} MiB of links ({:.0} bytes per entry) in {} and {}",
        index.graph_bytes() as f64 / (1 << 20) as f64,
        index.graph_bytes() as f64 / n,
        LINKS_FILE,
        HEADER_FILE
    );
    println!("build time:   {:.1} s", h.build_seconds);
    Ok(())
}
