//! The memories a study retrieves from: built from the data set's training
//! split (optionally subsampled, optionally polluted with irrelevant
//! entries), or an existing memory directory. Built memories live in
//! `OUT/memories/NAME/` in ramem's memory format and are reused when their
//! recipe has not changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ramem_data::{Example, SeededRng};
use ramem_index::{Neighbours, SearchableMemory};
use ramem_store::memory::{
    FloatDtype, Memory, MemorySpec, MemoryView, MemoryWriter, MetadataEntry, ShardBatch, ValueSpec,
};
use serde::{Deserialize, Serialize};

use ramem_store::npy::Matrix;

use crate::config::{PollutionMode, RetrievalConfig};
use crate::retrieval::MemorySearch;

/// One memory of the study grid.
#[derive(Debug, Clone)]
pub struct MemoryVariant {
    /// Its name in reports (`train`, `train-10000`, `train-polluted-0.5`,
    /// `train-retrieved-polluted-0.5`, `dir`).
    pub name: String,
    pub size: Option<usize>,
    pub pollution: f64,
    /// Retrieved pollution: the memory holds every irrelevant entry after
    /// the relevant ones, and `pollution` is the rate at which retrieved
    /// neighbours are swapped for irrelevant entries.
    pub retrieved: bool,
}

impl MemoryVariant {
    /// The whole training split, then every entry of the `extra` data set.
    pub fn with_extra() -> MemoryVariant {
        MemoryVariant {
            name: "train+extra".into(),
            size: None,
            pollution: 0.0,
            retrieved: true,
        }
    }

    /// Whether the entries after the training split's are an external
    /// memory's rather than irrelevant ones.
    pub fn is_extra(&self) -> bool {
        self.name == "train+extra"
    }

    /// The directory it is built in: variants of retrieved pollution share
    /// one memory, since only their neighbour lists differ.
    fn dir_name(&self) -> String {
        match self.name.split_once("-retrieved-polluted-") {
            Some((base, _)) if self.retrieved => format!("{base}+irrelevant"),
            _ => self.name.clone(),
        }
    }
}

/// An opened memory and, for each training-split row, its memory row id (or
/// -1): the entry a training query must not retrieve (itself).
pub struct StudyMemory {
    pub variant: MemoryVariant,
    pub memory: Arc<dyn SearchableMemory>,
    pub self_ids: Vec<i64>,
    /// The first memory row of the irrelevant entries (they follow the
    /// relevant ones), where the memory holds any.
    pub irrelevant_from: Option<i64>,
    /// How its neighbours are searched.
    pub search: MemorySearch,
}

/// Rows to write: (embedding row, from the irrelevant set?).
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Recipe {
    encoder: String,
    key_dim: usize,
    rows: usize,
    relevant: usize,
    irrelevant: usize,
    text: bool,
    fingerprint: String,
}

const RECIPE_FILE: &str = "study-memory.json";

/// What goes into a built memory.
pub struct MemorySources<'a> {
    pub encoder: &'a str,
    pub text_encoder: &'a str,
    pub train_keys: &'a Matrix<f32>,
    pub train_text: Option<&'a Matrix<f32>>,
    pub train_ids: &'a [String],
    pub train_captions: &'a [Option<String>],
    pub irrelevant_keys: Option<&'a Matrix<f32>>,
    pub irrelevant_text: Option<&'a Matrix<f32>>,
    pub irrelevant_ids: &'a [String],
    pub irrelevant_captions: &'a [Option<String>],
}

/// The grid's memory variants: sizes x pollution levels. With pollution of
/// the entries, the memory size is held fixed at what the available
/// irrelevant entries allow for the largest level, so levels differ in
/// pollution only. With retrieved pollution every level shares one memory
/// (the relevant entries, then all irrelevant ones).
pub fn variants(
    sizes: &[usize],
    pollution: &[f64],
    mode: PollutionMode,
    train_rows: usize,
    irrelevant_rows: usize,
) -> Vec<MemoryVariant> {
    if mode == PollutionMode::Retrieved {
        let sizes: Vec<Option<usize>> = if sizes.is_empty() {
            vec![None]
        } else {
            sizes.iter().map(|&s| Some(s.min(train_rows))).collect()
        };
        return sizes
            .into_iter()
            .flat_map(|size| {
                let base = match size {
                    Some(s) if s < train_rows => format!("train-{s}"),
                    _ => "train".to_string(),
                };
                pollution.iter().map(move |&p| MemoryVariant {
                    name: format!("{base}-retrieved-polluted-{p}"),
                    size,
                    pollution: p,
                    retrieved: true,
                })
            })
            .collect();
    }
    let max_p = pollution.iter().copied().fold(0.0, f64::max);
    let sizes: Vec<Option<usize>> = if sizes.is_empty() {
        vec![None]
    } else {
        sizes.iter().map(|&s| Some(s)).collect()
    };
    let mut out = Vec::new();
    for size in sizes {
        for &p in pollution {
            let capped = if max_p > 0.0 {
                let limit = (irrelevant_rows as f64 / max_p).floor() as usize;
                Some(size.unwrap_or(train_rows).min(limit).min(train_rows))
            } else {
                size.map(|s| s.min(train_rows))
            };
            let mut name = match capped {
                Some(s) if s < train_rows => format!("train-{s}"),
                _ => "train".to_string(),
            };
            if max_p > 0.0 {
                name = format!("{name}-polluted-{p}");
            }
            out.push(MemoryVariant {
                name,
                size: capped,
                pollution: p,
                retrieved: false,
            });
        }
    }
    out
}

