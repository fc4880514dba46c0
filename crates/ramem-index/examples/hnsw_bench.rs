//! Builds and times ramem's HNSW index for `benches/ann_vs_faiss.py`.
//!
//! hnsw_bench --mode build --keys KEYS.npy (<f4) --memory DIR --dtype f16|f32
//!            [--m 16] [--ef-construction 200] [--seed 0] --threads T
//! hnsw_bench --mode search --memory DIR --queries Q.npy (<f4) --gt GT.npy (<i8)
//!            --k 10 --ef 16,32,64 --repeats R --threads T
//!
//! build: writes the keys into a memory directory (one shard per 65,536
//! rows) and builds and saves its index; prints one JSON line with the
//! build seconds and the index's bytes. search: opens the memory and its
//! saved index and, for each ef, times `repeats` passes over all queries as
//! one batch (after a warm-up pass) and measures recall@k against the
//! ground-truth ids; prints one JSON line.

use std::time::Instant;

use ramem_index::{build_memory_index, HnswParams, HnswSearch, Retriever, SearchParams};
use ramem_store::memory::{
    FloatDtype, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch,
};
use ramem_store::npy;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let need = |n: &str| arg(&args, n).ok_or(format!("missing {n}"));
    let get = |n: &str, d: &str| arg(&args, n).unwrap_or(d.into());
    let threads: usize = get("--threads", "0").parse()?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let dir = need("--memory")?;
    match get("--mode", "search").as_str() {
        "build" => {
            let keys = npy::read_f32_matrix(need("--keys")?)?;
            let dtype = match get("--dtype", "f16").as_str() {
                "f16" => FloatDtype::F16,
                "f32" => FloatDtype::F32,
                other => return Err(format!("--dtype {other}: f16 or f32").into()),
            };
            let _ = std::fs::remove_dir_all(&dir);
            let mut w =
                MemoryWriter::create(&dir, MemorySpec::new("bench", keys.cols, dtype, false))?;
            for chunk in keys.data.chunks(65536 * keys.cols) {
                let meta = vec![MetadataEntry::default(); chunk.len() / keys.cols];
                w.append_shard(ShardBatch {
                    keys: chunk,
                    image_values: None,
                    text_values: None,
                    metadata: &meta,
                })?;
            }
            drop(w);
            let memory = Memory::open(&dir)?;
            let params = HnswParams {
                m: get("--m", "16").parse()?,
                ef_construction: get("--ef-construction", "200").parse()?,
                seed: get("--seed", "0").parse()?,
            };
            let t = Instant::now();
            let index = build_memory_index(&memory, &params, &|_| {})?;
            let seconds = t.elapsed().as_secs_f64();
            let n = memory.count() as f64;
            let key_bytes = dtype.item_size() * keys.cols;
            println!(
                "{}",
                serde_json::json!({
                    "mode": "build", "n": memory.count(), "dim": keys.cols, "dtype": dtype.name(),
                    "m": params.m, "ef_construction": params.ef_construction,
                    "threads": rayon::current_num_threads(), "build_seconds": seconds,
                    "graph_bytes_per_vector": index.graph_bytes() as f64 / n,
                    "key_bytes_per_vector": key_bytes,
                })
            );
        }
        "search" => {
            let memory = std::sync::Arc::new(Memory::open(&dir)?);
            let count = memory.count();
            let t = Instant::now();
            let index = HnswSearch::open(memory)?;
            let open_seconds = t.elapsed().as_secs_f64();
            let queries = npy::read_f32_matrix(need("--queries")?)?;
            let gt = npy::read_i64_matrix(need("--gt")?)?;
            let k: usize = get("--k", "10").parse()?;
            let repeats: usize = get("--repeats", "1").parse()?;
            let dim = queries.cols;
            let nq = queries.rows;
            let mut curve = Vec::new();
            for ef in get("--ef", "16,32,64,128,256").split(',') {
                let ef: usize = ef.parse()?;
                let params = SearchParams::new(k).with_ef(ef);
                index.search(&queries.data, dim, &params)?;
                let mut qps = Vec::new();
                let mut last = None;
                for _ in 0..repeats.max(1) {
                    let t = Instant::now();
                    let r = index.search(&queries.data, dim, &params)?;
                    qps.push(nq as f64 / t.elapsed().as_secs_f64());
                    last = Some(r);
                }
                let r = last.expect("one repeat");
                let mut hits = 0usize;
                for qi in 0..nq {
                    let want = &gt.data[qi * gt.cols..qi * gt.cols + k.min(gt.cols)];
                    hits += r.ids[qi * k..(qi + 1) * k]
                        .iter()
                        .filter(|id| want.contains(id))
                        .count();
                }
                curve.push(serde_json::json!({
                    "ef": ef, "queries_per_s": qps,
                    "recall": hits as f64 / (nq * k.min(gt.cols)) as f64,
                }));
            }
            println!(
                "{}",
                serde_json::json!({
                    "mode": "search", "n": count, "queries": nq, "k": k,
                    "threads": rayon::current_num_threads(), "open_seconds": open_seconds,
                    "curve": curve,
                })
            );
        }
        other => return Err(format!("--mode {other}: build or search").into()),
    }
    Ok(())
}
