//! `ramem memory build` and `ramem memory add` as library calls: a memory
//! straight from image-text data, and more entries for one.
//!
//! Input is an image directory (captions in sidecar `x.txt` files next to
//! `x.jpg`), webdataset tar shards (samples grouped by key: `000123.jpg` +
//! `000123.txt`), a parquet table of image paths and captions (and
//! labels), or a labelled data set spec (`idx:DIR`, `folders:DIR`, ...:
//! entries labelled with their class names); see [`collect_inputs`]. Keys are the image encoder's pooled embeddings (the
//! memory writer scales them to unit length); image values are the same
//! embeddings, raw; text values are the text encoder's caption embeddings
//! (unit length), and a row without a caption gets the embedding of the
//! empty string.
//!
//! Resume: items are processed in a fixed order. `MEM/build-state.json`
//! records, for every shard, how many input items it covers (rows plus
//! skipped images) and the row count after it. That record is written
//! atomically *before* the shard's manifest commit, so after a crash the
//! state may hold one record more than the memory: a rerun takes the last
//! record whose row count equals the manifest's `count`, which says exactly
//! how many items are done; later records and their skips are dropped. A run
//! whose last items are all unreadable writes a final record with no shard.
//! The record also holds the skipped images (reported again at the end of
//! every run) and the plan: the item count, a fingerprint of the item ids,
//! the models and the stored values; a rerun with a different plan is an
//! error. Images skipped by an earlier run stay skipped under a later
//! `strict` run. A caption is the first non-empty line of its file
//! (trimmed); an empty file counts as no caption.
//!
//! [`add_to_memory`] appends to an existing memory with the memory's own
//! encoders and value kinds, resumable the same way through
//! `MEM/add-state.json` (whose record starts at the rows the memory held
//! before the add), and brings the memory's HNSW index up to date.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ramem_data::{
    is_dataset_spec, labelled_items, list_images, read_webdataset_items, ImageItem, ImageSource,
    Selection, TextSource,
};
use ramem_encode::{load_image_model, load_text_model, registry, ImageModel, TextModel};
use ramem_store::memory::{
    FloatDtype, Manifest, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, ValueSpec,
    MANIFEST_FILE,
};
use ramem_store::Fnv1a;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Name of the build's resume state inside the memory directory.
pub const STATE_FILE: &str = "build-state.json";
/// Name of the last add's record inside the memory directory.
pub const ADD_STATE_FILE: &str = "add-state.json";

/// Which values each row stores.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredValues {
    /// The image embedding (raw, not normalised).
    Image,
    /// The caption embedding (unit length; empty caption when there is none).
    Text,
    /// Both.
    Both,
}

impl StoredValues {
    /// Whether rows store image values.
    pub fn image(self) -> bool {
        matches!(self, StoredValues::Image | StoredValues::Both)
    }

    /// Whether rows store text values.
    pub fn text(self) -> bool {
        matches!(self, StoredValues::Text | StoredValues::Both)
    }
}

impl std::str::FromStr for StoredValues {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<StoredValues, String> {
        match text {
            "image" => Ok(StoredValues::Image),
            "text" => Ok(StoredValues::Text),
            "both" => Ok(StoredValues::Both),
            _ => Err(format!("unknown values {text:?}; known: image, text, both")),
        }
    }
}

/// What to build, from what, and how.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The memory directory (created if missing; an interrupted build into it resumes).
    pub memory: PathBuf,
    /// An image directory, webdataset shards (files or a directory of
    /// them), or one parquet table.
    pub inputs: Vec<PathBuf>,
    /// Image encoder (keys and image values).
    pub model: String,
    pub values: StoredValues,
    /// Text encoder for caption values.
    pub text_model: String,
    pub key_dtype: FloatDtype,
    /// Rows per shard (each shard is committed atomically).
    pub shard_rows: usize,
    /// Images per forward pass.
    pub batch: usize,
    /// Stop at the first unreadable image instead of skipping it.
    pub strict: bool,
    /// The part of a data set spec input to take.
    pub selection: Selection,
    /// Build only this part of the input (see [`ShardOf`]); `None`: all.
    pub shard: Option<ShardOf>,
}

/// Part `index` of `count` (counted from 0) of a build's input, for
/// building one memory with several processes or machines: a contiguous
/// run of the input's items, cut on whole encoder batches, so that the
/// parts merged in order ([`merge_shards`]) hold the rows one process would
/// have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOf {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for ShardOf {
    type Err = String;

    /// `I/N`, with `0 <= I < N`.
    fn from_str(text: &str) -> std::result::Result<ShardOf, String> {
        let parsed = text
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(ShardOf { index, count }),
            _ => Err(format!(
                "{text:?} is not a shard: give I/N with N at least 1 and I from 0 to N - 1 \
                 (0/3, 1/3 and 2/3 build one memory in three parts)"
            )),
        }
    }
}

