//! The int8 score kernel: approximate scores of a tile of queries against
//! two panels of 16 quantised keys. AVX-512 VNNI (`vpdpbusd`: unsigned
//! query bytes times signed key bytes, four products summed into each
//! 32-bit lane) where the CPU has it, else AVX2 (`vpmaddubsw` on queries
//! quantised to 6 bits, two groups summed in 16 bits, see `tile_avx2`),
//! else a portable loop; all three compute the same integers for the same
//! query bytes.
//!
//! Layout (see `mod.rs`): a panel holds 16 rows; for every group of 4
//! dimensions it stores 16 x 4 bytes (row by row), so one 64-byte load
//! gives a group of all 16 rows: exactly one `vpdpbusd` operand. A query is
//! stored as `padded_dim` unsigned bytes (its signed code plus 128), and the
//! offset is taken back out with each row's code sum.

/// Queries per tile.
pub(crate) const TILE_QUERIES: usize = 12;
/// Rows per panel.
pub(crate) const PANEL_ROWS: usize = 16;
/// Rows per kernel call: two panels.
pub(crate) const TILE_ROWS: usize = 2 * PANEL_ROWS;

/// `out[i * TILE_ROWS + r] = scale[r] * (dot(query_i, row_r) - 128 * sum[r])`
/// for the `TILE_QUERIES` queries in `queries` (each `padded_dim` bytes)
/// and the two panels in `panels` (each `PANEL_ROWS * padded_dim` bytes);
/// `scales` and `sums` hold the 32 rows' entries. Returns, per query, the
/// rows whose score reaches the query's threshold (bit `r` of entry `i`),
/// so that the caller looks only at those. A query whose threshold is
/// +inf (a tile's padding) can enter no list: a kernel may skip it, leaving
/// its scores as they were (its hits are 0 either way).
pub(crate) type TileKernel = fn(
    queries: &[u8],
    panels: &[u8],
    padded_dim: usize,
    scales: &[f32],
    sums: &[i32],
    thresholds: &[f32; TILE_QUERIES],
    out: &mut [f32; TILE_QUERIES * TILE_ROWS],
) -> [u32; TILE_QUERIES];

/// A tile kernel and the query codes it takes: queries are quantised to
/// codes in `-max_code..=max_code` (stored plus 128, as keys' codes are
/// not). Every kernel computes the same integers for the same bytes; the
/// AVX2 one needs the narrower codes to sum in 16 bits (see `tile_avx2`).
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    pub tile: TileKernel,
    pub max_code: i32,
}

/// The widest query code: 8 bits.
pub(crate) const FULL_CODE: i32 = 127;
/// The AVX2 kernel's widest query code: 6 bits (65 levels).
pub(crate) const AVX2_CODE: i32 = 32;
const _: () = assert!(
    AVX2_CODE == 1 << 5,
    "tile_avx2 takes the offset out as sum << 5"
);

pub(crate) fn pick() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
        {
            return Kernel {
                tile: |q, p, d, sc, su, t, o| unsafe { x86::tile_vnni(q, p, d, sc, su, t, o) },
                max_code: FULL_CODE,
            };
        }
        if std::is_x86_feature_detected!("avx2") {
            return Kernel {
                tile: |q, p, d, sc, su, t, o| unsafe { x86::tile_avx2(q, p, d, sc, su, t, o) },
                max_code: AVX2_CODE,
            };
        }
    }
    Kernel {
        tile: tile_portable,
        max_code: FULL_CODE,
    }
}

