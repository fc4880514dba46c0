//! Dot products of one query against key rows: consecutive rows for the
//! few-query path where the scan is bound by memory bandwidth, and scattered
//! rows (a gather: four rows at a time, the next four prefetched while they
//! are scored; AVX-512 or AVX2) for graph search, and the same gather
//! without prefetching for rows already in cache (the graph build's
//! neighbour heuristic). The SIMD versions are picked at run time; the
//! portable ones are the reference.

use half::f16;

/// `out[r] = dot(keys[r * dim..][..dim], q)` for `r < out.len()`.
pub(crate) type DotsF32 = fn(keys: &[f32], dim: usize, q: &[f32], out: &mut [f32]);
pub(crate) type DotsF16 = fn(keys: &[f16], dim: usize, q: &[f32], out: &mut [f32]);

/// `out[i] = dot(rows[i][..q.len()], q)` for `i < rows.len()`; every row
/// holds at least `q.len()` values.
pub(crate) type GatherF32 = fn(rows: &[&[f32]], q: &[f32], out: &mut [f32]);
pub(crate) type GatherF16 = fn(rows: &[&[f16]], q: &[f32], out: &mut [f32]);

pub(crate) fn pick_gather_f32() -> GatherF32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return |r, q, o| unsafe { x86::gather_f32_avx512::<true>(r, q, o) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return |r, q, o| unsafe { x86::gather_f32_avx2::<true>(r, q, o) };
        }
    }
    gather_f32_portable
}

pub(crate) fn pick_gather_f16() -> GatherF16 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return |r, q, o| unsafe { x86::gather_f16_avx512::<true>(r, q, o) };
        }
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return |r, q, o| unsafe { x86::gather_f16_avx2::<true>(r, q, o) };
        }
    }
    gather_f16_portable
}

/// The gather kernel for rows already in cache (the neighbour heuristic's
/// links, scored again and again): the same results as
/// [`pick_gather_f32`]'s, without its prefetches. CPUs without AVX2 get
/// the portable kernel.
pub(crate) fn pick_gather_cached_f32() -> GatherF32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return |r, q, o| unsafe { x86::gather_f32_avx512::<false>(r, q, o) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return |r, q, o| unsafe { x86::gather_f32_avx2::<false>(r, q, o) };
    }
    gather_f32_portable
}

/// [`pick_gather_cached_f32`] for f16 rows.
pub(crate) fn pick_gather_cached_f16() -> GatherF16 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return |r, q, o| unsafe { x86::gather_f16_avx512::<false>(r, q, o) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        return |r, q, o| unsafe { x86::gather_f16_avx2::<false>(r, q, o) };
    }
    gather_f16_portable
}

pub(crate) fn gather_f32_portable(rows: &[&[f32]], q: &[f32], out: &mut [f32]) {
    for (row, o) in rows.iter().zip(out.iter_mut()) {
        dots_f32_portable(&row[..q.len()], q.len(), q, std::slice::from_mut(o));
    }
}

pub(crate) fn gather_f16_portable(rows: &[&[f16]], q: &[f32], out: &mut [f32]) {
    for (row, o) in rows.iter().zip(out.iter_mut()) {
        dots_f16_portable(&row[..q.len()], q.len(), q, std::slice::from_mut(o));
    }
}

pub(crate) fn pick_f32() -> DotsF32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return |k, d, q, o| unsafe { x86::dots_f32_avx512(k, d, q, o) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return |k, d, q, o| unsafe { x86::dots_f32_avx2(k, d, q, o) };
        }
    }
    dots_f32_portable
}

pub(crate) fn pick_f16() -> DotsF16 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return |k, d, q, o| unsafe { x86::dots_f16_avx512(k, d, q, o) };
        }
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return |k, d, q, o| unsafe { x86::dots_f16_avx2(k, d, q, o) };
        }
    }
    dots_f16_portable
}

