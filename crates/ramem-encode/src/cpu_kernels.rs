//! The CPU engine's hot loops: dense (1x1 / im2col) convolutions as matrix
//! products with fused epilogues, and depthwise convolutions.
//!
//! The dense products use this module's own kernels, which read weights
//! packed once at load time into panels (32 columns for AVX-512, 16 for
//! AVX2+FMA) and apply bias, ReLU6 or the residual add while the results are
//! still in registers. Depthwise convolutions vectorise across channels (NHWC)
//! and compute a few neighbouring outputs at once, sharing input loads. Both
//! kernels exist for AVX-512 and for AVX2+FMA, chosen at run time, and give the
//! same bits on either; CPUs with neither fall back to the `gemm` crate with a
//! separate epilogue pass, and to auto-vectorised depthwise loops.

use gemm::Parallelism;
use rayon::prelude::*;

/// What to do with `x = a * w + bias` before storing it.
#[derive(Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `min(max(x, 0), 6)`
    Relu6,
    /// `x`
    Linear,
    /// `x + residual` (same shape as the output)
    Residual(&'a [f32]),
}

/// A float buffer whose first element sits on a 64-byte boundary, so vector
/// loads of 16 floats never straddle two cache lines (the allocator only
/// promises 16 bytes).
#[derive(Debug, Clone, Default)]
pub(crate) struct AlignedVec {
    buf: Vec<f32>,
    offset: usize,
    len: usize,
}

impl AlignedVec {
    pub(crate) fn zeros(len: usize) -> Self {
        let buf = vec![0f32; len + 16];
        let misalign = (buf.as_ptr() as usize % 64) / 4;
        let offset = (16 - misalign) % 16;
        Self { buf, offset, len }
    }

    pub(crate) fn from_slice(values: &[f32]) -> Self {
        let mut v = Self::zeros(values.len());
        v.copy_from_slice(values);
        v
    }
}

impl std::ops::Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.offset..self.offset + self.len]
    }
}

impl std::ops::DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.offset..self.offset + self.len]
    }
}

/// Panel width of packed weights for the AVX-512 kernel: two registers.
const PANEL: usize = 32;
/// Panel width for the AVX2 kernel: one micro-tile's 16 columns, so each
/// step down the panel reads the next 64-byte line.
const NARROW_PANEL: usize = 16;

/// The panel width this CPU's dense kernel reads best.
fn preferred_panel() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return PANEL;
        }
    }
    NARROW_PANEL
}

/// Stored width of packed panel `p` of a layer with `n` output columns,
/// packed `panel` columns wide: a last panel of at most 16 columns is stored
/// 16 wide.
fn panel_width(panel: usize, n: usize, p: usize) -> usize {
    if n - p * panel <= 16 {
        16
    } else {
        panel
    }
}

/// Weights of a dense layer `(k, n)`, kept both plain (row-major) and packed.
#[derive(Debug, Clone)]
pub(crate) struct DenseWeights {
    pub k: usize,
    pub n: usize,
    /// `(k, n)` row-major, for the portable path.
    plain: Vec<f32>,
    /// Columns per packed panel: `PANEL` or `NARROW_PANEL`.
    panel: usize,
    /// Panels of `panel` columns, each `(k, panel_width)` row-major, zero-padded;
    /// panel `p` starts at `p * k * panel`.
    packed: AlignedVec,
    bias: Vec<f32>,
    /// `bias` zero-padded to whole panels.
    bias_padded: Vec<f32>,
}

impl DenseWeights {
    /// `plain` is `(k, n)` row-major; packed for this CPU's kernel.
    pub(crate) fn new(plain: Vec<f32>, bias: Vec<f32>, k: usize, n: usize) -> Self {
        Self::with_panel(plain, bias, k, n, preferred_panel())
    }

    /// Packed in panels of `panel` columns (`PANEL` or `NARROW_PANEL`).
    fn with_panel(plain: Vec<f32>, bias: Vec<f32>, k: usize, n: usize, panel: usize) -> Self {
        assert_eq!(plain.len(), k * n);
        assert_eq!(bias.len(), n);
        assert!(panel == PANEL || panel == NARROW_PANEL);
        let panels = n.div_ceil(panel);
        // Panels are `panel` columns wide, except a last one of at most 16 columns,
        // which is stored 16 wide (one AVX-512 register) instead of padded.
        let mut packed = AlignedVec::zeros(panels * k * panel);
        for p in 0..panels {
            let width = panel_width(panel, n, p);
            for row in 0..k {
                for j in 0..panel.min(n - p * panel) {
                    packed[p * k * panel + row * width + j] = plain[row * n + p * panel + j];
                }
            }
        }
        let mut bias_padded = bias.clone();
        bias_padded.resize(panels * panel, 0.0);
        Self {
            k,
            n,
            plain,
            panel,
            packed,
            bias,
            bias_padded,
        }
    }
}

/// `out (m x n) = epilogue(a (m x k) * w + bias)`, all row-major.
/// Rows per band of a dense layer split over threads (a multiple of every
/// kernel's micro-tile).
const ROWS_PER_TASK: usize = 64;

