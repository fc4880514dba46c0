//! The neighbour bank: a compact, in-RAM copy of just the memory rows that
//! some query retrieved, with their keys and the chosen values, L2-normalised.
//! Training and evaluation gather batches from it instead of the memory.

use std::collections::HashMap;

use ramem_store::memory::{MemoryView, ValueKind};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Which values the model attends over: stored embeddings, the labels of
/// the memory entries that carry one (a one-hot row; a zero row where the
/// label is unknown), or both joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueChoice {
    /// The image embedding of each neighbour.
    #[serde(rename = "image")]
    Image,
    /// The text (caption) embedding of each neighbour.
    #[serde(rename = "text")]
    Text,
    /// Image and text embeddings concatenated.
    #[serde(rename = "both")]
    Both,
    /// Each neighbour's label, one-hot.
    #[serde(rename = "label")]
    Label,
    /// The image embedding and the one-hot label concatenated.
    #[serde(rename = "image+label")]
    ImageLabel,
    /// The text embedding and the one-hot label concatenated.
    #[serde(rename = "text+label")]
    TextLabel,
}

impl ValueChoice {
    pub const ALL: [ValueChoice; 6] = [
        ValueChoice::Image,
        ValueChoice::Text,
        ValueChoice::Both,
        ValueChoice::Label,
        ValueChoice::ImageLabel,
        ValueChoice::TextLabel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ValueChoice::Image => "image",
            ValueChoice::Text => "text",
            ValueChoice::Both => "both",
            ValueChoice::Label => "label",
            ValueChoice::ImageLabel => "image+label",
            ValueChoice::TextLabel => "text+label",
        }
    }

    pub fn parse(text: &str) -> Option<ValueChoice> {
        ValueChoice::ALL.into_iter().find(|v| v.name() == text)
    }

    /// The stored value matrices this choice reads, in concatenation order.
    pub fn kinds(self) -> &'static [ValueKind] {
        match self {
            ValueChoice::Image | ValueChoice::ImageLabel => &[ValueKind::Image],
            ValueChoice::Text | ValueChoice::TextLabel => &[ValueKind::Text],
            ValueChoice::Both => &[ValueKind::Image, ValueKind::Text],
            ValueChoice::Label => &[],
        }
    }

    /// Whether the values end with the neighbours' one-hot labels.
    pub fn uses_labels(self) -> bool {
        matches!(
            self,
            ValueChoice::Label | ValueChoice::ImageLabel | ValueChoice::TextLabel
        )
    }
}

/// `of_row[id]`, where `id` is a row (an empty slot's -1 is none).
fn class_of_row(of_row: &[Option<usize>], id: i64) -> Option<usize> {
    usize::try_from(id)
        .ok()
        .and_then(|i| of_row.get(i))
        .copied()
        .flatten()
}

/// The label of each memory row, where one is known to the model: the
/// labels a label-valued bank turns into one-hot values.
#[derive(Debug, Clone)]
pub struct MemoryLabels {
    pub classes: usize,
    /// Per memory row: its class, or `None` (no label, or one the model
    /// must not see, such as a validation image's).
    pub of_row: Vec<Option<usize>>,
}

impl MemoryLabels {
    /// The class of memory row `id`, where the model may see one.
    pub fn label_of(&self, id: i64) -> Option<usize> {
        class_of_row(&self.of_row, id)
    }

    fn one_hot(&self, memory_id: i64) -> Vec<f32> {
        let mut row = vec![0.0; self.classes];
        if let Some(Some(class)) = usize::try_from(memory_id)
            .ok()
            .and_then(|i| self.of_row.get(i))
        {
            if let Some(slot) = row.get_mut(*class) {
                *slot = 1.0;
            }
        }
        row
    }
}

