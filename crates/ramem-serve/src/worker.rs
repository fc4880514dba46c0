//! The worker: one thread that owns the model, the image encoder and the
//! text encoder, and answers the requests' jobs in batches.
//!
//! Handlers put jobs on a bounded queue ([`std::sync::mpsc::sync_channel`]:
//! a full queue is refused at once, never grown). With nothing in flight
//! the worker blocks for a job, then gathers what arrives with it (until
//! `max_wait`, a quiet moment or `max_batch`): that is a batch. A batch's
//! images go through the encoder in one pass, and its classifications
//! through one search and one model pass per neighbour count; while they
//! are searched, decided and answered, the next batch (whatever waits by
//! then) is encoded, so the parts of a decision that run on one core
//! overlap the encoder on the others. Searches by image run as one encoder
//! pass and one search, texts as one text-encoder pass. Before each batch
//! the worker takes the memory as committed now ([`MemoryWatch`]), so
//! entries added while the server runs are seen without a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Device;
use ramem_data::ImageSource;
use ramem_encode::{load_text_model, EmbeddedImages, TextModel};
use ramem_index::{search_exact, Keys, SearchParams, SearchableMemory};
use ramem_recognize::{Evidence, ImageDecision, ImageRecognizer, Recognizer};
use ramem_store::memory::{Memory, ValueKind};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::memory_watch::MemoryWatch;
use crate::metrics::Metrics;
use crate::ServeOptions;

/// A batch stops waiting for more jobs once none arrived for this long.
const QUIET: Duration = Duration::from_millis(1);

/// What a request asks the worker.
#[derive(Debug)]
pub enum Query {
    /// Classes and evidence for an image: `k` neighbours retrieved, the
    /// `top` classes, the first `evidence` neighbours returned.
    Classify {
        image: ImageSource,
        name: String,
        k: usize,
        top: usize,
        evidence: usize,
    },
    /// The `k` memory entries nearest an image.
    SearchImage { image: ImageSource, k: usize },
    /// The `k` memory entries nearest a text.
    SearchText { text: String, k: usize },
}

/// The answer to a search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchAnswer {
    /// `image` or `text`.
    pub query: &'static str,
    /// What was searched: the memory's `keys`, or its `text values`.
    pub searched: &'static str,
    /// The entries found, most similar first (no attention).
    pub neighbours: Vec<Evidence>,
}

/// What the worker answers.
#[derive(Debug)]
pub enum Answer {
    Decision(ImageDecision),
    Search(SearchAnswer),
}

pub type Reply = oneshot::Sender<Result<Answer, ApiError>>;

/// A query with the channel its answer goes back on.
pub struct Job {
    pub query: Query,
    pub reply: Reply,
}

/// What the server knows of its model once the worker has loaded it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub model: PathBuf,
    pub method: &'static str,
    pub values: &'static str,
    /// Neighbours the model was trained with (0 for one that does not
    /// retrieve): the default `k` of a classification.
    pub k: usize,
    pub image_encoder: String,
    /// The classes predictions name when the server started.
    pub classes: Vec<String>,
    /// The memory searched (a directory or a URL), and how (`null` for a
    /// model that does not retrieve).
    pub memory: Option<String>,
    pub retrieval: Option<String>,
    /// How a text is searched (`null`: text search unavailable).
    pub text_search: Option<String>,
}

/// How a text query is searched.
enum TextTarget {
    /// The keys are in a joint image-text space (CLIP): search them.
    Keys,
    /// The memory's caption embeddings, by its text encoder.
    TextValues,
}

struct TextSearch {
    model: TextModel,
    target: TextTarget,
}

/// Why a text cannot be searched in `memory`, or how it is.
fn text_search(memory: &Arc<dyn SearchableMemory>) -> (Option<TextSearch>, Option<String>) {
    let manifest = memory.manifest();
    let local = memory.clone().local().is_some();
    let (encoder, target, what) = if manifest.key.encoder.starts_with("clip:") {
        (
            manifest.key.encoder.clone(),
            TextTarget::Keys,
            "the keys, by the key encoder's text tower",
        )
    } else if let (Some(text), true) = (&manifest.values.text, local) {
        (
            text.encoder.clone(),
            TextTarget::TextValues,
            "the text values, by their encoder",
        )
    } else {
        return (None, None);
    };
    match load_text_model(&encoder, &Device::Cpu) {
        Ok(model) => (
            Some(TextSearch { model, target }),
            Some(format!("{what} ({encoder})")),
        ),
        Err(e) => {
            tracing::warn!("text search is off: the text encoder {encoder:?} cannot load: {e:#}");
            (None, None)
        }
    }
}

