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

/// How a model reads a bank's rows: standardised (zero mean, unit variance
/// per row) or L2-normalised, for the keys and the values separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowForms {
    pub keys_standardized: bool,
    pub values_standardized: bool,
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
    /// Key rows are standardised (zero mean, unit variance per row) instead
    /// of L2-normalised; see [`NeighbourBank::with_forms`].
    pub keys_standardized: bool,
    /// Value rows are standardised instead of L2-normalised.
    pub values_standardized: bool,
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

    /// A copy whose keys and values are in the forms a model reads
    /// (standardised where `forms` asks, L2-normalised otherwise): done once
    /// here instead of in every training step. Values that are the keys get
    /// their own copy when the two forms differ. Fails when a form asks to
    /// undo a standardisation this bank already has.
    pub fn with_forms(&self, forms: RowForms) -> Result<NeighbourBank> {
        if (self.keys_standardized && !forms.keys_standardized)
            || (self.values_standardized && !forms.values_standardized)
        {
            return Err(ModelError::Config(
                "a neighbour bank's standardised rows cannot be turned back into L2-normalised ones; start from the normalised bank".into(),
            ));
        }
        let mut out = self.clone();
        if out.values_are_keys && forms.keys_standardized != forms.values_standardized {
            out.values = out.keys.clone();
            out.values_are_keys = false;
        }
        if forms.keys_standardized && !out.keys_standardized {
            standardize_rows(&mut out.keys, self.key_dim);
            out.keys_standardized = true;
        }
        if forms.values_standardized && !out.values_standardized {
            // (Empty when the values are the keys, standardised above.)
            standardize_rows(&mut out.values, self.value_dim);
            out.values_standardized = true;
        }
        Ok(out)
    }

    /// Stores values once when they equal the keys.
    fn dedup_values(mut self) -> NeighbourBank {
        if !self.values_are_keys && self.value_dim == self.key_dim && self.values == self.keys {
            self.values = Vec::new();
            self.values_are_keys = true;
        }
        self
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
            keys_standardized: false,
            values_standardized: false,
            memory_ids: (0..rows as i64).collect(),
        }
        .dedup_values())
    }
}

/// Shifts every `dim`-wide row to zero mean and scales it to unit variance,
/// in place (the attention module's input normalisation).
pub fn standardize_rows(data: &mut [f32], dim: usize) {
    if dim == 0 {
        return;
    }
    for row in data.chunks_exact_mut(dim) {
        let mean = row.iter().sum::<f32>() / dim as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let scale = 1.0 / (var + 1e-5).sqrt();
        row.iter_mut().for_each(|v| *v = (*v - mean) * scale);
    }
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
        keys_standardized: false,
        values_standardized: false,
        memory_ids,
    }
    .dedup_values())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bank_with_values_as_keys() -> NeighbourBank {
        let rows = vec![3.0, 1.0, 0.0, 2.0, 0.0, 2.0, 1.0, 1.0];
        let bank = NeighbourBank::from_matrices(rows.clone(), 4, rows, 4).unwrap();
        assert!(bank.values_are_keys);
        bank
    }

    fn is_standardized(row: &[f32]) -> bool {
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / row.len() as f32;
        mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3
    }

    fn is_unit(row: &[f32]) -> bool {
        (row.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5
    }

    #[test]
    fn standardised_keys_with_normalised_values_split_a_shared_copy() {
        let bank = bank_with_values_as_keys();
        let forms = RowForms {
            keys_standardized: true,
            values_standardized: false,
        };
        let prepared = bank.with_forms(forms).unwrap();
        assert!(!prepared.values_are_keys);
        for row in 0..prepared.rows() {
            assert!(is_standardized(&prepared.keys[row * 4..(row + 1) * 4]));
            assert!(is_unit(prepared.value_row(row)));
            assert_eq!(prepared.value_row(row), bank.value_row(row));
        }
    }

    #[test]
    fn both_standardised_keep_one_copy_and_standardisation_cannot_be_undone() {
        let bank = bank_with_values_as_keys();
        let both = RowForms {
            keys_standardized: true,
            values_standardized: true,
        };
        let prepared = bank.with_forms(both).unwrap();
        assert!(prepared.values_are_keys && prepared.values.is_empty());
        assert!(is_standardized(prepared.value_row(1)));
        assert!(prepared.with_forms(RowForms::default()).is_err());
        assert!(prepared.with_forms(both).is_ok());
    }
}
