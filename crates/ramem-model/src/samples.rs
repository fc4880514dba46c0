//! Labelled query embeddings with their retrieved neighbours, and the
//! mini-batches gathered from them.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::bank::{normalise_rows, NeighbourBank, RowMoments};
use crate::error::{ModelError, Result};

/// One split (train, validation or test): query embeddings, labels, and `k`
/// neighbour rows of a [`NeighbourBank`] per query (-1 for an empty slot).
#[derive(Debug, Clone)]
pub struct SampleSet {
    /// `len x dim`, L2-normalised.
    pub queries: Vec<f32>,
    pub dim: usize,
    pub labels: Vec<usize>,
    /// `len x k` bank rows, best first.
    pub neighbours: Vec<i64>,
    pub k: usize,
}

impl SampleSet {
    /// Normalises the queries and checks the shapes; `neighbours` may be
    /// empty (k = 0) for methods that do not retrieve.
    pub fn new(
        what: &str,
        mut queries: Vec<f32>,
        dim: usize,
        labels: Vec<usize>,
        neighbours: Vec<i64>,
        k: usize,
    ) -> Result<SampleSet> {
        let n = labels.len();
        if dim == 0 || queries.len() != n * dim {
            return Err(ModelError::Shape {
                what: what.into(),
                problem: format!(
                    "{} embedding values do not make {n} rows of dimension {dim}",
                    queries.len()
                ),
            });
        }
        if neighbours.len() != n * k {
            return Err(ModelError::Shape {
                what: what.into(),
                problem: format!(
                    "{} neighbour ids for {n} queries x k = {k}",
                    neighbours.len()
                ),
            });
        }
        if let Some(pos) = queries.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Shape {
                what: what.into(),
                problem: format!("embedding of sample {} is not finite", pos / dim),
            });
        }
        normalise_rows(&mut queries, dim);
        Ok(SampleSet {
            queries,
            dim,
            labels,
            neighbours,
            k,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Fails naming `what` when a label is not below `classes`.
    pub fn check_labels(&self, what: &str, classes: usize) -> Result<()> {
        if let Some((index, &label)) = self.labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(ModelError::LabelOutOfRange {
                what: what.into(),
                label,
                classes,
                index,
            });
        }
        Ok(())
    }

    /// Number of samples per class.
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &l in &self.labels {
            if l < classes {
                counts[l] += 1;
            }
        }
        counts
    }

    /// The same samples keeping only their first `k` neighbours.
    pub fn with_k(&self, k: usize) -> SampleSet {
        let k = k.min(self.k);
        let neighbours = self
            .neighbours
            .chunks_exact(self.k.max(1))
            .flat_map(|row| row[..k].iter().copied())
            .collect();
        SampleSet {
            neighbours: if self.k == 0 { Vec::new() } else { neighbours },
            k: if self.k == 0 { 0 } else { k },
            ..self.clone()
        }
    }

    /// The neighbour ids of the samples at `indices`, `k` per sample
    /// (-1 for an empty slot).
    pub fn neighbour_ids(&self, indices: &[usize]) -> Vec<i64> {
        let k = self.k;
        indices
            .iter()
            .flat_map(|&i| self.neighbours[i * k..(i + 1) * k].iter().copied())
            .collect()
    }

    /// Gathers the samples at `indices` into tensors on `device`, with
    /// what `need` asks of their neighbours (nothing when k = 0 or there is
    /// no bank).
    pub fn batch(
        &self,
        indices: &[usize],
        bank: Option<&NeighbourBank>,
        need: NeighbourUse,
        device: &Device,
    ) -> Result<Batch> {
        let b = indices.len();
        let d = self.dim;
        let mut q = vec![0f32; b * d];
        for (row, &i) in q.chunks_exact_mut(d).zip(indices) {
            row.copy_from_slice(&self.queries[i * d..(i + 1) * d]);
        }
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i] as u32).collect();
        let queries = Tensor::from_vec(q, (b, d), device)?;
        let labels = Tensor::from_vec(labels, b, device)?;
        let neighbours = match bank {
            Some(bank) if need != NeighbourUse::None && self.k > 0 => Some(
                self.gather_neighbours(indices, bank, need == NeighbourUse::Rows, true, device)?,
            ),
            _ => None,
        };
        Ok(Batch {
            queries,
            labels,
            neighbours,
            indices: indices.to_vec(),
        })
    }

    /// A batch for a step that reads the neighbours' rows from the bank
    /// itself ([`crate::native::NeighbourRows::Bank`]): the presence mask,
    /// and the mean values only with `mean_values` (zeros otherwise, which
    /// spares reading every neighbour's value row).
    pub fn batch_without_rows(
        &self,
        indices: &[usize],
        bank: &NeighbourBank,
        mean_values: bool,
        device: &Device,
    ) -> Result<Batch> {
        let mut batch = self.batch(indices, None, NeighbourUse::None, device)?;
        if self.k > 0 {
            batch.neighbours =
                Some(self.gather_neighbours(indices, bank, false, mean_values, device)?);
        }
        Ok(batch)
    }

    /// The neighbours of the samples at `indices`: their presence mask and
    /// average value (zeros without `means`), and with `rows` their key and
    /// value rows.
    fn gather_neighbours(
        &self,
        indices: &[usize],
        bank: &NeighbourBank,
        rows: bool,
        means: bool,
        device: &Device,
    ) -> Result<NeighbourTensors> {
        let (b, k, d, dv) = (indices.len(), self.k, bank.key_dim, bank.value_dim);
        if d != self.dim {
            return Err(ModelError::Shape {
                what: "neighbour bank".into(),
                problem: format!(
                    "keys have dimension {d} but the queries {} (different image encoders?)",
                    self.dim
                ),
            });
        }
        let present = |i: usize, j: usize| -> Option<usize> {
            let id = self.neighbours[i * k + j];
            (id >= 0 && (id as usize) < bank.rows()).then_some(id as usize)
        };
        let mut valid = vec![0f32; b * k];
        // (One slot per sample even without values, so that the mask is filled.)
        let mut mean_values = vec![0f32; b * dv.max(1)];
        // The average value of each sample, read straight from the bank.
        valid
            .par_chunks_mut(k)
            .zip(mean_values.par_chunks_mut(dv.max(1)))
            .zip(indices.par_iter())
            .for_each(|((mask, mean), &i)| {
                let mut count = 0usize;
                for (j, slot) in mask.iter_mut().enumerate() {
                    if let Some(id) = present(i, j) {
                        *slot = 1.0;
                        count += 1;
                        if means {
                            for (m, v) in mean.iter_mut().zip(bank.value_row(id)) {
                                *m += v;
                            }
                        }
                    }
                }
                let scale = 1.0 / count.max(1) as f32;
                mean.iter_mut().for_each(|m| *m *= scale);
            });
        mean_values.truncate(b * dv);
        let (keys, values, moments) = if rows {
            let mut keys = vec![0f32; b * k * d];
            keys.par_chunks_mut(k * d)
                .zip(indices.par_iter())
                .for_each(|(kr, &i)| {
                    for j in 0..k {
                        if let Some(id) = present(i, j) {
                            kr[j * d..(j + 1) * d]
                                .copy_from_slice(&bank.keys[id * d..(id + 1) * d]);
                        }
                    }
                });
            let keys = Tensor::from_vec(keys, (b, k, d), device)?;
            let values = if bank.values_are_keys {
                keys.clone()
            } else {
                let mut values = vec![0f32; b * k * dv];
                if dv > 0 {
                    values
                        .par_chunks_mut(k * dv)
                        .zip(indices.par_iter())
                        .for_each(|(vr, &i)| {
                            for j in 0..k {
                                if let Some(id) = present(i, j) {
                                    vr[j * dv..(j + 1) * dv].copy_from_slice(bank.value_row(id));
                                }
                            }
                        });
                }
                Tensor::from_vec(values, (b, k, dv), device)?
            };
            let moments = RowMomentTensors {
                keys: moment_tensors(&bank.key_moments, indices, k, &present, device)?,
                values: moment_tensors(bank.value_moments(), indices, k, &present, device)?,
            };
            (Some(keys), Some(values), Some(moments))
        } else {
            (None, None, None)
        };
        Ok(NeighbourTensors {
            keys,
            values,
            mean_values: Tensor::from_vec(mean_values, (b, dv), device)?,
            valid: Tensor::from_vec(valid, (b, k), device)?,
            moments,
        })
    }
}