pub(crate) fn tile_portable(
    queries: &[u8],
    panels: &[u8],
    padded_dim: usize,
    scales: &[f32],
    sums: &[i32],
    thresholds: &[f32; TILE_QUERIES],
    out: &mut [f32; TILE_QUERIES * TILE_ROWS],
) -> [u32; TILE_QUERIES] {
    let panel_bytes = PANEL_ROWS * padded_dim;
    let mut hits = [0u32; TILE_QUERIES];
    for i in 0..TILE_QUERIES {
        let q = &queries[i * padded_dim..(i + 1) * padded_dim];
        for r in 0..TILE_ROWS {
            let panel = &panels[(r / PANEL_ROWS) * panel_bytes..][..panel_bytes];
            let lane = r % PANEL_ROWS;
            let mut acc = 0i32;
            for (g, q4) in q.chunks_exact(4).enumerate() {
                let row4 = &panel[g * 4 * PANEL_ROWS + lane * 4..][..4];
                for (&a, &b) in q4.iter().zip(row4) {
                    acc += a as i32 * b as i8 as i32;
                }
            }
            let score = scales[r] * (acc - 128 * sums[r]) as f32;
            out[i * TILE_ROWS + r] = score;
            if score >= thresholds[i] {
                hits[i] |= 1 << r;
            }
        }
    }
    hits
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PANEL_ROWS, TILE_QUERIES, TILE_ROWS};
    use std::arch::x86_64::*;

    /// The portable kernel's result, with 24 accumulators in registers:
    /// per group of 4 dimensions, two 64-byte loads (the two panels) and
    /// one broadcast and two `vpdpbusd` per query.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_vnni(
        queries: &[u8],
        panels: &[u8],
        padded_dim: usize,
        scales: &[f32],
        sums: &[i32],
        thresholds: &[f32; TILE_QUERIES],
        out: &mut [f32; TILE_QUERIES * TILE_ROWS],
    ) -> [u32; TILE_QUERIES] {
        let panel_bytes = PANEL_ROWS * padded_dim;
        assert!(queries.len() >= TILE_QUERIES * padded_dim);
        assert!(panels.len() >= 2 * panel_bytes);
        assert!(scales.len() >= TILE_ROWS && sums.len() >= TILE_ROWS);
        let groups = padded_dim / 4;
        let p0 = panels.as_ptr();
        let p1 = p0.add(panel_bytes);
        let q = queries.as_ptr();
        let mut acc = [[_mm512_setzero_si512(); 2]; TILE_QUERIES];
        for g in 0..groups {
            let k0 = _mm512_loadu_si512(p0.add(g * 64) as *const _);
            let k1 = _mm512_loadu_si512(p1.add(g * 64) as *const _);
            for (i, a) in acc.iter_mut().enumerate() {
                let word = (q.add(i * padded_dim + g * 4) as *const i32).read_unaligned();
                let b = _mm512_set1_epi32(word);
                a[0] = _mm512_dpbusd_epi32(a[0], b, k0);
                a[1] = _mm512_dpbusd_epi32(a[1], b, k1);
            }
        }
        let o = out.as_mut_ptr();
        let mut hits = [0u32; TILE_QUERIES];
        for h in 0..2 {
            let s = _mm512_loadu_ps(scales.as_ptr().add(h * PANEL_ROWS));
            let offset = _mm512_slli_epi32::<7>(_mm512_loadu_si512(
                sums.as_ptr().add(h * PANEL_ROWS) as *const _,
            ));
            for (i, a) in acc.iter().enumerate() {
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[h], offset));
                let score = _mm512_mul_ps(v, s);
                _mm512_storeu_ps(o.add(i * TILE_ROWS + h * PANEL_ROWS), score);
                let hit = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(score, _mm512_set1_ps(thresholds[i]));
                hits[i] |= (hit as u32) << (h * PANEL_ROWS);
            }
        }
        hits
    }

    /// The portable kernel's result with AVX2, which has no byte dot
    /// product that sums into 32 bits: `vpmaddubsw` multiplies unsigned by
    /// signed bytes and adds each pair into 16 bits, which 255 x 127 x 2
    /// overflows. Queries come with codes in -32..=32 ([`AVX2_CODE`]), so
    /// the kernel shifts each query byte from `code + 128` down to
    /// `code + 32`, in 0..=64: a pair then sums to at most 2 x 64 x 127 =
    /// 16,256, and two groups add up in the 16-bit lanes (at most 32,512)
    /// before `vpmaddwd` by ones widens them into the 32-bit lanes, one row
    /// per lane. The `32 * sum` the shift adds is taken out at the end.
    ///
    /// Without VNNI the byte multiplies are the bound: a Zen 3 core runs two
    /// a cycle on the same two pipes as `vpsignb`, so the kernel spends
    /// them on products only: 6 per group of 4 dimensions and 32 rows (4
    /// `vpmaddubsw`, and 2 `vpmaddwd` for every two groups). One query at a
    /// time: its 4 accumulators, 4 16-bit sums and the temporaries fit the
    /// 16 registers.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2(
        queries: &[u8],
        panels: &[u8],
        padded_dim: usize,
        scales: &[f32],
        sums: &[i32],
        thresholds: &[f32; TILE_QUERIES],
        out: &mut [f32; TILE_QUERIES * TILE_ROWS],
    ) -> [u32; TILE_QUERIES] {
        let panel_bytes = PANEL_ROWS * padded_dim;
        assert!(queries.len() >= TILE_QUERIES * padded_dim);
        assert!(panels.len() >= 2 * panel_bytes);
        assert!(scales.len() >= TILE_ROWS && sums.len() >= TILE_ROWS);
        let groups = padded_dim / 4;
        let p0 = panels.as_ptr();
        let p1 = p0.add(panel_bytes);
        let ones = _mm256_set1_epi16(1);
        let shift = _mm256_set1_epi8((128 - super::AVX2_CODE) as i8);
        let o = out.as_mut_ptr();
        let mut hits = [0u32; TILE_QUERIES];
        for (i, hit) in hits.iter_mut().enumerate() {
            // Padding: a single query would otherwise cost a whole tile.
            if thresholds[i] == f32::INFINITY {
                continue;
            }
            let q = queries.as_ptr().add(i * padded_dim);
            // Adds group `g`'s pair sums into the 16-bit sums.
            let group = |g: usize, sums16: &mut [__m256i; 4]| {
                let word = (q.add(g * 4) as *const i32).read_unaligned();
                let unsigned = _mm256_sub_epi8(_mm256_set1_epi32(word), shift);
                let keys = [
                    p0.add(g * 64),
                    p0.add(g * 64 + 32),
                    p1.add(g * 64),
                    p1.add(g * 64 + 32),
                ];
                for (s, k) in sums16.iter_mut().zip(keys) {
                    let k = _mm256_loadu_si256(k as *const __m256i);
                    *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(unsigned, k));
                }
            };
            let mut acc = [_mm256_setzero_si256(); 4];
            for first in (0..groups).step_by(2) {
                let mut sums16 = [_mm256_setzero_si256(); 4];
                group(first, &mut sums16);
                if first + 1 < groups {
                    group(first + 1, &mut sums16);
                }
                for (a, s) in acc.iter_mut().zip(sums16) {
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(s, ones));
                }
            }
            let threshold = _mm256_set1_ps(thresholds[i]);
            for (h, a) in acc.iter().enumerate() {
                let offset = _mm256_slli_epi32::<5>(_mm256_loadu_si256(
                    sums.as_ptr().add(h * 8) as *const __m256i
                ));
                let s = _mm256_loadu_ps(scales.as_ptr().add(h * 8));
                let score = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(*a, offset)), s);
                _mm256_storeu_ps(o.add(i * TILE_ROWS + h * 8), score);
                let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(score, threshold));
                *hit |= (mask as u32) << (h * 8);
            }
        }
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD kernels compute the portable kernel's integers exactly, on
    /// the query codes each takes, the extremes included (10 groups: two
    /// whole runs of 4 for the AVX2 kernel's 16-bit sums and a part run).
    #[test]
    fn simd_matches_portable() {
        for max_code in [FULL_CODE, AVX2_CODE] {
            check_kernels(max_code);
        }
    }

    /// Every kernel that takes queries with codes in `-max_code..=max_code`.
    fn check_kernels(max_code: i32) {
        let padded_dim = 40;
        let mut state = 7u64;
        let mut byte = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        };
        let mut queries: Vec<u8> = (0..TILE_QUERIES * padded_dim)
            .map(|_| (128 - max_code + (byte() as i32 % (2 * max_code + 1))) as u8)
            .collect();
        // Queries 0 and 1 at the extreme codes, against rows 0 and 1 of each
        // panel at the extreme keys: the largest sums a kernel must hold.
        queries[..padded_dim].fill((128 + max_code) as u8);
        queries[padded_dim..2 * padded_dim].fill((128 - max_code) as u8);
        let mut panels: Vec<u8> = (0..2 * PANEL_ROWS * padded_dim)
            .map(|_| byte().clamp(0, 254).wrapping_sub(127))
            .collect();
        for panel in panels.chunks_mut(PANEL_ROWS * padded_dim) {
            for group in panel.chunks_mut(4 * PANEL_ROWS) {
                group[..4].fill(127);
                group[4..8].fill(-127i8 as u8);
            }
        }
        let scales: Vec<f32> = (0..TILE_ROWS).map(|r| 0.5 + r as f32 / 64.0).collect();
        // Each row's code sum, as the quantiser stores it.
        let sums: Vec<i32> = (0..TILE_ROWS)
            .map(|r| {
                let panel = &panels[(r / PANEL_ROWS) * PANEL_ROWS * padded_dim..];
                (0..padded_dim / 4)
                    .flat_map(|g| &panel[g * 4 * PANEL_ROWS + (r % PANEL_ROWS) * 4..][..4])
                    .map(|&b| b as i8 as i32)
                    .sum()
            })
            .collect();
        let mut want = [0f32; TILE_QUERIES * TILE_ROWS];
        let thresholds = [0f32; TILE_QUERIES];
        let want_hits = tile_portable(
            &queries,
            &panels,
            padded_dim,
            &scales,
            &sums,
            &thresholds,
            &mut want,
        );
        // Scores straddle the threshold: some rows are hits, some not.
        assert!(want_hits.iter().any(|&h| h != 0 && h != u32::MAX));
        let mut got = [0f32; TILE_QUERIES * TILE_ROWS];
        // The kernel this CPU runs, on codes it takes.
        if pick().max_code >= max_code {
            let hits = (pick().tile)(
                &queries,
                &panels,
                padded_dim,
                &scales,
                &sums,
                &thresholds,
                &mut got,
            );
            assert_eq!(got, want, "codes to {max_code}");
            assert_eq!(hits, want_hits, "codes to {max_code}");
        }
        // The AVX2 kernel too, where the CPU has it (the pick prefers VNNI),
        // on its own codes.
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && max_code <= AVX2_CODE {
            got = [0f32; TILE_QUERIES * TILE_ROWS];
            let hits = unsafe {
                x86::tile_avx2(
                    &queries,
                    &panels,
                    padded_dim,
                    &scales,
                    &sums,
                    &thresholds,
                    &mut got,
                )
            };
            assert_eq!(got, want, "avx2");
            assert_eq!(hits, want_hits, "avx2");
            // Padding queries (threshold +inf) are skipped: no hits, and
            // the real queries' scores are unchanged.
            let mut padded_thresholds = thresholds;
            padded_thresholds[5..].fill(f32::INFINITY);
            got = [0f32; TILE_QUERIES * TILE_ROWS];
            let hits = unsafe {
                x86::tile_avx2(
                    &queries,
                    &panels,
                    padded_dim,
                    &scales,
                    &sums,
                    &padded_thresholds,
                    &mut got,
                )
            };
            assert_eq!(hits[..5], want_hits[..5]);
            assert!(hits[5..].iter().all(|&h| h == 0));
            assert_eq!(got[..5 * TILE_ROWS], want[..5 * TILE_ROWS]);
        }
    }
}
