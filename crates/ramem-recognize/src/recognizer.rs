//! A bundle put to work: its model over a memory, predicting classes for
//! query embeddings with the evidence behind each decision.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use ramem_data::ImageSource;
use ramem_encode::{load_image_model, registry, EmbedOptions, ImageModel};
use ramem_index::{
    open_retriever, Engine, ExactSearch, HnswError, HnswSearch, Neighbours, Retriever, SearchError,
    SearchParams,
};
use ramem_model::posthoc::adjust;
use ramem_model::{build_bank, predict, Classifier, Prediction, SampleSet};
use ramem_store::memory::Memory;

use serde::Serialize;

use crate::bundle::ModelBundle;

/// Samples per prediction batch.
const PREDICT_BATCH: usize = 1024;

/// A model bundle with the memory it retrieves from.
pub struct Recognizer {
    pub bundle: ModelBundle,
    model: Box<dyn Classifier>,
    memory: Option<Arc<Memory>>,
    retriever: Option<Box<dyn Retriever>>,
    /// The beam of an approximate engine.
    ef: Option<usize>,
    device: Device,
}

/// What a batch of queries was given.
#[derive(Debug, Clone)]
pub struct Decisions {
    /// Log-probabilities as the model scores them (after the post-hoc
    /// adjustment), `queries x classes`, with the attention weights.
    pub prediction: Prediction,
    /// Each query's retrieved entries (memory ids, similarities), for a
    /// model that retrieves.
    pub neighbours: Option<Neighbours>,
}

impl Recognizer {
    /// Opens the bundle at `dir` with `memory` (default: the memory it was
    /// trained against), searched with `engine` (default: the memory's HNSW
    /// index where it has an up-to-date one, else exact search). Returns a
    /// warning too when the memory changed since training.
    pub fn open(
        dir: &Path,
        memory: Option<&Path>,
        engine: Option<Engine>,
        ef: Option<usize>,
    ) -> Result<(Recognizer, Option<String>)> {
        let bundle = ModelBundle::open(dir)?;
        let device = Device::Cpu;
        let model = bundle.model(&device)?;
        let mut warning = None;
        let (memory, retriever) = if bundle.meta.model.retrieves() {
            let path = match (memory, &bundle.meta.memory) {
                (Some(path), _) => path.to_path_buf(),
                (None, Some(record)) => record.path.clone(),
                (None, None) => anyhow::bail!(
                    "the model {} retrieves, and records no memory: name one",
                    dir.display()
                ),
            };
            let memory = Arc::new(
                Memory::open(&path)
                    .with_context(|| format!("the memory of the model {}", dir.display()))?,
            );
            warning = bundle.check_memory(&memory)?;
            let retriever = match engine {
                Some(engine) => open_retriever(memory.clone(), engine)?,
                None => best_retriever(memory.clone()),
            };
            (Some(memory), Some(retriever))
        } else {
            (None, None)
        };
        Ok((
            Recognizer {
                bundle,
                model,
                memory,
                retriever,
                ef,
                device,
            },
            warning,
        ))
    }

    /// The memory the model retrieves from, if it retrieves.
    pub fn memory(&self) -> Option<&Memory> {
        self.memory.as_deref()
    }

    /// How neighbours are found (`exact search of DIR`, `HNSW index of
    /// DIR`), for a model that retrieves.
    pub fn retrieval(&self) -> Option<String> {
        self.retriever.as_ref().map(|r| r.describe())
    }

    /// Class probabilities for `queries` (raw image embeddings of the
    /// bundle's encoder, row-major, `dim` wide), with their neighbours.
    pub fn predict_embeddings(&self, queries: &[f32], dim: usize) -> Result<Decisions> {
        let meta = &self.bundle.meta;
        let n = queries.len().checked_div(dim).unwrap_or(0);
        let mut set = SampleSet::new("queries", queries.to_vec(), dim, vec![0; n], Vec::new(), 0)?;
        let (bank, neighbours) = match (&self.memory, &self.retriever) {
            (Some(memory), Some(retriever)) => {
                let mut params = SearchParams::new(meta.k);
                params.ef = self.ef;
                let found = retriever.search(&set.queries, dim, &params)?;
                let mut rows = found.ids.clone();
                let bank = build_bank(memory, &mut [&mut rows], meta.values, None)?;
                set = SampleSet {
                    neighbours: rows,
                    k: meta.k,
                    ..set
                };
                (Some(bank), Some(found))
            }
            _ => (None, None),
        };
        let mut prediction = predict(
            self.model.as_ref(),
            &set,
            bank.as_ref(),
            &self.device,
            PREDICT_BATCH,
        )?;
        prediction.log_probs = adjust(
            &prediction.log_probs,
            prediction.classes,
            &meta.class_counts,
            meta.posthoc_tau,
        );
        Ok(Decisions {
            prediction,
            neighbours,
        })
    }
}

/// The memory's HNSW index where it has a usable one, else exact search;
/// an index that exists but cannot be used says why.
fn best_retriever(memory: Arc<Memory>) -> Box<dyn Retriever> {
    match HnswSearch::open(memory.clone()) {
        Ok(index) => Box::new(index),
        Err(e) => {
            if !matches!(e, SearchError::Index(HnswError::Missing { .. })) {
                tracing::warn!("searching exactly: {e}");
            }
            Box::new(ExactSearch::new(memory))
        }
    }
}

