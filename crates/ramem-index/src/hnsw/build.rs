//! Building the graph: deterministic, parallel batch insertion.
//!
//! Levels come from a hash of (seed, node id) and the insertion order from a
//! seeded shuffle, so they do not depend on threads. Nodes are inserted in
//! batches: every node of a batch searches the graph as it stood before the
//! batch (in parallel, read-only) and picks its neighbours with the usual
//! HNSW heuristic; then the batch's links are applied, the reverse links
//! grouped by target and each over-full list pruned with the same heuristic
//! (in parallel, each target on its own). Batches start at one node and grow
//! with the graph (an eighth of it, at most [`MAX_BATCH`]), so a node never
//! misses more than a small fraction of the nodes inserted before it. The
//! result is the same for any thread count.

use rayon::prelude::*;

use super::graph::{Graph, MAX_LEVEL};
use super::search::{
    greedy, score, score_cached, search_level, with_scratch, Cand, Excluded, Scratch,
};
use crate::keys::{Elem, Rows};

/// The largest batch inserted at once.
const MAX_BATCH: usize = 1024;

/// Build-time settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Neighbours per node on the upper levels (level 0 keeps twice as many).
    pub m: usize,
    /// Beam width of the search that finds a new node's neighbours.
    pub ef_construction: usize,
    /// Seed of the levels and the insertion order.
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
            seed: 0,
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Level of `node`: floor(-ln(u) / ln(m)), u uniform in (0, 1].
fn level_of(seed: u64, node: usize, m: usize) -> u8 {
    let h = splitmix(seed ^ splitmix(node as u64));
    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let l = (-u.ln() / (m as f64).ln()).floor();
    l.min(MAX_LEVEL as f64) as u8
}

