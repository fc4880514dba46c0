//! Quantised keys: an int8 copy of a memory's keys that batch search scans
//! four times as densely as f32, then re-scores exactly.
//!
//! Each key row is quantised on its own scale (`scale = max |x| / 127`,
//! codes `round(x / scale)` in -127..=127), so a row takes `dim` bytes plus
//! 8 (its scale and the sum of its codes): 392 bytes for 384-d keys against
//! 768 for f16 and 1,536 for f32. A query is quantised the same way, to
//! the codes the CPU's kernel takes (8 bits with VNNI or the portable
//! loop, 6 bits with AVX2, see `kernel.rs`); the product of the two codes,
//! times the row's scale, orders a query's rows as their inner products
//! do, up to the rounding of both.
//!
//! [`search_int8`] scores every row with the int8 kernel (AVX-512 VNNI where
//! the CPU has it), keeps the best `shortlist` rows of each query (the
//! search's `ef`, at least `k`; [`DEFAULT_SHORTLIST_PER_K`] x `k` when
//! unset), and re-scores them on the memory's own f16 or f32 keys. The
//! returned scores are those exact inner products; the ids are exact
//! search's wherever the true neighbours made the shortlist. Ordering,
//! padding, excluded and deleted rows are as for exact search.
//!
//! Codes are stored in panels of 16 rows, four dimensions at a time (see
//! `kernel.rs`), so the scan reads them in place, memory-mapped, without a
//! repacking step. On disk they live in the memory directory under
//! `index-int8/` (`file.rs`, docs/FORMAT.md), built by
//! `ramem index build --kind int8` and kept up to date as the memory grows.

mod file;
mod kernel;
mod shortlist;

use rayon::prelude::*;

pub use file::{
    build_memory_int8, int8_dir, open_memory_int8, update_memory_int8, Int8Error, Int8Header,
    INT8_DIR,
};

use crate::keys::{Elem, Rows, Typed};
use crate::topk::{TopK, EMPTY_ID};
use crate::{Keys, Neighbours, SearchError, SearchParams};
use kernel::{PANEL_ROWS, TILE_QUERIES, TILE_ROWS};
use shortlist::Shortlists;

/// With no `ef`, rows re-scored per query: this many times `k`.
pub const DEFAULT_SHORTLIST_PER_K: usize = 4;
/// Panels per parallel task: 64 panels of 384-d codes are 384 KiB, which
/// stay in the core's L2 cache while every query tile passes over them.
const BLOCK_PANELS: usize = 64;

/// The code bytes: built here, or memory-mapped from `index-int8/`.
pub(crate) enum CodeBytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl CodeBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            CodeBytes::Owned(v) => v,
            CodeBytes::Mapped(m) => m,
        }
    }
}

/// Quantised keys: rows `0..count()` of a key matrix as int8 codes with a
/// scale and code sum per row.
pub struct Int8Keys {
    codes: CodeBytes,
    count: usize,
    dim: usize,
    /// `dim` rounded up to a multiple of 4 (the padding codes are 0).
    padded_dim: usize,
    /// Per row, padded with zeros to whole panels.
    scales: Vec<f32>,
    sums: Vec<i32>,
}

/// The quantised form of one row: codes (in `out`, `out.len()` is the
/// padded dimension; trailing entries are 0), its scale and its code sum.
fn quantise_row(row: &[f32], out: &mut [i8]) -> (f32, i32) {
    quantise_row_to(row, out, kernel::FULL_CODE)
}

/// [`quantise_row`] with codes in `-max_code..=max_code`.
fn quantise_row_to(row: &[f32], out: &mut [i8], max_code: i32) -> (f32, i32) {
    let max = row.iter().fold(0f32, |m, &v| m.max(v.abs()));
    out.fill(0);
    if max == 0.0 || !max.is_finite() {
        return (0.0, 0);
    }
    let top = max_code as f32;
    let scale = max / top;
    let inv = top / max;
    let mut sum = 0i32;
    for (o, &v) in out.iter_mut().zip(row) {
        let c = (v * inv).round().clamp(-top, top) as i8;
        *o = c;
        sum += c as i32;
    }
    (scale, sum)
}

