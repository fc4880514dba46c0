//! Exact search: every key scored against every query.
//!
//! With many queries the work is a matrix product, done block by block (key
//! blocks run in parallel on the rayon pool, f16 blocks are widened to f32
//! first) and each score goes through a per-query top-k threshold test.
//! With few queries the search is bound by memory bandwidth, so keys are
//! streamed once through SIMD dot-product kernels (AVX-512 or AVX2+F16C,
//! chosen at run time, with a portable fallback). The two paths may differ in
//! the last bits of a score (different summation order). A key matrix split
//! over segments (a memory's shards) is searched segment by segment, the
//! blocks never straddling two, and the per-segment lists merged.

use ramem_store::memory::RowSet;
use rayon::prelude::*;

use crate::kernels;
use crate::keys::Segment;
use crate::topk::{TopK, EMPTY_ID};
use crate::{Keys, Neighbours, SearchError, SearchParams};

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
/// rows) over `keys`, with global row ids. See the crate docs for ordering
/// and padding; `params.ef` does not apply and is ignored.
pub fn search_exact(
    keys: &Keys,
    queries: &[f32],
    dim: usize,
    params: &SearchParams,
) -> Result<Neighbours, SearchError> {
    let k = params.k;
    if k == 0 {
        return Err(SearchError::ZeroK);
    }
    if dim == 0 {
        return Err(SearchError::ZeroDim);
    }
    if keys.dim() != dim {
        return Err(SearchError::DimMismatch {
            keys: keys.dim(),
            queries: dim,
        });
    }
    if keys.is_empty() {
        return Err(SearchError::EmptyMemory);
    }
    let exclude = params.check(queries, dim)?;
    let nq = exclude.len();
    let mut merged = TopK::new(nq, k);
    for (first, segment) in keys.segments() {
        let n = match segment {
            Segment::F16(d) => d.len() / dim,
            Segment::F32(d) => d.len() / dim,
        };
        if n == 0 || nq == 0 {
            continue;
        }
        // Never keep more than the segment's rows per query.
        let kk = k.min(n);
        let first = first as i64;
        let top = if nq <= STREAM_MAX_QUERIES {
            search_stream(
                segment,
                n,
                first,
                queries,
                dim,
                kk,
                &exclude,
                keys.skipped(),
            )
        } else {
            search_gemm(
                segment,
                n,
                first,
                queries,
                dim,
                kk,
                &exclude,
                keys.skipped(),
            )
        };
        for qi in 0..nq {
            for j in 0..kk {
                let id = top.ids[qi * kk + j];
                if id == EMPTY_ID || !merged.push(qi, top.scores[qi * kk + j], id) {
                    // Sorted: nothing after an empty or rejected entry fits.
                    break;
                }
            }
        }
    }
    let ids = merged
        .ids
        .iter()
        .map(|&id| if id == EMPTY_ID { -1 } else { id })
        .collect();
    let scores = merged
        .ids
        .iter()
        .zip(&merged.scores)
        .map(|(&id, &s)| if id == EMPTY_ID { f32::NEG_INFINITY } else { s })
        .collect();
    Ok(Neighbours { k, ids, scores })
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

#[allow(clippy::too_many_arguments)]
fn search_gemm(
    keys: Segment,
    n: usize,
    first: i64,
    queries: &[f32],
    dim: usize,
    k: usize,
    exclude: &[i64],
    skip: Option<&RowSet>,
) -> TopK {
    let nq = queries.len() / dim;
    let qb = GEMM_QUERY_BLOCK.min(nq);
    let kb = GEMM_KEY_BLOCK.min(n);
    let is_f16 = matches!(keys, Segment::F16(_));
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
                Segment::F32(data) => &data[start * dim..end * dim],
                Segment::F16(data) => {
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
                        first + start as i64,
                        exclude[qi],
                        skip,
                    );
                }
            }
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn search_stream(
    keys: Segment,
    n: usize,
    first: i64,
    queries: &[f32],
    dim: usize,
    k: usize,
    exclude: &[i64],
    skip: Option<&RowSet>,
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
                        Segment::F32(data) => f32_dots(&data[s0 * dim..s1 * dim], dim, q, out),
                        Segment::F16(data) => f16_dots(&data[s0 * dim..s1 * dim], dim, q, out),
                    }
                    top.scan_row(qi, out, first + s0 as i64, exclude[qi], skip);
                }
            }
        },
    )
}