pub(crate) fn dense(
    m: usize,
    a: &[f32],
    w: &DenseWeights,
    epilogue: Epilogue,
    out: &mut [f32],
    par: Parallelism,
) {
    assert!(
        a.len() >= m * w.k && out.len() >= m * w.n,
        "dense operand too small"
    );
    if let Epilogue::Residual(r) = epilogue {
        assert!(r.len() >= m * w.n, "residual too small");
    }
    if let Parallelism::Rayon(threads) = par {
        if threads > 1 && m >= 2 * ROWS_PER_TASK {
            // Bands of rows on the threads, each computed as one thread
            // computes it: an output's value does not depend on how many
            // threads ran (an image embedded alone or in a batch is the same).
            let (k, n) = (w.k, w.n);
            let band = m.div_ceil(threads).next_multiple_of(ROWS_PER_TASK);
            a[..m * k]
                .par_chunks(band * k)
                .zip(out[..m * n].par_chunks_mut(band * n))
                .enumerate()
                .for_each(|(i, (a, out))| {
                    let rows = out.len() / n;
                    let epilogue = match epilogue {
                        Epilogue::Residual(r) => Epilogue::Residual(&r[i * band * n..][..rows * n]),
                        other => other,
                    };
                    dense(rows, a, w, epilogue, out, Parallelism::None);
                });
            return;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Too few rows to split: one thread, with the same kernel.
        if w.panel == PANEL && std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above), the weights are packed in
            // the panels it reads, and the asserts above bound every access.
            unsafe { avx512::dense(m, a, w, epilogue, out) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are available (checked above) and the asserts above bound every access.
            unsafe { avx2::dense(m, a, w, epilogue, out) };
            return;
        }
    }
    matmul(m, w.n, w.k, a, &w.plain, out, Parallelism::None);
    let out = &mut out[..m * w.n];
    match epilogue {
        Epilogue::Relu6 => bias_relu6(out, &w.bias),
        Epilogue::Linear => bias_only(out, &w.bias),
        Epilogue::Residual(r) => bias_residual(out, &w.bias, &r[..m * w.n]),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{DenseWeights, Epilogue, PANEL};
    use std::arch::x86_64::*;

    /// Rows of `a` per micro-tile: 8 rows x 2 registers = 16 accumulators.
    const MR: usize = 8;
    /// Rows per cache block: `ROWS_PER_BLOCK x k` of `a` stays in L2 while every panel passes over it.
    const ROWS_PER_BLOCK: usize = 64;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dense(
        m: usize,
        a: &[f32],
        w: &DenseWeights,
        epilogue: Epilogue,
        out: &mut [f32],
    ) {
        let (k, n) = (w.k, w.n);
        let panels = n.div_ceil(PANEL);
        for row_block in (0..m).step_by(ROWS_PER_BLOCK) {
            let block_end = (row_block + ROWS_PER_BLOCK).min(m);
            for p in 0..panels {
                let cols = PANEL.min(n - p * PANEL);
                let b = w.packed.as_ptr().add(p * k * PANEL);
                let bias = w.bias_padded.as_ptr().add(p * PANEL);
                let mut row = row_block;
                while row < block_end {
                    let rows = MR.min(block_end - row);
                    let tile = Tile {
                        k,
                        a: a.as_ptr().add(row * k),
                        b,
                        bias,
                        out: out.as_mut_ptr().add(row * n + p * PANEL),
                        ldc: n,
                        cols,
                        residual: match epilogue {
                            Epilogue::Residual(r) => r.as_ptr().add(row * n + p * PANEL),
                            _ => std::ptr::null(),
                        },
                        relu6: matches!(epilogue, Epilogue::Relu6),
                    };
                    match (rows, super::panel_width(PANEL, n, p)) {
                        (8, 16) => tile.run::<8, 1>(),
                        (7, 16) => tile.run::<7, 1>(),
                        (6, 16) => tile.run::<6, 1>(),
                        (5, 16) => tile.run::<5, 1>(),
                        (4, 16) => tile.run::<4, 1>(),
                        (3, 16) => tile.run::<3, 1>(),
                        (2, 16) => tile.run::<2, 1>(),
                        (_, 16) => tile.run::<1, 1>(),
                        (8, _) => tile.run::<8, 2>(),
                        (7, _) => tile.run::<7, 2>(),
                        (6, _) => tile.run::<6, 2>(),
                        (5, _) => tile.run::<5, 2>(),
                        (4, _) => tile.run::<4, 2>(),
                        (3, _) => tile.run::<3, 2>(),
                        (2, _) => tile.run::<2, 2>(),
                        _ => tile.run::<1, 2>(),
                    }
                    row += rows;
                }
            }
        }
    }

    /// Output pixels computed together, sharing each weight load.
    const PIXELS: usize = 4;

    /// Depthwise convolution + bias + ReLU6 with a `K x K` kernel. `cols` are the
    /// output columns whose windows lie inside the image horizontally: they go
    /// `PIXELS` neighbouring outputs at a time, sharing input loads; the edge
    /// columns go one at a time. Channels go 16 at a time (one register).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn depthwise_interior<const K: usize>(
        a: &super::DepthwiseArgs,
        out: &mut [f32],
        cols: std::ops::Range<usize>,
    ) {
        let c = a.c;
        let dst = out.as_mut_ptr();
        // Channel blocks outermost: one block's K*K weight vectors and the input
        // rows it reads stay in L1 while it sweeps the image.
        for cb in (0..c).step_by(16) {
            let lanes = (c - cb).min(16);
            let mask: __mmask16 = if lanes == 16 {
                0xffff
            } else {
                (1u16 << lanes) - 1
            };
            let bias = _mm512_maskz_loadu_ps(mask, a.bias.as_ptr().add(cb));
            for oy in a.out_rows.clone() {
                let iy0 = (oy * a.stride) as isize - a.pad_top as isize;
                let ky_lo = (-iy0).max(0) as usize;
                let ky_hi = ((a.h as isize - iy0).min(K as isize)).max(0) as usize;
                let oy = oy - a.out_rows.start;
                let block = Pixels {
                    a,
                    row0: iy0 - a.in_row0 as isize,
                    ky: ky_lo..ky_hi,
                    cb,
                    mask,
                    bias,
                };
                for ox in (0..cols.start).chain(cols.end..a.wo) {
                    block.run_edge::<K>(oy, ox, dst);
                }
                let mut ox = cols.start;
                while ox + PIXELS <= cols.end {
                    match a.stride {
                        1 => block.run::<K, 1, PIXELS>(oy, ox, dst),
                        _ => block.run::<K, 2, PIXELS>(oy, ox, dst),
                    }
                    ox += PIXELS;
                }
                match (cols.end - ox, a.stride) {
                    (3, 1) => block.run::<K, 1, 3>(oy, ox, dst),
                    (3, _) => block.run::<K, 2, 3>(oy, ox, dst),
                    (2, 1) => block.run::<K, 1, 2>(oy, ox, dst),
                    (2, _) => block.run::<K, 2, 2>(oy, ox, dst),
                    (1, _) => block.run_edge::<K>(oy, ox, dst),
                    _ => {}
                }
            }
        }
    }

    /// One channel block of one output row of a depthwise convolution.
    struct Pixels<'a, 'b> {
        a: &'a super::DepthwiseArgs<'b>,
        row0: isize,
        ky: std::ops::Range<usize>,
        cb: usize,
        mask: __mmask16,
        bias: __m512,
    }

    impl Pixels<'_, '_> {
        /// One output at column `ox` (its window may be clipped by the left or right edge).
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn run_edge<const K: usize>(&self, oy: usize, ox: usize, dst: *mut f32) {
            let a = self.a;
            let c = a.c;
            let ix0 = (ox * a.stride) as isize - a.pad_left as isize;
            let kx_lo = (-ix0).max(0) as usize;
            let kx_hi = ((a.w as isize - ix0).min(K as isize)).max(0) as usize;
            // Four partial sums, so consecutive taps do not wait on each other's FMA latency.
            let zero = _mm512_setzero_ps();
            let mut partial = [self.bias, zero, zero, zero];
            for ky in self.ky.clone() {
                let row = a
                    .input
                    .as_ptr()
                    .add(((self.row0 + ky as isize) as usize * a.w) * c + self.cb);
                // `kx` runs over the constant 0..K so the loop unrolls and each partial
                // sum stays in a register; taps outside the image are skipped.
                for kx in 0..K {
                    if kx < kx_lo || kx >= kx_hi {
                        continue;
                    }
                    let wv = _mm512_maskz_loadu_ps(
                        self.mask,
                        a.weight.as_ptr().add((ky * K + kx) * c + self.cb),
                    );
                    let x =
                        _mm512_maskz_loadu_ps(self.mask, row.add((ix0 + kx as isize) as usize * c));
                    partial[kx % 4] = _mm512_fmadd_ps(x, wv, partial[kx % 4]);
                }
            }
            let acc = _mm512_add_ps(
                _mm512_add_ps(partial[0], partial[1]),
                _mm512_add_ps(partial[2], partial[3]),
            );
            let v = _mm512_min_ps(_mm512_max_ps(acc, _mm512_setzero_ps()), _mm512_set1_ps(6.0));
            _mm512_mask_storeu_ps(dst.add((oy * a.wo + ox) * c + self.cb), self.mask, v);
        }

        /// Computes `N` neighbouring outputs from column `ox`; `N` is a constant so
        /// the accumulators stay in registers.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn run<const K: usize, const S: usize, const N: usize>(
            &self,
            oy: usize,
            ox: usize,
            dst: *mut f32,
        ) {
            let a = self.a;
            let c = a.c;
            let mut acc = [self.bias; N];
            for ky in self.ky.clone() {
                let row = a
                    .input
                    .as_ptr()
                    .add(((self.row0 + ky as isize) as usize * a.w) * c + self.cb);
                // Each input pixel of this row is loaded once and reused by every
                // (output, tap) pair that reads it.
                let first = ox * S - a.pad_left;
                let mut xs = [_mm512_setzero_ps(); 16];
                for (i, x) in xs.iter_mut().enumerate().take((N - 1) * S + K) {
                    *x = _mm512_maskz_loadu_ps(self.mask, row.add((first + i) * c));
                }
                for kx in 0..K {
                    let wv = _mm512_maskz_loadu_ps(
                        self.mask,
                        a.weight.as_ptr().add((ky * K + kx) * c + self.cb),
                    );
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(xs[j * S + kx], wv, *acc);
                    }
                }
            }
            let zero = _mm512_setzero_ps();
            let six = _mm512_set1_ps(6.0);
            for (j, acc) in acc.iter().enumerate() {
                let v = _mm512_min_ps(_mm512_max_ps(*acc, zero), six);
                _mm512_mask_storeu_ps(dst.add((oy * a.wo + ox + j) * c + self.cb), self.mask, v);
            }
        }
    }

    /// One micro-tile: `R` rows of `a` times one packed panel.
    struct Tile {
        k: usize,
        a: *const f32,
        b: *const f32,
        bias: *const f32,
        out: *mut f32,
        ldc: usize,
        cols: usize,
        residual: *const f32,
        relu6: bool,
    }

    impl Tile {
        #[inline]
        #[target_feature(enable = "avx512f")]
        /// `R` rows times a panel of `V` registers (16 columns each).
        unsafe fn run<const R: usize, const V: usize>(&self) {
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            let width = 16 * V;
            for kk in 0..self.k {
                let b0 = _mm512_loadu_ps(self.b.add(kk * width));
                let b1 = if V == 2 {
                    _mm512_loadu_ps(self.b.add(kk * width + 16))
                } else {
                    b0
                };
                for r in 0..R {
                    let av = _mm512_set1_ps(*self.a.add(r * self.k + kk));
                    acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                    if V == 2 {
                        acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
                    }
                }
            }
            let bias0 = _mm512_loadu_ps(self.bias);
            // `bias_padded` has whole PANELs, so reading 32 floats is in bounds.
            let bias1 = _mm512_loadu_ps(self.bias.add(16));
            let lo = self.cols.min(16);
            let hi = self.cols.saturating_sub(16);
            let mask0: __mmask16 = if lo == 16 { 0xffff } else { (1u16 << lo) - 1 };
            let mask1: __mmask16 = if hi == 16 { 0xffff } else { (1u16 << hi) - 1 };
            let zero = _mm512_setzero_ps();
            let six = _mm512_set1_ps(6.0);
            for r in 0..R {
                let mut v0 = _mm512_add_ps(acc0[r], bias0);
                let mut v1 = _mm512_add_ps(acc1[r], bias1);
                if self.relu6 {
                    v0 = _mm512_min_ps(_mm512_max_ps(v0, zero), six);
                    v1 = _mm512_min_ps(_mm512_max_ps(v1, zero), six);
                }
                if !self.residual.is_null() {
                    let res = self.residual.add(r * self.ldc);
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, res));
                    if mask1 != 0 {
                        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, res.add(16)));
                    }
                }
                let dst = self.out.add(r * self.ldc);
                _mm512_mask_storeu_ps(dst, mask0, v0);
                if mask1 != 0 {
                    _mm512_mask_storeu_ps(dst.add(16), mask1, v1);
                }
            }
        }
    }
}