impl std::fmt::Display for ShardOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl ShardOf {
    /// The items of this part of an input of `items`, whole batches of
    /// `batch` dealt out in order.
    pub fn range(&self, items: usize, batch: usize) -> std::ops::Range<usize> {
        let batches = items.div_ceil(batch.max(1));
        let first = self.index * batches / self.count;
        let end = (self.index + 1) * batches / self.count;
        (first * batch).min(items)..(end * batch).min(items)
    }
}

/// More entries for an existing memory, encoded as it was built.
#[derive(Debug, Clone)]
pub struct AddOptions {
    pub memory: PathBuf,
    /// Like [`BuildOptions::inputs`].
    pub inputs: Vec<PathBuf>,
    pub selection: Selection,
    /// The class name of every added entry (overrides the input's labels).
    pub label: Option<String>,
    /// Rows per shard.
    pub shard_rows: usize,
    /// Images per forward pass.
    pub batch: usize,
    pub strict: bool,
}

/// What an add did.
#[derive(Debug, Clone)]
pub struct AddReport {
    /// Rows before the add, and after.
    pub rows_before: u64,
    pub rows: u64,
    pub items: usize,
    pub resumed_items: usize,
    pub skipped: Vec<Skip>,
    /// Rows inserted into the memory's HNSW index; `None` without an index.
    pub indexed: Option<usize>,
    /// Rows added to the memory's int8 keys; `None` without int8 keys.
    pub quantised: Option<usize>,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// Rows in the memory.
    pub rows: u64,
    /// Input items.
    pub items: usize,
    /// Items done by an earlier, interrupted run.
    pub resumed_items: usize,
    /// Images that could not be read, over every run of this build.
    pub skipped: Vec<Skip>,
}

/// What a build was started with; a resume must match it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Plan {
    items: usize,
    fingerprint: String,
    model: String,
    values: StoredValues,
    text_model: Option<String>,
    /// For a part of a sharded build: which part of which input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<PlanShard>,
}

/// The part of the whole input a sharded build covers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct PlanShard {
    index: usize,
    count: usize,
    /// The position of this part's first item in the whole input.
    first_item: usize,
    /// The whole input's item count and fingerprint (its plan's).
    input_items: usize,
    input_fingerprint: String,
}

/// One committed (or about to be committed) step: cumulative items and rows.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
struct Step {
    items: usize,
    rows: u64,
}

/// An image that could not be read.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Skip {
    /// Position in the input.
    pub item: usize,
    pub id: String,
    pub reason: String,
}

/// `MEM/build-state.json` (or `add-state.json`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct State {
    plan: Plan,
    /// Rows the memory held before this build or add (0 for a build).
    #[serde(default)]
    base_rows: u64,
    steps: Vec<Step>,
    skipped: Vec<Skip>,
    /// Every item is in (an add's record stays, so a rerun adds nothing twice).
    #[serde(default)]
    finished: bool,
}

impl State {
    fn new(plan: Plan, base_rows: u64) -> State {
        State {
            plan,
            base_rows,
            steps: Vec::new(),
            skipped: Vec::new(),
            finished: false,
        }
    }