/// `(B, k)` means and inverse standard deviations of the neighbour rows
/// (0 and 1 for an empty slot).
fn moment_tensors(
    moments: &[RowMoments],
    indices: &[usize],
    k: usize,
    present: &(dyn Fn(usize, usize) -> Option<usize> + Sync),
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut mean = vec![0f32; indices.len() * k];
    let mut inv_std = vec![1f32; indices.len() * k];
    for (row, &i) in indices.iter().enumerate() {
        for j in 0..k {
            if let Some(m) = present(i, j).and_then(|id| moments.get(id)) {
                mean[row * k + j] = m.mean;
                inv_std[row * k + j] = m.inv_std;
            }
        }
    }
    Ok((
        Tensor::from_vec(mean, (indices.len(), k), device)?,
        Tensor::from_vec(inv_std, (indices.len(), k), device)?,
    ))
}

/// The row moments of a batch's neighbours, each `(mean, inv_std)` of shape
/// `(B, k)`: the standardised row j is `(row_j - mean_j) * inv_std_j`.
#[derive(Debug, Clone)]
pub struct RowMomentTensors {
    pub keys: (Tensor, Tensor),
    pub values: (Tensor, Tensor),
}

/// What of its retrieved neighbours a model reads from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourUse {
    /// Nothing: the model does not retrieve.
    None,
    /// The average of the neighbours' values (and which neighbours are
    /// present): no per-neighbour rows are gathered.
    MeanValue,
    /// Every neighbour's key and value rows, besides the average.
    Rows,
}

/// Retrieved neighbours of a batch.
#[derive(Debug, Clone)]
pub struct NeighbourTensors {
    /// `(B, k, key_dim)`, L2-normalised rows; only with [`NeighbourUse::Rows`].
    pub keys: Option<Tensor>,
    /// `(B, k, value_dim)`, each value part L2-normalised; only with
    /// [`NeighbourUse::Rows`].
    pub values: Option<Tensor>,
    /// `(B, value_dim)`: the average of the present neighbours' values
    /// (zeros without any neighbour).
    pub mean_values: Tensor,
    /// `(B, k)`: 1 for a present neighbour, 0 for an empty slot.
    pub valid: Tensor,
    /// The moments of the key and value rows; only with [`NeighbourUse::Rows`].
    pub moments: Option<RowMomentTensors>,
}

/// A mini-batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, dim)`.
    pub queries: Tensor,
    /// `(B,)` u32.
    pub labels: Tensor,
    pub neighbours: Option<NeighbourTensors>,
    /// Positions of the batch's samples in their [`SampleSet`].
    pub indices: Vec<usize>,
}
