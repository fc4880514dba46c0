//! What the index tests share: clustered unit vectors, recall, and
//! memories built from key matrices.

#![allow(dead_code)]

use std::path::Path;

use ramem_store::memory::{FloatDtype, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch};

/// `n` unit vectors drawn around `centres` random unit centres (Gaussian
/// noise of `spread` per coordinate), then `q` more from the same law.
pub fn clustered(
    n: usize,
    q: usize,
    dim: usize,
    centres: usize,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (a, b) = (uniform(), uniform());
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    };
    let unit = |v: &mut [f32]| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    };
    let mut c = vec![0f32; centres * dim];
    for row in c.chunks_mut(dim) {
        row.iter_mut().for_each(|x| *x = normal());
        unit(row);
    }
    let spread = 0.6 / (dim as f32).sqrt();
    let mut points = vec![0f32; (n + q) * dim];
    for (i, row) in points.chunks_mut(dim).enumerate() {
        let centre = &c[(i * 7919 % centres) * dim..][..dim];
        for (x, m) in row.iter_mut().zip(centre) {
            *x = m + spread * normal();
        }
        unit(row);
    }
    let queries = points.split_off(n * dim);
    (points, queries)
}

pub fn recall(got: &[i64], want: &[i64], k: usize) -> f64 {
    let mut hits = 0;
    for (g, w) in got.chunks(k).zip(want.chunks(k)) {
        hits += g.iter().filter(|id| **id >= 0 && w.contains(id)).count();
    }
    hits as f64 / want.iter().filter(|&&id| id >= 0).count() as f64
}

pub const DIM: usize = 48;

/// A memory of f16 (or f32) keys in shards of `shard` rows.
pub fn memory_of(dir: &Path, keys: &[f32], dtype: FloatDtype, shard: usize) {
    let spec = MemorySpec::new("test", DIM, dtype, false);
    let mut w = MemoryWriter::create(dir, spec).unwrap();
    append(&mut w, keys, shard);
}

pub fn append(w: &mut MemoryWriter, keys: &[f32], shard: usize) {
    for chunk in keys.chunks(shard * DIM) {
        let meta = vec![MetadataEntry::default(); chunk.len() / DIM];
        w.append_shard(ShardBatch {
            keys: chunk,
            image_values: None,
            text_values: None,
            metadata: &meta,
        })
        .unwrap();
    }
}
