//! Graph search: greedy descent through the upper levels and the
//! best-first beam search (`ef` wide) of one level, shared by queries and
//! by insertion during the build.

use ramem_store::memory::RowSet;

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::mem::MaybeUninit;

use super::graph::Graph;
use crate::keys::{Elem, Rows};

/// A scored node. Orders by similarity, then by smaller id (so the
/// greatest is the best, and ties resolve the same way on every run).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub sim: f32,
    pub id: u32,
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sim
            .total_cmp(&other.sim)
            .then_with(|| other.id.cmp(&self.id))
    }
}

/// The worst-first order of the result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Worst(std::cmp::Reverse<Cand>);

/// Visited marks that are cleared in O(1): a node is visited when its mark
/// equals the current generation. One byte per node: a search's marks are
/// read at random, and at 200k nodes a byte table (200 KB) stays in L2
/// where a u32 table (800 KB) spills. After 255 generations the table is
/// zeroed once (n bytes per 255 searches).
pub(crate) struct Visited {
    marks: Vec<u8>,
    generation: u8,
}

impl Visited {
    pub fn new(n: usize) -> Visited {
        Visited {
            marks: vec![0; n],
            generation: 0,
        }
    }

    pub fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `id`; true if it was not marked yet.
    #[inline(always)]
    pub fn insert(&mut self, id: u32) -> bool {
        let m = &mut self.marks[id as usize];
        if *m == self.generation {
            false
        } else {
            *m = self.generation;
            true
        }
    }
}

/// Per-thread working memory, reused across searches.
pub(crate) struct Scratch {
    pub visited: Visited,
    candidates: BinaryHeap<Cand>,
    results: BinaryHeap<Worst>,
    ids: Vec<u32>,
    sims: Vec<f32>,
}

impl Scratch {
    pub fn new(n: usize, m0: usize) -> Scratch {
        Scratch {
            visited: Visited::new(n),
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
            ids: Vec::with_capacity(m0),
            sims: vec![0.0; m0.max(1)],
        }
    }
}

thread_local! {
    /// Each thread's scratch, kept between calls: allocating and zeroing the
    /// visited marks (a byte per node) for every batch of work would cost
    /// more than small searches.
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's scratch, sized for `n` nodes.
pub(crate) fn with_scratch<R>(n: usize, m0: usize, f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        let scratch = match slot.take() {
            Some(s) if s.visited.marks.len() >= n => slot.insert(s),
            _ => slot.insert(Scratch::new(n, m0)),
        };
        f(scratch)
    })
}

/// Similarities of `q` to the rows `ids` (written to `out[..ids.len()]`).
#[inline]
pub(crate) fn score<T: Elem>(rows: &Rows<'_, T>, ids: &[u32], q: &[f32], out: &mut [f32]) {
    score_with(rows.gather, rows, ids, q, out)
}

/// [`score`] for rows already in cache: the same similarities, without
/// prefetching.
#[inline]
pub(crate) fn score_cached<T: Elem>(rows: &Rows<'_, T>, ids: &[u32], q: &[f32], out: &mut [f32]) {
    score_with(rows.gather_cached, rows, ids, q, out)
}

#[inline(always)]
fn score_with<T: Elem>(
    kernel: fn(&[&[T]], &[f32], &mut [f32]),
    rows: &Rows<'_, T>,
    ids: &[u32],
    q: &[f32],
    out: &mut [f32],
) {
    // Up to 64 rows per kernel call, addressed without allocating (and
    // without clearing 64 slots for a call that scores a few rows).
    let mut slots = [const { MaybeUninit::<&[T]>::uninit() }; 64];
    for (chunk, o) in ids.chunks(64).zip(out.chunks_mut(64)) {
        for (slot, &id) in slots.iter_mut().zip(chunk) {
            slot.write(rows.row(id));
        }
        // SAFETY: the first `chunk.len()` slots were just written, and
        // `MaybeUninit<&[T]>` has the layout of `&[T]`.
        let slices =
            unsafe { std::slice::from_raw_parts(slots.as_ptr() as *const &[T], chunk.len()) };
        kernel(slices, q, o);
    }
}

