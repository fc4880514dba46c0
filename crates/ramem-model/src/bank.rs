//! The neighbour bank: a compact, in-RAM copy of just the memory rows that
//! some query retrieved, with their keys and the chosen values, L2-normalised.
//! Training and evaluation gather batches from it instead of the memory.

use std::collections::HashMap;

use ramem_store::memory::{Memory, ValueKind};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Which stored values the model attends over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueChoice {
    /// The image embedding of each neighbour.
    Image,
    /// The text (caption) embedding of each neighbour.
    Text,
    /// Image and text embeddings concatenated.
    Both,
}

impl ValueChoice {
    pub fn name(self) -> &'static str {
        match self {
            ValueChoice::Image => "image",
            ValueChoice::Text => "text",
            ValueChoice::Both => "both",
        }
    }

    pub fn parse(text: &str) -> Option<ValueChoice> {
        match text {
            "image" => Some(ValueChoice::Image),
            "text" => Some(ValueChoice::Text),
            "both" => Some(ValueChoice::Both),
            _ => None,
        }
    }

    fn kinds(self) -> &'static [ValueKind] {
        match self {
            ValueChoice::Image => &[ValueKind::Image],
            ValueChoice::Text => &[ValueKind::Text],
            ValueChoice::Both => &[ValueKind::Image, ValueKind::Text],
        }
    }
}

/// Keys and values of the memory rows a set of queries retrieved.
#[derive(Debug, Clone)]
pub struct NeighbourBank {
    /// `rows x key_dim`, L2-normalised.
    pub keys: Vec<f32>,
    pub key_dim: usize,
    /// `rows x value_dim`; each value part L2-normalised. Empty when
    /// `values_are_keys` (image values identical to the keys are stored once).
    pub values: Vec<f32>,
    pub value_dim: usize,
    /// The values are the keys themselves.
    pub values_are_keys: bool,
    /// Per key row: the mean and the inverse standard deviation of its
    /// entries. A model that reads standardised rows (zero mean, unit
    /// variance) folds these into its arithmetic instead of keeping a
    /// second, standardised copy of the bank.
    pub key_moments: Vec<RowMoments>,
    /// The same for the value rows; empty when `values_are_keys` (see
    /// [`NeighbourBank::value_moments`]).
    value_moments: Vec<RowMoments>,
    /// The memory row id of each bank row.
    pub memory_ids: Vec<i64>,
}

impl NeighbourBank {
    pub fn rows(&self) -> usize {
        self.memory_ids.len()
    }

    /// The value row `id` (the key row when values are the keys).
    pub fn value_row(&self, id: usize) -> &[f32] {
        let dv = self.value_dim;
        if self.values_are_keys {
            &self.keys[id * dv..(id + 1) * dv]
        } else {
            &self.values[id * dv..(id + 1) * dv]
        }
    }

    /// Stores values once when they equal the keys (up to the rounding of
    /// the memory's f16 storage: a memory keeps the same image embedding as
    /// a normalised key and as a raw value), and computes the row moments.
    fn finish(mut self) -> NeighbourBank {
        if !self.values_are_keys
            && self.value_dim == self.key_dim
            && self.values.len() == self.keys.len()
            && self
                .values
                .iter()
                .zip(&self.keys)
                .all(|(v, k)| (v - k).abs() <= SAME_ROW_TOLERANCE)
        {
            self.values = Vec::new();
            self.values_are_keys = true;
        }
        self.key_moments = row_moments(&self.keys, self.key_dim);
        self.value_moments = row_moments(&self.values, self.value_dim);
        self
    }

    /// The moments of the value rows (the keys' when values are the keys).
    pub fn value_moments(&self) -> &[RowMoments] {
        if self.values_are_keys {
            &self.key_moments
        } else {
            &self.value_moments
        }
    }

    /// A bank from in-RAM matrices (row-major), normalising each row.
    pub fn from_matrices(
        keys: Vec<f32>,
        key_dim: usize,
        values: Vec<f32>,
        value_dim: usize,
    ) -> Result<NeighbourBank> {
        let rows = keys.len().checked_div(key_dim).unwrap_or(0);
        if key_dim == 0 || keys.len() != rows * key_dim || values.len() != rows * value_dim {
            return Err(ModelError::Shape {
                what: "neighbour bank".into(),
                problem: format!(
                    "{} key values (dim {key_dim}) and {} value values (dim {value_dim}) do not describe the same rows",
                    keys.len(),
                    values.len()
                ),
            });
        }
        let mut keys = keys;
        let mut values = values;
        normalise_rows(&mut keys, key_dim);
        normalise_rows(&mut values, value_dim);
        Ok(NeighbourBank {
            keys,
            key_dim,
            values,
            value_dim,
            values_are_keys: false,
            key_moments: Vec::new(),
            value_moments: Vec::new(),
            memory_ids: (0..rows as i64).collect(),
        }
        .finish())
    }
}