/// The AVX2+FMA twins of the AVX-512 kernels above, for CPUs without AVX-512.
/// Registers hold 8 floats and there are 16 of them, so the dense micro-tile
/// is 6 rows x 16 columns (one narrow panel) and depthwise channels go 8 at
/// a time. Each output is computed by the same operations in the same order as
/// in the AVX-512 kernels, so both give the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{DenseWeights, Epilogue};
    use std::arch::x86_64::*;

    /// Rows of `a` per micro-tile: 6 rows x 2 registers = 12 accumulators, plus
    /// two weight registers and one broadcast.
    const MR: usize = 6;
    /// Rows per cache block: `ROWS_PER_BLOCK x k` of `a` stays in L2 while every panel passes over it.
    const ROWS_PER_BLOCK: usize = 64;
    /// Columns per micro-tile: two registers.
    const HALF: usize = 16;

    /// All lanes below `lanes` set (the mask `maskload`/`maskstore` take).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn lane_mask(lanes: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(lanes as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// Loads 8 floats, or only the lanes in `mask` when `MASKED` (the rest read as 0).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load<const MASKED: bool>(p: *const f32, mask: __m256i) -> __m256 {
        if MASKED {
            _mm256_maskload_ps(p, mask)
        } else {
            _mm256_loadu_ps(p)
        }
    }

    /// Stores 8 floats, or only the lanes in `mask` when `MASKED`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store<const MASKED: bool>(p: *mut f32, mask: __m256i, v: __m256) {
        if MASKED {
            _mm256_maskstore_ps(p, mask, v)
        } else {
            _mm256_storeu_ps(p, v)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn relu6(v: __m256) -> __m256 {
        _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dense(
        m: usize,
        a: &[f32],
        w: &DenseWeights,
        epilogue: Epilogue,
        out: &mut [f32],
    ) {
        let (k, n, panel) = (w.k, w.n, w.panel);
        let panels = n.div_ceil(panel);
        for row_block in (0..m).step_by(ROWS_PER_BLOCK) {
            let block_end = (row_block + ROWS_PER_BLOCK).min(m);
            for p in 0..panels {
                let width = super::panel_width(panel, n, p);
                let panel_cols = panel.min(n - p * panel);
                // Weights packed for AVX-512 (32-wide panels) are read as two
                // 16-column halves.
                for half in (0..width).step_by(HALF) {
                    let col = p * panel + half;
                    let cols = (panel_cols - half).min(HALF);
                    let mut row = row_block;
                    while row < block_end {
                        let rows = MR.min(block_end - row);
                        let tile = Tile {
                            k,
                            a: a.as_ptr().add(row * k),
                            b: w.packed.as_ptr().add(p * k * panel + half),
                            ldb: width,
                            bias: w.bias_padded.as_ptr().add(col),
                            out: out.as_mut_ptr().add(row * n + col),
                            ldc: n,
                            cols,
                            residual: match epilogue {
                                Epilogue::Residual(r) => r.as_ptr().add(row * n + col),
                                _ => std::ptr::null(),
                            },
                            relu6: matches!(epilogue, Epilogue::Relu6),
                        };
                        match (rows, cols > 8) {
                            (6, true) => tile.run::<6, 2>(),
                            (5, true) => tile.run::<5, 2>(),
                            (4, true) => tile.run::<4, 2>(),
                            (3, true) => tile.run::<3, 2>(),
                            (2, true) => tile.run::<2, 2>(),
                            (_, true) => tile.run::<1, 2>(),
                            (6, false) => tile.run::<6, 1>(),
                            (5, false) => tile.run::<5, 1>(),
                            (4, false) => tile.run::<4, 1>(),
                            (3, false) => tile.run::<3, 1>(),
                            (2, false) => tile.run::<2, 1>(),
                            (_, false) => tile.run::<1, 1>(),
                        }
                        row += rows;
                    }
                }
            }
        }
    }

    /// One micro-tile: `R` rows of `a` times `V` registers (8 columns each) of a packed panel.
    struct Tile {
        k: usize,
        a: *const f32,
        b: *const f32,
        /// Floats between consecutive rows of the packed panel.
        ldb: usize,
        bias: *const f32,
        out: *mut f32,
        ldc: usize,
        /// Columns to store, at most `8 * V`.
        cols: usize,
        residual: *const f32,
        relu6: bool,
    }

    impl Tile {
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<const R: usize, const V: usize>(&self) {
            let mut acc0 = [_mm256_setzero_ps(); R];
            let mut acc1 = [_mm256_setzero_ps(); R];
            for kk in 0..self.k {
                let b0 = _mm256_loadu_ps(self.b.add(kk * self.ldb));
                let b1 = if V == 2 {
                    _mm256_loadu_ps(self.b.add(kk * self.ldb + 8))
                } else {
                    b0
                };
                for r in 0..R {
                    let av = _mm256_set1_ps(*self.a.add(r * self.k + kk));
                    acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                    if V == 2 {
                        acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
                    }
                }
            }
            // `bias_padded` has whole panels of at least 16, so reading 16 floats is in bounds.
            let bias0 = _mm256_loadu_ps(self.bias);
            let bias1 = _mm256_loadu_ps(self.bias.add(8));
            let lo = self.cols.min(8);
            let hi = self.cols.saturating_sub(8);
            if lo == 8 && (V == 1 || hi == 8) {
                self.finish::<R, V, false>(&acc0, &acc1, bias0, bias1, lo, hi);
            } else {
                self.finish::<R, V, true>(&acc0, &acc1, bias0, bias1, lo, hi);
            }
        }

        /// Bias, ReLU6 or residual, and the stores; `MASKED` when a register
        /// holds fewer than 8 wanted columns.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn finish<const R: usize, const V: usize, const MASKED: bool>(
            &self,
            acc0: &[__m256; R],
            acc1: &[__m256; R],
            bias0: __m256,
            bias1: __m256,
            lo: usize,
            hi: usize,
        ) {
            let (mask0, mask1) = (lane_mask(lo), lane_mask(hi));
            for r in 0..R {
                let mut v0 = _mm256_add_ps(acc0[r], bias0);
                let mut v1 = _mm256_add_ps(acc1[r], bias1);
                if self.relu6 {
                    v0 = relu6(v0);
                    v1 = relu6(v1);
                }
                let dst = self.out.add(r * self.ldc);
                if !self.residual.is_null() {
                    let res = self.residual.add(r * self.ldc);
                    v0 = _mm256_add_ps(v0, load::<MASKED>(res, mask0));
                    if V == 2 {
                        v1 = _mm256_add_ps(v1, load::<MASKED>(res.add(8), mask1));
                    }
                }
                store::<MASKED>(dst, mask0, v0);
                if V == 2 {
                    store::<MASKED>(dst.add(8), mask1, v1);
                }
            }
        }
    }

    /// Output pixels computed together, sharing each weight load.
    const PIXELS: usize = 4;

    /// Depthwise convolution + bias + ReLU6 with a `K x K` kernel, as
    /// `avx512::depthwise_interior`, 8 channels at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn depthwise_interior<const K: usize>(
        a: &super::DepthwiseArgs,
        out: &mut [f32],
        cols: std::ops::Range<usize>,
    ) {
        let c = a.c;
        for cb in (0..c).step_by(8) {
            let lanes = (c - cb).min(8);
            if lanes == 8 {
                channel_block::<K, false>(a, out, cols.clone(), cb, lane_mask(8));
            } else {
                channel_block::<K, true>(a, out, cols.clone(), cb, lane_mask(lanes));
            }
        }
    }

    /// One block of 8 channels (fewer when `MASKED`) over the whole band; its
    /// K*K weight vectors and the input rows it reads stay in L1 while it
    /// sweeps the image.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn channel_block<const K: usize, const MASKED: bool>(
        a: &super::DepthwiseArgs,
        out: &mut [f32],
        cols: std::ops::Range<usize>,
        cb: usize,
        mask: __m256i,
    ) {
        let dst = out.as_mut_ptr();
        let bias = load::<MASKED>(a.bias.as_ptr().add(cb), mask);
        for oy in a.out_rows.clone() {
            let iy0 = (oy * a.stride) as isize - a.pad_top as isize;
            let ky_lo = (-iy0).max(0) as usize;
            let ky_hi = ((a.h as isize - iy0).min(K as isize)).max(0) as usize;
            let oy = oy - a.out_rows.start;
            let block = Pixels::<MASKED> {
                a,
                row0: iy0 - a.in_row0 as isize,
                ky: ky_lo..ky_hi,
                cb,
                mask,
                bias,
            };
            for ox in (0..cols.start).chain(cols.end..a.wo) {
                block.run_edge::<K>(oy, ox, dst);
            }
            let mut ox = cols.start;
            while ox + PIXELS <= cols.end {
                match a.stride {
                    1 => block.run::<K, 1, PIXELS>(oy, ox, dst),
                    _ => block.run::<K, 2, PIXELS>(oy, ox, dst),
                }
                ox += PIXELS;
            }
            match (cols.end - ox, a.stride) {
                (3, 1) => block.run::<K, 1, 3>(oy, ox, dst),
                (3, _) => block.run::<K, 2, 3>(oy, ox, dst),
                (2, 1) => block.run::<K, 1, 2>(oy, ox, dst),
                (2, _) => block.run::<K, 2, 2>(oy, ox, dst),
                (1, _) => block.run_edge::<K>(oy, ox, dst),
                _ => {}
            }
        }
    }

    /// One channel block of one output row of a depthwise convolution.
    struct Pixels<'a, 'b, const MASKED: bool> {
        a: &'a super::DepthwiseArgs<'b>,
        row0: isize,
        ky: std::ops::Range<usize>,
        cb: usize,
        mask: __m256i,
        bias: __m256,
    }

    impl<const MASKED: bool> Pixels<'_, '_, MASKED> {
        /// One output at column `ox` (its window may be clipped by the left or right edge).
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run_edge<const K: usize>(&self, oy: usize, ox: usize, dst: *mut f32) {
            let a = self.a;
            let c = a.c;
            let ix0 = (ox * a.stride) as isize - a.pad_left as isize;
            let kx_lo = (-ix0).max(0) as usize;
            let kx_hi = ((a.w as isize - ix0).min(K as isize)).max(0) as usize;
            let zero = _mm256_setzero_ps();
            let mut partial = [self.bias, zero, zero, zero];
            for ky in self.ky.clone() {
                let row = a
                    .input
                    .as_ptr()
                    .add(((self.row0 + ky as isize) as usize * a.w) * c + self.cb);
                for kx in 0..K {
                    if kx < kx_lo || kx >= kx_hi {
                        continue;
                    }
                    let wv = load::<MASKED>(
                        a.weight.as_ptr().add((ky * K + kx) * c + self.cb),
                        self.mask,
                    );
                    let x = load::<MASKED>(row.add((ix0 + kx as isize) as usize * c), self.mask);
                    partial[kx % 4] = _mm256_fmadd_ps(x, wv, partial[kx % 4]);
                }
            }
            let acc = _mm256_add_ps(
                _mm256_add_ps(partial[0], partial[1]),
                _mm256_add_ps(partial[2], partial[3]),
            );
            store::<MASKED>(
                dst.add((oy * a.wo + ox) * c + self.cb),
                self.mask,
                relu6(acc),
            );
        }

        /// Computes `N` neighbouring outputs from column `ox`.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<const K: usize, const S: usize, const N: usize>(
            &self,
            oy: usize,
            ox: usize,
            dst: *mut f32,
        ) {
            let a = self.a;
            let c = a.c;
            let mut acc = [self.bias; N];
            for ky in self.ky.clone() {
                let row = a
                    .input
                    .as_ptr()
                    .add(((self.row0 + ky as isize) as usize * a.w) * c + self.cb);
                let first = ox * S - a.pad_left;
                let mut xs = [_mm256_setzero_ps(); 16];
                for (i, x) in xs.iter_mut().enumerate().take((N - 1) * S + K) {
                    *x = load::<MASKED>(row.add((first + i) * c), self.mask);
                }
                for kx in 0..K {
                    let wv = load::<MASKED>(
                        a.weight.as_ptr().add((ky * K + kx) * c + self.cb),
                        self.mask,
                    );
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(xs[j * S + kx], wv, *acc);
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                store::<MASKED>(
                    dst.add((oy * a.wo + ox + j) * c + self.cb),
                    self.mask,
                    relu6(*acc),
                );
            }
        }
    }
}

