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

/// Panel width of packed weights: two AVX-512 registers.
const PANEL: usize = 32;

/// Weights of a dense layer `(k, n)`, kept both plain (row-major) and packed.
#[derive(Debug, Clone)]
pub(crate) struct DenseWeights {
    pub k: usize,
    pub n: usize,
    /// `(k, n)` row-major, for the portable path.
    plain: Vec<f32>,
    /// Panels of `PANEL` columns, each `(k, PANEL)` row-major, zero-padded.
    packed: Vec<f32>,
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
        let mut packed = vec![0f32; panels * k * PANEL];
        for p in 0..panels {
            for row in 0..k {
                for j in 0..PANEL.min(n - p * PANEL) {
                    packed[(p * k + row) * PANEL + j] = plain[row * n + p * PANEL + j];
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
    #[cfg(target_arch = "x86_64")]
    {
        if matches!(par, Parallelism::None) && std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above) and the asserts above bound every access.
            unsafe { avx512::dense(m, a, w, epilogue, out) };
            return;
        }
    }
    matmul(m, w.n, w.k, a, &w.plain, out, par);
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
                    match rows {
                        8 => tile.run::<8>(),
                        7 => tile.run::<7>(),
                        6 => tile.run::<6>(),
                        5 => tile.run::<5>(),
                        4 => tile.run::<4>(),
                        3 => tile.run::<3>(),
                        2 => tile.run::<2>(),
                        _ => tile.run::<1>(),
                    }
                    row += rows;
                }
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
        unsafe fn run<const R: usize>(&self) {
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            for kk in 0..self.k {
                let b0 = _mm512_loadu_ps(self.b.add(kk * PANEL));
                let b1 = _mm512_loadu_ps(self.b.add(kk * PANEL + 16));
                for r in 0..R {
                    let av = _mm512_set1_ps(*self.a.add(r * self.k + kk));
                    acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                    acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
                }
            }
            let bias0 = _mm512_loadu_ps(self.bias);
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
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
}

/// Depthwise convolution + bias + ReLU6 on an HWC image, dispatched to the
/// widest vector instructions the CPU has.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise(
    input: &[f32],
    h: usize,
    w: usize,
    layer: &DepthwiseWeights,
    pad_top: usize,
    pad_left: usize,
    ho: usize,
    wo: usize,
    out: &mut [f32],
) {
    let args = DepthwiseArgs {
        input,
        h,
        w,
        c: layer.channels,
        weight: &layer.weight,
        bias: &layer.bias,
        k: layer.kernel,
        stride: layer.stride,
        pad_top,
        pad_left,
        ho,
        wo,
    };
    assert!(input.len() >= h * w * args.c && out.len() >= ho * wo * args.c);
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
    ho: usize,
    wo: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_avx512(args: &DepthwiseArgs, out: &mut [f32]) {
    depthwise_kernel(args, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_avx2(args: &DepthwiseArgs, out: &mut [f32]) {
    depthwise_kernel(args, out)
}

fn depthwise_portable(args: &DepthwiseArgs, out: &mut [f32]) {
    depthwise_kernel(args, out)
}

/// Channels accumulated in registers at a time.
const LANES: usize = 32;

#[inline(always)]
fn depthwise_kernel(a: &DepthwiseArgs, out: &mut [f32]) {
    let c = a.c;
    for oy in 0..a.ho {
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
        for ox in 0..a.wo {
            let ix0 = (ox * a.stride) as isize - a.pad_left as isize;
            let kx_lo = (-ix0).max(0) as usize;
            let kx_hi = ((a.w as isize - ix0).min(a.k as isize)).max(0) as usize;
            let o = &mut out[(oy * a.wo + ox) * c..][..c];
            let mut cb = 0;
            // Full blocks of LANES channels: fixed-size arrays let the compiler keep the
            // accumulator in vector registers.
            while cb + LANES <= c {
                let mut acc: [f32; LANES] =
                    a.bias[cb..cb + LANES].try_into().expect("LANES-wide slice");
                for ky in ky_lo..ky_hi {
                    let iy = (iy0 + ky as isize) as usize;
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
                    let iy = (iy0 + ky as isize) as usize;
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