    fn write(&self, path: &Path) -> Result<()> {
        ramem_store::write_atomic(path, &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// Drops what the memory did not commit; returns the items done.
    fn settle(&mut self, committed_rows: u64, memory: &Path) -> Result<usize> {
        let base = self.base_rows;
        let done = if committed_rows == base {
            // Trailing all-skipped steps add no rows; keep the last.
            self.steps.iter().rposition(|s| s.rows == base)
        } else {
            self.steps.iter().rposition(|s| s.rows == committed_rows)
        };
        let items = match done {
            Some(i) => {
                self.steps.truncate(i + 1);
                self.steps[i].items
            }
            None if committed_rows == base => {
                self.steps.clear();
                0
            }
            None => bail!(
                "{}: the memory holds {committed_rows} rows but its build record has no \
                 matching step; it was changed by something other than this build",
                memory.display()
            ),
        };
        self.skipped.retain(|s| s.item < items);
        Ok(items)
    }
}

impl Plan {
    fn new(items: &[ImageItem], model: &str, values: StoredValues, text_model: &str) -> Plan {
        let mut ids = Fnv1a::new();
        for item in items {
            ids.write_part(&item.id);
            if let Some(label) = &item.label {
                ids.write_part(&format!("label={label}"));
            }
        }
        Plan {
            items: items.len(),
            fingerprint: ids.hex(),
            model: model.to_string(),
            values,
            text_model: values.text().then(|| text_model.to_string()),
            shard: None,
        }
    }
}

/// Builds (or resumes building) the memory `options.memory`.
pub fn build_memory(options: &BuildOptions) -> Result<BuildReport> {
    if options.shard_rows == 0 || options.batch == 0 {
        bail!("--shard-rows and --batch must be at least 1");
    }
    let inputs = collect_inputs(&options.inputs, &options.selection)?;
    let whole = Plan::new(
        &inputs.items,
        &options.model,
        options.values,
        &options.text_model,
    );
    let (items, plan) = match options.shard {
        None => (&inputs.items[..], whole),
        Some(shard) => {
            let range = shard.range(inputs.items.len(), options.batch);
            let items = &inputs.items[range.clone()];
            let mut plan = Plan::new(items, &options.model, options.values, &options.text_model);
            plan.shard = Some(PlanShard {
                index: shard.index,
                count: shard.count,
                first_item: range.start,
                input_items: whole.items,
                input_fingerprint: whole.fingerprint,
            });
            tracing::info!(
                "shard {shard}: items {}..{} of {}",
                range.start,
                range.end,
                inputs.items.len()
            );
            (items, plan)
        }
    };
    let encoders = Encoders::load(&options.model, options.values, &options.text_model)?;
    let spec = MemorySpec {
        key_encoder: options.model.clone(),
        key_dim: encoders.image.dim(),
        key_dtype: options.key_dtype,
        normalize_keys: true,
        image: options.values.image().then(|| ValueSpec {
            encoder: options.model.clone(),
            dim: encoders.image.dim(),
            dtype: FloatDtype::F32,
        }),
        text: encoders.text.as_ref().map(|m| ValueSpec {
            encoder: options.text_model.clone(),
            dim: m.dim(),
            dtype: FloatDtype::F32,
        }),
    };
    let (mut writer, mut state, done) = open_memory(&options.memory, spec, plan)?;
    writer.declare_classes(&inputs.classes)?;
    let total = items.len();
    if done > 0 {
        tracing::info!(
            "resuming: {done} of {total} items already in {} ({} rows)",
            options.memory.display(),
            writer.count()
        );
    }
    let run = Run {
        items,
        encoders: &encoders,
        values: options.values,
        shard_rows: options.shard_rows,
        batch: options.batch,
        strict: options.strict,
        state_path: options.memory.join(STATE_FILE),
    };
    run.fill(&mut writer, &mut state, done)?;

    let rows = writer.count();
    tracing::info!(
        "{}: {rows} rows from {total} items ({} skipped)",
        options.memory.display(),
        state.skipped.len()
    );
    crate::log_skipped(
        state
            .skipped
            .iter()
            .map(|s| (s.id.as_str(), s.reason.as_str())),
        state.skipped.len(),
        total,
    );
    if rows == 0 && options.shard.is_none() {
        bail!("no image could be read (every input was skipped); the memory is empty");
    }
    Ok(BuildReport {
        rows,
        items: total,
        resumed_items: done,
        skipped: state.skipped,
    })
}

/// Adds the images of `options.inputs` to the existing memory
/// `options.memory`, encoded with the memory's own encoders into the value
/// kinds it holds, and brings its HNSW index (where it has one) up to date.
/// An interrupted add resumes when rerun; a finished one is not repeated.
pub fn add_to_memory(options: &AddOptions) -> Result<AddReport> {
    if options.shard_rows == 0 || options.batch == 0 {
        bail!("--shard-rows and --batch must be at least 1");
    }
    let dir = &options.memory;
    let manifest = Manifest::read(dir)?;
    let mut inputs = collect_inputs(&options.inputs, &options.selection)?;
    if let Some(label) = &options.label {
        for item in &mut inputs.items {
            item.label = Some(label.clone());
        }
        inputs.classes = vec![label.clone()];
    }
    let model = manifest.key.encoder.clone();
    let values = match (&manifest.values.image, &manifest.values.text) {
        (Some(_), Some(_)) => StoredValues::Both,
        (None, Some(_)) => StoredValues::Text,
        _ => StoredValues::Image,
    };
    if let Some(image) = &manifest.values.image {
        if image.encoder != model {
            bail!(
                "{}: its image values come from {:?}, its keys from {:?}; `memory add` encodes \
                 both with one image encoder",
                dir.join(MANIFEST_FILE).display(),
                image.encoder,
                model
            );
        }
    }
    let text_model = manifest
        .values
        .text
        .as_ref()
        .map_or(String::new(), |t| t.encoder.clone());
    let plan = Plan::new(&inputs.items, &model, values, &text_model);
    let mut writer = MemoryWriter::open_append(dir)?;
    let state_path = dir.join(ADD_STATE_FILE);
    let previous: Option<State> = match std::fs::read(&state_path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a valid add record", state_path.display()))?,
        ),
        Err(_) => None,
    };
    let total = inputs.items.len();
    let (mut state, done) = match previous {
        Some(mut state) if state.plan == plan => {
            if state.finished {
                tracing::info!(
                    "{}: these {total} items were added already (rows {}..{}); nothing to do",
                    dir.display(),
                    state.base_rows,
                    state.steps.last().map_or(state.base_rows, |s| s.rows)
                );
                return Ok(AddReport {
                    rows_before: state.base_rows,
                    rows: writer.count(),
                    items: total,
                    resumed_items: total,
                    skipped: state.skipped,
                    indexed: None,
                    quantised: None,
                });
            }
            let done = state.settle(writer.count(), dir)?;
            (state, done)
        }
        Some(state) if !state.finished => bail!(
            "{}: an add of other input ({} items) was interrupted; rerun that add to finish it \
             first (its record is {})",
            dir.display(),
            state.plan.items,
            state_path.display()
        ),
        _ => (State::new(plan, writer.count()), 0),
    };
    state.write(&state_path)?;
    writer.declare_classes(&inputs.classes)?;
    if done > 0 {
        tracing::info!("resuming: {done} of {total} items already added");
    }
    let encoders = Encoders::load(&model, values, &text_model)?;
    if encoders.image.dim() != manifest.key.dim {
        bail!(
            "{}: the memory's keys have {} dimensions, {model} gives {}",
            dir.join(MANIFEST_FILE).display(),
            manifest.key.dim,
            encoders.image.dim()
        );
    }
    let run = Run {
        items: &inputs.items,
        encoders: &encoders,
        values,
        shard_rows: options.shard_rows,
        batch: options.batch,
        strict: options.strict,
        state_path: state_path.clone(),
    };
    run.fill(&mut writer, &mut state, done)?;
    state.finished = true;
    state.write(&state_path)?;
    let rows = writer.count();
    drop(writer);
    crate::log_skipped(
        state
            .skipped
            .iter()
            .map(|s| (s.id.as_str(), s.reason.as_str())),
        state.skipped.len(),
        total,
    );
    let memory = ramem_store::memory::Memory::open(dir)?;
    let bar = ramem_progress::bar(rows - state.base_rows, "rows");
    bar.set_message(format!("updating the HNSW index of {}", dir.display()));
    let indexed = ramem_index::update_memory_index(&memory, &|done| bar.set_position(done as u64))
        .with_context(|| format!("{}: updating the HNSW index", dir.display()))?;
    bar.finish();
    let quantised = ramem_index::update_memory_int8(&memory)
        .with_context(|| format!("{}: updating the int8 keys", dir.display()))?;
    tracing::info!(
        "{}: added {} rows ({} now, {} skipped){}",
        dir.display(),
        rows - state.base_rows,
        rows,
        state.skipped.len(),
        match indexed {
            Some(n) => format!("; {n} rows inserted into its HNSW index"),
            None => String::new(),
        } + &match quantised {
            Some(n) => format!("; {n} rows added to its int8 keys"),
            None => String::new(),
        }
    );
    Ok(AddReport {
        rows_before: state.base_rows,
        rows,
        items: total,
        resumed_items: done,
        skipped: state.skipped,
        indexed,
        quantised,
    })
}

/// The encoders a build or an add runs.
struct Encoders {
    image: ImageModel,
    text: Option<TextModel>,
}

impl Encoders {
    fn load(model: &str, values: StoredValues, text_model: &str) -> Result<Encoders> {
        let device = registry::device();
        Ok(Encoders {
            image: load_image_model(model, &device)?,
            text: match values.text() {
                true => Some(load_text_model(text_model, &device)?),
                false => None,
            },
        })
    }
}

/// Items encoded into shards, with the record that makes it resumable.
struct Run<'a> {
    items: &'a [ImageItem],
    encoders: &'a Encoders,
    values: StoredValues,
    shard_rows: usize,
    batch: usize,
    strict: bool,
    state_path: PathBuf,
}

