//! The CPU engine's hot loops: dense (1x1 / im2col) convolutions as matrix
//! products with fused epilogues, and depthwise convolutions.
//!
//! On CPUs with AVX-512 the dense products use this module's own kernel,
//! which reads weights packed once at load time into 32-column panels and
//! applies bias, ReLU6 or the residual add while the results are still in
//! registers. Elsewhere they fall back to the `gemm` crate followed by a
//! separate epilogue pass. Depthwise convolutions vectorise across channels
//! (NHWC) and are compiled for AVX-512, AVX2+FMA, or plain code, chosen at run
//! time.

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

/// Panel width of packed weights: two AVX-512 registers.
const PANEL: usize = 32;

/// Stored width of packed panel `p` of a layer with `n` output columns.
fn panel_width(n: usize, p: usize) -> usize {
    if n - p * PANEL <= 16 {
        16
    } else {
        PANEL
    }
}

/// Weights of a dense layer `(k, n)`, kept both plain (row-major) and packed.
#[derive(Debug, Clone)]
pub(crate) struct DenseWeights {
    pub k: usize,
    pub n: usize,
    /// `(k, n)` row-major, for the portable path.
    plain: Vec<f32>,
    /// Panels of `PANEL` columns, each `(k, PANEL)` row-major, zero-padded.
    packed: AlignedVec,
    bias: Vec<f32>,
    /// `bias` zero-padded to whole panels.
    bias_padded: Vec<f32>,
}

impl DenseWeights {
    /// `plain` is `(k, n)` row-major.
    pub(crate) fn new(plain: Vec<f32>, bias: Vec<f32>, k: usize, n: usize) -> Self {
        assert_eq!(plain.len(), k * n);
        assert_eq!(bias.len(), n);
        let panels = n.div_ceil(PANEL);
        // Panels are PANEL columns wide, except a last one of at most 16 columns,
        // which is stored 16 wide (a single register) instead of padded to PANEL.
        let mut packed = AlignedVec::zeros(panels * k * PANEL);
        for p in 0..panels {
            let width = panel_width(n, p);
            for row in 0..k {
                for j in 0..PANEL.min(n - p * PANEL) {
                    packed[p * k * PANEL + row * width + j] = plain[row * n + p * PANEL + j];
                }
            }
        }
        let mut bias_padded = bias.clone();
        bias_padded.resize(panels * PANEL, 0.0);
        Self {
            k,
            n,
            plain,
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
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above) and the asserts above bound every access.
            unsafe { avx512::dense(m, a, w, epilogue, out) };
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
                    match (rows, super::panel_width(n, p)) {
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
    let args = DepthwiseArgs {
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
    };
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
    // Columns whose whole kernel window lies inside the image share input loads.
    let (k, s, pl) = (args.k, args.stride, args.pad_left);
    let lo = pl.div_ceil(s);
    let hi = if args.w + pl >= k {
        ((args.w + pl - k) / s + 1).min(args.wo)
    } else {
        0
    };
    let interior = lo..hi.max(lo);
    match (k, args.stride) {
        (3, 1 | 2) => avx512::depthwise_interior::<3>(args, out, interior),
        (5, 1 | 2) => avx512::depthwise_interior::<5>(args, out, interior),
        _ => depthwise_kernel(args, out, 0..0),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_avx2(args: &DepthwiseArgs, out: &mut [f32]) {
    depthwise_kernel(args, out, 0..0)
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

/// Kernel throughput on synthetic data (not a correctness test; run with
/// `cargo test --release -p ramem-encode --lib throughput -- --ignored --nocapture`).
#[cfg(test)]
mod throughput {
    use super::*;
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