/// One class of a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    /// Index into the bundle's classes.
    pub class: usize,
    pub name: String,
    pub probability: f32,
}

/// One retrieved memory entry behind a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub memory_id: i64,
    /// Cosine similarity of its key to the query.
    pub similarity: f32,
    /// The share of the model's attention it got (the mean over heads; a
    /// uniform share for uniform averaging).
    pub attention: Option<f32>,
    pub caption: Option<String>,
    pub source: Option<String>,
    /// The entry's class name, where the memory labels it.
    pub label: Option<String>,
}

/// What the recognizer decided for one image, and why: the JSON a
/// prediction is written as, one object per image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageDecision {
    /// The image's id (its path relative to the input, or as listed).
    pub image: String,
    /// The `top` classes, most probable first.
    pub top: Vec<ClassScore>,
    /// The attention the query itself got, for a module that attends over it.
    pub query_attention: Option<f32>,
    /// The retrieved entries, in retrieval order (most similar first).
    pub neighbours: Vec<Evidence>,
}

/// The probabilities of a row of (adjusted, so unnormalised) log-probabilities.
fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

impl Decisions {
    /// The decision for query `i`: its `top` classes and its evidence,
    /// named from `memory`'s metadata.
    pub fn explain(
        &self,
        i: usize,
        image: &str,
        classes: &[String],
        top: usize,
        memory: Option<&Memory>,
    ) -> Result<ImageDecision> {
        let p = &self.prediction;
        let probabilities = softmax(&p.log_probs[i * p.classes..(i + 1) * p.classes]);
        let mut order: Vec<usize> = (0..p.classes).collect();
        order.sort_by(|&a, &b| {
            probabilities[b]
                .total_cmp(&probabilities[a])
                .then(a.cmp(&b))
        });
        let top = order
            .into_iter()
            .take(top.max(1))
            .map(|c| ClassScore {
                class: c,
                name: classes.get(c).cloned().unwrap_or_else(|| c.to_string()),
                probability: probabilities[c],
            })
            .collect();
        let mut neighbours = Vec::new();
        let mut query_attention = None;
        if let (Some(found), Some(memory)) = (&self.neighbours, memory) {
            let k = found.k;
            let items = p.attention_items;
            let offset = items.saturating_sub(k); // 1 when the query is attended too
            let attention = p.attention.as_deref();
            if let (Some(a), 1) = (attention, offset) {
                query_attention = Some(a[i * items]);
            }
            for j in 0..k {
                let id = found.ids[i * k + j];
                if id < 0 {
                    continue;
                }
                let meta = memory.metadata(id)?;
                neighbours.push(Evidence {
                    memory_id: id,
                    similarity: found.scores[i * k + j],
                    attention: attention.map(|a| a[i * items + offset + j]),
                    caption: meta.caption,
                    source: meta.source,
                    label: memory.label_name(id)?.map(str::to_string),
                });
            }
        }
        Ok(ImageDecision {
            image: image.to_string(),
            top,
            query_attention,
            neighbours,
        })
    }
}

/// A recognizer with its image encoder: images in, decisions out.
pub struct ImageRecognizer {
    pub recognizer: Recognizer,
    encoder: ImageModel,
}

impl ImageRecognizer {
    /// The recognizer with the image encoder its bundle names.
    pub fn new(recognizer: Recognizer) -> Result<ImageRecognizer> {
        let name = &recognizer.bundle.meta.image_encoder;
        let encoder = load_image_model(name, &registry::device())
            .with_context(|| format!("the image encoder {name:?} of the model"))?;
        Ok(ImageRecognizer {
            recognizer,
            encoder,
        })
    }

    /// Decides for each image (`(id, source)`), `batch` images per forward
    /// pass and search; an image that cannot be read gets its reason.
    pub fn classify(
        &self,
        images: &[(String, ImageSource)],
        top: usize,
        batch: usize,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<std::result::Result<ImageDecision, String>>> {
        let meta = &self.recognizer.bundle.meta;
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch.max(1)) {
            let sources: Vec<&ImageSource> = chunk.iter().map(|(_, s)| s).collect();
            let embedded = self
                .encoder
                .embed_images(&sources, EmbedOptions::default())?;
            let decisions = match embedded.rows() {
                0 => None,
                _ => Some(
                    self.recognizer
                        .predict_embeddings(&embedded.embeddings, embedded.dim)?,
                ),
            };
            let mut row = 0;
            for (i, (id, _)) in chunk.iter().enumerate() {
                if let Some((_, reason)) = embedded.failures.iter().find(|(at, _)| *at == i) {
                    out.push(Err(reason.clone()));
                    continue;
                }
                let decisions = decisions.as_ref().context("decisions missing")?;
                out.push(Ok(decisions.explain(
                    row,
                    id,
                    &meta.classes,
                    top,
                    self.recognizer.memory(),
                )?));
                row += 1;
            }
            done(chunk.len());
        }
        Ok(out)
    }
}