/// The worker's side of the queue.
pub struct Worker {
    images: ImageRecognizer,
    watch: Option<Arc<MemoryWatch>>,
    text: Option<TextSearch>,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    max_batch: usize,
    max_wait: Duration,
}

/// A worker thread that has loaded its model.
pub struct Started {
    /// The queue's sending end.
    pub jobs: SyncSender<Job>,
    /// The memory the model retrieves from, as committed now.
    pub watch: Option<Arc<MemoryWatch>>,
    pub info: ModelInfo,
    pub thread: std::thread::JoinHandle<()>,
}

/// Loads the model (and the encoders) on a thread of its own and starts
/// answering jobs there; or says why it could not load.
pub fn spawn(
    options: &ServeOptions,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
) -> Result<Started> {
    let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(options.batching.queue.max(1));
    let (ready, loaded) = std::sync::mpsc::channel();
    let model = options.model.clone();
    let memory = options.memory.clone();
    let (engine, ef) = (options.engine, options.ef);
    let (max_batch, max_wait) = (options.batching.max_batch.max(1), options.batching.max_wait);
    let handle = std::thread::Builder::new()
        .name("ramem-serve-worker".into())
        .spawn(move || {
            let loaded = (|| -> Result<_> {
                let (recognizer, warning) = Recognizer::open(&model, memory.as_deref(), engine, ef)
                    .with_context(|| format!("opening the model {}", model.display()))?;
                if let Some(warning) = warning {
                    tracing::warn!("{warning}");
                }
                let images = ImageRecognizer::new(recognizer)?;
                let shared = images.recognizer.shared_memory();
                let (text, text_search) = match &shared {
                    Some(memory) => text_search(memory),
                    None => (None, None),
                };
                let meta = &images.recognizer.bundle.meta;
                let info = ModelInfo {
                    model: model.clone(),
                    method: meta.model.method(),
                    values: meta.values.name(),
                    k: if meta.model.retrieves() { meta.k } else { 0 },
                    image_encoder: meta.image_encoder.clone(),
                    classes: images.recognizer.classes().to_vec(),
                    memory: shared.as_ref().map(|m| m.location()),
                    retrieval: images.recognizer.retrieval(),
                    text_search,
                };
                let watch = shared.map(|m| Arc::new(MemoryWatch::new(m)));
                Ok((images, text, watch, info))
            })();
            match loaded {
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
                Ok((images, text, watch, info)) => {
                    let _ = ready.send(Ok((watch.clone(), info)));
                    Worker {
                        images,
                        watch,
                        text,
                        metrics,
                        queued,
                        max_batch,
                        max_wait,
                    }
                    .run(queue);
                }
            }
        })
        .context("starting the worker thread")?;
    let (watch, info) = loaded
        .recv()
        .context("the worker thread ended while loading")??;
    Ok(Started {
        jobs,
        watch,
        info,
        thread: handle,
    })
}

/// One classification waiting for its answer.
struct Classification {
    name: String,
    k: usize,
    top: usize,
    evidence: usize,
    reply: Reply,
}

/// A batch's classifications whose images are encoded, waiting to be
/// searched, decided and answered.
struct Encoded {
    jobs: Vec<Classification>,
    embedded: Result<EmbeddedImages>,
}

impl Worker {
    /// Answers batches until every sender is gone (the server stopped).
    ///
    /// Classifications run as a two-stage pipeline: a batch's images are
    /// encoded while the previous batch is searched, decided and answered,
    /// so the parts of a decision that run on one core overlap the encoder
    /// on the others. The next batch is whatever is waiting when the
    /// previous one is encoded; with nothing in flight the worker blocks
    /// for the first job and gathers what arrives with it.
    fn run(mut self, queue: Receiver<Job>) {
        let mut encoded: Option<Encoded> = None;
        loop {
            let batch = match encoded {
                None => match self.wait_for_batch(&queue) {
                    Some(batch) => batch,
                    None => break,
                },
                Some(_) => self.waiting_batch(&queue),
            };
            let taken = batch.len();
            if taken > 0 {
                let depth = self.queued.fetch_sub(taken, Ordering::SeqCst) - taken;
                self.metrics.set_queue_depth(depth);
            }
            let started = Instant::now();
            self.refresh_memory();
            let mut classifications = Vec::new();
            let mut images = Vec::new();
            let mut others = Vec::new();
            for job in batch {
                match job.query {
                    Query::Classify {
                        image,
                        name,
                        k,
                        top,
                        evidence,
                    } => {
                        images.push(image);
                        classifications.push(Classification {
                            name,
                            k,
                            top,
                            evidence,
                            reply: job.reply,
                        });
                    }
                    query => others.push(Job {
                        query,
                        reply: job.reply,
                    }),
                }
            }
            let previous = encoded.take();
            let (next, ()) = rayon::join(
                || {
                    (!images.is_empty()).then(|| {
                        let sources: Vec<&ImageSource> = images.iter().collect();
                        self.images.embed(&sources)
                    })
                },
                || {
                    if let Some(previous) = previous {
                        self.answer(previous);
                    }
                },
            );
            encoded = next.map(|embedded| Encoded {
                jobs: classifications,
                embedded,
            });
            let searched = self.run_searches(others);
            if taken > 0 {
                self.metrics.batch(
                    taken,
                    images.len() + searched,
                    started.elapsed().as_secs_f64(),
                );
            }
        }
        tracing::debug!("the worker stops: the queue is closed");
    }

