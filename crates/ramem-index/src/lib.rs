//! Exact k-nearest-neighbour search by inner product for ramem's memory.
//!
//! The memory is an N x dim key matrix (f32, or f16 to halve its size and the
//! bytes read per search), borrowed so it can come from a memory-mapped file.
//! [`search_exact`] scores every key against every query (cosine similarity
//! when keys and queries are L2-normalised) and returns each query's `k`
//! best keys. There is no approximation: every key is scored.
//!
//! Ordering: per query, results are sorted by descending score; equal scores
//! are ordered by smaller row id first, so results are deterministic for a
//! given input, whatever the thread count. Keys whose score is NaN are never
//! returned.
//!
//! If `k` exceeds the number of keys that can be returned (N, less an
//! excluded row), the real neighbours come first and the rest of the `k`
//! slots hold id -1 and score -inf.
//!
//! How: with many queries the work is a matrix product, done block by block
//! (key blocks run in parallel on the rayon pool, f16 blocks are widened to
//! f32 first) and each score goes through a per-query top-k threshold test.
//! With few queries the search is bound by memory bandwidth, so keys are
//! streamed once through SIMD dot-product kernels (AVX-512 or AVX2+F16C,
//! chosen at run time, with a portable fallback). The two paths may differ in
//! the last bits of a score (different summation order).
//!
//! Approximate search lives in [`hnsw`]: an HNSW graph over the same keys
//! (read in place through [`Vectors`]), saved in the memory directory.

pub mod dedup;
pub mod hnsw;
mod kernels;
mod memory;
mod topk;
mod vectors;

pub use dedup::{copy_memory_without, find_near_duplicates, CopyReport, DedupError};
pub use hnsw::{
    build_memory_index, open_memory_index, search_memory_hnsw, HnswError, HnswIndex, HnswParams,
    HnswSearchParams,
};
pub use memory::{retrieve, search_memory, MemorySearchError, Retrieved};
pub use vectors::Vectors;

use half::f16;
use rayon::prelude::*;
use topk::{TopK, EMPTY_ID};

/// A borrowed, row-major key matrix of `data.len() / dim` rows.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    F32 { data: &'a [f32], dim: usize },
    F16 { data: &'a [f16], dim: usize },
}

impl Keys<'_> {
    /// Values per row.
    pub fn dim(&self) -> usize {
        match self {
            Keys::F32 { dim, .. } | Keys::F16 { dim, .. } => *dim,
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Keys::F32 { data, .. } => data.len(),
            Keys::F16 { data, .. } => data.len(),
        }
    }

    /// Number of rows (0 if `dim` is 0).
    pub fn rows(&self) -> usize {
        self.data_len().checked_div(self.dim()).unwrap_or(0)
    }
}

/// What to search for.
#[derive(Debug, Clone, Default)]
pub struct SearchParams {
    /// Neighbours per query (at least 1).
    pub k: usize,
    /// One entry per query: a key row id that query must not return (its own
    /// entry in the memory), or -1 for none (any value that is not a row id
    /// excludes nothing).
    pub exclude: Option<Vec<i64>>,
}

/// Search results: `ids` and `scores` hold `k` entries per query, row-major,
/// best first; unused slots have id -1 and score -inf.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    pub k: usize,
    pub ids: Vec<i64>,
    pub scores: Vec<f32>,
}