/// The rows a memory grows from: one seed's training images, which every
/// memory of the seed holds before any other row.
pub struct GrowFrom<'a> {
    pub seed: u64,
    /// Rows of the training split.
    pub rows: &'a [usize],
}

/// Builds (or reuses) the memory of `variant` under `dir`, searched as
/// `retrieval` says; with `grow`, the memory holds those rows first (its
/// directory named after the seed).
pub fn build(
    dir: &Path,
    variant: &MemoryVariant,
    src: &MemorySources,
    retrieval: &RetrievalConfig,
    grow: Option<&GrowFrom>,
) -> Result<StudyMemory> {
    let train_rows = src.train_keys.rows;
    let available = src.irrelevant_keys.map(|e| e.rows).unwrap_or(0);
    let (relevant, irrelevant) = if variant.retrieved {
        (
            variant.size.unwrap_or(train_rows).min(train_rows),
            available,
        )
    } else {
        let total = variant.size.unwrap_or(train_rows).min(train_rows);
        let irrelevant = (variant.pollution * total as f64).round() as usize;
        (total - irrelevant, irrelevant)
    };
    let total = relevant + irrelevant;
    if irrelevant > available {
        bail!(
            "memory {}: {irrelevant} irrelevant entries needed, the irrelevant set has {available}",
            variant.name
        );
    }
    // Fixed seeds: the memory is the same for every seed of the study.
    let mut rng = SeededRng::new(0x004D_454D);
    let mut chosen = match grow {
        None => {
            let mut all: Vec<usize> = (0..train_rows).collect();
            rng.choose(&mut all, relevant).to_vec()
        }
        Some(grow) => {
            if relevant < grow.rows.len() {
                bail!(
                    "memory {}: {relevant} entries cannot hold seed {}'s {} training images \
                     (memory.grow_from_training); use sizes of at least {}",
                    variant.name,
                    grow.seed,
                    grow.rows.len(),
                    grow.rows.len()
                );
            }
            let mut taken = vec![false; train_rows];
            for &i in grow.rows {
                taken[i] = true;
            }
            let mut others: Vec<usize> = (0..train_rows).filter(|&i| !taken[i]).collect();
            let mut rows = grow.rows.to_vec();
            rows.extend_from_slice(rng.choose(&mut others, relevant - grow.rows.len()));
            rows
        }
    };
    chosen.sort_unstable();
    let mut junk: Vec<usize> = (0..src.irrelevant_keys.map(|e| e.rows).unwrap_or(0)).collect();
    let mut junk = rng.choose(&mut junk, irrelevant).to_vec();
    junk.sort_unstable();

    let text = src.train_text.is_some() && (irrelevant == 0 || src.irrelevant_text.is_some());
    let mut rows = ramem_store::Fnv1a::new();
    for &i in chosen.iter().chain(junk.iter()) {
        rows.write(&(i as u64).to_le_bytes());
    }
    let fingerprint = rows.hex();
    let recipe = Recipe {
        encoder: src.encoder.to_string(),
        key_dim: src.train_keys.cols,
        rows: total,
        relevant,
        irrelevant,
        text,
        fingerprint,
    };
    let mem_dir = match grow {
        Some(grow) => dir.join(format!("{}-seed{}", variant.dir_name(), grow.seed)),
        None => dir.join(variant.dir_name()),
    };
    let recipe_path = mem_dir.join(RECIPE_FILE);
    let reusable = std::fs::read(&recipe_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Recipe>(&b).ok())
        .is_some_and(|r| r == recipe)
        && Memory::open(&mem_dir).is_ok_and(|m| m.count() as usize == total);
    if !reusable {
        if mem_dir.exists() {
            std::fs::remove_dir_all(&mem_dir)
                .with_context(|| format!("removing stale memory {}", mem_dir.display()))?;
        }
        write_memory(&mem_dir, &recipe, &chosen, &junk, src)?;
        ramem_store::atomic::write_atomic(&recipe_path, &serde_json::to_vec_pretty(&recipe)?)?;
    }
    let memory: Arc<dyn SearchableMemory> = Arc::new(Memory::open(&mem_dir)?);
    let mut self_ids = vec![-1i64; train_rows];
    for (row, &i) in chosen.iter().enumerate() {
        self_ids[i] = row as i64;
    }
    Ok(StudyMemory {
        variant: variant.clone(),
        search: MemorySearch::open(&memory, retrieval, dir)?,
        memory,
        self_ids,
        irrelevant_from: (irrelevant > 0).then_some(relevant as i64),
    })
}