    /// Blocks for the first job, then gathers what arrives with it (until
    /// `max_wait`, a quiet moment, or `max_batch`); `None` once the queue is
    /// closed.
    fn wait_for_batch(&self, queue: &Receiver<Job>) -> Option<Vec<Job>> {
        let first = queue.recv().ok()?;
        let mut batch = vec![first];
        let deadline = Instant::now() + self.max_wait;
        while batch.len() < self.max_batch {
            // Requests that arrive together come within a moment of each
            // other: a quiet moment ends the wait early.
            let left = deadline.saturating_duration_since(Instant::now());
            match queue.recv_timeout(left.min(QUIET)) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        Some(batch)
    }

    /// The jobs waiting now, up to `max_batch`, without waiting for more.
    fn waiting_batch(&self, queue: &Receiver<Job>) -> Vec<Job> {
        let mut batch = Vec::new();
        while batch.len() < self.max_batch {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch
    }

    /// Takes the memory as committed now; a memory that cannot be used
    /// any more is logged and the last good one kept.
    fn refresh_memory(&mut self) {
        let Some(watch) = &self.watch else { return };
        let current = match watch.current() {
            Ok(memory) => memory,
            Err(e) => {
                tracing::warn!("{e:#}");
                return;
            }
        };
        self.metrics.set_memory_entries(current.live_count());
        let recognizer = &mut self.images.recognizer;
        let same = recognizer
            .shared_memory()
            .is_some_and(|m| Arc::ptr_eq(&m, &current));
        if !same {
            if let Err(e) = recognizer.use_memory(current) {
                tracing::warn!("keeping the memory as it was: {e:#}");
            }
        }
    }

    /// Searches (by image and by text) run as they come; returns how many
    /// images they encoded.
    fn run_searches(&self, jobs: Vec<Job>) -> usize {
        let (texts, images): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|job| matches!(job.query, Query::SearchText { .. }));
        let encoded = images.len();
        if !images.is_empty() {
            self.search_images(images);
        }
        if !texts.is_empty() {
            self.run_texts(texts);
        }
        encoded
    }

    /// Searches, decides and answers a batch of encoded classifications:
    /// one search and one model pass per neighbour count.
    fn answer(&self, encoded: Encoded) {
        let Encoded { jobs, embedded } = encoded;
        let embedded = match embedded {
            Ok(embedded) => embedded,
            Err(e) => {
                let error = ApiError::internal(format!("the image encoder failed: {e:#}"));
                for job in jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        let dim = embedded.dim;
        // Each job's embedding row; a job whose image did not decode is
        // answered now.
        let mut by_k: BTreeMap<usize, Vec<(usize, Classification)>> = BTreeMap::new();
        let mut row = 0;
        for (i, job) in jobs.into_iter().enumerate() {
            if let Some((_, reason)) = embedded.failures.iter().find(|(at, _)| *at == i) {
                let _ = job.reply.send(Err(ApiError::unprocessable(reason.clone())));
                continue;
            }
            by_k.entry(job.k).or_default().push((row, job));
            row += 1;
        }
        let recognizer = &self.images.recognizer;
        for (k, group) in by_k {
            let queries: Vec<f32> = group
                .iter()
                .flat_map(|(r, _)| &embedded.embeddings[r * dim..(r + 1) * dim])
                .copied()
                .collect();
            let decisions = recognizer.predict_embeddings_with_k(&queries, dim, k);
            for (at, (_, job)) in group.into_iter().enumerate() {
                let answer = decisions
                    .as_ref()
                    .map_err(ApiError::failed)
                    .and_then(|d| {
                        d.explain(
                            at,
                            &job.name,
                            recognizer.classes(),
                            job.top,
                            recognizer.memory(),
                        )
                        .map_err(|e| ApiError::failed(&e))
                    })
                    .map(|mut decision| {
                        decision.neighbours.truncate(job.evidence);
                        Answer::Decision(decision)
                    });
                let _ = job.reply.send(answer);
            }
        }
    }

    /// The image searches: one encoder pass, one search.
    fn search_images(&self, jobs: Vec<Job>) {
        let sources: Vec<&ImageSource> = jobs
            .iter()
            .map(|job| match &job.query {
                Query::SearchImage { image, .. } => image,
                _ => unreachable!("only image searches"),
            })
            .collect();
        let embedded = match self.images.embed(&sources) {
            Ok(embedded) => embedded,
            Err(e) => {
                let error = ApiError::internal(format!("the image encoder failed: {e:#}"));
                for job in jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        let recognizer = &self.images.recognizer;
        let k_max = largest_k(&jobs);
        let found = match embedded.rows() {
            0 => None,
            _ => Some(recognizer.search(&embedded.embeddings, embedded.dim, k_max)),
        };
        let mut row = 0;
        for (i, job) in jobs.into_iter().enumerate() {
            if let Some((_, reason)) = embedded.failures.iter().find(|(at, _)| *at == i) {
                let _ = job.reply.send(Err(ApiError::unprocessable(reason.clone())));
                continue;
            }
            let Query::SearchImage { k, .. } = job.query else {
                unreachable!("only image searches")
            };
            let answer = match (&found, recognizer.memory()) {
                (Some(Ok(found)), Some(memory)) => Evidence::of_search(memory, found, row)
                    .map(|mut neighbours| {
                        neighbours.truncate(k);
                        Answer::Search(SearchAnswer {
                            query: "image",
                            searched: "keys",
                            neighbours,
                        })
                    })
                    .map_err(|e| ApiError::failed(&e)),
                (Some(Err(e)), _) => Err(ApiError::failed(e)),
                _ => Err(ApiError::internal("no memory to search")),
            };
            row += 1;
            let _ = job.reply.send(answer);
        }
    }

    /// The text jobs: one text-encoder pass, one search.
    fn run_texts(&self, jobs: Vec<Job>) {
        let answers = self.search_texts(&jobs);
        for (job, answer) in jobs.into_iter().zip(answers) {
            let _ = job.reply.send(answer);
        }
    }

    fn search_texts(&self, jobs: &[Job]) -> Vec<Result<Answer, ApiError>> {
        let fail = |error: ApiError| jobs.iter().map(|_| Err(error.clone())).collect();
        let recognizer = &self.images.recognizer;
        let (Some(text), Some(memory)) = (&self.text, recognizer.shared_memory()) else {
            return fail(ApiError::bad_request(
                "this server cannot search by text: its memory has no text encoder",
            ));
        };
        let texts: Vec<&str> = jobs
            .iter()
            .map(|job| match &job.query {
                Query::SearchText { text, .. } => text.as_str(),
                _ => "",
            })
            .collect();
        let k_max = largest_k(jobs);
        let embedded = text
            .model
            .embed(&texts)
            .and_then(|t| Ok((t.dims2()?.1, t.flatten_all()?.to_vec1::<f32>()?)));
        let (dim, queries) = match embedded {
            Ok(e) => e,
            Err(e) => {
                return fail(ApiError::internal(format!(
                    "the text encoder failed: {e:#}"
                )))
            }
        };
        let (found, searched) = match text.target {
            TextTarget::Keys => (recognizer.search(&queries, dim, k_max), "keys"),
            TextTarget::TextValues => (
                search_text_values(&memory, &queries, dim, k_max),
                "text values",
            ),
        };
        let found = match found {
            Ok(found) => found,
            Err(e) => return fail(ApiError::failed(&e)),
        };
        jobs.iter()
            .enumerate()
            .map(|(at, job)| {
                let k = match job.query {
                    Query::SearchText { k, .. } => k,
                    _ => 0,
                };
                let mut neighbours = Evidence::of_search(memory.as_ref(), &found, at)
                    .map_err(|e| ApiError::failed(&e))?;
                neighbours.truncate(k);
                Ok(Answer::Search(SearchAnswer {
                    query: "text",
                    searched,
                    neighbours,
                }))
            })
            .collect()
    }
}

/// The largest `k` the searches among `jobs` ask for (at least 1).
fn largest_k(jobs: &[Job]) -> usize {
    jobs.iter()
        .map(|job| match job.query {
            Query::SearchImage { k, .. }
            | Query::SearchText { k, .. }
            | Query::Classify { k, .. } => k,
        })
        .max()
        .unwrap_or(1)
}

/// The `k` entries whose text values are nearest each unit-length query.
fn search_text_values(
    memory: &Arc<dyn SearchableMemory>,
    queries: &[f32],
    dim: usize,
    k: usize,
) -> Result<ramem_index::Neighbours> {
    let memory: Arc<Memory> = memory
        .clone()
        .local()
        .context("text values are searched in a memory directory only")?;
    let values = Keys::of_memory_values(&memory, ValueKind::Text)?
        .context("the memory has no text values")?;
    Ok(search_exact(&values, queries, dim, &SearchParams::new(k))?)
}
