//! Per-query top-k lists kept sorted by (score descending, id ascending).

use ramem_store::memory::RowSet;

/// Id stored in an empty slot: it loses every tie, so a real entry with
/// score -inf still displaces it. Turned into -1 when results are returned.
pub(crate) const EMPTY_ID: i64 = i64::MAX;

/// `k` best (score, id) pairs for each of `q` queries, flat and row-major.
/// Slot `k - 1` of a query is its current threshold.
pub(crate) struct TopK {
    pub k: usize,
    pub scores: Vec<f32>,
    pub ids: Vec<i64>,
}

/// Strict total order used everywhere: higher score first, then smaller id.
/// NaN never compares better than anything, so NaN scores are never kept.
#[inline(always)]
pub(crate) fn better(s: f32, id: i64, than_s: f32, than_id: i64) -> bool {
    s > than_s || (s == than_s && id < than_id)
}

impl TopK {
    pub fn new(q: usize, k: usize) -> TopK {
        TopK {
            k,
            scores: vec![f32::NEG_INFINITY; q * k],
            ids: vec![EMPTY_ID; q * k],
        }
    }

    /// Offers one candidate to query `qi`; returns true if it was kept.
    #[inline]
    pub fn push(&mut self, qi: usize, s: f32, id: i64) -> bool {
        let k = self.k;
        let base = qi * k;
        let scores = &mut self.scores[base..base + k];
        let ids = &mut self.ids[base..base + k];
        if !better(s, id, scores[k - 1], ids[k - 1]) {
            return false;
        }
        let mut j = k - 1;
        while j > 0 && better(s, id, scores[j - 1], ids[j - 1]) {
            scores[j] = scores[j - 1];
            ids[j] = ids[j - 1];
            j -= 1;
        }
        scores[j] = s;
        ids[j] = id;
        true
    }

    /// Offers a row of consecutive candidates (`row[j]` has id `first_id + j`)
    /// to query `qi`, skipping id `exclude` and the ids in `skip`.
    #[inline]
    pub fn scan_row(
        &mut self,
        qi: usize,
        row: &[f32],
        first_id: i64,
        exclude: i64,
        skip: Option<&RowSet>,
    ) {
        let last = qi * self.k + self.k - 1;
        let mut thr = self.scores[last];
        // Most scores fall below the threshold: test 16 at a time with a
        // branch-free OR (vectorises) and only look closer at a hit.
        let mut base = 0usize;
        for chunk in row.chunks(16) {
            let hit = chunk.iter().fold(false, |a, &s| a | (s >= thr));
            if hit {
                for (j, &s) in chunk.iter().enumerate() {
                    if s >= thr {
                        let id = first_id + (base + j) as i64;
                        if id != exclude
                            && !skip.is_some_and(|set| set.contains(id))
                            && self.push(qi, s, id)
                        {
                            thr = self.scores[last];
                        }
                    }
                }
            }
            base += chunk.len();
        }
    }

    /// Folds another partial result (same shape) into this one.
    pub fn merge(&mut self, other: &TopK) {
        let k = self.k;
        for qi in 0..self.scores.len() / k {
            for j in 0..k {
                let id = other.ids[qi * k + j];
                if id == EMPTY_ID {
                    break;
                }
                if !self.push(qi, other.scores[qi * k + j], id) {
                    // `other` is sorted: nothing after a rejected entry fits.
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_best_with_id_tie_break() {
        let mut t = TopK::new(1, 3);
        t.scan_row(0, &[0.5, 0.9, 0.5, 0.1, 0.9, f32::NAN], 10, -1, None);
        assert_eq!(t.ids, vec![11, 14, 10]);
        assert_eq!(t.scores, vec![0.9, 0.9, 0.5]);
        // A tie with a smaller id arriving later still wins.
        t.push(0, 0.5, 3);
        assert_eq!(t.ids, vec![11, 14, 3]);
    }

    #[test]
    fn merge_is_order_independent() {
        let mut a = TopK::new(1, 2);
        a.scan_row(0, &[0.3, 0.7], 0, -1, None);
        let mut b = TopK::new(1, 2);
        b.scan_row(0, &[0.7, 0.2], 2, -1, None);
        let mut ab = TopK::new(1, 2);
        ab.merge(&a);
        ab.merge(&b);
        let mut ba = TopK::new(1, 2);
        ba.merge(&b);
        ba.merge(&a);
        assert_eq!(ab.ids, vec![1, 2]);
        assert_eq!(ab.ids, ba.ids);
    }
}
