//! The two per-query products of the attention step, where each query
//! brings rows of its own (its k neighbours' keys or values, tens to
//! hundreds of kilobytes) and a handful of head vectors:
//!
//! - [`dots`]: `out[h][j] = a_h . r_j`, every head vector against every row
//!   (the attention scores, and the backward pass into the pooled values);
//! - [`mix`]: `out[h] = sum_j w[h][j] r_j`, weighted sums of the rows (the
//!   pooled values, and the backward pass into the query).
//!
//! Their cost is reading the rows once. The rows are slices wherever their
//! owner keeps them (the neighbour bank itself, or a gathered batch), so a
//! training step needs no batch copy of them; the kernels read them in
//! place, with several heads' accumulators in registers (AVX-512 where the
//! CPU has it, else AVX2 with FMA, else a portable loop). Against `gemm` on a contiguous
//! copy of the rows, the score kernel was faster and the weighted sums about
//! as fast, before counting the copy gemm needs.

/// `out[h * out_stride + j] = a[h * a_stride..][..dim] . rows[j][..dim]` for
/// `heads` head vectors and every row.
pub(crate) fn dots(
    a: &[f32],
    a_stride: usize,
    heads: usize,
    rows: &[&[f32]],
    dim: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let count = rows.len();
    assert!(
        heads == 0 || a.len() >= (heads - 1) * a_stride + dim,
        "dots: head vectors"
    );
    assert!(
        heads == 0 || count == 0 || out.len() >= (heads - 1) * out_stride + count,
        "dots: output"
    );
    assert!(rows.iter().all(|r| r.len() >= dim), "dots: a short row");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available; the asserts bound every access.
        unsafe { avx512::dots(a, a_stride, heads, rows, dim, out, out_stride) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are available; the asserts bound every access.
        unsafe { avx2::dots(a, a_stride, heads, rows, dim, out, out_stride) };
        return;
    }
    for h in 0..heads {
        let vector = &a[h * a_stride..h * a_stride + dim];
        for (j, row) in rows.iter().enumerate() {
            out[h * out_stride + j] = super::dot(vector, &row[..dim]);
        }
    }
}

