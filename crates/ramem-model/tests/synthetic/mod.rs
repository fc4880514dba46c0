//! The small synthetic problem the model tests train on: CLASSES clusters
//! whose queries are too noisy to classify alone, and a memory bank whose
//! rows sit close to the class centres. Shared by tests/train.rs and
//! tests/cuda.rs.

use ramem_model::rng::SplitMix64;
use ramem_model::{NeighbourBank, SampleSet};

pub const DIM: usize = 16;
pub const CLASSES: usize = 4;

pub fn gaussian(rng: &mut SplitMix64) -> f32 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Class centres are the first CLASSES axes; memory entries lie close to
/// the centres.
pub fn bank(seed: u64) -> NeighbourBank {
    let mut rng = SplitMix64::new(seed);
    let mut keys = Vec::new();
    for c in 0..CLASSES {
        for _ in 0..50 {
            for d in 0..DIM {
                let centre = if d == c { 1.0 } else { 0.0 };
                keys.push(centre + 0.15 * gaussian(&mut rng));
            }
        }
    }
    let values = keys.clone();
    NeighbourBank::from_matrices(keys, DIM, values, DIM).unwrap()
}

/// `n` queries (centre + strong noise) with their k nearest bank rows.
pub fn samples(bank: &NeighbourBank, n: usize, k: usize, noise: f32, seed: u64) -> SampleSet {
    let mut rng = SplitMix64::new(seed);
    let mut queries = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = i % CLASSES;
        let row: Vec<f32> = (0..DIM)
            .map(|d| (if d == c { 1.0 } else { 0.0 }) + noise * gaussian(&mut rng))
            .collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        queries.extend(row.iter().map(|v| v / norm));
        labels.push(c);
    }
    let keys = ramem_index::Keys::f32(&bank.keys, DIM).unwrap();
    let params = ramem_index::SearchParams::new(k);
    let found = ramem_index::search_exact(&keys, &queries, DIM, &params).unwrap();
    SampleSet::new("synthetic", queries, DIM, labels, found.ids, k).unwrap()
}
