//! A per-query product of the attention step, where each query brings
//! rows of its own (its k neighbours' keys or values, tens to hundreds of
//! kilobytes) and a handful of head vectors: [`dots`], `out[h][j] = a_h .
//! r_j`, every head vector against every row (the attention scores, and the
//! backward pass into the pooled values).
//!
//! Its cost is reading the rows once. A general `gemm` packs the rows into a
//! scratch panel first; this reads them in place, four rows at a time with
//! four heads' accumulators in registers (AVX-512 where the CPU has it, a
//! portable loop elsewhere): 256 queries' scores over 32 keys of 1,280
//! dimensions take 3.6 to 4.3 ms on one core against gemm's 4.5 to 5.6.
//! (The weighted sums of rows, the other per-query product, stay with gemm,
//! which was faster there.)

/// `out[h * out_stride + j] = a[h * a_stride..][..dim] . rows[j * dim..][..dim]`
/// for `heads` head vectors and `rows.len() / dim` rows.
pub(crate) fn dots(
    a: &[f32],
    a_stride: usize,
    heads: usize,
    rows: &[f32],
    dim: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let count = rows.len() / dim;
    assert!(
        heads == 0 || a.len() >= (heads - 1) * a_stride + dim,
        "dots: head vectors"
    );
    assert!(
        heads == 0 || count == 0 || out.len() >= (heads - 1) * out_stride + count,
        "dots: output"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available; the asserts bound every access.
        unsafe { avx512::dots(a, a_stride, heads, rows, dim, out, out_stride) };
        return;
    }
    for h in 0..heads {
        let vector = &a[h * a_stride..h * a_stride + dim];
        for (j, row) in rows.chunks_exact(dim).enumerate() {
            out[h * out_stride + j] = super::dot(vector, row);
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
        rows: &[f32],
        dim: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let count = rows.len() / dim;
        // Rows outermost: a group of rows stays in L1 while every head
        // passes over it, so each row comes from memory once.
        let mut j = 0;
        while j < count {
            let take = (count - j).min(4);
            let mut h = 0;
            while h < heads {
                let group = (heads - h).min(4);
                match (group, take) {
                    (4, 4) => tile::<4, 4>(a, a_stride, h, rows, dim, j, out, out_stride),
                    (4, _) => {
                        for r in j..j + take {
                            tile::<4, 1>(a, a_stride, h, rows, dim, r, out, out_stride)
                        }
                    }
                    (_, 4) => {
                        for g in h..h + group {
                            tile::<1, 4>(a, a_stride, g, rows, dim, j, out, out_stride)
                        }
                    }
                    _ => {
                        for g in h..h + group {
                            for r in j..j + take {
                                tile::<1, 1>(a, a_stride, g, rows, dim, r, out, out_stride)
                            }
                        }
                    }
                }
                h += group;
            }
            j += take;
        }
    }

    /// `HG` heads from `h` against `RG` rows from `j`: `HG x RG` registers.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)] // one tile's operands and position
    unsafe fn tile<const HG: usize, const RG: usize>(
        a: &[f32],
        a_stride: usize,
        h: usize,
        rows: &[f32],
        dim: usize,
        j: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); RG]; HG];
        let a_ptr = a.as_ptr().add(h * a_stride);
        let r_ptr = rows.as_ptr().add(j * dim);
        let mut t = 0;
        while t < dim {
            let mask = lanes(dim - t);
            let mut r = [_mm512_setzero_ps(); RG];
            for (i, reg) in r.iter_mut().enumerate() {
                *reg = _mm512_maskz_loadu_ps(mask, r_ptr.add(i * dim + t));
            }
            for (g, acc_g) in acc.iter_mut().enumerate() {
                let x = _mm512_maskz_loadu_ps(mask, a_ptr.add(g * a_stride + t));
                for (i, reg) in r.iter().enumerate() {
                    acc_g[i] = _mm512_fmadd_ps(x, *reg, acc_g[i]);
                }
            }
            t += L;
        }
        for (g, acc_g) in acc.iter().enumerate() {
            for (i, reg) in acc_g.iter().enumerate() {
                *out.get_unchecked_mut((h + g) * out_stride + j + i) = _mm512_reduce_add_ps(*reg);
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

    /// Every head count and row count around the tiles' sizes, with a
    /// dimension that leaves a partial register.
    #[test]
    fn dots_match_the_definition() {
        for heads in [1, 3, 4, 5, 8] {
            for count in [1, 3, 4, 7] {
                for dim in [5, 16, 37, 64] {
                    let a_stride = dim + 3;
                    let a = data(heads * a_stride, 1.0);
                    let rows = data(count * dim, 2.0);
                    let mut out = vec![f32::NAN; heads * (count + 2)];
                    dots(&a, a_stride, heads, &rows, dim, &mut out, count + 2);
                    for h in 0..heads {
                        for j in 0..count {
                            let want: f32 = (0..dim)
                                .map(|t| a[h * a_stride + t] * rows[j * dim + t])
                                .sum();
                            let got = out[h * (count + 2) + j];
                            assert!((got - want).abs() < 1e-4, "dots {heads} {count} {dim}");
                        }
                    }
                }
            }
        }
    }
}