impl Int8Keys {
    /// Quantises every row of `keys`.
    pub fn quantise(keys: &Keys) -> Int8Keys {
        let mut codes = Int8Keys {
            codes: CodeBytes::Owned(Vec::new()),
            count: 0,
            dim: keys.dim(),
            padded_dim: keys.dim().next_multiple_of(4),
            scales: Vec::new(),
            sums: Vec::new(),
        };
        codes.extend(keys);
        codes
    }

    /// Quantises the rows of `keys` beyond `count()` (the key set grew).
    /// Rows already quantised keep their codes: the last, partly filled
    /// panel is redone whole.
    pub fn extend(&mut self, keys: &Keys) {
        match &keys.0 {
            Typed::F16(rows) => self.extend_rows(rows),
            Typed::F32(rows) => self.extend_rows(rows),
        }
    }

    fn extend_rows<T: Elem>(&mut self, rows: &Rows<T>) {
        let first_panel = self.count / PANEL_ROWS;
        let panels = rows.len.div_ceil(PANEL_ROWS);
        let panel_bytes = PANEL_ROWS * self.padded_dim;
        let mut codes = match std::mem::replace(&mut self.codes, CodeBytes::Owned(Vec::new())) {
            CodeBytes::Owned(v) => v,
            CodeBytes::Mapped(m) => m.to_vec(),
        };
        codes.truncate(first_panel * panel_bytes);
        codes.resize(panels * panel_bytes, 0);
        self.scales.resize(panels * PANEL_ROWS, 0.0);
        self.sums.resize(panels * PANEL_ROWS, 0);
        let (dim, padded) = (self.dim, self.padded_dim);
        let n = rows.len;
        codes[first_panel * panel_bytes..]
            .par_chunks_mut(panel_bytes)
            .zip(self.scales[first_panel * PANEL_ROWS..].par_chunks_mut(PANEL_ROWS))
            .zip(self.sums[first_panel * PANEL_ROWS..].par_chunks_mut(PANEL_ROWS))
            .enumerate()
            .for_each(|(p, ((panel, scales), sums))| {
                let mut wide = vec![0f32; dim];
                let mut row_codes = vec![0i8; padded];
                for lane in 0..PANEL_ROWS {
                    let id = (first_panel + p) * PANEL_ROWS + lane;
                    let (scale, sum) = if id < n {
                        T::widen(rows.row(id as u32), &mut wide);
                        quantise_row(&wide, &mut row_codes)
                    } else {
                        row_codes.fill(0);
                        (0.0, 0)
                    };
                    scales[lane] = scale;
                    sums[lane] = sum;
                    for (g, c4) in row_codes.chunks_exact(4).enumerate() {
                        let at = g * 4 * PANEL_ROWS + lane * 4;
                        for (dst, &c) in panel[at..at + 4].iter_mut().zip(c4) {
                            *dst = c as u8;
                        }
                    }
                }
            });
        self.codes = CodeBytes::Owned(codes);
        self.count = n;
    }

    /// Rows quantised.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether no row is quantised.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes each row takes: its codes, scale and code sum.
    pub fn bytes_per_row(&self) -> usize {
        self.padded_dim + 8
    }

    fn panels(&self) -> usize {
        self.count.div_ceil(PANEL_ROWS)
    }

