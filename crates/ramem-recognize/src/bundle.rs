//! The model bundle: a trained recognizer kept in a directory.
//!
//! ```text
//! MODEL/
//! ├── model.json            # what it is (the commit point: written last)
//! ├── weights.safetensors   # the model's variables, by name
//! ├── training.jsonl        # the training log, one epoch per line
//! └── checkpoint/           # while training: what a rerun resumes from
//! ```
//!
//! `model.json` holds the method and every option ([`ModelSpec`]), the
//! class names, the image encoder and the value encoders, the value kinds
//! and k, the memory it was trained against (path, size, fingerprint), the
//! post-hoc tau and the class counts it adjusts by, the validation scores,
//! how it was trained, and the length and FNV-1a 64 checksum of the weights
//! file, which [`ModelBundle::open`] checks. The layout is written down in
//! docs/FORMAT.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use ramem_model::train::EpochStats;
use ramem_model::{checkpoint, Classifier, ModelSpec, TrainConfig, ValueChoice};
use ramem_store::memory::MemoryView;
use ramem_store::Fnv1a;
use serde::{Deserialize, Serialize};

/// `model.json`'s `format`.
pub const FORMAT: &str = "ramem-model";
/// The bundle version this code writes and reads.
pub const VERSION: u32 = 1;
pub const MODEL_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const LOG_FILE: &str = "training.jsonl";
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleMeta {
    /// Always [`FORMAT`].
    pub format: String,
    pub version: u32,
    /// The method and its every option.
    pub model: ModelSpec,
    /// One name per class; predictions index into it.
    pub classes: Vec<String>,
    /// Training images per class: the prior of the post-hoc adjustment.
    pub class_counts: Vec<usize>,
    /// The image encoder of the queries (and the memory's keys).
    pub image_encoder: String,
    /// The value kinds the model attends over.
    pub values: ValueChoice,
    /// The encoders of the memory's values it was trained with.
    pub value_encoders: ValueEncoders,
    /// Neighbours per query (0 for a model that does not retrieve).
    pub k: usize,
    /// The memory it was trained against.
    pub memory: Option<MemoryRecord>,
    /// The post-hoc logit adjustment chosen on validation.
    pub posthoc_tau: f64,
    /// Validation figures: `top1` (the kept epoch's), `top1_posthoc`, and
    /// `many` / `medium` / `few` under the chosen tau where the split has
    /// images of the group.
    pub validation: BTreeMap<String, f64>,
    pub training: TrainingRecord,
    /// The weights file: its length in bytes and FNV-1a 64 checksum.
    pub weights: WeightsRecord,
    /// `"ramem <version>"`.
    pub created_by: String,
}

impl BundleMeta {
    /// Whether predicting reads the labels of the retrieved entries: label
    /// values, a kNN vote, or a module's vote.
    pub fn reads_labels(&self) -> bool {
        self.values.uses_labels()
            || self.model.votes().is_some()
            || self.model.vote_fusion().is_some()
    }
}

/// The encoders of a memory's values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueEncoders {
    pub image: Option<String>,
    pub text: Option<String>,
}

impl ValueEncoders {
    /// The value encoders `memory` records.
    pub fn of(memory: &dyn MemoryView) -> ValueEncoders {
        let values = &memory.manifest().values;
        ValueEncoders {
            image: values.image.as_ref().map(|v| v.encoder.clone()),
            text: values.text.as_ref().map(|v| v.encoder.clone()),
        }
    }
}

/// The memory a model was trained against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRecord {
    pub path: PathBuf,
    /// Its entries then.
    pub count: u64,
    /// FNV-1a 64 of its `manifest.json` then: any commit changes it.
    pub fingerprint: String,
    pub key_encoder: String,
    pub key_dim: usize,
    /// Its edits generation then (0: never relabelled or deleted from).
    #[serde(default)]
    pub edits_generation: u64,
}

impl MemoryRecord {
    /// The record of `memory` as it is now.
    pub fn of(memory: &dyn MemoryView) -> Result<MemoryRecord> {
        let location = memory.location();
        let path = match memory_url(&location) {
            true => PathBuf::from(&location),
            false => std::fs::canonicalize(&location).unwrap_or_else(|_| location.clone().into()),
        };
        Ok(MemoryRecord {
            path,
            count: memory.count(),
            fingerprint: memory.fingerprint()?,
            key_encoder: memory.manifest().key.encoder.clone(),
            key_dim: memory.key_dim(),
            edits_generation: edits_generation(memory),
        })
    }
}

/// Whether a memory's location is a URL (`milvus://...`) rather than a
/// directory.
pub fn memory_url(location: &str) -> bool {
    location.contains("://")
}

/// How many edits (relabels, deletions) `memory` has had.
fn edits_generation(memory: &dyn MemoryView) -> u64 {
    memory
        .manifest()
        .edits
        .as_ref()
        .map_or(0, |edits| edits.generation)
}

/// How a model was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// The data set spec it was trained on.
    pub data: String,
    pub seed: u64,
    pub options: TrainConfig,
    /// Training and validation images.
    pub train_images: usize,
    pub val_images: usize,
    /// The epoch whose weights were kept (best validation top-1).
    pub best_epoch: Option<usize>,
    pub seconds: f64,
}

/// The weights file a bundle was written with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsRecord {
    pub bytes: u64,
    pub checksum: String,
}

fn file_checksum(path: &Path) -> Result<WeightsRecord> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(WeightsRecord {
        bytes: bytes.len() as u64,
        checksum: Fnv1a::new().write(&bytes).hex(),
    })
}