fn write_memory(
    dir: &Path,
    recipe: &Recipe,
    chosen: &[usize],
    junk: &[usize],
    src: &MemorySources,
) -> Result<()> {
    let dim = src.train_keys.cols;
    let mut spec = MemorySpec::new(src.encoder, dim, FloatDtype::F16, true);
    spec.image = Some(ValueSpec {
        encoder: src.encoder.to_string(),
        dim,
        dtype: FloatDtype::F16,
    });
    let text_dim = src.train_text.map(|t| t.cols).unwrap_or(0);
    if recipe.text {
        spec.text = Some(ValueSpec {
            encoder: src.text_encoder.to_string(),
            dim: text_dim,
            dtype: FloatDtype::F16,
        });
    }
    let mut writer = MemoryWriter::create(dir, spec)?;
    // (from the irrelevant set?, row) in memory order: relevant rows first.
    let rows: Vec<(bool, usize)> = chosen
        .iter()
        .map(|&i| (false, i))
        .chain(junk.iter().map(|&i| (true, i)))
        .collect();
    for shard in rows.chunks(8192) {
        let mut keys = Vec::with_capacity(shard.len() * dim);
        let mut text = Vec::new();
        let mut metadata = Vec::with_capacity(shard.len());
        for &(is_junk, i) in shard {
            let (k, t, ids, captions) = if is_junk {
                (
                    src.irrelevant_keys,
                    src.irrelevant_text,
                    src.irrelevant_ids,
                    src.irrelevant_captions,
                )
            } else {
                (
                    Some(src.train_keys),
                    src.train_text,
                    src.train_ids,
                    src.train_captions,
                )
            };
            let k = k.context("irrelevant keys missing")?;
            keys.extend_from_slice(k.row(i));
            if recipe.text {
                text.extend_from_slice(t.context("text values missing")?.row(i));
            }
            metadata.push(MetadataEntry {
                source: Some(ids[i].clone()),
                caption: captions[i].clone(),
                label: None,
            });
        }
        // Keys are normalised by the writer; image values are the same embeddings.
        let mut values = keys.clone();
        ramem_model::bank::normalise_rows(&mut values, dim);
        writer.append_shard(ShardBatch {
            keys: &keys,
            image_values: Some(&values),
            text_values: recipe.text.then_some(text.as_slice()),
            metadata: &metadata,
        })?;
    }
    Ok(())
}

/// Opens an existing memory for a study (a directory, or a collection in
/// a vector database), checking that its keys come from the study's image
/// encoder (retrieval across encoders is meaningless). A training example
/// the memory holds (a row whose metadata `source` is the example's id or
/// its image's path, as in a memory the study or `memory build` made from
/// the same data) is its self entry: its query never retrieves it. `out`
/// keeps the neighbour lists of a memory that is not a directory here.
pub fn open_existing(
    path: &Path,
    encoder: &str,
    key_dim: usize,
    train: &[Example],
    retrieval: &RetrievalConfig,
    out: &Path,
) -> Result<StudyMemory> {
    let memory = ramem_recognize::open_memory(path)?;
    let manifest = memory.manifest();
    if manifest.key.encoder != encoder {
        bail!(
            "{}: the memory's keys come from encoder {:?}, but the study encodes its images with {:?}; retrieval needs the same encoder for queries and keys",
            memory.settings_location(),
            manifest.key.encoder,
            encoder
        );
    }
    if memory.key_dim() != key_dim {
        bail!(
            "{}: key dimension {} differs from the study encoder's {}",
            memory.settings_location(),
            memory.key_dim(),
            key_dim
        );
    }
    let self_ids = rows_holding(memory.as_ref(), train)?;
    let held = self_ids.iter().filter(|&&id| id >= 0).count();
    if held > 0 {
        tracing::info!(
            "{}: holds {held} of the {} training images; their queries never retrieve themselves",
            path.display(),
            train.len()
        );
    }
    Ok(StudyMemory {
        variant: MemoryVariant {
            name: "dir".into(),
            size: None,
            pollution: 0.0,
            retrieved: false,
        },
        search: MemorySearch::open(&memory, retrieval, out)?,
        memory,
        self_ids,
        irrelevant_from: None,
    })
}