    /// Scores the queries (already quantised for `kernel`, `TILE_QUERIES`-padded,
    /// `nq` real ones) against every row and keeps each query's `shortlist`
    /// best by approximate score.
    fn shortlist(
        &self,
        kernel: kernel::Kernel,
        queries: &[u8],
        nq: usize,
        shortlist: usize,
        exclude: &[i64],
        skip: Option<&ramem_store::memory::RowSet>,
    ) -> Shortlists {
        let kernel = kernel.tile;
        let padded = self.padded_dim;
        let panel_bytes = PANEL_ROWS * padded;
        let codes = self.codes.bytes();
        let panels = self.panels();
        let tiles = nq.div_ceil(TILE_QUERIES);
        let blocks = panels.div_ceil(BLOCK_PANELS);
        // Each split keeps one shortlist per query across its blocks, and
        // the splits' lists are merged at the end. A scan of n rows makes
        // about cap * (1 + ln(n / cap)) insertions per query, most of them
        // while a list fills, so every split adds to the cost: two per
        // thread balance the load without many more insertions.
        let min_blocks = blocks.div_ceil(2 * rayon::current_num_threads());
        (0..blocks)
            .into_par_iter()
            .with_min_len(min_blocks.max(1))
            .fold(
                || (Shortlists::new(nq, shortlist), OddPanel::default()),
                |(mut top, mut odd), b| {
                    let p_end = ((b + 1) * BLOCK_PANELS).min(panels);
                    let mut out = [0f32; TILE_QUERIES * TILE_ROWS];
                    // Blocks start on even panels, so pairs stay in a block.
                    for p in (b * BLOCK_PANELS..p_end).step_by(2) {
                        let first_row = p * PANEL_ROWS;
                        let rows = (self.count - first_row).min(TILE_ROWS);
                        let (pair, scales, sums) = if p + 1 < panels {
                            (
                                &codes[p * panel_bytes..(p + 2) * panel_bytes],
                                &self.scales[first_row..first_row + TILE_ROWS],
                                &self.sums[first_row..first_row + TILE_ROWS],
                            )
                        } else {
                            odd.fill(
                                &codes[p * panel_bytes..(p + 1) * panel_bytes],
                                &self.scales[first_row..first_row + PANEL_ROWS],
                                &self.sums[first_row..first_row + PANEL_ROWS],
                            )
                        };
                        for t in 0..tiles {
                            // The tile's padding queries keep +inf: skipped.
                            let mut thresholds = [f32::INFINITY; TILE_QUERIES];
                            let real = (nq - t * TILE_QUERIES).min(TILE_QUERIES);
                            for (i, th) in thresholds[..real].iter_mut().enumerate() {
                                *th = top.threshold(t * TILE_QUERIES + i);
                            }
                            let hits = kernel(
                                &queries[t * TILE_QUERIES * padded..],
                                pair,
                                padded,
                                scales,
                                sums,
                                &thresholds,
                                &mut out,
                            );
                            offer(&mut top, &out, &hits, t, rows, first_row, exclude, skip);
                        }
                    }
                    (top, odd)
                },
            )
            .map(|(top, _)| top)
            .reduce_with(|mut a, b| {
                a.merge(&b);
                a
            })
            .unwrap_or_else(|| Shortlists::new(nq, shortlist))
    }
}