impl Run<'_> {
    /// Encodes items `done..` into shards appended to `writer`, recording
    /// each step in `state` before its shard commits.
    fn fill(&self, writer: &mut MemoryWriter, state: &mut State, done: usize) -> Result<()> {
        let total = self.items.len();
        let mut builder = Builder {
            run: self,
            shard: ShardRows::default(),
        };
        let bar = ramem_progress::bar(total as u64, "images");
        bar.set_message(format!("encoding into {}", writer.dir().display()));
        bar.set_position(done as u64);
        let mut next = done;
        while next < total {
            let room = self.shard_rows - builder.shard.rows();
            let end = (next + room.min(self.batch)).min(total);
            let skips = builder.embed_items(next, end)?;
            state.skipped.extend(skips);
            bar.inc((end - next) as u64);
            next = end;
            if builder.shard.rows() == self.shard_rows || next == total {
                let rows = builder.shard.rows() as u64;
                state.steps.push(Step {
                    items: next,
                    rows: writer.count() + rows,
                });
                // The state goes first; the manifest rename below commits it.
                state.write(&self.state_path)?;
                if rows > 0 {
                    writer.append_shard(builder.shard.batch())?;
                }
                builder.shard = ShardRows::default();
            }
        }
        bar.finish();
        Ok(())
    }
}