/// For each example, the memory row whose metadata `source` is the
/// example's id or its image's path (the first such row), or -1.
fn rows_holding(memory: &dyn MemoryView, examples: &[Example]) -> Result<Vec<i64>> {
    let mut by_source: HashMap<String, i64> = HashMap::new();
    let rows: Vec<i64> = (0..memory.count() as i64).collect();
    for chunk in rows.chunks(METADATA_CHUNK) {
        for (row, meta) in chunk.iter().zip(memory.metadata_of(chunk)?) {
            if let Some(source) = meta.source {
                by_source.entry(source).or_insert(*row);
            }
        }
    }
    Ok(examples
        .iter()
        .map(|e| {
            by_source
                .get(&e.id)
                .or_else(|| by_source.get(&e.image.describe()))
                .copied()
                .unwrap_or(-1)
        })
        .collect())
}

/// Entries whose metadata is read at once.
const METADATA_CHUNK: usize = 4096;

/// Where a study's built memories go.
pub fn memories_dir(out: &Path) -> PathBuf {
    out.join("memories")
}

/// Where the random draws of [`pollute_retrieved`] come from.
#[derive(Clone, Copy)]
pub enum DrawStreams<'a> {
    /// One stream, read query after query.
    Shared(u64),
    /// A stream of each query's own, named by its entry of the slice (the
    /// query's row in the training split): a query's draws do not depend
    /// on which other queries share its set.
    PerQuery(&'a [usize]),
}

/// Swaps each retrieved neighbour, with probability `rate`, for a random
/// irrelevant entry of `mem` (retrieved pollution), with that entry's
/// cosine similarity to the query as its score. The draws depend on
/// `streams` and on the slot alone, so a higher rate swaps a superset of
/// the slots a lower one swaps, and every seed of a study sees the same
/// lists. Other memories' lists come back as they are.
pub fn pollute_retrieved(
    mem: &StudyMemory,
    mut found: Neighbours,
    queries: &[f32],
    dim: usize,
    streams: DrawStreams,
) -> Result<Neighbours> {
    let rate = mem.variant.pollution;
    if !mem.variant.retrieved || rate <= 0.0 {
        return Ok(found);
    }
    let first = mem.irrelevant_from.unwrap_or(mem.memory.count() as i64);
    let irrelevant = (mem.memory.count() as i64 - first).max(0) as usize;
    if irrelevant == 0 {
        bail!(
            "memory {}: retrieved pollution needs irrelevant entries, and it holds none",
            mem.variant.name
        );
    }
    const SALT: u64 = 0x0050_4F4C;
    // Read only with `Shared`; with `PerQuery` each query seeds its own.
    let shared_stream = match streams {
        DrawStreams::Shared(stream) => stream,
        DrawStreams::PerQuery(_) => 0,
    };
    let mut shared = SeededRng::new(SALT ^ shared_stream);
    let k = found.k;
    for (row, (ids, scores)) in found
        .ids
        .chunks_exact_mut(k)
        .zip(found.scores.chunks_exact_mut(k))
        .enumerate()
    {
        let mut own;
        let rng = match streams {
            DrawStreams::Shared(_) => &mut shared,
            DrawStreams::PerQuery(rows) => {
                own = SeededRng::new(SALT ^ rows[row] as u64);
                &mut own
            }
        };
        let query = &queries[row * dim..(row + 1) * dim];
        for (id, score) in ids.iter_mut().zip(scores.iter_mut()) {
            // Two draws per slot whatever the rate: the slots stay aligned across levels.
            let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let pick = first + rng.below(irrelevant) as i64;
            if draw < rate {
                *id = pick;
                *score = cosine(query, &mem.memory.gather_keys(&[pick])?);
            }
        }
    }
    Ok(found)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator > 0.0 {
        dot / denominator
    } else {
        0.0
    }
}