/// `c = a (m x k) * b (k x n)`, all row-major and contiguous.
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    par: Parallelism,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "matmul operand too small"
    );
    // SAFETY: the assert above guarantees every index the product touches is in bounds;
    // the strides describe contiguous row-major matrices and `c` does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn bias_relu6(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        row.iter_mut()
            .zip(bias)
            .for_each(|(v, b)| *v = (*v + b).clamp(0.0, 6.0));
    }
}

fn bias_only(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

fn bias_residual(x: &mut [f32], bias: &[f32], residual: &[f32]) {
    for (row, res) in x
        .chunks_exact_mut(bias.len())
        .zip(residual.chunks_exact(bias.len()))
    {
        for ((v, b), r) in row.iter_mut().zip(bias).zip(res) {
            *v += b + r;
        }
    }
}

/// A depthwise convolution's weights, `(k*k, channels)` row-major.
#[derive(Debug, Clone)]
pub(crate) struct DepthwiseWeights {
    pub weight: AlignedVec,
    pub bias: AlignedVec,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
}

/// Depthwise convolution + bias + ReLU6 on an HWC image, dispatched to the
/// widest vector instructions the CPU has.
#[allow(clippy::too_many_arguments)]
/// Where a depthwise convolution reads and writes: the full image's geometry
/// and the band of rows held in the input and output buffers.
#[derive(Debug, Clone)]
pub(crate) struct DepthwiseGeometry {
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    /// Image rows held by the input buffer (row `in_rows.start` first).
    pub in_rows: std::ops::Range<usize>,
    /// Output rows to compute, written to the output buffer from its start.
    pub out_rows: std::ops::Range<usize>,
}

impl DepthwiseGeometry {
    /// Input rows that output rows `out_rows` read (clipped to the image).
    pub(crate) fn rows_needed(
        &self,
        kernel: usize,
        stride: usize,
        out_rows: std::ops::Range<usize>,
    ) -> std::ops::Range<usize> {
        if out_rows.is_empty() {
            return 0..0;
        }
        let lo = (out_rows.start * stride).saturating_sub(self.pad_top);
        let hi = ((out_rows.end - 1) * stride + kernel)
            .saturating_sub(self.pad_top)
            .min(self.h);
        lo..hi
    }
}

/// Depthwise convolution + bias + ReLU6 on HWC rows, dispatched to the widest
/// vector instructions the CPU has.
pub(crate) fn depthwise(
    input: &[f32],
    layer: &DepthwiseWeights,
    g: &DepthwiseGeometry,
    out: &mut [f32],
) {
    let args = depthwise_args(input, layer, g);
    let needed = g.rows_needed(layer.kernel, layer.stride, g.out_rows.clone());
    assert!(
        g.out_rows.end <= g.ho
            && (needed.is_empty()
                || (g.in_rows.start <= needed.start && needed.end <= g.in_rows.end)),
        "depthwise band does not hold the rows it reads"
    );
    assert!(
        input.len() >= g.in_rows.len() * g.w * args.c
            && out.len() >= g.out_rows.len() * g.wo * args.c
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { depthwise_avx512(&args, out) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { depthwise_avx2(&args, out) };
        }
    }
    depthwise_portable(&args, out)
}

fn depthwise_args<'a>(
    input: &'a [f32],
    layer: &'a DepthwiseWeights,
    g: &DepthwiseGeometry,
) -> DepthwiseArgs<'a> {
    DepthwiseArgs {
        input,
        h: g.h,
        w: g.w,
        c: layer.channels,
        weight: &layer.weight,
        bias: &layer.bias,
        k: layer.kernel,
        stride: layer.stride,
        pad_top: g.pad_top,
        pad_left: g.pad_left,
        wo: g.wo,
        in_row0: g.in_rows.start,
        out_rows: g.out_rows.clone(),
    }
}

