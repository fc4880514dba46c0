//! `ramem memory build` as a library call: a memory straight from
//! image-text data.
//!
//! Input is an image directory (captions in sidecar `x.txt` files next to
//! `x.jpg`), webdataset tar shards (samples grouped by key: `000123.jpg` +
//! `000123.txt`), or a parquet table of image paths and captions; see
//! [`collect_inputs`]. Keys are the image encoder's pooled embeddings (the
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

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ramem_data::{list_images, read_webdataset_items, ImageItem, ImageSource, TextSource};
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

/// `MEM/build-state.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct State {
    plan: Plan,
    steps: Vec<Step>,
    skipped: Vec<Skip>,
}

impl State {
    fn write(&self, memory: &Path) -> Result<()> {
        ramem_store::write_atomic(memory.join(STATE_FILE), &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// Drops what the memory did not commit; returns the items done.
    fn settle(&mut self, committed_rows: u64, memory: &Path) -> Result<usize> {
        let done = if committed_rows == 0 {
            // Trailing all-skipped steps have rows 0 too; keep the last.
            self.steps.iter().rposition(|s| s.rows == 0)
        } else {
            self.steps.iter().rposition(|s| s.rows == committed_rows)
        };
        let items = match done {
            Some(i) => {
                self.steps.truncate(i + 1);
                self.steps[i].items
            }
            None if committed_rows == 0 => {
                self.steps.clear();
                0
            }
            None => bail!(
                "{}: the memory holds {committed_rows} rows but {STATE_FILE} has no matching \
                 step; it was changed by something other than `memory build`",
                memory.display()
            ),
        };
        self.skipped.retain(|s| s.item < items);
        Ok(items)
    }
}

/// Builds (or resumes building) the memory `options.memory`.
pub fn build_memory(options: &BuildOptions) -> Result<BuildReport> {
    if options.shard_rows == 0 || options.batch == 0 {
        bail!("--shard-rows and --batch must be at least 1");
    }
    let items = collect_inputs(&options.inputs)?;
    let total = items.len();
    let mut ids = Fnv1a::new();
    for item in &items {
        ids.write_part(&item.id);
    }
    let plan = Plan {
        items: total,
        fingerprint: ids.hex(),
        model: options.model.clone(),
        values: options.values,
        text_model: options.values.text().then(|| options.text_model.clone()),
    };

    let device = registry::device();
    let image_model = load_image_model(&options.model, &device)?;
    let text_model = match options.values.text() {
        true => Some(load_text_model(&options.text_model, &device)?),
        false => None,
    };
    let spec = MemorySpec {
        key_encoder: options.model.clone(),
        key_dim: image_model.dim(),
        key_dtype: options.key_dtype,
        normalize_keys: true,
        image: options.values.image().then(|| ValueSpec {
            encoder: options.model.clone(),
            dim: image_model.dim(),
            dtype: FloatDtype::F32,
        }),
        text: text_model.as_ref().map(|m| ValueSpec {
            encoder: options.text_model.clone(),
            dim: m.dim(),
            dtype: FloatDtype::F32,
        }),
    };
    let (mut writer, mut state, done) = open_memory(&options.memory, spec, plan)?;
    if done > 0 {
        tracing::info!(
            "resuming: {done} of {total} items already in {} ({} rows)",
            options.memory.display(),
            writer.count()
        );
    }

    let mut builder = Builder {
        options,
        items: &items,
        image_model: &image_model,
        text_model: text_model.as_ref(),
        shard: ShardRows::default(),
    };
    let bar = ramem_progress::bar(total as u64, "images");
    bar.set_message(format!("building {}", options.memory.display()));
    bar.set_position(done as u64);
    let mut next = done;
    while next < total {
        let room = options.shard_rows - builder.shard.rows();
        let end = (next + room.min(options.batch)).min(total);
        let skips = builder.embed_items(next, end)?;
        state.skipped.extend(skips);
        bar.inc((end - next) as u64);
        next = end;
        if builder.shard.rows() == options.shard_rows || next == total {
            let rows = builder.shard.rows() as u64;
            state.steps.push(Step {
                items: next,
                rows: writer.count() + rows,
            });
            // The state goes first; the manifest rename below commits it.
            state.write(&options.memory)?;
            if rows > 0 {
                writer.append_shard(builder.shard.batch())?;
            }
            builder.shard = ShardRows::default();
        }
    }
    bar.finish();

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
    if rows == 0 {
        bail!("no image could be read (every input was skipped); the memory is empty");
    }
    Ok(BuildReport {
        rows,
        items: total,
        resumed_items: done,
        skipped: state.skipped,
    })
}

/// Creates the memory, or opens it for a resume after checking the plan.
fn open_memory(dir: &Path, spec: MemorySpec, plan: Plan) -> Result<(MemoryWriter, State, usize)> {
    let fresh = State {
        plan: plan.clone(),
        steps: Vec::new(),
        skipped: Vec::new(),
    };
    if !dir.join(MANIFEST_FILE).exists() {
        let writer = MemoryWriter::create(dir, spec)?;
        fresh.write(dir)?;
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
    options: &'a BuildOptions,
    items: &'a [ImageItem],
    image_model: &'a ImageModel,
    text_model: Option<&'a TextModel>,
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
        let items = &self.items[start..end];
        let captions: Vec<Result<Option<String>>> = items
            .par_iter()
            .map(|item| read_caption(&item.caption))
            .collect();
        // Images of the items whose caption could be read.
        let readable: Vec<usize> = (0..items.len()).filter(|&i| captions[i].is_ok()).collect();
        let sources: Vec<&ImageSource> = readable.iter().map(|&i| &items[i].image).collect();
        let embedded = self
            .image_model
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
                if self.options.strict {
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
        if self.options.values.image() {
            self.shard
                .image_values
                .extend_from_slice(&embedded.embeddings);
        }
        self.shard.keys.extend(embedded.embeddings);
        if let Some(text) = self.text_model {
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
            });
        }
        Ok(skips)
    }
}

/// Resolves the build's inputs into items, in a fixed order: one `.parquet`
/// table (see [`parquet_items`]); one image directory or image file (with
/// sidecar captions); or tar shards, given as files or as directories that directly
/// hold `*.tar` files (sorted by name). Warnings about samples left out are
/// logged.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<ImageItem>> {
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
        });
    }
    if items.is_empty() {
        bail!("{}: the table has no rows", table.display());
    }
    Ok(items)
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
        };
        let skip = |item| Skip {
            item,
            id: format!("{item}"),
            reason: "bad".into(),
        };
        let mut state = State {
            plan,
            steps: vec![Step { items: 3, rows: 2 }, Step { items: 6, rows: 5 }],
            skipped: vec![skip(1), skip(4)],
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
}