/// Creates the memory, or opens it for a resume after checking the plan.
fn open_memory(dir: &Path, spec: MemorySpec, plan: Plan) -> Result<(MemoryWriter, State, usize)> {
    let fresh = State::new(plan.clone(), 0);
    if !dir.join(MANIFEST_FILE).exists() {
        let writer = MemoryWriter::create(dir, spec)?;
        fresh.write(&dir.join(STATE_FILE))?;
        return Ok((writer, fresh, 0));
    }
    let manifest = Manifest::read(dir)?;
    let state_path = dir.join(STATE_FILE);
    let mut state = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice::<State>(&bytes)
            .with_context(|| format!("{}: not a valid build state", state_path.display()))?,
        // Killed between creating the memory and writing the state.
        Err(_) if manifest.count == 0 => fresh,
        Err(_) => bail!(
            "{}: a memory with {} rows that `memory build` did not make (no {STATE_FILE}); \
             build into a new directory",
            dir.display(),
            manifest.count
        ),
    };
    if state.plan != plan {
        bail!(
            "{}: this memory was built from other input or settings \
             (then: {} items, fingerprint {}, model {}, values {:?}, text model {}; \
             now: {} items, fingerprint {}, model {}, values {:?}, text model {}); \
             rerun with the same arguments or build into a new directory",
            dir.display(),
            state.plan.items,
            state.plan.fingerprint,
            state.plan.model,
            state.plan.values,
            state.plan.text_model.as_deref().unwrap_or("-"),
            plan.items,
            plan.fingerprint,
            plan.model,
            plan.values,
            plan.text_model.as_deref().unwrap_or("-"),
        );
    }
    if manifest.key.dtype != spec.key_dtype || manifest.key.dim != spec.key_dim {
        bail!(
            "{}: the memory stores {}-d {} keys; this build would write {}-d {} keys (check --key-dtype)",
            dir.display(),
            manifest.key.dim,
            manifest.key.dtype.name(),
            spec.key_dim,
            spec.key_dtype.name()
        );
    }
    let writer = MemoryWriter::open_append(dir)?;
    remove_state_temps(dir)?;
    let done = state.settle(writer.count(), dir)?;
    Ok((writer, state, done))
}

/// Removes temporary state files a killed build left (`.build-state.json.PID.N.tmp`).
fn remove_state_temps(dir: &Path) -> Result<()> {
    let prefix = format!(".{STATE_FILE}.");
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".tmp") && path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    Ok(())
}

/// Rows waiting for the next shard.
#[derive(Default)]
struct ShardRows {
    keys: Vec<f32>,
    image_values: Vec<f32>,
    text_values: Vec<f32>,
    metadata: Vec<MetadataEntry>,
}

impl ShardRows {
    fn rows(&self) -> usize {
        self.metadata.len()
    }

    fn batch(&self) -> ShardBatch<'_> {
        ShardBatch {
            keys: &self.keys,
            image_values: (!self.image_values.is_empty()).then_some(&self.image_values[..]),
            text_values: (!self.text_values.is_empty()).then_some(&self.text_values[..]),
            metadata: &self.metadata,
        }
    }
}

struct Builder<'a> {
    run: &'a Run<'a>,
    shard: ShardRows,
}

/// An item's caption: the first non-empty line of its text (caption files
/// such as Tux Paint's stamps put translations on the lines that follow).
fn read_caption(caption: &Option<TextSource>) -> Result<Option<String>> {
    let Some(source) = caption else {
        return Ok(None);
    };
    let text = source.read()?;
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string))
}