/// Writes a bundle into `dir` (created if missing): the weights of `vars`,
/// the training log, and `meta` (its weights record filled in) last, each
/// file atomically; a bundle is complete once its `model.json` is there.
pub fn save_bundle(
    dir: &Path,
    mut meta: BundleMeta,
    vars: &VarMap,
    history: &[EpochStats],
) -> Result<ModelBundle> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let weights = dir.join(WEIGHTS_FILE);
    checkpoint::save_weights(&weights, &checkpoint::model_tensors(vars))?;
    let mut log = String::new();
    for epoch in history {
        log.push_str(&serde_json::to_string(epoch)?);
        log.push('\n');
    }
    ramem_store::write_atomic(dir.join(LOG_FILE), log.as_bytes())?;
    meta.format = FORMAT.into();
    meta.version = VERSION;
    meta.weights = file_checksum(&weights)?;
    let mut json = serde_json::to_vec_pretty(&meta)?;
    json.push(b'\n');
    ramem_store::write_atomic(dir.join(MODEL_FILE), &json)?;
    Ok(ModelBundle {
        dir: dir.to_path_buf(),
        meta,
    })
}

/// An opened bundle.
#[derive(Debug, Clone)]
pub struct ModelBundle {
    pub dir: PathBuf,
    pub meta: BundleMeta,
}

impl ModelBundle {
    /// Reads `dir/model.json`, refusing another format or version.
    pub fn open(dir: &Path) -> Result<ModelBundle> {
        let path = dir.join(MODEL_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: cannot read (is {} a model bundle written by `ramem train`?)",
                path.display(),
                dir.display()
            )
        })?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            bail!(
                "{}: not a ramem model (no \"format\": \"{FORMAT}\")",
                path.display()
            );
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != VERSION as u64 {
            bail!(
                "{}: model bundle version {version}; this ramem reads version {VERSION}",
                path.display()
            );
        }
        let meta: BundleMeta = serde_json::from_value(value)
            .with_context(|| format!("{}: not a valid model description", path.display()))?;
        Ok(ModelBundle {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// The trained model, its weights checked against `model.json` first;
    /// `None` for a method without weights (the kNN vote).
    pub fn model(&self, device: &Device) -> Result<Option<Box<dyn Classifier>>> {
        let path = self.dir.join(WEIGHTS_FILE);
        let found = file_checksum(&path)?;
        let want = &self.meta.weights;
        if found.bytes != want.bytes {
            bail!(
                "{}: {} bytes, but {} says {} (truncated, or replaced by other weights)",
                path.display(),
                found.bytes,
                MODEL_FILE,
                want.bytes
            );
        }
        if found.checksum != want.checksum {
            bail!(
                "{}: checksum {} differs from {}'s {} (damaged, or other weights)",
                path.display(),
                found.checksum,
                MODEL_FILE,
                want.checksum
            );
        }
        if !self.meta.model.has_weights() {
            return Ok(None);
        }
        let vb = checkpoint::load_var_builder(&path, device)?;
        self.meta
            .model
            .build(vb)
            .map(Some)
            .with_context(|| format!("{}: weights do not fit the model", path.display()))
    }

    /// Checks that `memory` can serve this model: the same key encoder and
    /// dimension, and the value kinds it attends over. Returns a warning
    /// when the memory changed since training (edits take effect without
    /// retraining, but the model was tuned on the memory as it was).
    pub fn check_memory(&self, memory: &dyn MemoryView) -> Result<Option<String>> {
        let m = memory.manifest();
        let location = memory.location();
        let here = memory.settings_location();
        if m.key.encoder != self.meta.image_encoder {
            bail!(
                "{here}: the memory's keys come from {:?}, but the model {} was trained on {:?} \
                 embeddings; a memory for it needs keys from the same encoder",
                m.key.encoder,
                self.dir.display(),
                self.meta.image_encoder
            );
        }
        let dim = self.meta.model.input_dim();
        if memory.key_dim() != dim {
            bail!(
                "{here}: the memory's keys have {} dimensions, the model {} takes {dim}",
                memory.key_dim(),
                self.dir.display()
            );
        }
        if self.meta.model.retrieves() {
            for &kind in self.meta.values.kinds() {
                if memory.value_dim(kind).is_none() {
                    bail!(
                        "{here}: the memory has no {} values, and the model {} attends over {} values",
                        kind.name(),
                        self.dir.display(),
                        self.meta.values.name()
                    );
                }
            }
            if self.meta.reads_labels() && memory.label_names().is_empty() {
                bail!(
                    "{here}: the memory labels none of its entries, and the model {} ({}, values {}) \
                     reads the labels of the entries it retrieves",
                    self.dir.display(),
                    self.meta.model.method(),
                    self.meta.values.name()
                );
            }
        }
        let Some(trained) = &self.meta.memory else {
            return Ok(None);
        };
        let now = memory.fingerprint()?;
        Ok((now != trained.fingerprint).then(|| {
            let generation = edits_generation(memory);
            let edits = match generation != trained.edits_generation {
                true => format!(
                    "; edits generation {} then, {generation} now",
                    trained.edits_generation
                ),
                false => String::new(),
            };
            format!(
                "the memory {location} changed since the model was trained against it ({} entries \
                 then, {} now{edits}): predictions use it as it is now",
                trained.count,
                memory.count()
            )
        }))
    }
}
