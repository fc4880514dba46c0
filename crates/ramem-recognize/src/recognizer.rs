//! A bundle put to work: its model over a memory, predicting classes for
//! query embeddings with the evidence behind each decision.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use ramem_data::ImageSource;
use ramem_encode::{load_image_model, registry, EmbedOptions, EmbeddedImages, ImageModel};
use ramem_index::{Engine, Neighbours, Retriever, SearchParams, SearchableMemory};
use ramem_model::bank::normalise_rows;
use ramem_model::knn::{vote_with_labels, KnnVote};
use ramem_model::posthoc::adjust;
use ramem_model::vote;
use ramem_model::{
    build_bank, predict, Classifier, LabelSpace, MemoryLabels, Prediction, SampleSet,
};
use ramem_store::memory::MemoryView;

use serde::Serialize;

use crate::bundle::ModelBundle;
use crate::open::open_memory;

/// Samples per prediction batch.
const PREDICT_BATCH: usize = 1024;

/// A model bundle with the memory it retrieves from.
pub struct Recognizer {
    pub bundle: ModelBundle,
    /// `None` for the kNN vote, which has no weights.
    model: Option<Box<dyn Classifier>>,
    memory: Option<Arc<dyn SearchableMemory>>,
    /// The memory's labels in the model's class space, for a model that
    /// reads them (label values, or the vote).
    labels: Option<LabelSpace>,
    /// The same as label values show them (the model's classes only).
    value_labels: Option<MemoryLabels>,
    /// What predictions name: the bundle's classes, then the classes only
    /// the memory's labels know.
    classes: Vec<String>,
    retriever: Option<Box<dyn Retriever>>,
    /// The engine asked for (`None`: the memory's HNSW index where it has
    /// an up-to-date one, else exact search), kept to reopen the memory.
    engine: Option<Engine>,
    /// The beam of an approximate engine.
    ef: Option<usize>,
    device: Device,
}

/// What a batch of queries was given.
#[derive(Debug, Clone)]
pub struct Decisions {
    /// Log-probabilities as the model scores them (after the post-hoc
    /// adjustment), `queries x classes` (the recognizer's
    /// [`Recognizer::classes`]), with the attention weights.
    pub prediction: Prediction,
    /// Each query's retrieved entries (memory ids, similarities), for a
    /// model that retrieves.
    pub neighbours: Option<Neighbours>,
    /// Each retrieved entry's share of the probabilities through the vote
    /// of the neighbours' labels (`queries x neighbours.k`): the kNN vote's
    /// weights, or a module's vote fusion weight times them; `None` for a
    /// model that does not vote.
    pub vote_shares: Option<Vec<f32>>,
}

impl Recognizer {
    /// Opens the bundle at `dir` with `memory` (default: the memory it was
    /// trained against), searched with `engine` (default: the memory's HNSW
    /// index where it has an up-to-date one, else exact search). Returns a
    /// warning too when the memory changed since training.
    pub fn open(
        dir: &Path,
        memory_path: Option<&Path>,
        engine: Option<Engine>,
        ef: Option<usize>,
    ) -> Result<(Recognizer, Option<String>)> {
        Recognizer::of_bundle(ModelBundle::open(dir)?, memory_path, engine, ef)
    }

    /// [`Recognizer::open`] of a bundle already opened.
    pub fn of_bundle(
        bundle: ModelBundle,
        memory_path: Option<&Path>,
        engine: Option<Engine>,
        ef: Option<usize>,
    ) -> Result<(Recognizer, Option<String>)> {
        let dir = bundle.dir.clone();
        let device = Device::Cpu;
        let model = bundle.model(&device)?;
        let mut recognizer = Recognizer {
            classes: bundle.meta.classes.clone(),
            bundle,
            model,
            memory: None,
            labels: None,
            value_labels: None,
            retriever: None,
            engine,
            ef,
            device,
        };
        let mut warning = None;
        if recognizer.bundle.meta.model.retrieves() {
            let path = match (memory_path, &recognizer.bundle.meta.memory) {
                (Some(path), _) => path.to_path_buf(),
                (None, Some(record)) => record.path.clone(),
                (None, None) => anyhow::bail!(
                    "the model {} retrieves, and records no memory: name one",
                    dir.display()
                ),
            };
            let opened = open_memory(&path)
                .with_context(|| format!("the memory of the model {}", dir.display()))?;
            warning = recognizer.use_memory(opened)?;
        }
        Ok((recognizer, warning))
    }