/// A memory's labels in a model's class space: each labelled entry's class
/// by name, the classes the memory names that the model was not trained on
/// appended after the model's own (so a vote over the memory can name a
/// class added to it after training).
#[derive(Debug, Clone)]
pub struct LabelSpace {
    /// The model's classes, then the memory's other label names.
    pub names: Vec<String>,
    /// How many of `names` are the model's.
    pub model_classes: usize,
    /// Per memory row: its class in `names`, or `None` (unlabelled).
    pub of_row: Vec<Option<usize>>,
}

impl LabelSpace {
    /// The labels of `memory` over `classes` (the model's), or `None` where
    /// the memory carries no labels.
    pub fn of_memory(memory: &dyn MemoryView, classes: &[String]) -> Result<Option<LabelSpace>> {
        let memory_names = memory.label_names();
        if memory_names.is_empty() {
            return Ok(None);
        }
        let mut names = classes.to_vec();
        let class_of: Vec<usize> = memory_names
            .iter()
            .map(|name| match names.iter().position(|n| n == name) {
                Some(c) => c,
                None => {
                    names.push(name.clone());
                    names.len() - 1
                }
            })
            .collect();
        let rows: Vec<i64> = (0..memory.count() as i64).collect();
        let of_row = memory
            .labels(&rows)?
            .into_iter()
            .enumerate()
            .map(|(row, label)| {
                let label = label?;
                if memory.is_deleted(row as i64) {
                    return None;
                }
                class_of.get(label as usize).copied()
            })
            .collect();
        Ok(Some(LabelSpace {
            names,
            model_classes: classes.len(),
            of_row,
        }))
    }

    /// The class of memory row `id` in [`LabelSpace::names`].
    pub fn label_of(&self, id: i64) -> Option<usize> {
        class_of_row(&self.of_row, id)
    }

