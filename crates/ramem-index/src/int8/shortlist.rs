//! Per-query shortlists: the `cap` best candidates of each query by
//! approximate score, kept as binary heaps with the worst candidate at the
//! root, so that a candidate costs O(log cap) however long the list. The
//! order is exact search's (higher score first, then smaller id), so the
//! set kept does not depend on the order candidates arrive in.

use crate::topk::better;

pub(crate) struct Shortlists {
    cap: usize,
    lens: Vec<usize>,
    scores: Vec<f32>,
    ids: Vec<i64>,
}

impl Shortlists {
    pub fn new(queries: usize, cap: usize) -> Shortlists {
        Shortlists {
            cap,
            lens: vec![0; queries],
            scores: vec![f32::NEG_INFINITY; queries * cap],
            ids: vec![i64::MAX; queries * cap],
        }
    }

    /// The score a candidate of query `qi` must reach to be considered
    /// (at it, ties are settled by id).
    #[inline]
    pub fn threshold(&self, qi: usize) -> f32 {
        if self.lens[qi] < self.cap {
            f32::NEG_INFINITY
        } else {
            self.scores[qi * self.cap]
        }
    }

    /// Offers one candidate to query `qi`.
    #[inline]
    pub fn push(&mut self, qi: usize, score: f32, id: i64) {
        if score.is_nan() {
            return;
        }
        let cap = self.cap;
        let scores = &mut self.scores[qi * cap..(qi + 1) * cap];
        let ids = &mut self.ids[qi * cap..(qi + 1) * cap];
        let len = &mut self.lens[qi];
        // `worse(a, b)`: a belongs nearer the root than b.
        let worse = |s: &[f32], i: &[i64], a: usize, b: usize| better(s[b], i[b], s[a], i[a]);
        if *len < cap {
            let mut at = *len;
            scores[at] = score;
            ids[at] = id;
            *len += 1;
            while at > 0 {
                let parent = (at - 1) / 2;
                if !worse(scores, ids, at, parent) {
                    break;
                }
                scores.swap(at, parent);
                ids.swap(at, parent);
                at = parent;
            }
            return;
        }
        if !better(score, id, scores[0], ids[0]) {
            return;
        }
        scores[0] = score;
        ids[0] = id;
        let mut at = 0;
        loop {
            let (l, r) = (2 * at + 1, 2 * at + 2);
            let mut worst = at;
            if l < cap && worse(scores, ids, l, worst) {
                worst = l;
            }
            if r < cap && worse(scores, ids, r, worst) {
                worst = r;
            }
            if worst == at {
                break;
            }
            scores.swap(at, worst);
            ids.swap(at, worst);
            at = worst;
        }
    }

    /// Folds another set of shortlists (same shape) into these.
    pub fn merge(&mut self, other: &Shortlists) {
        for qi in 0..self.lens.len() {
            for j in 0..other.lens[qi] {
                let at = qi * other.cap + j;
                self.push(qi, other.scores[at], other.ids[at]);
            }
        }
    }

    /// The candidates of query `qi`, in no particular order.
    pub fn ids(&self, qi: usize) -> &[i64] {
        &self.ids[qi * self.cap..qi * self.cap + self.lens[qi]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_whatever_the_order() {
        let candidates: Vec<(f32, i64)> = (0..200)
            .map(|i| (((i * 37) % 101) as f32 / 10.0, i as i64))
            .collect();
        let mut want: Vec<(f32, i64)> = candidates.clone();
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let want: Vec<i64> = want[..15].iter().map(|c| c.1).collect();
        for split in [1, 7, 100] {
            let mut a = Shortlists::new(1, 15);
            let mut b = Shortlists::new(1, 15);
            for (n, &(s, id)) in candidates.iter().rev().enumerate() {
                if n % split == 0 {
                    a.push(0, s, id);
                } else {
                    b.push(0, s, id);
                }
            }
            a.merge(&b);
            let mut got = a.ids(0).to_vec();
            got.sort_by(|x, y| {
                let (sx, sy) = (candidates[*x as usize].0, candidates[*y as usize].0);
                sy.total_cmp(&sx).then(x.cmp(y))
            });
            assert_eq!(got, want, "split {split}");
        }
        let mut short = Shortlists::new(2, 4);
        short.push(1, 0.5, 3);
        short.push(1, f32::NAN, 4);
        assert_eq!(short.ids(1), &[3]);
        assert!(short.ids(0).is_empty());
        assert_eq!(short.threshold(1), f32::NEG_INFINITY);
    }
}