/// Greedy walk on `level` from `start`: moves to the best neighbour while
/// that improves the similarity.
pub(crate) fn greedy<T: Elem>(
    graph: &Graph,
    rows: &Rows<'_, T>,
    q: &[f32],
    mut cur: Cand,
    level: usize,
    sims: &mut Vec<f32>,
) -> Cand {
    loop {
        let links = graph.links(cur.id, level);
        if sims.len() < links.len() {
            sims.resize(links.len(), 0.0);
        }
        score(rows, links, q, sims);
        let mut best = cur;
        for (&id, &sim) in links.iter().zip(sims.iter()) {
            let c = Cand { sim, id };
            if c > best {
                best = c;
            }
        }
        if best.id == cur.id {
            return cur;
        }
        cur = best;
    }
}

/// Nodes a search walks through but never returns: one node (a query's
/// own entry, or `u32::MAX` for none) and a set (a memory's deleted entries).
#[derive(Clone, Copy)]
pub(crate) struct Excluded<'a> {
    pub one: u32,
    pub set: Option<&'a RowSet>,
}

impl Excluded<'_> {
    pub(crate) const NONE: Excluded<'static> = Excluded {
        one: u32::MAX,
        set: None,
    };

    #[inline(always)]
    fn contains(&self, id: u32) -> bool {
        id == self.one || self.set.is_some_and(|s| s.contains(id as i64))
    }
}

/// Best-first search of `level` from `entries` keeping the `ef` best nodes
/// seen; returns them best first. `exclude`d nodes are walked through but
/// never returned.
#[allow(clippy::too_many_arguments)]
pub(crate) fn search_level<T: Elem>(
    graph: &Graph,
    rows: &Rows<'_, T>,
    q: &[f32],
    entries: &[Cand],
    ef: usize,
    level: usize,
    exclude: Excluded<'_>,
    s: &mut Scratch,
) -> Vec<Cand> {
    s.visited.clear();
    s.candidates.clear();
    s.results.clear();
    for &e in entries {
        if s.visited.insert(e.id) {
            s.candidates.push(e);
            if !exclude.contains(e.id) {
                s.results.push(Worst(std::cmp::Reverse(e)));
                if s.results.len() > ef {
                    s.results.pop();
                }
            }
        }
    }
    let mut worst = worst_sim(&s.results, ef);
    while let Some(c) = s.candidates.pop() {
        if c.sim < worst {
            break;
        }
        let links = graph.links(c.id, level);
        s.ids.clear();
        for &nb in links {
            if s.visited.insert(nb) {
                s.ids.push(nb);
            }
        }
        if let Some(next) = s.candidates.peek() {
            graph.prefetch_links(next.id, level);
        }
        if s.ids.is_empty() {
            continue;
        }
        if s.sims.len() < s.ids.len() {
            s.sims.resize(s.ids.len(), 0.0);
        }
        score(rows, &s.ids, q, &mut s.sims);
        for (&id, &sim) in s.ids.iter().zip(s.sims.iter()) {
            if sim > worst || s.results.len() < ef {
                let cand = Cand { sim, id };
                s.candidates.push(cand);
                if !exclude.contains(id) {
                    s.results.push(Worst(std::cmp::Reverse(cand)));
                    if s.results.len() > ef {
                        s.results.pop();
                    }
                    worst = worst_sim(&s.results, ef);
                }
            }
        }
    }
    let mut out: Vec<Cand> = s.results.drain().map(|w| (w.0).0).collect();
    out.sort_unstable_by(|a, b| b.cmp(a));
    out
}

/// The bar a new node must pass: the worst kept similarity once `ef` are
/// kept, else -inf (anything passes).
#[inline(always)]
fn worst_sim(results: &BinaryHeap<Worst>, ef: usize) -> f32 {
    if results.len() >= ef {
        results.peek().map_or(f32::NEG_INFINITY, |w| (w.0).0.sim)
    } else {
        f32::NEG_INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::Visited;

    #[test]
    fn visited_marks_survive_the_generation_wrap() {
        let mut v = Visited::new(3);
        for round in 0..600 {
            v.clear();
            assert!(v.insert(1), "round {round}: a cleared mark is unvisited");
            assert!(!v.insert(1), "round {round}: a set mark is visited");
            if round % 2 == 0 {
                assert!(v.insert(2));
            } else {
                // Marked two rounds ago (or before the last wrap): unvisited now.
                assert!(v.insert(2));
                assert!(!v.insert(2));
            }
        }
    }
}