    /// The labels as label values show them: the model's classes only (an
    /// entry of a class the model does not know shows no label).
    pub fn values(&self) -> MemoryLabels {
        MemoryLabels {
            classes: self.model_classes,
            of_row: self
                .of_row
                .iter()
                .map(|c| c.filter(|&c| c < self.model_classes))
                .collect(),
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
                .par_chunks(self.key_dim)
                .zip(self.keys.par_chunks(self.key_dim))
                .with_min_len(PARALLEL_MIN_ROWS)
                .all(|(v, k)| {
                    v.iter()
                        .zip(k)
                        .all(|(v, k)| (v - k).abs() <= SAME_ROW_TOLERANCE)
                })
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

/// Rows per parallel task in the bank's row-wise passes (smaller banks'
/// passes stay on one core).
const PARALLEL_MIN_ROWS: usize = 128;

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
    data.par_chunks_exact(dim)
        .with_min_len(PARALLEL_MIN_ROWS)
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
    data.par_chunks_exact_mut(dim)
        .with_min_len(PARALLEL_MIN_ROWS)
        .for_each(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        });
}

/// Copies the memory rows named in `neighbour_lists` (memory row ids, -1 for
/// an empty slot) into a bank, and rewrites each list to bank row indices
/// (-1 stays -1). Keys and each value kind are normalised separately. Label
/// values (`choice.uses_labels()`) come from `labels`, which they require.
pub fn build_bank(
    memory: &dyn MemoryView,
    neighbour_lists: &mut [&mut Vec<i64>],
    choice: ValueChoice,
    labels: Option<&MemoryLabels>,
) -> Result<NeighbourBank> {
    let labels = match (choice.uses_labels(), labels) {
        (false, _) => None,
        (true, Some(labels)) => Some(labels),
        (true, None) => {
            return Err(ModelError::Shape {
                what: format!("memory {}", memory.location()),
                problem: format!(
                    "values {:?} need the labels of its entries, and none were given",
                    choice.name()
                ),
            })
        }
    };
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
    let mut keys = memory.gather_keys(&memory_ids)?;
    normalise_rows(&mut keys, key_dim);
    // Image values stored as the keys themselves are the keys: not gathered
    // twice (what `finish` would find by comparing them).
    if choice.kinds() == [ValueKind::Image]
        && labels.is_none()
        && memory.values_equal_keys(ValueKind::Image, &memory_ids)?
    {
        return Ok(NeighbourBank {
            keys,
            key_dim,
            values: Vec::new(),
            value_dim: key_dim,
            values_are_keys: true,
            key_moments: Vec::new(),
            value_moments: Vec::new(),
            memory_ids,
        }
        .finish());
    }

    let mut parts = Vec::new();
    for &kind in choice.kinds() {
        let dim = memory.value_dim(kind).ok_or_else(|| ModelError::Shape {
            what: format!("memory {}", memory.location()),
            problem: format!("it stores no {} values", kind.name()),
        })?;
        let mut part = memory.gather_values(kind, &memory_ids)?;
        normalise_rows(&mut part, dim);
        parts.push((part, dim));
    }
    if let Some(labels) = labels {
        let part: Vec<f32> = memory_ids
            .iter()
            .flat_map(|&id| labels.one_hot(id))
            .collect();
        parts.push((part, labels.classes));
    }
    let value_dim: usize = parts.iter().map(|(_, d)| d).sum();
    let values = match parts.len() {
        1 => parts.pop().map(|(part, _)| part).unwrap_or_default(),
        _ => {
            let mut values = Vec::with_capacity(memory_ids.len() * value_dim);
            for row in 0..memory_ids.len() {
                for (part, dim) in &parts {
                    values.extend_from_slice(&part[row * dim..(row + 1) * dim]);
                }
            }
            values
        }
    };
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
    fn label_values_are_one_hot_rows_after_the_stored_values() {
        use ramem_store::memory::{
            FloatDtype, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, ValueSpec,
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mem");
        let mut spec = MemorySpec::new("test-encoder", 2, FloatDtype::F32, true);
        spec.image = Some(ValueSpec {
            encoder: "test-encoder".into(),
            dim: 2,
            dtype: FloatDtype::F32,
        });
        let mut writer = MemoryWriter::create(&dir, spec).unwrap();
        let keys = [1.0, 0.0, 0.0, 2.0, 3.0, 4.0];
        let metadata = vec![MetadataEntry::default(); 3];
        writer
            .append_shard(ShardBatch {
                keys: &keys,
                image_values: Some(&keys),
                text_values: None,
                metadata: &metadata,
            })
            .unwrap();
        drop(writer);
        let memory = Memory::open(&dir).unwrap();
        let labels = MemoryLabels {
            classes: 3,
            of_row: vec![Some(2), None, Some(0)],
        };

        let mut list = vec![2, 1, -1, 0];
        let bank =
            build_bank(&memory, &mut [&mut list], ValueChoice::Label, Some(&labels)).unwrap();
        assert_eq!(list, vec![0, 1, -1, 2]);
        assert_eq!(bank.value_dim, 3);
        assert_eq!(bank.value_row(0), &[1.0, 0.0, 0.0]);
        assert_eq!(
            bank.value_row(1),
            &[0.0, 0.0, 0.0],
            "unknown label: a zero row"
        );
        assert_eq!(bank.value_row(2), &[0.0, 0.0, 1.0]);

        let mut list = vec![2];
        let bank = build_bank(
            &memory,
            &mut [&mut list],
            ValueChoice::ImageLabel,
            Some(&labels),
        )
        .unwrap();
        assert_eq!(bank.value_dim, 5);
        assert_eq!(bank.value_row(0), &[0.6, 0.8, 1.0, 0.0, 0.0]);

        let err = build_bank(&memory, &mut [&mut vec![0]], ValueChoice::Label, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("label") && err.contains("mem"), "{err}");
    }

    #[test]
    fn value_choices_parse_their_names() {
        for choice in ValueChoice::ALL {
            assert_eq!(ValueChoice::parse(choice.name()), Some(choice));
            let json = serde_json::to_string(&choice).unwrap();
            assert_eq!(json, format!("\"{}\"", choice.name()));
        }
        assert_eq!(ValueChoice::parse("labels"), None);
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