/// Largest entry-wise difference at which value rows count as the key rows
/// themselves: f16 storage rounds a unit vector's entries by about 1e-4.
const SAME_ROW_TOLERANCE: f32 = 1e-3;

/// The mean and inverse standard deviation of a row's entries: the row
/// standardised is `(row - mean) * inv_std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowMoments {
    pub mean: f32,
    pub inv_std: f32,
}

/// The moments of every `dim`-wide row (with the same 1e-5 variance floor
/// as the attention module's standardisation of the queries).
pub fn row_moments(data: &[f32], dim: usize) -> Vec<RowMoments> {
    if dim == 0 {
        return Vec::new();
    }
    data.chunks_exact(dim)
        .map(|row| {
            let mean = row.iter().sum::<f32>() / dim as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
            RowMoments {
                mean,
                inv_std: 1.0 / (var + 1e-5).sqrt(),
            }
        })
        .collect()
}

/// L2-normalises every `dim`-wide row in place (zero rows stay zero).
pub fn normalise_rows(data: &mut [f32], dim: usize) {
    if dim == 0 {
        return;
    }
    for row in data.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

/// Copies the memory rows named in `neighbour_lists` (memory row ids, -1 for
/// an empty slot) into a bank, and rewrites each list to bank row indices
/// (-1 stays -1). Keys and each value kind are normalised separately.
pub fn build_bank(
    memory: &Memory,
    neighbour_lists: &mut [&mut Vec<i64>],
    choice: ValueChoice,
) -> Result<NeighbourBank> {
    let mut index_of: HashMap<i64, i64> = HashMap::new();
    let mut memory_ids = Vec::new();
    for list in neighbour_lists.iter_mut() {
        for id in list.iter_mut() {
            if *id < 0 {
                continue;
            }
            let next = memory_ids.len() as i64;
            let bank_row = *index_of.entry(*id).or_insert_with(|| {
                memory_ids.push(*id);
                next
            });
            *id = bank_row;
        }
    }
    let key_dim = memory.key_dim();
    let mut keys = Vec::with_capacity(memory_ids.len() * key_dim);
    for &id in &memory_ids {
        keys.extend_from_slice(&memory.key(id)?);
    }
    normalise_rows(&mut keys, key_dim);

    let mut parts = Vec::new();
    for &kind in choice.kinds() {
        let dim = memory.value_dim(kind).ok_or_else(|| ModelError::Shape {
            what: format!("memory {}", memory.dir().display()),
            problem: format!("it stores no {} values", kind.name()),
        })?;
        let mut part = memory.gather_values(kind, &memory_ids)?;
        normalise_rows(&mut part, dim);
        parts.push((part, dim));
    }
    let value_dim: usize = parts.iter().map(|(_, d)| d).sum();
    let mut values = Vec::with_capacity(memory_ids.len() * value_dim);
    for row in 0..memory_ids.len() {
        for (part, dim) in &parts {
            values.extend_from_slice(&part[row * dim..(row + 1) * dim]);
        }
    }
    Ok(NeighbourBank {
        keys,
        key_dim,
        values,
        value_dim,
        values_are_keys: false,
        key_moments: Vec::new(),
        value_moments: Vec::new(),
        memory_ids,
    }
    .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_equal_to_the_keys_up_to_storage_rounding_are_stored_once() {
        let keys = vec![3.0, 1.0, 0.0, 2.0, 0.0, 2.0, 1.0, 1.0];
        let rounded: Vec<f32> = keys.iter().map(|v| v * (1.0 + 2e-4)).collect();
        let bank = NeighbourBank::from_matrices(keys.clone(), 4, rounded, 4).unwrap();
        assert!(bank.values_are_keys && bank.values.is_empty());
        assert_eq!(bank.value_moments(), bank.key_moments);

        let other = vec![0.0, 1.0, 1.0, 5.0, 2.0, 0.0, 4.0, 1.0];
        let bank = NeighbourBank::from_matrices(keys, 4, other, 4).unwrap();
        assert!(!bank.values_are_keys);
        assert_ne!(bank.value_moments(), bank.key_moments);
    }

    #[test]
    fn row_moments_standardise_each_row() {
        let rows = [1.0f32, 2.0, 3.0, 6.0, -1.0, -1.0, 1.0, 1.0];
        for (row, m) in rows.chunks_exact(4).zip(row_moments(&rows, 4)) {
            let standardised: Vec<f32> = row.iter().map(|v| (v - m.mean) * m.inv_std).collect();
            let mean = standardised.iter().sum::<f32>() / 4.0;
            let var = standardised.iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4,
                "{standardised:?}"
            );
        }
    }
}