impl Builder<'_> {
    /// Embeds items `start..end` into the pending shard; returns the skipped ones.
    fn embed_items(&mut self, start: usize, end: usize) -> Result<Vec<Skip>> {
        let items = &self.run.items[start..end];
        let captions: Vec<Result<Option<String>>> = items
            .par_iter()
            .map(|item| read_caption(&item.caption))
            .collect();
        // Images of the items whose caption could be read.
        let readable: Vec<usize> = (0..items.len()).filter(|&i| captions[i].is_ok()).collect();
        let sources: Vec<&ImageSource> = readable.iter().map(|&i| &items[i].image).collect();
        let embedded = self
            .run
            .encoders
            .image
            .embed_images(&sources, Default::default())?;
        let mut reasons: Vec<Option<String>> = captions
            .iter()
            .map(|c| c.as_ref().err().map(|e| format!("{e:#}")))
            .collect();
        for (at, reason) in &embedded.failures {
            reasons[readable[*at]] = Some(reason.clone());
        }
        let mut skips = Vec::new();
        for (i, reason) in reasons.iter().enumerate() {
            if let Some(reason) = reason {
                if self.run.strict {
                    bail!("{} (--strict): {reason}", items[i].id);
                }
                skips.push(Skip {
                    item: start + i,
                    id: items[i].id.clone(),
                    reason: reason.clone(),
                });
            }
        }
        let good: Vec<(&ImageItem, Option<String>)> = items
            .iter()
            .zip(captions)
            .zip(&reasons)
            .filter(|(_, reason)| reason.is_none())
            .map(|((item, caption), _)| (item, caption.ok().flatten()))
            .collect();
        if good.is_empty() {
            return Ok(skips);
        }
        if self.run.values.image() {
            self.shard
                .image_values
                .extend_from_slice(&embedded.embeddings);
        }
        self.shard.keys.extend(embedded.embeddings);
        if let Some(text) = &self.run.encoders.text {
            let captions: Vec<&str> = good
                .iter()
                .map(|(_, c)| c.as_deref().unwrap_or(""))
                .collect();
            let emb = text.embed(&captions)?;
            self.shard
                .text_values
                .extend(emb.flatten_all()?.to_vec1::<f32>()?);
        }
        for (item, caption) in good {
            self.shard.metadata.push(MetadataEntry {
                source: Some(item.source.clone()),
                caption,
                label: item.label.clone(),
            });
        }
        Ok(skips)
    }
}

/// A build's items, and the class names of a labelled input (in the data
/// set's order; empty for unlabelled input).
#[derive(Debug, Clone)]
pub struct Inputs {
    pub items: Vec<ImageItem>,
    pub classes: Vec<String>,
}

/// Resolves the build's inputs into items, in a fixed order: one labelled
/// data set spec (`idx:DIR`, `folders:DIR`, `list:...`, `openclipart:DIR`,
/// `wds:...`; the part `selection` picks, labelled with class names); one
/// `.parquet` table (see [`parquet_items`]); one image directory or image
/// file (with sidecar captions); or tar shards, given as files or as
/// directories that directly hold `*.tar` files (sorted by name). Warnings
/// about samples left out are logged.
pub fn collect_inputs(inputs: &[PathBuf], selection: &Selection) -> Result<Inputs> {
    if let Some(spec) = inputs
        .iter()
        .filter_map(|i| i.to_str())
        .find(|i| is_dataset_spec(i) && !Path::new(i).exists())
    {
        if inputs.len() > 1 {
            bail!("{spec}: a data set spec must be the only --input");
        }
        let (items, classes) = labelled_items(spec, selection)?;
        if items.is_empty() {
            bail!("{spec}: the selection holds no images");
        }
        return Ok(Inputs { items, classes });
    }
    let items = unlabelled_inputs(inputs)?;
    let mut classes: Vec<String> = Vec::new();
    for label in items.iter().filter_map(|i| i.label.as_ref()) {
        if !classes.contains(label) {
            classes.push(label.clone());
        }
    }
    Ok(Inputs { items, classes })
}

fn unlabelled_inputs(inputs: &[PathBuf]) -> Result<Vec<ImageItem>> {
    let mut tars = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .with_context(|| format!("{}: cannot read input", input.display()))?;
        if !meta.is_dir()
            && input
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        {
            if inputs.len() > 1 {
                bail!(
                    "{}: a parquet table must be the only --input",
                    input.display()
                );
            }
            return parquet_items(input);
        }
        if !meta.is_dir() && ramem_data::is_image(input) {
            if inputs.len() > 1 {
                bail!(
                    "{}: an image file must be the only --input (give a directory for several)",
                    input.display()
                );
            }
            return image_items(input);
        }
        if meta.is_dir() {
            let shards = tar_files_in(input)?;
            if shards.is_empty() {
                if inputs.len() > 1 {
                    bail!(
                        "{}: holds no .tar shards (an image directory must be the only --input)",
                        input.display()
                    );
                }
                return image_items(input);
            }
            tars.extend(shards);
        } else {
            tars.push(input.clone());
        }
    }
    let (items, warnings) = read_webdataset_items(&tars)?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if items.is_empty() {
        bail!(
            "no samples with an image ({}) in the input shards",
            ramem_data::IMAGE_EXTENSIONS.join(", ")
        );
    }
    Ok(items)
}