fn shuffled(n: usize, seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut state = splitmix(seed ^ 0x5eed);
    for i in (1..n).rev() {
        state = splitmix(state);
        let j = (state % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The neighbours a new node picked, per level from its level down to 0.
struct Picked {
    node: u32,
    /// `per_level[l]`: neighbours on level `l`.
    per_level: Vec<Vec<u32>>,
}

/// Builds the graph over all `rows`; `progress(done)` is called after each
/// batch with the number of nodes inserted so far.
pub(crate) fn build<T: Elem>(
    rows: &Rows<'_, T>,
    params: &HnswParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Graph {
    let n = rows.len;
    let m = params.m.max(2);
    let m0 = 2 * m;
    let levels: Vec<u8> = (0..n).map(|i| level_of(params.seed, i, m)).collect();
    let mut graph = Graph::new(m, m0, levels);
    if n == 0 {
        return graph;
    }
    let order = shuffled(n, params.seed);
    graph.entry = order[0];
    graph.max_level = graph.levels[order[0] as usize];
    progress(1);
    insert(&mut graph, rows, &order[1..], params, 1, progress);
    graph
}

/// Inserts the rows `graph.len()..rows.len` into `graph` (built over the
/// rows before them with `params`), in id order; their levels are the ones
/// a full build would give them. `progress(done)` counts the new rows.
pub(crate) fn extend<T: Elem>(
    graph: &mut Graph,
    rows: &Rows<'_, T>,
    params: &HnswParams,
    progress: &(dyn Fn(usize) + Sync),
) {
    let old = graph.len();
    let n = rows.len;
    let levels: Vec<u8> = (old..n)
        .map(|i| level_of(params.seed, i, graph.m))
        .collect();
    graph.grow(&levels);
    let nodes: Vec<u32> = (old as u32..n as u32).collect();
    if old == 0 {
        if let Some(&first) = nodes.first() {
            graph.entry = first;
            graph.max_level = graph.levels[first as usize];
        }
        insert(
            graph,
            rows,
            nodes.get(1..).unwrap_or(&[]),
            params,
            0,
            &|d| progress(d + 1),
        );
        return;
    }
    insert(graph, rows, &nodes, params, 0, progress);
}

/// Inserts `nodes` (already in the graph's level table, not yet linked) in
/// batches that grow with the graph; `progress(done + inserted)` after each.
fn insert<T: Elem>(
    graph: &mut Graph,
    rows: &Rows<'_, T>,
    nodes: &[u32],
    params: &HnswParams,
    done: usize,
    progress: &(dyn Fn(usize) + Sync),
) {
    let n = rows.len;
    let m0 = graph.m0;
    let ef = params.ef_construction.max(1);
    let dim = rows.dim;
    let mut linked = graph.len() - nodes.len();
    let mut at = 0;
    while at < nodes.len() {
        let batch = (linked / 8).clamp(1, MAX_BATCH).min(nodes.len() - at);
        let chunk = &nodes[at..at + batch];
        let g = &*graph;
        let picked: Vec<Picked> = chunk
            .par_iter()
            .map_init(
                || (vec![0f32; dim], Vec::new()),
                |(wide, sims), &node| {
                    let q = T::widened(rows.row(node), wide);
                    with_scratch(n, m0, |scratch| {
                        pick_neighbours(g, rows, node, q, ef, scratch, sims)
                    })
                },
            )
            .collect();
        apply(graph, rows, &picked);
        for &node in chunk {
            let l = graph.levels[node as usize];
            if l > graph.max_level {
                graph.max_level = l;
                graph.entry = node;
            }
        }
        at += batch;
        linked += batch;
        progress(done + at);
    }
}

fn pick_neighbours<T: Elem>(
    graph: &Graph,
    rows: &Rows<'_, T>,
    node: u32,
    q: &[f32],
    ef: usize,
    scratch: &mut Scratch,
    sims: &mut Vec<f32>,
) -> Picked {
    let level = graph.levels[node as usize] as usize;
    let top = graph.max_level as usize;
    let mut entry_sim = [0f32];
    score(rows, &[graph.entry], q, &mut entry_sim);
    let mut cur = Cand {
        sim: entry_sim[0],
        id: graph.entry,
    };
    for l in (level + 1..=top).rev() {
        cur = greedy(graph, rows, q, cur, l, sims);
    }
    let mut per_level = vec![Vec::new(); level + 1];
    let mut entries = vec![cur];
    for l in (0..=level.min(top)).rev() {
        let found = search_level(graph, rows, q, &entries, ef, l, Excluded::NONE, scratch);
        per_level[l] = select(rows, &found, graph.cap(l), sims);
        entries = found;
    }
    Picked { node, per_level }
}

/// The HNSW neighbour heuristic: walks `cands` (best first) and keeps a
/// candidate only if it is more similar to the base than to every candidate
/// kept so far, up to `cap`. Spreads the links over directions instead of
/// spending them all on one tight cluster.
fn select<T: Elem>(
    rows: &Rows<'_, T>,
    cands: &[Cand],
    cap: usize,
    sims: &mut Vec<f32>,
) -> Vec<u32> {
    if cands.len() <= cap {
        return cands.iter().map(|c| c.id).collect();
    }
    let mut kept: Vec<u32> = Vec::with_capacity(cap);
    let mut wide = vec![0f32; rows.dim];
    if sims.len() < cap {
        sims.resize(cap, 0.0);
    }
    for c in cands {
        if kept.len() >= cap {
            break;
        }
        let candidate = T::widened(rows.row(c.id), &mut wide);
        // The kept rows were scored against earlier candidates: in cache.
        score_cached(rows, &kept, candidate, sims);
        if sims[..kept.len()].iter().all(|&s| s < c.sim) {
            kept.push(c.id);
        }
    }
    kept
}

/// Writes a batch's links: each new node's own lists, then the reverse links
/// (grouped by target, over-full lists pruned in parallel).
fn apply<T: Elem>(graph: &mut Graph, rows: &Rows<'_, T>, picked: &[Picked]) {
    let mut reverse: Vec<(u32, u8, u32)> = Vec::new();
    for p in picked {
        for (l, ids) in p.per_level.iter().enumerate() {
            graph.set_links(p.node, l, ids);
            reverse.extend(ids.iter().map(|&t| (t, l as u8, p.node)));
        }
    }
    reverse.sort_unstable();
    let groups: Vec<&[(u32, u8, u32)]> =
        reverse.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1).collect();
    let g = &*graph;
    let updates: Vec<(u32, usize, Vec<u32>)> = groups
        .par_iter()
        .map_init(
            || (vec![0f32; rows.dim], Vec::new(), Vec::new()),
            |(wide, sims, scratch_sims), group| {
                let (target, level) = (group[0].0, group[0].1 as usize);
                let cap = g.cap(level);
                let mut ids: Vec<u32> = g.links(target, level).to_vec();
                ids.extend(group.iter().map(|e| e.2));
                if ids.len() > cap {
                    let base = T::widened(rows.row(target), wide);
                    sims.resize(ids.len(), 0.0);
                    score(rows, &ids, base, sims);
                    let mut cands: Vec<Cand> = ids
                        .iter()
                        .zip(sims.iter())
                        .map(|(&id, &sim)| Cand { sim, id })
                        .collect();
                    cands.sort_unstable_by(|a, b| b.cmp(a));
                    ids = select(rows, &cands, cap, scratch_sims);
                }
                (target, level, ids)
            },
        )
        .collect();
    for (target, level, ids) in updates {
        graph.set_links(target, level, &ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_geometric_law() {
        let n = 100_000;
        let at_least_1 = (0..n).filter(|&i| level_of(3, i, 16) >= 1).count();
        // P(level >= 1) = 1/16.
        assert!((at_least_1 as f64 / n as f64 - 1.0 / 16.0).abs() < 0.005);
        assert_eq!(level_of(3, 17, 16), level_of(3, 17, 16));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut o = shuffled(1000, 9);
        assert_ne!(o[..10], (0..10).collect::<Vec<u32>>()[..]);
        o.sort_unstable();
        assert_eq!(o, (0..1000).collect::<Vec<u32>>());
    }
}