struct DepthwiseArgs<'a> {
    input: &'a [f32],
    h: usize,
    w: usize,
    c: usize,
    weight: &'a [f32],
    bias: &'a [f32],
    k: usize,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
    wo: usize,
    /// Image row of the input buffer's first row.
    in_row0: usize,
    /// Output rows to compute; the output buffer starts at `out_rows.start`.
    out_rows: std::ops::Range<usize>,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_avx512(args: &DepthwiseArgs, out: &mut [f32]) {
    let interior = interior_columns(args);
    match (args.k, args.stride) {
        (3, 1 | 2) => avx512::depthwise_interior::<3>(args, out, interior),
        (5, 1 | 2) => avx512::depthwise_interior::<5>(args, out, interior),
        _ => depthwise_kernel(args, out, 0..0),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_avx2(args: &DepthwiseArgs, out: &mut [f32]) {
    let interior = interior_columns(args);
    match (args.k, args.stride) {
        (3, 1 | 2) => avx2::depthwise_interior::<3>(args, out, interior),
        (5, 1 | 2) => avx2::depthwise_interior::<5>(args, out, interior),
        _ => depthwise_kernel(args, out, 0..0),
    }
}

/// The output columns whose whole kernel window lies inside the image: the
/// vector kernels compute them a few at a time, sharing input loads.
fn interior_columns(args: &DepthwiseArgs) -> std::ops::Range<usize> {
    let (k, s, pl) = (args.k, args.stride, args.pad_left);
    let lo = pl.div_ceil(s);
    let hi = if args.w + pl >= k {
        ((args.w + pl - k) / s + 1).min(args.wo)
    } else {
        0
    };
    lo..hi.max(lo)
}

fn depthwise_portable(args: &DepthwiseArgs, out: &mut [f32]) {
    depthwise_kernel(args, out, 0..0)
}

/// Channels accumulated in registers at a time.
const LANES: usize = 32;

/// The generic depthwise loop over every output pixel except the columns in
/// `skip` (which a faster path has already written).
#[inline(always)]
fn depthwise_kernel(a: &DepthwiseArgs, out: &mut [f32], skip: std::ops::Range<usize>) {
    let c = a.c;
    for oy in a.out_rows.clone() {
        let iy0 = (oy * a.stride) as isize - a.pad_top as isize;
        // The kernel rows inside the image for this output row.
        let ky_range = (0..a.k).filter(|&ky| {
            let iy = iy0 + ky as isize;
            iy >= 0 && iy < a.h as isize
        });
        let (ky_lo, ky_hi) = match (ky_range.clone().min(), ky_range.max()) {
            (Some(lo), Some(hi)) => (lo, hi + 1),
            _ => (0, 0),
        };
        for ox in (0..a.wo).filter(|ox| !skip.contains(ox)) {
            let ix0 = (ox * a.stride) as isize - a.pad_left as isize;
            let kx_lo = (-ix0).max(0) as usize;
            let kx_hi = ((a.w as isize - ix0).min(a.k as isize)).max(0) as usize;
            let o = &mut out[((oy - a.out_rows.start) * a.wo + ox) * c..][..c];
            let mut cb = 0;
            // Full blocks of LANES channels: fixed-size arrays let the compiler keep the
            // accumulator in vector registers.
            while cb + LANES <= c {
                let mut acc: [f32; LANES] =
                    a.bias[cb..cb + LANES].try_into().expect("LANES-wide slice");
                for ky in ky_lo..ky_hi {
                    let iy = (iy0 + ky as isize) as usize - a.in_row0;
                    for kx in kx_lo..kx_hi {
                        let ix = (ix0 + kx as isize) as usize;
                        let at = (iy * a.w + ix) * c + cb;
                        let wt = (ky * a.k + kx) * c + cb;
                        let ip: &[f32; LANES] = a.input[at..at + LANES]
                            .try_into()
                            .expect("LANES-wide slice");
                        let wp: &[f32; LANES] = a.weight[wt..wt + LANES]
                            .try_into()
                            .expect("LANES-wide slice");
                        for j in 0..LANES {
                            acc[j] += ip[j] * wp[j];
                        }
                    }
                }
                let dst: &mut [f32; LANES] = (&mut o[cb..cb + LANES])
                    .try_into()
                    .expect("LANES-wide slice");
                for j in 0..LANES {
                    dst[j] = acc[j].clamp(0.0, 6.0);
                }
                cb += LANES;
            }
            // The remaining channels (fewer than LANES).
            if cb < c {
                let width = c - cb;
                let mut acc = [0f32; LANES];
                acc[..width].copy_from_slice(&a.bias[cb..c]);
                for ky in ky_lo..ky_hi {
                    let iy = (iy0 + ky as isize) as usize - a.in_row0;
                    for kx in kx_lo..kx_hi {
                        let ix = (ix0 + kx as isize) as usize;
                        let ip = &a.input[(iy * a.w + ix) * c + cb..][..width];
                        let wp = &a.weight[(ky * a.k + kx) * c + cb..][..width];
                        for ((acc, x), w) in acc.iter_mut().zip(ip).zip(wp) {
                            *acc += x * w;
                        }
                    }
                }
                for (dst, acc) in o[cb..].iter_mut().zip(&acc) {
                    *dst = acc.clamp(0.0, 6.0);
                }
            }
        }
    }
}

/// The vector kernels against their definitions, computed in f64.
#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let tol = 1e-5 * (1.0 + w.abs());
            assert!(
                (*g as f64 - w).abs() <= tol,
                "{what}: element {i} is {g}, definition {w}"
            );
        }
    }

    /// `epilogue(a * w + bias)` in f64.
    fn dense_definition(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        w: &[f32],
        bias: &[f32],
        epilogue: Epilogue,
    ) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for j in 0..n {
                let mut x = bias[j] as f64;
                for kk in 0..k {
                    x += a[r * k + kk] as f64 * w[kk * n + j] as f64;
                }
                out[r * n + j] = match epilogue {
                    Epilogue::Relu6 => x.clamp(0.0, 6.0),
                    Epilogue::Linear => x,
                    Epilogue::Residual(res) => x + res[r * n + j] as f64,
                };
            }
        }
        out
    }

    /// Every dense path this CPU has, with weights packed both ways, on tile
    /// and panel remainders (rows not a multiple of 6 or 8, columns not a
    /// multiple of 8 or 16), against the definition; the thread count does not
    /// change a bit.
    #[test]
    fn dense_matches_its_definition() {
        for &(m, k, n) in &[
            (1, 1, 8),
            (5, 3, 24),
            (7, 27, 32),
            (13, 16, 40),
            (64, 9, 33),
            (130, 24, 100),
            (200, 70, 17),
        ] {
            let a = values(m * k, 1);
            let plain = values(k * n, 2);
            let bias = values(n, 3);
            let residual = values(m * n, 4);
            for epilogue in [
                Epilogue::Relu6,
                Epilogue::Linear,
                Epilogue::Residual(&residual),
            ] {
                let want = dense_definition(m, k, n, &a, &plain, &bias, epilogue);
                for panel in [PANEL, NARROW_PANEL] {
                    let w = DenseWeights::with_panel(plain.clone(), bias.clone(), k, n, panel);
                    let what = format!("m {m} k {k} n {n} panel {panel}");
                    let mut one = vec![f32::NAN; m * n];
                    dense(m, &a, &w, epilogue, &mut one, Parallelism::None);
                    assert_close(&one, &want, &what);
                    let mut two = vec![f32::NAN; m * n];
                    dense(m, &a, &w, epilogue, &mut two, Parallelism::Rayon(2));
                    assert!(
                        one.iter()
                            .zip(&two)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{what}: two threads differ from one"
                    );
                    #[cfg(target_arch = "x86_64")]
                    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                    {
                        // The AVX2 kernel reads either packing; with AVX-512 present
                        // it must give the AVX-512 kernel's bits.
                        let mut avx2 = vec![f32::NAN; m * n];
                        // SAFETY: AVX2 and FMA were just checked; the buffers hold m x k and m x n.
                        unsafe { avx2::dense(m, &a, &w, epilogue, &mut avx2) };
                        assert_close(&avx2, &want, &format!("{what}, AVX2"));
                        if panel == PANEL && std::is_x86_feature_detected!("avx512f") {
                            assert!(
                                one.iter()
                                    .zip(&avx2)
                                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                                "{what}: AVX2 and AVX-512 differ"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Depthwise convolution + bias + ReLU6 in f64 over the output rows `g.out_rows`.
    fn depthwise_definition(
        input: &[f32],
        layer: &DepthwiseWeights,
        g: &DepthwiseGeometry,
    ) -> Vec<f64> {
        let (c, k, s) = (layer.channels, layer.kernel, layer.stride);
        let mut out = Vec::new();
        for oy in g.out_rows.clone() {
            for ox in 0..g.wo {
                for ch in 0..c {
                    let mut x = layer.bias[ch] as f64;
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s + ky) as isize - g.pad_top as isize;
                            let ix = (ox * s + kx) as isize - g.pad_left as isize;
                            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                continue;
                            }
                            let at = ((iy as usize - g.in_rows.start) * g.w + ix as usize) * c + ch;
                            x += input[at] as f64 * layer.weight[(ky * k + kx) * c + ch] as f64;
                        }
                    }
                    out.push(x.clamp(0.0, 6.0));
                }
            }
        }
        out
    }

    /// Every depthwise path this CPU has (full and partial channel blocks,
    /// 3x3 and 5x5, strides 1 and 2, images narrower than the interior
    /// tiles, bands of rows) against the definition.
    #[test]
    fn depthwise_matches_its_definition() {
        for &(h, w, c, k, s) in &[
            (7, 7, 8, 3, 1),
            (10, 9, 13, 3, 2),
            (17, 12, 32, 5, 1),
            (9, 16, 20, 5, 2),
            (3, 2, 5, 5, 1),
            (12, 11, 24, 7, 1),
        ] {
            let (ho, pad_top, _) = crate::efficientnet::same_padding(h, k, s);
            let (wo, pad_left, _) = crate::efficientnet::same_padding(w, k, s);
            let layer = DepthwiseWeights {
                weight: AlignedVec::from_slice(&values(k * k * c, 5)),
                bias: AlignedVec::from_slice(&values(c, 6)),
                channels: c,
                kernel: k,
                stride: s,
            };
            // Inputs around 1 so that ReLU6 clips at both ends somewhere.
            let image: Vec<f32> = values(h * w * c, 7).iter().map(|x| x * 2.0 + 0.5).collect();
            let whole = DepthwiseGeometry {
                h,
                w,
                ho,
                wo,
                pad_top,
                pad_left,
                in_rows: 0..h,
                out_rows: 0..ho,
            };
            // The whole image, then a band of output rows from the rows it reads.
            let band_out = ho / 3..(ho / 3 + 2).min(ho);
            let band_in = whole.rows_needed(k, s, band_out.clone());
            let band = DepthwiseGeometry {
                in_rows: band_in.clone(),
                out_rows: band_out,
                ..whole.clone()
            };
            for g in [whole, band] {
                let input = &image[g.in_rows.start * w * c..g.in_rows.end * w * c];
                let want = depthwise_definition(input, &layer, &g);
                let what = format!("h {h} w {w} c {c} k {k} s {s} rows {:?}", g.out_rows);
                let mut out = vec![f32::NAN; want.len()];
                depthwise(input, &layer, &g, &mut out);
                assert_close(&out, &want, &what);
                let mut portable = vec![f32::NAN; want.len()];
                depthwise_portable(&depthwise_args(input, &layer, &g), &mut portable);
                assert_close(&portable, &want, &format!("{what}, portable"));
            }
        }
    }
}

/// Kernel throughput on synthetic data (not a correctness test; run with
/// `cargo test --release -p ramem-encode --lib throughput -- --ignored --nocapture`).
#[cfg(test)]
mod throughput {
    use super::*;
    #[test]
    #[ignore]
    fn dense_throughput() {
        // (rows, k, n): EfficientNet-Lite0's expand, project and head shapes,
        // first as the fused blocks run them (a band of rows at a time, in
        // cache), then whole images.
        for &(m, k, n) in &[
            (896, 24, 144),
            (448, 144, 24),
            (1120, 96, 24),
            (224, 240, 40),
            (112 * 112, 16, 96),
            (56 * 56, 24, 144),
            (56 * 56, 144, 24),
            (14 * 14, 80, 480),
            (14 * 14, 480, 112),
            (7 * 7, 1152, 192),
            (7 * 7, 320, 1280),
        ] {
            let a = AlignedVec::from_slice(
                &(0..m * k).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<_>>(),
            );
            let w = DenseWeights::new(vec![0.01; k * n], vec![0.0; n], k, n);
            let mut out = AlignedVec::zeros(m * n);
            let reps = (2e9 / (m * k * n) as f64).ceil() as usize;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                dense(m, &a, &w, Epilogue::Relu6, &mut out, Parallelism::None);
            }
            let e = t.elapsed().as_secs_f64() / reps as f64;
            eprintln!(
                "m={m} k={k} n={n}: {:.3} ms {:.1} GMAC/s",
                e * 1e3,
                (m * k * n) as f64 / e / 1e9
            );
        }
    }

    #[test]
    #[ignore]
    fn depthwise_throughput() {
        for &(h, c, k, s) in &[
            (112usize, 32usize, 3usize, 1usize),
            (56, 144, 3, 1),
            (28, 240, 5, 1),
            (7, 1152, 5, 1),
        ] {
            let input = AlignedVec::from_slice(
                &(0..h * h * c)
                    .map(|i| (i % 7) as f32 * 0.1)
                    .collect::<Vec<_>>(),
            );
            let layer = DepthwiseWeights {
                weight: AlignedVec::from_slice(&vec![0.01; k * k * c]),
                bias: AlignedVec::from_slice(&vec![0.0; c]),
                channels: c,
                kernel: k,
                stride: s,
            };
            let (ho, pt, _) = crate::efficientnet::same_padding(h, k, s);
            let g = DepthwiseGeometry {
                h,
                w: h,
                ho,
                wo: ho,
                pad_top: pt,
                pad_left: pt,
                in_rows: 0..h,
                out_rows: 0..ho,
            };
            let mut out = AlignedVec::zeros(ho * ho * c);
            let reps = 200;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                depthwise(&input, &layer, &g, &mut out);
            }
            let e = t.elapsed().as_secs_f64() / reps as f64;
            eprintln!(
                "h={h} c={c} k={k}: {:.3} ms {:.1} GMAC/s",
                e * 1e3,
                (ho * ho * c * k * k) as f64 / e / 1e9
            );
        }
    }
}