/// The images of an image directory or file, with their sidecar captions.
fn image_items(input: &Path) -> Result<Vec<ImageItem>> {
    let (images, _) = list_images(input, None)?;
    Ok(images
        .into_iter()
        .map(ImageItem::with_sidecar_caption)
        .collect())
}

/// The `*.tar` files directly inside `dir`, sorted by name.
fn tar_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("{}: cannot list directory", dir.display()))?
            .path();
        if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("tar"))
        {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The rows of a parquet table of image paths and captions: the path from the
/// first non-null of the columns `url`, `image_path`, `source`, `path`
/// (relative paths resolve against the table's directory), the caption from
/// `caption`.
fn parquet_items(table: &Path) -> Result<Vec<ImageItem>> {
    let rows = ramem_store::memory::read_parquet_metadata(table)?;
    let base = table.parent().unwrap_or(Path::new(""));
    let mut items = Vec::with_capacity(rows.len());
    for (row, entry) in rows.into_iter().enumerate() {
        let Some(source) = entry.source else {
            bail!(
                "{}: row {row} has no image path (columns url, image_path, source or path)",
                table.display()
            );
        };
        if source.contains("://") {
            bail!(
                "{}: row {row} names a URL ({source}); ramem reads local files only: download the images first",
                table.display()
            );
        }
        let path = base.join(&source);
        items.push(ImageItem {
            id: format!("{row}:{source}"),
            source: path.display().to_string(),
            image: ImageSource::File(path),
            caption: entry.caption.map(TextSource::Inline),
            label: entry.label,
        });
    }
    if items.is_empty() {
        bail!("{}: the table has no rows", table.display());
    }
    Ok(items)
}

/// What [`merge_shards`] did.
#[derive(Debug, Clone)]
pub struct MergeShardsReport {
    /// Rows in the merged memory.
    pub rows: u64,
    /// The parts merged (N of a build in N parts).
    pub shards: usize,
    /// Images the parts could not read, at their positions in the whole input.
    pub skipped: Vec<Skip>,
}

/// Joins the parts of a sharded build (`ramem memory build --shard I/N`
/// into each of `parts`, in any order) into the new memory `out`: the same
/// rows in the same order as one `memory build` of the whole input. Every
/// part must be finished, and all N parts of one input built with the same
/// encoders and settings must be there, once each; anything else is refused
/// naming the part and what is wrong. `out` records the whole build in its
/// `build-state.json`, as if one process had built it. A rerun finishes an
/// interrupted merge, and changes nothing after a finished one.
pub fn merge_shards(out: &Path, parts: &[PathBuf]) -> Result<MergeShardsReport> {
    if parts.is_empty() {
        bail!("nothing to merge: give the memories the parts were built into");
    }
    let mut found: Vec<(PathBuf, State, PlanShard)> = Vec::with_capacity(parts.len());
    for dir in parts {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: not a part of a sharded build (no {STATE_FILE}: build it with \
                 `ramem memory build --shard I/N`)",
                dir.display()
            )
        })?;
        let state: State = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a valid build state", path.display()))?;
        let Some(shard) = state.plan.shard.clone() else {
            bail!(
                "{}: built from a whole input, not as a part (`--shard I/N`); nothing to merge",
                dir.display()
            );
        };
        let done = state.steps.last().map_or(0, |s| s.items);
        if done != state.plan.items {
            bail!(
                "{}: part {}/{} is not finished ({done} of {} items): rerun its build",
                dir.display(),
                shard.index,
                shard.count,
                state.plan.items
            );
        }
        found.push((dir.clone(), state, shard));
    }
    let (first_dir, first, first_shard) = &found[0];
    for (dir, state, shard) in &found[1..] {
        let differs = |what: &str, theirs: String, ours: String| -> Result<()> {
            if theirs != ours {
                bail!(
                    "{} cannot be merged with {}: {what}: {} has {theirs}, {} has {ours}",
                    dir.display(),
                    first_dir.display(),
                    first_dir.display(),
                    dir.display()
                );
            }
            Ok(())
        };
        differs(
            "parts",
            first_shard.count.to_string(),
            shard.count.to_string(),
        )?;
        differs(
            "input",
            format!(
                "{} items, fingerprint {}",
                first_shard.input_items, first_shard.input_fingerprint
            ),
            format!(
                "{} items, fingerprint {}",
                shard.input_items, shard.input_fingerprint
            ),
        )?;
        differs(
            "image encoder",
            first.plan.model.clone(),
            state.plan.model.clone(),
        )?;
        differs(
            "values",
            format!("{:?}", first.plan.values).to_lowercase(),
            format!("{:?}", state.plan.values).to_lowercase(),
        )?;
        differs(
            "text encoder",
            format!("{:?}", first.plan.text_model),
            format!("{:?}", state.plan.text_model),
        )?;
    }
    let count = first_shard.count;
    found.sort_by_key(|(_, _, shard)| shard.index);
    for (i, (dir, _, shard)) in found.iter().enumerate() {
        if shard.index != i {
            let missing = if shard.index > i {
                format!("part {i}/{count} is missing")
            } else {
                format!(
                    "part {}/{count} is given twice ({})",
                    shard.index,
                    dir.display()
                )
            };
            bail!("cannot merge: {missing}; give all {count} parts once each");
        }
    }
    if found.len() != count {
        bail!(
            "cannot merge: part {}/{count} is missing; give all {count} parts once each",
            found.len()
        );
    }
    let ordered: Vec<PathBuf> = found.iter().map(|(dir, ..)| dir.clone()).collect();
    let bar = ramem_progress::bar(0, "shards");
    bar.set_message(format!("merging into {}", out.display()));
    let report = ramem_store::memory::merge(&ordered, out, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish();

    // The record of the whole build, as one process would have left it.
    let (_, state0, shard0) = &found[0];
    let mut whole = State::new(
        Plan {
            items: shard0.input_items,
            fingerprint: shard0.input_fingerprint.clone(),
            shard: None,
            ..state0.plan.clone()
        },
        0,
    );
    let mut rows = 0;
    for ((_, state, shard), first_id) in found.iter().zip(&report.first_ids) {
        let part_rows = state.steps.last().map_or(0, |s| s.rows);
        rows = first_id + part_rows;
        whole.steps.push(Step {
            items: shard.first_item + state.plan.items,
            rows,
        });
        whole.skipped.extend(state.skipped.iter().map(|skip| Skip {
            item: shard.first_item + skip.item,
            ..skip.clone()
        }));
    }
    if rows != report.rows {
        bail!(
            "{}: merged {} rows, but the parts' build records add up to {rows}",
            out.display(),
            report.rows
        );
    }
    whole.write(&out.join(STATE_FILE))?;
    Ok(MergeShardsReport {
        rows: report.rows,
        shards: count,
        skipped: whole.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_keeps_only_committed_steps() {
        let plan = Plan {
            items: 10,
            fingerprint: "x".into(),
            model: "m".into(),
            values: StoredValues::Image,
            text_model: None,
            shard: None,
        };
        let skip = |item| Skip {
            item,
            id: format!("{item}"),
            reason: "bad".into(),
        };
        let mut state = State {
            steps: vec![Step { items: 3, rows: 2 }, Step { items: 6, rows: 5 }],
            skipped: vec![skip(1), skip(4)],
            ..State::new(plan, 0)
        };
        // Killed after writing the second step, before its shard committed.
        let mut s = state.clone();
        assert_eq!(s.settle(2, Path::new("m")).unwrap(), 3);
        assert_eq!(s.steps.len(), 1);
        assert_eq!(s.skipped, vec![skip(1)]);
        assert_eq!(state.settle(5, Path::new("m")).unwrap(), 6);
        assert_eq!(state.clone().settle(0, Path::new("m")).unwrap(), 0);
        assert!(state.settle(4, Path::new("m")).is_err());
    }

    #[test]
    fn values_parse_their_names() {
        for (name, values) in [
            ("image", StoredValues::Image),
            ("text", StoredValues::Text),
            ("both", StoredValues::Both),
        ] {
            assert_eq!(name.parse::<StoredValues>(), Ok(values));
            assert_eq!(
                serde_json::to_string(&values).unwrap(),
                format!("\"{name}\"")
            );
        }
        assert!("all".parse::<StoredValues>().unwrap_err().contains("both"));
    }

    #[test]
    fn parts_are_whole_batches_dealt_out_in_order() {
        let of = |text: &str| text.parse::<ShardOf>().unwrap();
        assert_eq!(of("1/3"), ShardOf { index: 1, count: 3 });
        assert_eq!(of(" 0 / 1 ").to_string(), "0/1");
        for bad in ["3/3", "1/0", "a/3", "1", "-1/3"] {
            let err = bad.parse::<ShardOf>().unwrap_err();
            assert!(err.contains("I/N"), "{bad}: {err}");
        }
        // 39 items in batches of 4: 10 batches, as 3 + 3 + 4.
        let ranges: Vec<_> = (0..3).map(|i| of(&format!("{i}/3")).range(39, 4)).collect();
        assert_eq!(ranges, [0..12, 12..24, 24..39]);
        // More parts than batches: some parts are empty, none overlap.
        let ranges: Vec<_> = (0..4).map(|i| of(&format!("{i}/4")).range(5, 4)).collect();
        assert_eq!(ranges, [0..0, 0..4, 4..4, 4..5]);
        assert_eq!(of("0/1").range(7, 3), 0..7);
    }
}
