//! The int8 score kernel: approximate scores of a tile of queries against
//! two panels of 16 quantised keys. AVX-512 VNNI (`vpdpbusd`: unsigned
//! query bytes times signed key bytes, four products summed into each
//! 32-bit lane) where the CPU has it, else AVX2 (`vpmaddubsw` with the
//! query's sign moved onto the key, see `tile_avx2`), else a portable loop;
//! all three compute the same integers.
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

pub(crate) fn pick() -> TileKernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
        {
            return |q, p, d, sc, su, t, o| unsafe { x86::tile_vnni(q, p, d, sc, su, t, o) };
        }
        if std::is_x86_feature_detected!("avx2") {
            return |q, p, d, sc, su, t, o| unsafe { x86::tile_avx2(q, p, d, sc, su, t, o) };
        }
    }
    tile_portable
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
    /// product that sums into 32 bits without saturating: `vpmaddubsw`
    /// multiplies unsigned by signed bytes and adds pairs into 16 bits,
    /// which 255 x 127 x 2 overflows. So the query byte is made signed
    /// again (code - 128, in -128..=127), its sign moved onto the key byte
    /// (`vpsignb`) and its magnitude (at most 128) multiplied: a pair sums
    /// to at most 2 x 128 x 127 = 32,512. `vpmaddwd` by ones widens the
    /// pairs into the 32-bit lanes, one row per lane; the sum is then
    /// `dot(code, key)` itself, without the `128 * sum` offset. One query
    /// at a time: its 4 accumulators, the group's 4 key registers and the
    /// temporaries fit the 16 registers.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2(
        queries: &[u8],
        panels: &[u8],
        padded_dim: usize,
        scales: &[f32],
        _sums: &[i32],
        thresholds: &[f32; TILE_QUERIES],
        out: &mut [f32; TILE_QUERIES * TILE_ROWS],
    ) -> [u32; TILE_QUERIES] {
        let panel_bytes = PANEL_ROWS * padded_dim;
        assert!(queries.len() >= TILE_QUERIES * padded_dim);
        assert!(panels.len() >= 2 * panel_bytes);
        assert!(scales.len() >= TILE_ROWS);
        let groups = padded_dim / 4;
        let p0 = panels.as_ptr();
        let p1 = p0.add(panel_bytes);
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(-128);
        let o = out.as_mut_ptr();
        let mut hits = [0u32; TILE_QUERIES];
        for (i, hit) in hits.iter_mut().enumerate() {
            // Padding: a single query would otherwise cost a whole tile.
            if thresholds[i] == f32::INFINITY {
                continue;
            }
            let q = queries.as_ptr().add(i * padded_dim);
            let mut acc = [_mm256_setzero_si256(); 4];
            for g in 0..groups {
                let keys = [
                    _mm256_loadu_si256(p0.add(g * 64) as *const __m256i),
                    _mm256_loadu_si256(p0.add(g * 64 + 32) as *const __m256i),
                    _mm256_loadu_si256(p1.add(g * 64) as *const __m256i),
                    _mm256_loadu_si256(p1.add(g * 64 + 32) as *const __m256i),
                ];
                let word = (q.add(g * 4) as *const i32).read_unaligned();
                let signed = _mm256_xor_si256(_mm256_set1_epi32(word), flip);
                let magnitude = _mm256_abs_epi8(signed);
                for (a, k) in acc.iter_mut().zip(keys) {
                    let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(k, signed));
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
                }
            }
            let threshold = _mm256_set1_ps(thresholds[i]);
            for (h, a) in acc.iter().enumerate() {
                let s = _mm256_loadu_ps(scales.as_ptr().add(h * 8));
                let score = _mm256_mul_ps(_mm256_cvtepi32_ps(*a), s);
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

    /// The SIMD kernel computes the portable kernel's integers exactly.
    #[test]
    fn simd_matches_portable() {
        let padded_dim = 40;
        let mut state = 7u64;
        let mut byte = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        };
        let queries: Vec<u8> = (0..TILE_QUERIES * padded_dim).map(|_| byte()).collect();
        let panels: Vec<u8> = (0..2 * PANEL_ROWS * padded_dim)
            .map(|_| byte().clamp(0, 254).wrapping_sub(127))
            .collect();
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
        let mut got = [0f32; TILE_QUERIES * TILE_ROWS];
        let hits = pick()(
            &queries,
            &panels,
            padded_dim,
            &scales,
            &sums,
            &thresholds,
            &mut got,
        );
        assert_eq!(got, want);
        assert_eq!(hits, want_hits);
        // The AVX2 kernel too, where the CPU has it (the pick prefers VNNI).
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
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
        // Scores straddle the threshold: some rows are hits, some not.
        assert!(hits.iter().any(|&h| h != 0 && h != u32::MAX));
    }
}