    /// Retrieves from `memory` from now on (the same memory reopened after
    /// it grew or was edited, or another one): checked against the bundle
    /// like the memory [`Recognizer::open`] opens, its labels and search
    /// engine set up again. Returns the warning of a memory that changed
    /// since training. On an error the recognizer keeps its memory.
    pub fn use_memory(&mut self, memory: Arc<dyn SearchableMemory>) -> Result<Option<String>> {
        let meta = &self.bundle.meta;
        anyhow::ensure!(
            meta.model.retrieves(),
            "the model {} retrieves nothing: it has no use for the memory {}",
            self.bundle.dir.display(),
            memory.location()
        );
        let warning = self.bundle.check_memory(memory.as_ref())?;
        let labels = match meta.reads_labels() {
            true => LabelSpace::of_memory(memory.as_ref(), &meta.classes)?,
            false => None,
        };
        let retriever = memory.clone().retriever(self.engine)?;
        let value_labels = labels
            .as_ref()
            .filter(|_| meta.values.uses_labels())
            .map(LabelSpace::values);
        let classes = match &labels {
            Some(space) => space.names.clone(),
            None => meta.classes.clone(),
        };
        self.value_labels = value_labels;
        self.classes = classes;
        self.labels = labels;
        self.retriever = Some(retriever);
        self.memory = Some(memory);
        Ok(warning)
    }

    /// The classes predictions name: the bundle's, then those only the
    /// memory's labels know (a class added to the memory after training,
    /// which a vote over the memory can name).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The memory the model retrieves from, if it retrieves.
    pub fn memory(&self) -> Option<&dyn MemoryView> {
        self.memory.as_deref().map(|m| m as &dyn MemoryView)
    }

    /// The same memory as a shared handle, to read it from other threads.
    pub fn shared_memory(&self) -> Option<Arc<dyn SearchableMemory>> {
        self.memory.clone()
    }

    /// The engine that finds neighbours, for a model that retrieves.
    pub fn engine(&self) -> Option<Engine> {
        self.retriever.as_ref().map(|r| r.engine())
    }

    /// How neighbours are found (`exact search of DIR`, `HNSW index of
    /// DIR`), for a model that retrieves.
    pub fn retrieval(&self) -> Option<String> {
        self.retriever.as_ref().map(|r| r.describe())
    }

    /// Class probabilities for `queries` (raw image embeddings of the
    /// bundle's encoder, row-major, `dim` wide), with their neighbours.
    pub fn predict_embeddings(&self, queries: &[f32], dim: usize) -> Result<Decisions> {
        self.predict_embeddings_with_k(queries, dim, self.bundle.meta.k)
    }

    /// [`Recognizer::predict_embeddings`] retrieving `k` neighbours per
    /// query instead of the `k` the model was trained with (the attention
    /// and the averages are over any number of entries; the vote counts
    /// the first `k`).
    pub fn predict_embeddings_with_k(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
    ) -> Result<Decisions> {
        let meta = &self.bundle.meta;
        let n = queries.len().checked_div(dim).unwrap_or(0);
        let set = SampleSet::new("queries", queries.to_vec(), dim, vec![0; n], Vec::new(), 0)?;
        let mut vote_shares = None;
        let (mut prediction, neighbours) = match (&self.memory, &self.retriever) {
            (Some(memory), Some(_)) => {
                let found = self.search(&set.queries, dim, k)?;
                let prediction = match (meta.model.votes(), &self.labels, &self.model) {
                    (Some(vote), Some(labels), _) => {
                        let label_of = |id: i64| labels.label_of(id);
                        let vote = KnnVote { k, ..vote };
                        let prediction =
                            vote_with_labels(&found, &label_of, self.classes.len(), vote);
                        vote_shares = prediction.attention.clone();
                        prediction
                    }
                    (_, _, Some(model)) => {
                        let mut rows = found.ids.clone();
                        let bank = build_bank(
                            memory.as_ref(),
                            &mut [&mut rows],
                            meta.values,
                            self.value_labels.as_ref(),
                        )?;
                        let set = SampleSet {
                            neighbours: rows,
                            k,
                            ..set
                        };
                        predict(
                            model.as_ref(),
                            &set,
                            Some(&bank),
                            &self.device,
                            PREDICT_BATCH,
                        )?
                    }
                    _ => anyhow::bail!("the model {} cannot predict", self.bundle.dir.display()),
                };
                (prediction, Some(found))
            }
            _ => {
                let model = self
                    .model
                    .as_ref()
                    .context("a model without weights needs a memory")?;
                let prediction = predict(model.as_ref(), &set, None, &self.device, PREDICT_BATCH)?;
                (prediction, None)
            }
        };
        prediction = widen_classes(prediction, self.classes.len());
        // A module with a vote fusion mixes in its neighbours' vote, over
        // the memory's labels as they are now.
        if let (Some(fusion), Some(labels), Some(found)) =
            (meta.model.vote_fusion(), &self.labels, &neighbours)
        {
            let label_of = |id: i64| labels.label_of(id);
            let (fused, shares) = vote::fuse_with_shares(&prediction, found, &label_of, fusion);
            prediction = fused;
            vote_shares = Some(shares);
        }
        let counts = class_counts_over(&meta.class_counts, self.classes.len());
        prediction.log_probs = adjust(
            &prediction.log_probs,
            prediction.classes,
            &counts,
            meta.posthoc_tau,
        );
        Ok(Decisions {
            prediction,
            neighbours,
            vote_shares,
        })
    }

