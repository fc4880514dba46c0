//! Times `search_exact` for `benches/knn_vs_faiss.py`.
//!
//! knn_bench --keys KEYS.npy (<f2 or <f4) --queries Q.npy (<f4) --k 10
//!           --mode batch|single --repeats R --threads T [--out IDS.npy]
//!           [--int8 --shortlist S]
//! knn_bench --mode bandwidth [--mb 1024] --repeats R --threads T
//!
//! batch: all queries in one call; single: one call per query. With
//! `--int8` the keys are quantised first (timed apart) and searched with
//! `search_int8`, `S` rows re-scored per query on the keys. Prints one JSON
//! line with per-repeat seconds and queries/s (loading, quantising and one
//! warm-up call excluded) and writes the last repeat's ids as a Q x k `<i8`
//! matrix.

use std::io::Read;
use std::time::Instant;

use half::f16;
use ramem_index::{search_exact, search_int8, Int8Keys, Keys, Neighbours, SearchParams};
use ramem_store::npy::{self, Dtype};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn read_f16_matrix(path: &str) -> Res<(usize, usize, Vec<f16>)> {
    let h = npy::read_header(path)?;
    let (rows, cols) = h.matrix_shape().ok_or("keys must be a 2-D array")?;
    let mut f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let raw = &bytes[h.data_offset as usize..];
    let data = raw
        .chunks_exact(2)
        .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])))
        .collect();
    Ok((rows, cols, data))
}

/// Read bandwidth with the pool's threads: sums `mb` MiB of u64, so the
/// single-query scan can be compared with what memory delivers.
fn bandwidth(mb: usize, repeats: usize) {
    use rayon::prelude::*;
    let buf: Vec<u64> = (0..mb << 17).map(|i| i as u64).collect();
    let mut seconds = Vec::new();
    let mut total = 0u64;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        total = total.wrapping_add(
            buf.par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
                .reduce(|| 0, u64::wrapping_add),
        );
        seconds.push(t.elapsed().as_secs_f64());
    }
    let bytes = (buf.len() * 8) as f64;
    let gbs: Vec<f64> = seconds.iter().map(|s| bytes / s / 1e9).collect();
    println!(
        "{}",
        serde_json::json!({"mode": "bandwidth", "bytes": bytes, "threads": rayon::current_num_threads(),
            "seconds": seconds, "gb_per_s": gbs, "checksum": total})
    );
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let need = |n: &str| arg(&args, n).ok_or(format!("missing {n}"));
    let k: usize = arg(&args, "--k").unwrap_or("10".into()).parse()?;
    let mode = arg(&args, "--mode").unwrap_or("batch".into());
    let repeats: usize = arg(&args, "--repeats").unwrap_or("1".into()).parse()?;
    let threads: usize = arg(&args, "--threads").unwrap_or("0".into()).parse()?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    if mode == "bandwidth" {
        bandwidth(
            arg(&args, "--mb").unwrap_or("1024".into()).parse()?,
            repeats,
        );
        return Ok(());
    }
    let keys_path = need("--keys")?;
    let queries = npy::read_f32_matrix(need("--queries")?)?;

    let (f16_keys, f32_keys);
    let (n, dim, keys) = if npy::read_header(&keys_path)?.dtype == Dtype::F16 {
        let (r, c, d) = read_f16_matrix(&keys_path)?;
        f16_keys = d;
        (r, c, Keys::f16(&f16_keys, c).unwrap())
    } else {
        let m = npy::read_f32_matrix(&keys_path)?;
        f32_keys = m.data;
        (m.rows, m.cols, Keys::f32(&f32_keys, m.cols).unwrap())
    };
    if queries.cols != dim {
        return Err(format!("queries have dimension {}, keys {dim}", queries.cols).into());
    }
    let nq = queries.rows;
    let mut params = SearchParams::new(k);
    let int8 = args.iter().any(|a| a == "--int8");
    let mut quantise_seconds = 0.0;
    let codes = int8.then(|| {
        let t = Instant::now();
        let codes = Int8Keys::quantise(&keys);
        quantise_seconds = t.elapsed().as_secs_f64();
        codes
    });
    if let Some(s) = arg(&args, "--shortlist") {
        params = params.with_ef(s.parse()?);
    }
    let search = |q: &[f32]| match &codes {
        Some(codes) => search_int8(codes, &keys, q, dim, &params),
        None => search_exact(&keys, q, dim, &params),
    };
    let run = |qs: &[f32]| -> Res<Neighbours> {
        if mode == "single" {
            let mut all = Neighbours {
                k,
                ids: Vec::new(),
                scores: Vec::new(),
            };
            for q in qs.chunks(dim) {
                let r = search(q)?;
                all.ids.extend(r.ids);
                all.scores.extend(r.scores);
            }
            Ok(all)
        } else {
            Ok(search(qs)?)
        }
    };
    // Warm-up: thread pool, page cache, code paths.
    let warm = if mode == "single" { 1 } else { nq.min(64) };
    run(&queries.data[..warm * dim])?;

    let mut seconds = Vec::new();
    let mut last = None;
    for _ in 0..repeats {
        let t = Instant::now();
        let r = run(&queries.data)?;
        seconds.push(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    let qps: Vec<f64> = seconds.iter().map(|s| nq as f64 / s).collect();
    let dtype = if keys.dtype_name() == "f16" {
        "f16"
    } else {
        "f32"
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "keys_dtype": dtype, "int8": int8,
            "shortlist": params.ef, "quantise_seconds": quantise_seconds,
            "bytes_per_row": codes.as_ref().map(|c| c.bytes_per_row()), "n": n, "dim": dim, "queries": nq,
            "k": k, "threads": rayon::current_num_threads(),
            "seconds": seconds, "queries_per_s": qps,
        })
    );
    if let (Some(out), Some(r)) = (arg(&args, "--out"), last) {
        npy::write_i64_matrix(out, nq, k, &r.ids)?;
    }
    Ok(())
}