impl Neighbours {
    /// Number of queries.
    pub fn queries(&self) -> usize {
        self.ids.len().checked_div(self.k).unwrap_or(0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IndexError {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("dimension must be at least 1")]
    ZeroDim,
    #[error("the key set is empty")]
    EmptyKeys,
    #[error("key data has {len} values, not a multiple of the key dimension {dim}")]
    RaggedKeys { len: usize, dim: usize },
    #[error("dimension mismatch: keys have dimension {keys}, queries {queries}")]
    DimMismatch { keys: usize, queries: usize },
    #[error("query data has {len} values, not a multiple of the dimension {dim}")]
    RaggedQueries { len: usize, dim: usize },
    #[error("query {query} has a non-finite value (NaN or infinity) at position {pos}")]
    NonFiniteQuery { query: usize, pos: usize },
    #[error("exclude list has {got} entries, expected one per query ({want})")]
    ExcludeLength { got: usize, want: usize },
    #[error("{queries} queries x k = {k} results are too many to allocate")]
    TooManyResults { queries: usize, k: usize },
    #[error("{rows} keys are too many for one graph index (at most 4294967294)")]
    TooManyKeys { rows: usize },
    #[error("the index covers {graph} rows but the key set has {keys}")]
    GraphMismatch { graph: usize, keys: usize },
}

/// At most this many queries take the streaming path; more use the
/// block matrix product. (Not tuned: a guess at the crossover.)
const STREAM_MAX_QUERIES: usize = 8;
/// Key rows per parallel task on the matrix-product path (2048 x 384 f32
/// is 3 MiB: an f16 block is widened once and reused by every query block).
const GEMM_KEY_BLOCK: usize = 2048;
/// Queries per matrix product. 256 x 2048 measured best among 64..512 x
/// 1024..8192 at N = 100k, dim 384 on a noisy 2-core machine.
const GEMM_QUERY_BLOCK: usize = 256;
/// Key rows per parallel task on the streaming path.
const STREAM_KEY_BLOCK: usize = 16384;
/// Key rows scored per query before moving to the next query: small enough
/// that re-reading them for the next query hits cache.
const STREAM_SUB_BLOCK: usize = 256;

/// Exact inner-product k-NN of `queries` (row-major, `queries.len() / dim`
/// rows) over `keys`. See the crate docs for ordering and padding.
pub fn search_exact(
    keys: &Keys,
    queries: &[f32],
    dim: usize,
    params: &SearchParams,
) -> Result<Neighbours, IndexError> {
    let k = params.k;
    if k == 0 {
        return Err(IndexError::ZeroK);
    }
    if dim == 0 {
        return Err(IndexError::ZeroDim);
    }
    if keys.dim() != dim {
        return Err(IndexError::DimMismatch {
            keys: keys.dim(),
            queries: dim,
        });
    }
    if !keys.data_len().is_multiple_of(dim) {
        return Err(IndexError::RaggedKeys {
            len: keys.data_len(),
            dim,
        });
    }
    let n = keys.rows();
    if n == 0 {
        return Err(IndexError::EmptyKeys);
    }
    let exclude = check_queries(queries, dim, k, params.exclude.as_deref())?;
    let nq = exclude.len();
    if nq == 0 {
        return Ok(Neighbours {
            k,
            ids: Vec::new(),
            scores: Vec::new(),
        });
    }

    // Never keep more than N candidates per query; pad afterwards.
    let kk = k.min(n);
    let top = if nq <= STREAM_MAX_QUERIES {
        search_stream(keys, n, queries, dim, kk, &exclude)
    } else {
        search_gemm(keys, n, queries, dim, kk, &exclude)
    };

    let mut ids = vec![-1i64; nq * k];
    let mut scores = vec![f32::NEG_INFINITY; nq * k];
    for qi in 0..nq {
        for j in 0..kk {
            let id = top.ids[qi * kk + j];
            if id != EMPTY_ID {
                ids[qi * k + j] = id;
                scores[qi * k + j] = top.scores[qi * kk + j];
            }
        }
    }
    Ok(Neighbours { k, ids, scores })
}

/// Checks the queries, `k` and the exclude list shared by every search;
/// returns one exclude entry per query (-1 for none).
pub(crate) fn check_queries(
    queries: &[f32],
    dim: usize,
    k: usize,
    exclude: Option<&[i64]>,
) -> Result<Vec<i64>, IndexError> {
    if k == 0 {
        return Err(IndexError::ZeroK);
    }
    if dim == 0 {
        return Err(IndexError::ZeroDim);
    }
    if !queries.len().is_multiple_of(dim) {
        return Err(IndexError::RaggedQueries {
            len: queries.len(),
            dim,
        });
    }
    if let Some(i) = queries.iter().position(|v| !v.is_finite()) {
        return Err(IndexError::NonFiniteQuery {
            query: i / dim,
            pos: i % dim,
        });
    }
    let nq = queries.len() / dim;
    let exclude: Vec<i64> = match exclude {
        Some(e) if e.len() != nq => {
            return Err(IndexError::ExcludeLength {
                got: e.len(),
                want: nq,
            })
        }
        Some(e) => e.to_vec(),
        None => vec![-1; nq],
    };
    // Results take 12 bytes per slot; refuse sizes no allocation can meet
    // rather than abort.
    if nq
        .checked_mul(k)
        .is_none_or(|slots| slots > isize::MAX as usize / 12)
    {
        return Err(IndexError::TooManyResults { queries: nq, k });
    }
    Ok(exclude)
}

/// Runs `work` over key blocks in parallel, each rayon split with its own
/// scratch and top-k, then merges the partial top-k lists.
fn parallel_blocks<S: Send>(
    n: usize,
    block: usize,
    nq: usize,
    k: usize,
    scratch: impl Fn() -> S + Sync + Send,
    work: impl Fn(&mut S, &mut TopK, usize, usize) + Sync + Send,
) -> TopK {
    let blocks = n.div_ceil(block);
    (0..blocks)
        .into_par_iter()
        .fold(
            || (scratch(), TopK::new(nq, k)),
            |(mut s, mut t), b| {
                let start = b * block;
                work(&mut s, &mut t, start, (start + block).min(n));
                (s, t)
            },
        )
        .map(|(_, t)| t)
        .reduce_with(|mut a, b| {
            a.merge(&b);
            a
        })
        .expect("at least one key block")
}

fn search_gemm(
    keys: &Keys,
    n: usize,
    queries: &[f32],
    dim: usize,
    k: usize,
    exclude: &[i64],
) -> TopK {
    let nq = queries.len() / dim;
    let qb = GEMM_QUERY_BLOCK.min(nq);
    let kb = GEMM_KEY_BLOCK.min(n);
    let is_f16 = matches!(keys, Keys::F16 { .. });
    parallel_blocks(
        n,
        kb,
        nq,
        k,
        || {
            // (widened f16 key block, score tile)
            let wide = if is_f16 {
                vec![0f32; kb * dim]
            } else {
                Vec::new()
            };
            (wide, vec![0f32; qb * kb])
        },
        |(wide, tile), top, start, end| {
            let rows = end - start;
            let block: &[f32] = match keys {
                Keys::F32 { data, .. } => &data[start * dim..end * dim],
                Keys::F16 { data, .. } => {
                    use half::slice::HalfFloatSliceExt;
                    let w = &mut wide[..rows * dim];
                    data[start * dim..end * dim].convert_to_f32_slice(w);
                    w
                }
            };
            for q0 in (0..nq).step_by(qb) {
                let m = qb.min(nq - q0);
                let lhs = &queries[q0 * dim..(q0 + m) * dim];
                let dst = &mut tile[..m * rows];
                // dst (m x rows, row-major) = lhs (m x dim) * block^T.
                // SAFETY: all three slices hold exactly the extents described
                // by the sizes and strides passed.
                unsafe {
                    gemm::gemm(
                        m,
                        rows,
                        dim,
                        dst.as_mut_ptr(),
                        1,
                        rows as isize,
                        false,
                        lhs.as_ptr(),
                        1,
                        dim as isize,
                        block.as_ptr(),
                        dim as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for i in 0..m {
                    let qi = q0 + i;
                    top.scan_row(
                        qi,
                        &dst[i * rows..(i + 1) * rows],
                        start as i64,
                        exclude[qi],
                    );
                }
            }
        },
    )
}

fn search_stream(
    keys: &Keys,
    n: usize,
    queries: &[f32],
    dim: usize,
    k: usize,
    exclude: &[i64],
) -> TopK {
    let nq = queries.len() / dim;
    let f32_dots = kernels::pick_f32();
    let f16_dots = kernels::pick_f16();
    parallel_blocks(
        n,
        STREAM_KEY_BLOCK,
        nq,
        k,
        || vec![0f32; STREAM_SUB_BLOCK],
        |buf, top, start, end| {
            for s0 in (start..end).step_by(STREAM_SUB_BLOCK) {
                let s1 = (s0 + STREAM_SUB_BLOCK).min(end);
                let out = &mut buf[..s1 - s0];
                for qi in 0..nq {
                    let q = &queries[qi * dim..(qi + 1) * dim];
                    match keys {
                        Keys::F32 { data, .. } => f32_dots(&data[s0 * dim..s1 * dim], dim, q, out),
                        Keys::F16 { data, .. } => f16_dots(&data[s0 * dim..s1 * dim], dim, q, out),
                    }
                    top.scan_row(qi, out, s0 as i64, exclude[qi]);
                }
            }
        },
    )
}