    /// The `k` memory entries nearest each of `queries` (image embeddings
    /// of the memory's key encoder, `dim` wide, raw or unit length) by
    /// cosine similarity, by the recognizer's engine; an error for a model
    /// that does not retrieve.
    pub fn search(&self, queries: &[f32], dim: usize, k: usize) -> Result<Neighbours> {
        let retriever = self.retriever.as_ref().with_context(|| {
            format!(
                "the model {} retrieves nothing: it has no memory to search",
                self.bundle.dir.display()
            )
        })?;
        let mut unit = queries.to_vec();
        normalise_rows(&mut unit, dim);
        let mut params = SearchParams::new(k);
        params.ef = self.ef;
        Ok(retriever.search(&unit, dim, &params)?)
    }
}

/// `prediction` over `classes` classes: the classes it does not score (those
/// only the memory's labels know) get probability zero.
pub(crate) fn widen_classes(mut prediction: Prediction, classes: usize) -> Prediction {
    let have = prediction.classes;
    if have >= classes || have == 0 {
        return prediction;
    }
    let rows = prediction.log_probs.len() / have;
    let mut widened = Vec::with_capacity(rows * classes);
    for row in prediction.log_probs.chunks_exact(have) {
        widened.extend_from_slice(row);
        widened.extend(std::iter::repeat_n(f32::NEG_INFINITY, classes - have));
    }
    prediction.log_probs = widened;
    prediction.classes = classes;
    prediction
}

/// The training counts the post-hoc adjustment divides by, over `classes`
/// classes: a class the model was not trained on (known from the memory's
/// labels only) counts as the mean class, so the adjustment leaves it where
/// a balanced prior would.
pub fn class_counts_over(counts: &[usize], classes: usize) -> Vec<usize> {
    let mean = counts
        .iter()
        .sum::<usize>()
        .checked_div(counts.len())
        .unwrap_or(1);
    let mut all = counts.to_vec();
    all.resize(classes.max(counts.len()), mean.max(1));
    all
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
    /// uniform share for uniform averaging; for the kNN vote, its share of
    /// the vote).
    pub attention: Option<f32>,
    /// Its share of the probabilities through the vote of the neighbours'
    /// labels (the kNN vote's weight, or a module's vote fusion weight
    /// times it), for a model that votes.
    pub vote: Option<f32>,
    pub caption: Option<String>,
    pub source: Option<String>,
    /// The entry's class name, where the memory labels it.
    pub label: Option<String>,
}

impl Evidence {
    /// Memory entry `id`, found at `similarity`, given `attention`: its
    /// caption, source and label read from `memory`.
    pub fn of(
        memory: &dyn MemoryView,
        id: i64,
        similarity: f32,
        attention: Option<f32>,
    ) -> Result<Evidence> {
        let meta = memory.metadata(id)?;
        Ok(Evidence {
            memory_id: id,
            similarity,
            attention,
            vote: None,
            caption: meta.caption,
            source: meta.source,
            label: memory.label_name(id)?.map(str::to_string),
        })
    }

