//! The layered neighbour graph, stored flat for cache-friendly reads.
//!
//! Level 0 holds every node: `m0 + 1` u32 per node, a count followed by up
//! to `m0` neighbour ids, one node after another. Upper levels hold only the
//! nodes whose level reaches them: a node of level `L` owns `L` blocks of
//! `m + 1` u32 (levels 1..=L, same count-then-ids layout) in one shared
//! array, starting at `upper_start[node]` blocks; the starts follow from the
//! levels, so only the levels are stored.

/// A node's level is at most this (a level of 31 has probability
/// `m^-31`: never, in practice).
pub(crate) const MAX_LEVEL: u8 = 31;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Graph {
    /// Neighbours per node on upper levels.
    pub m: usize,
    /// Neighbours per node on level 0.
    pub m0: usize,
    pub levels: Vec<u8>,
    pub level0: Vec<u32>,
    pub upper_start: Vec<u32>,
    pub upper: Vec<u32>,
    pub entry: u32,
    pub max_level: u8,
}

impl Graph {
    /// An empty graph (no links yet) for nodes of the given levels.
    pub fn new(m: usize, m0: usize, levels: Vec<u8>) -> Graph {
        let (upper_start, blocks) = upper_starts(&levels);
        let n = levels.len();
        Graph {
            m,
            m0,
            level0: vec![0; n * (m0 + 1)],
            upper: vec![0; blocks * (m + 1)],
            upper_start,
            levels,
            entry: 0,
            max_level: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    /// Adds nodes of the given levels after the existing ones, without
    /// links yet. Their upper blocks go after all existing blocks, so the
    /// existing nodes' layout is unchanged.
    pub fn grow(&mut self, levels: &[u8]) {
        let mut blocks = self.upper.len() / (self.m + 1);
        for &l in levels {
            self.upper_start.push(blocks as u32);
            blocks += l as usize;
        }
        self.levels.extend_from_slice(levels);
        self.level0.resize(self.levels.len() * (self.m0 + 1), 0);
        self.upper.resize(blocks * (self.m + 1), 0);
    }

    /// Neighbour capacity on `level`.
    #[inline(always)]
    pub fn cap(&self, level: usize) -> usize {
        if level == 0 {
            self.m0
        } else {
            self.m
        }
    }

    #[inline(always)]
    fn block(&self, node: u32, level: usize) -> (usize, usize) {
        if level == 0 {
            let w = self.m0 + 1;
            (node as usize * w, w)
        } else {
            let w = self.m + 1;
            (
                (self.upper_start[node as usize] as usize + level - 1) * w,
                w,
            )
        }
    }

    /// The neighbours of `node` on `level` (which must not exceed its level).
    #[inline(always)]
    pub fn links(&self, node: u32, level: usize) -> &[u32] {
        let (start, _) = self.block(node, level);
        let store = if level == 0 {
            &self.level0
        } else {
            &self.upper
        };
        let count = store[start] as usize;
        &store[start + 1..start + 1 + count]
    }

    /// Hints the CPU to start loading the neighbour list of `node` on
    /// `level`, which a search is about to read.
    #[inline(always)]
    pub fn prefetch_links(&self, node: u32, level: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let (start, w) = self.block(node, level);
            let store = if level == 0 {
                &self.level0
            } else {
                &self.upper
            };
            if let Some(list) = store.get(start..start + w) {
                let p = list.as_ptr() as *const i8;
                // SAFETY: a prefetch never faults; SSE is part of x86_64.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    _mm_prefetch::<_MM_HINT_T0>(p);
                    _mm_prefetch::<_MM_HINT_T0>(p.add(64));
                    _mm_prefetch::<_MM_HINT_T0>(p.add(w * 4 - 1));
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (node, level);
    }

    /// Replaces the neighbours of `node` on `level` (at most `cap(level)`).
    pub fn set_links(&mut self, node: u32, level: usize, ids: &[u32]) {
        let (start, w) = self.block(node, level);
        debug_assert!(ids.len() < w);
        let store = if level == 0 {
            &mut self.level0
        } else {
            &mut self.upper
        };
        store[start] = ids.len() as u32;
        store[start + 1..start + 1 + ids.len()].copy_from_slice(ids);
    }

    /// Bytes the graph takes in memory (and, within a few bytes, on disk).
    pub fn bytes(&self) -> usize {
        self.levels.len() + 4 * (self.level0.len() + self.upper.len() + self.upper_start.len())
    }
}

/// Each node's first upper block, and the total number of upper blocks.
pub(crate) fn upper_starts(levels: &[u8]) -> (Vec<u32>, usize) {
    let mut starts = Vec::with_capacity(levels.len());
    let mut total = 0usize;
    for &l in levels {
        starts.push(total as u32);
        total += l as usize;
    }
    (starts, total)
}