/// An odd last panel, paired with a panel of zeros for the two-panel kernel.
#[derive(Default)]
struct OddPanel {
    codes: Vec<u8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

impl OddPanel {
    fn fill(&mut self, codes: &[u8], scales: &[f32], sums: &[i32]) -> (&[u8], &[f32], &[i32]) {
        self.codes.clear();
        self.codes.extend_from_slice(codes);
        self.codes.resize(2 * codes.len(), 0);
        self.scales.clear();
        self.scales.extend_from_slice(scales);
        self.scales.resize(TILE_ROWS, 0.0);
        self.sums.clear();
        self.sums.extend_from_slice(sums);
        self.sums.resize(TILE_ROWS, 0);
        (&self.codes, &self.scales, &self.sums)
    }
}

/// Offers the rows a kernel tile found at or above their query's threshold
/// (`hits`; the first `rows` rows of the tile are real, from `first_row`)
/// to the queries of tile `t`. Padding queries have no hits.
#[allow(clippy::too_many_arguments)]
#[inline]
fn offer(
    top: &mut Shortlists,
    out: &[f32; TILE_QUERIES * TILE_ROWS],
    hits: &[u32; TILE_QUERIES],
    t: usize,
    rows: usize,
    first_row: usize,
    exclude: &[i64],
    skip: Option<&ramem_store::memory::RowSet>,
) {
    let real_rows = if rows >= 32 {
        u32::MAX
    } else {
        (1u32 << rows) - 1
    };
    for (i, &h) in hits.iter().enumerate() {
        let mut h = h & real_rows;
        let qi = t * TILE_QUERIES + i;
        while h != 0 {
            let r = h.trailing_zeros() as usize;
            h &= h - 1;
            let id = (first_row + r) as i64;
            if id != exclude[qi] && !skip.is_some_and(|set| set.contains(id)) {
                top.push(qi, out[i * TILE_ROWS + r], id);
            }
        }
    }
}

/// The rows re-scored per query for `params`: its `ef`, at least `k`;
/// [`DEFAULT_SHORTLIST_PER_K`] x `k` without one.
pub fn shortlist_len(params: &SearchParams) -> usize {
    params
        .ef
        .unwrap_or(DEFAULT_SHORTLIST_PER_K.saturating_mul(params.k))
        .max(params.k)
}

/// Queries as unsigned bytes (code + 128, codes in `-max_code..=max_code`),
/// `TILE_QUERIES`-padded with zero queries (all bytes 128).
fn quantise_queries(queries: &[f32], dim: usize, padded_dim: usize, max_code: i32) -> Vec<u8> {
    let nq = queries.len() / dim;
    let mut out = vec![128u8; nq.next_multiple_of(TILE_QUERIES) * padded_dim];
    out.par_chunks_mut(padded_dim)
        .zip(queries.par_chunks(dim))
        .for_each(|(dst, q)| {
            let mut codes = vec![0i8; padded_dim];
            quantise_row_to(q, &mut codes, max_code);
            for (d, &c) in dst.iter_mut().zip(&codes) {
                *d = (c as i16 + 128) as u8;
            }
        });
    out
}

/// Inner-product k-NN of `queries` over `keys` through their quantised
/// form `codes` (which must cover the same rows): every row scored in int8,
/// each query's shortlist re-scored on `keys`. See the module docs.
pub fn search_int8(
    codes: &Int8Keys,
    keys: &Keys,
    queries: &[f32],
    dim: usize,
    params: &SearchParams,
) -> Result<Neighbours, SearchError> {
    let exclude = params.check(queries, dim)?;
    let k = params.k;
    if keys.dim() != dim || codes.dim() != dim {
        return Err(SearchError::DimMismatch {
            keys: keys.dim(),
            queries: dim,
        });
    }
    if keys.is_empty() {
        return Err(SearchError::EmptyMemory);
    }
    if codes.count() != keys.rows() {
        return Err(SearchError::GraphMismatch {
            graph: codes.count(),
            keys: keys.rows(),
        });
    }
    let nq = exclude.len();
    let shortlist = shortlist_len(params).min(keys.rows());
    // Queries are quantised to the codes the kernel that scores them takes.
    let kernel = kernel::pick();
    let quantised = quantise_queries(queries, dim, codes.padded_dim, kernel.max_code);
    let candidates = codes.shortlist(kernel, &quantised, nq, shortlist, &exclude, keys.skipped());
    let mut ids = vec![-1i64; nq * k];
    let mut scores = vec![f32::NEG_INFINITY; nq * k];
    ids.par_chunks_mut(k)
        .zip(scores.par_chunks_mut(k))
        .enumerate()
        .for_each(|(qi, (ids, scores))| {
            let found = candidates.ids(qi);
            let q = &queries[qi * dim..(qi + 1) * dim];
            let exact = match &keys.0 {
                Typed::F16(rows) => rescore(rows, found, q),
                Typed::F32(rows) => rescore(rows, found, q),
            };
            let mut top = TopK::new(1, k);
            for (&id, &s) in found.iter().zip(&exact) {
                top.push(0, s, id);
            }
            for j in 0..k {
                if top.ids[j] != EMPTY_ID {
                    ids[j] = top.ids[j];
                    scores[j] = top.scores[j];
                }
            }
        });
    Ok(Neighbours { k, ids, scores })
}

/// Exact inner products of `q` with rows `ids`.
fn rescore<T: Elem>(rows: &Rows<T>, ids: &[i64], q: &[f32]) -> Vec<f32> {
    let slices: Vec<&[T]> = ids.iter().map(|&id| rows.row(id as u32)).collect();
    let mut out = vec![0f32; ids.len()];
    (rows.gather)(&slices, q, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_quantisation_round_trips_within_half_a_step() {
        let row = [0.5f32, -0.25, 0.125, 0.0, -0.5];
        let mut codes = vec![0i8; 8];
        let (scale, sum) = quantise_row(&row, &mut codes);
        assert_eq!(&codes[..5], &[127, -64, 32, 0, -127]);
        assert_eq!(&codes[5..], &[0, 0, 0]);
        assert_eq!(sum, 127 - 64 + 32 - 127);
        for (c, v) in codes.iter().zip(row) {
            assert!((*c as f32 * scale - v).abs() <= scale / 2.0);
        }
        assert_eq!(quantise_row(&[0.0; 3], &mut codes), (0.0, 0));
    }

    /// The kernel's scores, times the query's scale, are the inner products
    /// up to the rounding of both sides.
    #[test]
    fn approximate_scores_are_close_to_inner_products() {
        let dim = 21;
        let value = |i: usize| ((i * 7919 % 113) as f32 - 56.0) / 56.0;
        let keys: Vec<f32> = (0..40 * dim).map(value).collect();
        let queries: Vec<f32> = (0..3 * dim).map(|i| value(i * 31 + 5)).collect();
        let codes = Int8Keys::quantise(&Keys::f32(&keys, dim).unwrap());
        let padded = codes.padded_dim;
        let kernel = kernel::pick();
        let quantised = quantise_queries(&queries, dim, padded, kernel.max_code);
        assert_eq!(quantised.len(), TILE_QUERIES * padded);
        let panel_bytes = PANEL_ROWS * padded;
        let mut out = [0f32; TILE_QUERIES * TILE_ROWS];
        let hits = (kernel.tile)(
            &quantised,
            &codes.codes.bytes()[..2 * panel_bytes],
            padded,
            &codes.scales[..TILE_ROWS],
            &codes.sums[..TILE_ROWS],
            &[f32::NEG_INFINITY; TILE_QUERIES],
            &mut out,
        );
        assert!(hits.iter().all(|&h| h == u32::MAX));
        for (qi, q) in queries.chunks(dim).enumerate() {
            let q_scale = q.iter().fold(0f32, |m, v| m.max(v.abs())) / kernel.max_code as f32;
            for r in 0..TILE_ROWS {
                let row = &keys[r * dim..(r + 1) * dim];
                let exact: f32 = row.iter().zip(q).map(|(a, b)| a * b).sum();
                let approx = out[qi * TILE_ROWS + r] * q_scale;
                // Each code is off by at most half its step: the bound on
                // the product's error that follows, plus f32 slack.
                let k_scale = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let bound: f32 = row
                    .iter()
                    .zip(q)
                    .map(|(k, x)| {
                        q_scale / 2.0 * k.abs() + k_scale / 2.0 * x.abs() + q_scale * k_scale / 4.0
                    })
                    .sum();
                assert!(
                    (approx - exact).abs() <= bound + 1e-4,
                    "{approx} vs {exact} (bound {bound})"
                );
                // And close in absolute terms for these unit-range vectors.
                let close = if kernel.max_code == kernel::FULL_CODE {
                    0.05
                } else {
                    0.2
                };
                assert!((approx - exact).abs() < close, "{approx} vs {exact}");
            }
        }
    }
}