    /// The entries of query `i` in `found`, most similar first (no
    /// attention: a search, not a decision).
    pub fn of_search(
        memory: &dyn MemoryView,
        found: &Neighbours,
        i: usize,
    ) -> Result<Vec<Evidence>> {
        let k = found.k;
        (0..k)
            .filter(|&j| found.ids[i * k + j] >= 0)
            .map(|j| Evidence::of(memory, found.ids[i * k + j], found.scores[i * k + j], None))
            .collect()
    }
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

/// The readable form `ramem predict` prints: the image and its classes on
/// one line, then its evidence indented, one entry per line.
impl std::fmt::Display for ImageDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let classes: Vec<String> = self
            .top
            .iter()
            .map(|c| format!("{} {:.1}%", c.name, c.probability * 100.0))
            .collect();
        writeln!(f, "{}  {}", self.image, classes.join(" | "))?;
        for n in &self.neighbours {
            // The kNN vote's attention is its vote: named once.
            let mut weights = Vec::new();
            if let Some(a) = n.attention.filter(|&a| Some(a) != n.vote) {
                weights.push(format!("attention {a:.3}"));
            }
            if let Some(v) = n.vote {
                weights.push(format!("vote {v:.3}"));
            }
            let weights = weights.join(" ");
            let what = n
                .caption
                .as_deref()
                .filter(|c| !c.is_empty())
                .or(n.source.as_deref())
                .unwrap_or("");
            let label = n
                .label
                .as_deref()
                .map(|l| format!("[{l}] "))
                .unwrap_or_default();
            writeln!(
                f,
                "    #{:<9} sim {:.3}  {weights:<16} {label}{what}",
                n.memory_id, n.similarity
            )?;
        }
        Ok(())
    }
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
        memory: Option<&dyn MemoryView>,
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
                let attention = attention.map(|a| a[i * items + offset + j]);
                let vote = self.vote_shares.as_ref().map(|v| v[i * k + j]);
                neighbours.push(Evidence {
                    vote,
                    ..Evidence::of(memory, id, found.scores[i * k + j], attention)?
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

    /// The embeddings of `images` by the bundle's image encoder (the
    /// queries of [`Recognizer::predict_embeddings`]); an image that cannot
    /// be read is listed in the failures with its reason.
    pub fn embed(&self, images: &[&ImageSource]) -> Result<EmbeddedImages> {
        self.encoder.embed_images(images, EmbedOptions::default())
    }

    /// Decides for each image (`(id, source)`), `batch` images per forward
    /// pass and search; an image that cannot be read gets its reason.
    pub fn classify(
        &self,
        images: &[(String, ImageSource)],
        top: usize,
        batch: usize,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<ImageResult>> {
        let mut out = Vec::with_capacity(images.len());
        let options = ClassifyOptions {
            top,
            batch,
            k: None,
        };
        self.classify_each(images, &options, &mut |chunk, decisions| {
            out.extend(decisions);
            done(chunk.len());
            Ok(())
        })?;
        Ok(out)
    }

    /// [`ImageRecognizer::classify`], handing each chunk of `batch` images
    /// with its decisions to `sink` in input order as soon as it is
    /// decided (so a long input never waits in memory). The next chunk is
    /// encoded while the current one is searched and decided, so the
    /// cores stay busy through the parts that run on one of them.
    pub fn classify_each(
        &self,
        images: &[(String, ImageSource)],
        options: &ClassifyOptions,
        sink: &mut DecisionSink<'_>,
    ) -> Result<()> {
        let chunks: Vec<&[(String, ImageSource)]> = images.chunks(options.batch.max(1)).collect();
        let embed = |chunk: &[(String, ImageSource)]| {
            let sources: Vec<&ImageSource> = chunk.iter().map(|(_, s)| s).collect();
            self.embed(&sources)
        };
        let mut pending = match chunks.first() {
            Some(chunk) => Some((*chunk, embed(chunk)?)),
            None => None,
        };
        let mut next = 1;
        while let Some((chunk, embedded)) = pending.take() {
            let (following, decided) = rayon::join(
                || chunks.get(next).map(|c| embed(c).map(|e| (*c, e))),
                || self.decide(chunk, &embedded, options),
            );
            sink(chunk, decided?)?;
            pending = following.transpose()?;
            next += 1;
        }
        Ok(())
    }

    /// The decisions for `chunk`, whose images were embedded as `embedded`.
    fn decide(
        &self,
        chunk: &[(String, ImageSource)],
        embedded: &EmbeddedImages,
        options: &ClassifyOptions,
    ) -> Result<Vec<ImageResult>> {
        let k = options.k.unwrap_or(self.recognizer.bundle.meta.k);
        let decisions = match embedded.rows() {
            0 => None,
            _ => Some(self.recognizer.predict_embeddings_with_k(
                &embedded.embeddings,
                embedded.dim,
                k,
            )?),
        };
        let mut out = Vec::with_capacity(chunk.len());
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
                self.recognizer.classes(),
                options.top,
                self.recognizer.memory(),
            )?));
            row += 1;
        }
        Ok(out)
    }
}

/// One image's decision, or why it could not be read.
pub type ImageResult = std::result::Result<ImageDecision, String>;

/// Where [`ImageRecognizer::classify_each`] hands each chunk of images
/// (`(id, source)`) with their decisions.
pub type DecisionSink<'a> =
    dyn FnMut(&[(String, ImageSource)], Vec<ImageResult>) -> Result<()> + 'a;

/// How [`ImageRecognizer::classify_each`] classifies.
#[derive(Debug, Clone, Copy)]
pub struct ClassifyOptions {
    /// Classes per decision.
    pub top: usize,
    /// Images per forward pass and search.
    pub batch: usize,
    /// Neighbours retrieved (default: the `k` the model was trained with).
    pub k: Option<usize>,
}