pub(crate) fn dots_f32_portable(keys: &[f32], dim: usize, q: &[f32], out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let row = &keys[r * dim..(r + 1) * dim];
        // Eight partial sums break the dependency chain and let it vectorise.
        let mut acc = [0f32; 8];
        let mut rc = row.chunks_exact(8);
        let mut qc = q.chunks_exact(8);
        for (a, b) in (&mut rc).zip(&mut qc) {
            for i in 0..8 {
                acc[i] += a[i] * b[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (a, b) in rc.remainder().iter().zip(qc.remainder()) {
            s += a * b;
        }
        *o = s;
    }
}

pub(crate) fn dots_f16_portable(keys: &[f16], dim: usize, q: &[f32], out: &mut [f32]) {
    let mut row32 = vec![0f32; dim];
    for (r, o) in out.iter_mut().enumerate() {
        for (d, k) in row32.iter_mut().zip(&keys[r * dim..(r + 1) * dim]) {
            *d = k.to_f32();
        }
        let mut one = [0f32];
        dots_f32_portable(&row32, dim, q, &mut one);
        *o = one[0];
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    // One row at a time, with four accumulators along the row to hide the
    // FMA latency. Reading rows strictly in order keeps the access a single
    // sequential stream: interleaving four rows measured ~3x slower from
    // DRAM (24 vs 8 GB/s on one core), as the hardware prefetcher then sees
    // short streams it does not follow.
    macro_rules! row_dots {
        ($name:ident, $feat:literal, $elem:ty, $lanes:expr, $zero:ident, $fma:ident,
         $add:ident, $loadq:ident, $reduce:ident, $load:expr) => {
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(keys: &[$elem], dim: usize, q: &[f32], out: &mut [f32]) {
                let n = out.len();
                assert!(keys.len() >= n * dim && q.len() >= dim);
                let main4 = dim / (4 * $lanes) * (4 * $lanes);
                let main = dim / $lanes * $lanes;
                let qp = q.as_ptr();
                let load = $load;
                for (r, o) in out.iter_mut().enumerate() {
                    let pk = keys.as_ptr().add(r * dim);
                    let (mut a0, mut a1, mut a2, mut a3) = ($zero(), $zero(), $zero(), $zero());
                    let mut d = 0;
                    while d < main4 {
                        a0 = $fma(load(pk.add(d)), $loadq(qp.add(d)), a0);
                        a1 = $fma(load(pk.add(d + $lanes)), $loadq(qp.add(d + $lanes)), a1);
                        a2 = $fma(
                            load(pk.add(d + 2 * $lanes)),
                            $loadq(qp.add(d + 2 * $lanes)),
                            a2,
                        );
                        a3 = $fma(
                            load(pk.add(d + 3 * $lanes)),
                            $loadq(qp.add(d + 3 * $lanes)),
                            a3,
                        );
                        d += 4 * $lanes;
                    }
                    while d < main {
                        a0 = $fma(load(pk.add(d)), $loadq(qp.add(d)), a0);
                        d += $lanes;
                    }
                    let mut s = $reduce($add($add(a0, a1), $add(a2, a3)));
                    while d < dim {
                        s += f32::from(*pk.add(d)) * *qp.add(d);
                        d += 1;
                    }
                    *o = s;
                }
            }
        };
    }

    /// Scattered rows four at a time: one query load feeds four rows'
    /// FMAs, so four rows stream from memory at once, and while a group is
    /// scored the next group's cache lines are prefetched, one line of each
    /// row per 64 bytes of progress. Two accumulators per row, each step
    /// covering `2 * $lanes` values (with 8 lanes, 8 accumulators and two
    /// query registers: the 16 AVX2 registers hold them without spilling).
    macro_rules! gather4_dots {
        ($name:ident, $feat:literal, $elem:ty, $lanes:expr, $zero:ident, $fma:ident,
         $add:ident, $loadq:ident, $reduce:ident, $load:expr) => {
            /// With `PREFETCH` false the rows are taken to be in cache
            /// already (no prefetch instructions, which would take load
            /// slots for nothing); the arithmetic, and so every result, is
            /// the same either way.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name<const PREFETCH: bool>(
                rows: &[&[$elem]],
                q: &[f32],
                out: &mut [f32],
            ) {
                const LANES: usize = $lanes;
                let dim = q.len();
                let n = rows.len().min(out.len());
                let main = dim / LANES * LANES;
                let size = std::mem::size_of::<$elem>();
                let bytes = dim * size;
                let qp = q.as_ptr();
                let load = $load;
                let line = |r: usize, off: usize| {
                    _mm_prefetch::<_MM_HINT_T0>((rows[r].as_ptr() as *const i8).add(off));
                };
                if PREFETCH {
                    for r in 0..n.min(4) {
                        let mut off = 0;
                        while off < bytes {
                            line(r, off);
                            off += 64;
                        }
                    }
                }
                let mut g = 0;
                while g < n {
                    let m = (n - g).min(4);
                    // A short last group repeats its last row; the copies are dropped.
                    let p: [*const $elem; 4] = std::array::from_fn(|j| {
                        let row = rows[g + j.min(m - 1)];
                        assert!(row.len() >= dim);
                        row.as_ptr()
                    });
                    // The next group's rows (this group's last where there are
                    // fewer: prefetching a line already loaded costs little).
                    let ahead: [*const i8; 4] = std::array::from_fn(|j| {
                        let r = (g + 4 + j).min(n - 1);
                        rows[r].as_ptr() as *const i8
                    });
                    let (mut a0, mut a1, mut a2, mut a3) = ($zero(), $zero(), $zero(), $zero());
                    let (mut b0, mut b1, mut b2, mut b3) = ($zero(), $zero(), $zero(), $zero());
                    let main2 = dim / (2 * LANES) * (2 * LANES);
                    // The next line of the rows ahead to prefetch, in bytes.
                    let mut pf = 0;
                    let mut d = 0;
                    while d < main2 {
                        while PREFETCH && pf < (d + 2 * LANES) * size {
                            for a in ahead {
                                _mm_prefetch::<_MM_HINT_T0>(a.add(pf));
                            }
                            pf += 64;
                        }
                        let q0 = $loadq(qp.add(d));
                        let q1 = $loadq(qp.add(d + LANES));
                        a0 = $fma(load(p[0].add(d)), q0, a0);
                        a1 = $fma(load(p[1].add(d)), q0, a1);
                        a2 = $fma(load(p[2].add(d)), q0, a2);
                        a3 = $fma(load(p[3].add(d)), q0, a3);
                        b0 = $fma(load(p[0].add(d + LANES)), q1, b0);
                        b1 = $fma(load(p[1].add(d + LANES)), q1, b1);
                        b2 = $fma(load(p[2].add(d + LANES)), q1, b2);
                        b3 = $fma(load(p[3].add(d + LANES)), q1, b3);
                        d += 2 * LANES;
                    }
                    if d < main {
                        let q0 = $loadq(qp.add(d));
                        a0 = $fma(load(p[0].add(d)), q0, a0);
                        a1 = $fma(load(p[1].add(d)), q0, a1);
                        a2 = $fma(load(p[2].add(d)), q0, a2);
                        a3 = $fma(load(p[3].add(d)), q0, a3);
                    }
                    while PREFETCH && pf < bytes {
                        for a in ahead {
                            _mm_prefetch::<_MM_HINT_T0>(a.add(pf));
                        }
                        pf += 64;
                    }
                    let sums = [$add(a0, b0), $add(a1, b1), $add(a2, b2), $add(a3, b3)];
                    for j in 0..m {
                        let mut s = $reduce(sums[j]);
                        for t in main..dim {
                            s += f32::from(*p[j].add(t)) * *qp.add(t);
                        }
                        out[g + j] = s;
                    }
                    g += 4;
                }
            }
        };
    }

    gather4_dots!(
        gather_f32_avx512,
        "avx512f",
        f32,
        16,
        _mm512_setzero_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_loadu_ps,
        hsum512,
        |p: *const f32| _mm512_loadu_ps(p)
    );
    gather4_dots!(
        gather_f16_avx512,
        "avx512f",
        f16,
        16,
        _mm512_setzero_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_loadu_ps,
        hsum512,
        |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    );
    gather4_dots!(
        gather_f32_avx2,
        "avx2,fma",
        f32,
        8,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_loadu_ps,
        hsum256,
        |p: *const f32| _mm256_loadu_ps(p)
    );
    gather4_dots!(
        gather_f16_avx2,
        "avx2,fma,f16c",
        f16,
        8,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_loadu_ps,
        hsum256,
        |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    );

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[inline(always)]
    unsafe fn hsum512(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    row_dots!(
        dots_f32_avx512,
        "avx512f",
        f32,
        16,
        _mm512_setzero_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_loadu_ps,
        hsum512,
        |p: *const f32| _mm512_loadu_ps(p)
    );
    row_dots!(
        dots_f16_avx512,
        "avx512f",
        f16,
        16,
        _mm512_setzero_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_loadu_ps,
        hsum512,
        |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    );
    row_dots!(
        dots_f32_avx2,
        "avx2,fma",
        f32,
        8,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_loadu_ps,
        hsum256,
        |p: *const f32| _mm256_loadu_ps(p)
    );
    row_dots!(
        dots_f16_avx2,
        "avx2,fma,f16c",
        f16,
        8,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_loadu_ps,
        hsum256,
        |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
        let mut x = 12345u32;
        let mut next = || {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let keys = (0..n * dim).map(|_| next()).collect();
        let q = (0..dim).map(|_| next()).collect();
        (keys, q)
    }

    #[test]
    fn simd_matches_portable() {
        for &(n, dim) in &[
            (1, 1),
            (3, 7),
            (4, 16),
            (9, 33),
            (13, 384),
            (6, 8),
            (5, 100),
            (2, 71),
        ] {
            let (keys, q) = data(n, dim);
            let keys16: Vec<f16> = keys.iter().map(|&v| f16::from_f32(v)).collect();
            let mut got = vec![0f32; n];
            let close = |want: &[f32], got: &[f32], what: &str| {
                for (a, b) in want.iter().zip(got) {
                    assert!((a - b).abs() < 1e-4, "{what} n={n} dim={dim}: {a} vs {b}");
                }
            };
            // Exact reference: f64 sums.
            let exact = |row: &dyn Fn(usize) -> f32| -> Vec<f32> {
                (0..n)
                    .map(|r| {
                        (0..dim)
                            .map(|d| row(r * dim + d) as f64 * q[d] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect()
            };
            let want32 = exact(&|i| keys[i]);
            let want16 = exact(&|i| keys16[i].to_f32());
            dots_f32_portable(&keys, dim, &q, &mut got);
            close(&want32, &got, "f32 portable");
            pick_f32()(&keys, dim, &q, &mut got);
            close(&want32, &got, "f32 picked");
            dots_f16_portable(&keys16, dim, &q, &mut got);
            close(&want16, &got, "f16 portable");
            pick_f16()(&keys16, dim, &q, &mut got);
            close(&want16, &got, "f16 picked");
            // The AVX2 kernels too, where the CPU has them (the pick prefers AVX-512).
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                unsafe { x86::dots_f32_avx2(&keys, dim, &q, &mut got) };
                close(&want32, &got, "f32 avx2");
                unsafe { x86::dots_f16_avx2(&keys16, dim, &q, &mut got) };
                close(&want16, &got, "f16 avx2");
            }
            // Gathers over the rows in reverse order.
            let rows32: Vec<&[f32]> = keys.chunks(dim).rev().collect();
            let rows16: Vec<&[f16]> = keys16.chunks(dim).rev().collect();
            let rev = |v: &[f32]| v.iter().rev().copied().collect::<Vec<_>>();
            pick_gather_f32()(&rows32, &q, &mut got);
            close(&rev(&want32), &got, "f32 gather");
            gather_f32_portable(&rows32, &q, &mut got);
            close(&rev(&want32), &got, "f32 gather portable");
            // The kernel for rows in cache gives the prefetching one's
            // results to the bit (the graph build relies on it).
            let mut cached = vec![0f32; n];
            pick_gather_f32()(&rows32, &q, &mut got);
            pick_gather_cached_f32()(&rows32, &q, &mut cached);
            assert_eq!(got, cached, "f32 gather, cached, n={n} dim={dim}");
            pick_gather_f16()(&rows16, &q, &mut got);
            close(&rev(&want16), &got, "f16 gather");
            pick_gather_cached_f16()(&rows16, &q, &mut cached);
            assert_eq!(got, cached, "f16 gather, cached, n={n} dim={dim}");
            gather_f16_portable(&rows16, &q, &mut got);
            close(&rev(&want16), &got, "f16 gather portable");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                unsafe { x86::gather_f32_avx2::<true>(&rows32, &q, &mut got) };
                close(&rev(&want32), &got, "f32 gather avx2");
                unsafe { x86::gather_f32_avx2::<false>(&rows32, &q, &mut cached) };
                assert_eq!(got, cached, "f32 gather avx2, cached, n={n} dim={dim}");
                unsafe { x86::gather_f16_avx2::<true>(&rows16, &q, &mut got) };
                close(&rev(&want16), &got, "f16 gather avx2");
                unsafe { x86::gather_f16_avx2::<false>(&rows16, &q, &mut cached) };
                assert_eq!(got, cached, "f16 gather avx2, cached, n={n} dim={dim}");
            }
        }
    }
}