/// `out[h * dim..][..dim] = sum_j w[h * k + j] rows[j][..dim]` for `heads`
/// weight rows of `k = rows.len()` weights.
pub(crate) fn mix(w: &[f32], heads: usize, rows: &[&[f32]], dim: usize, out: &mut [f32]) {
    let k = rows.len();
    assert!(
        w.len() >= heads * k && out.len() >= heads * dim,
        "mix: sizes"
    );
    assert!(rows.iter().all(|r| r.len() >= dim), "mix: a short row");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available; the asserts bound every access.
        unsafe { avx512::mix(w, heads, rows, dim, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are available; the asserts bound every access.
        unsafe { avx2::mix(w, heads, rows, dim, out) };
        return;
    }
    for h in 0..heads {
        let target = &mut out[h * dim..(h + 1) * dim];
        target.fill(0.0);
        for (j, row) in rows.iter().enumerate() {
            let weight = w[h * k + j];
            for (o, r) in target.iter_mut().zip(&row[..dim]) {
                *o += weight * r;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Lanes per register.
    const L: usize = 16;

    /// The mask of the first `n` lanes.
    fn lanes(n: usize) -> __mmask16 {
        if n >= L {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots(
        a: &[f32],
        a_stride: usize,
        heads: usize,
        rows: &[&[f32]],
        dim: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let count = rows.len();
        // Rows outermost: a group of rows stays in L1 while every head
        // passes over it, so each row comes from memory once.
        let mut j = 0;
        while j < count {
            let take = (count - j).min(4);
            let mut h = 0;
            while h < heads {
                let group = (heads - h).min(4);
                let tile = Tile {
                    a,
                    a_stride,
                    rows,
                    dim,
                    out_stride,
                };
                match (group, take) {
                    (4, 4) => tile.run::<4, 4>(h, j, out),
                    (4, _) => (j..j + take).for_each(|r| tile.run::<4, 1>(h, r, out)),
                    (_, 4) => (h..h + group).for_each(|g| tile.run::<1, 4>(g, j, out)),
                    _ => {
                        for g in h..h + group {
                            (j..j + take).for_each(|r| tile.run::<1, 1>(g, r, out));
                        }
                    }
                }
                h += group;
            }
            j += take;
        }
    }

    /// The operands of [`dots`].
    struct Tile<'a, 'r> {
        a: &'a [f32],
        a_stride: usize,
        rows: &'a [&'r [f32]],
        dim: usize,
        out_stride: usize,
    }

    impl Tile<'_, '_> {
        /// `HG` heads from `h` against `RG` rows from `j`: `HG x RG` registers.
        #[target_feature(enable = "avx512f")]
        unsafe fn run<const HG: usize, const RG: usize>(
            &self,
            h: usize,
            j: usize,
            out: &mut [f32],
        ) {
            let dim = self.dim;
            let mut acc = [[_mm512_setzero_ps(); RG]; HG];
            let a_ptr = self.a.as_ptr().add(h * self.a_stride);
            let r_ptr: [*const f32; RG] =
                std::array::from_fn(|i| self.rows.get_unchecked(j + i).as_ptr());
            let mut t = 0;
            while t < dim {
                let mask = lanes(dim - t);
                let mut r = [_mm512_setzero_ps(); RG];
                for (reg, ptr) in r.iter_mut().zip(&r_ptr) {
                    *reg = _mm512_maskz_loadu_ps(mask, ptr.add(t));
                }
                for (g, acc_g) in acc.iter_mut().enumerate() {
                    let x = _mm512_maskz_loadu_ps(mask, a_ptr.add(g * self.a_stride + t));
                    for (i, reg) in r.iter().enumerate() {
                        acc_g[i] = _mm512_fmadd_ps(x, *reg, acc_g[i]);
                    }
                }
                t += L;
            }
            for (g, acc_g) in acc.iter().enumerate() {
                for (i, reg) in acc_g.iter().enumerate() {
                    *out.get_unchecked_mut((h + g) * self.out_stride + j + i) =
                        _mm512_reduce_add_ps(*reg);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn mix(
        w: &[f32],
        heads: usize,
        rows: &[&[f32]],
        dim: usize,
        out: &mut [f32],
    ) {
        let mut h = 0;
        while h < heads {
            let group = if heads - h >= 8 {
                8
            } else {
                (heads - h).min(4)
            };
            let mut t = 0;
            while t < dim {
                let width = (dim - t).min(2 * L);
                if group == 8 && width == 2 * L {
                    mix_tile::<8, 2>(w, h, rows, dim, t, out);
                } else if group == 4 && width == 2 * L {
                    mix_tile::<4, 2>(w, h, rows, dim, t, out);
                } else {
                    for g in h..h + group {
                        let mut c = t;
                        while c < t + width {
                            mix_tile::<1, 1>(w, g, rows, dim, c, out);
                            c += L;
                        }
                    }
                }
                t += width;
            }
            h += group;
        }
    }

    /// `HG` heads from `h`, `CG` registers of columns from `t`: every row
    /// passes once through `HG x CG` accumulators.
    #[target_feature(enable = "avx512f")]
    unsafe fn mix_tile<const HG: usize, const CG: usize>(
        w: &[f32],
        h: usize,
        rows: &[&[f32]],
        dim: usize,
        t: usize,
        out: &mut [f32],
    ) {
        let k = rows.len();
        let mut acc = [[_mm512_setzero_ps(); CG]; HG];
        let masks: [__mmask16; CG] = std::array::from_fn(|c| lanes(dim.saturating_sub(t + c * L)));
        for (j, row) in rows.iter().enumerate() {
            let row = row.as_ptr().add(t);
            let mut r = [_mm512_setzero_ps(); CG];
            for (c, reg) in r.iter_mut().enumerate() {
                *reg = _mm512_maskz_loadu_ps(masks[c], row.add(c * L));
            }
            for (g, acc_g) in acc.iter_mut().enumerate() {
                let weight = _mm512_set1_ps(*w.get_unchecked((h + g) * k + j));
                for (c, reg) in r.iter().enumerate() {
                    acc_g[c] = _mm512_fmadd_ps(weight, *reg, acc_g[c]);
                }
            }
        }
        for (g, acc_g) in acc.iter().enumerate() {
            let target = out.as_mut_ptr().add((h + g) * dim + t);
            for (c, reg) in acc_g.iter().enumerate() {
                _mm512_mask_storeu_ps(target.add(c * L), masks[c], *reg);
            }
        }
    }
}

/// The same kernels with AVX2 and FMA: 8 lanes and 16 registers, so smaller
/// tiles (4 heads x 2 rows for the scores, 4 heads x 16 columns for the
/// weighted sums), and the columns past the last whole register done one
/// by one instead of under a mask.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Lanes per register.
    const L: usize = 8;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots(
        a: &[f32],
        a_stride: usize,
        heads: usize,
        rows: &[&[f32]],
        dim: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let count = rows.len();
        // Rows outermost, as in the AVX-512 kernel: a pair of rows stays in
        // L1 while every head passes over it.
        let mut j = 0;
        while j < count {
            let take = (count - j).min(2);
            let mut h = 0;
            while h < heads {
                let group = (heads - h).min(4);
                let args = (a, a_stride, rows, dim, out_stride);
                match (group, take) {
                    (4, 2) => dots_tile::<4, 2>(args, h, j, out),
                    (4, _) => dots_tile::<4, 1>(args, h, j, out),
                    (_, 2) => (h..h + group).for_each(|g| dots_tile::<1, 2>(args, g, j, out)),
                    _ => (h..h + group).for_each(|g| dots_tile::<1, 1>(args, g, j, out)),
                }
                h += group;
            }
            j += take;
        }
    }

    /// `HG` heads from `h` against `RG` rows from `j`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_tile<const HG: usize, const RG: usize>(
        (a, a_stride, rows, dim, out_stride): (&[f32], usize, &[&[f32]], usize, usize),
        h: usize,
        j: usize,
        out: &mut [f32],
    ) {
        let main = dim / L * L;
        let mut acc = [[_mm256_setzero_ps(); RG]; HG];
        let a_ptr = a.as_ptr().add(h * a_stride);
        let r_ptr: [*const f32; RG] = std::array::from_fn(|i| rows.get_unchecked(j + i).as_ptr());
        let mut t = 0;
        while t < main {
            let r: [__m256; RG] = std::array::from_fn(|i| _mm256_loadu_ps(r_ptr[i].add(t)));
            for (g, acc_g) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(a_ptr.add(g * a_stride + t));
                for (i, reg) in r.iter().enumerate() {
                    acc_g[i] = _mm256_fmadd_ps(x, *reg, acc_g[i]);
                }
            }
            t += L;
        }
        for (g, acc_g) in acc.iter().enumerate() {
            for (i, reg) in acc_g.iter().enumerate() {
                let mut sum = hsum(*reg);
                for c in main..dim {
                    sum += *a_ptr.add(g * a_stride + c) * *r_ptr[i].add(c);
                }
                *out.get_unchecked_mut((h + g) * out_stride + j + i) = sum;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn mix(
        w: &[f32],
        heads: usize,
        rows: &[&[f32]],
        dim: usize,
        out: &mut [f32],
    ) {
        let k = rows.len();
        let mut h = 0;
        while h < heads {
            let group = (heads - h).min(4);
            let mut t = 0;
            while t + 2 * L <= dim {
                if group == 4 {
                    mix_tile::<4, 2>(w, h, rows, dim, t, out);
                } else {
                    (h..h + group).for_each(|g| mix_tile::<1, 2>(w, g, rows, dim, t, out));
                }
                t += 2 * L;
            }
            if t + L <= dim {
                (h..h + group).for_each(|g| mix_tile::<1, 1>(w, g, rows, dim, t, out));
                t += L;
            }
            for g in h..h + group {
                for c in t..dim {
                    let mut sum = 0.0;
                    for (j, row) in rows.iter().enumerate() {
                        sum += *w.get_unchecked(g * k + j) * *row.get_unchecked(c);
                    }
                    *out.get_unchecked_mut(g * dim + c) = sum;
                }
            }
            h += group;
        }
    }

    /// `HG` heads from `h`, `CG` registers of columns from `t` (all within
    /// `dim`): every row passes once through `HG x CG` accumulators.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mix_tile<const HG: usize, const CG: usize>(
        w: &[f32],
        h: usize,
        rows: &[&[f32]],
        dim: usize,
        t: usize,
        out: &mut [f32],
    ) {
        let k = rows.len();
        let mut acc = [[_mm256_setzero_ps(); CG]; HG];
        for (j, row) in rows.iter().enumerate() {
            let row = row.as_ptr().add(t);
            let r: [__m256; CG] = std::array::from_fn(|c| _mm256_loadu_ps(row.add(c * L)));
            for (g, acc_g) in acc.iter_mut().enumerate() {
                let weight = _mm256_set1_ps(*w.get_unchecked((h + g) * k + j));
                for (c, reg) in r.iter().enumerate() {
                    acc_g[c] = _mm256_fmadd_ps(weight, *reg, acc_g[c]);
                }
            }
        }
        for (g, acc_g) in acc.iter().enumerate() {
            let target = out.as_mut_ptr().add((h + g) * dim + t);
            for (c, reg) in acc_g.iter().enumerate() {
                _mm256_storeu_ps(target.add(c * L), *reg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, salt: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 + salt) * 0.37).sin()).collect()
    }

    /// Every head count and row count around the tiles' sizes, with
    /// dimensions that leave partial registers, rows of differing length.
    #[test]
    fn kernels_match_the_definitions() {
        for heads in [1, 3, 4, 5, 8, 9] {
            for count in [1, 3, 4, 7] {
                for dim in [5, 16, 37, 64] {
                    let a_stride = dim + 3;
                    let a = data(heads * a_stride, 1.0);
                    let rows = data(count * (dim + 2), 2.0);
                    let refs: Vec<&[f32]> = rows.chunks(dim + 2).collect();
                    let mut out = vec![f32::NAN; heads * (count + 2)];
                    dots(&a, a_stride, heads, &refs, dim, &mut out, count + 2);
                    let w = data(heads * count, 3.0);
                    let mut mixed = vec![f32::NAN; heads * dim];
                    mix(&w, heads, &refs, dim, &mut mixed);
                    // The AVX2 kernels too, where the CPU has them (the
                    // dispatch prefers AVX-512).
                    #[cfg(target_arch = "x86_64")]
                    let avx2_results = (std::is_x86_feature_detected!("avx2")
                        && std::is_x86_feature_detected!("fma"))
                    .then(|| {
                        let mut out = vec![f32::NAN; heads * (count + 2)];
                        let mut mixed = vec![f32::NAN; heads * dim];
                        unsafe {
                            avx2::dots(&a, a_stride, heads, &refs, dim, &mut out, count + 2);
                            avx2::mix(&w, heads, &refs, dim, &mut mixed);
                        }
                        (out, mixed)
                    });
                    #[cfg(not(target_arch = "x86_64"))]
                    let avx2_results: Option<(Vec<f32>, Vec<f32>)> = None;
                    let mut implementations = vec![(out, mixed)];
                    implementations.extend(avx2_results);
                    for (out, mixed) in &implementations {
                        for h in 0..heads {
                            for j in 0..count {
                                let want: f32 =
                                    (0..dim).map(|t| a[h * a_stride + t] * refs[j][t]).sum();
                                let got = out[h * (count + 2) + j];
                                assert!((got - want).abs() < 1e-4, "dots {heads} {count} {dim}");
                            }
                            for t in 0..dim {
                                let want: f32 =
                                    (0..count).map(|j| w[h * count + j] * refs[j][t]).sum();
                                let got = mixed[h * dim + t];
                                assert!((got - want).abs() < 1e-4, "mix {heads} {count} {dim}");
                            }
                        }
                    }
                }
            }
        }
    }
}
